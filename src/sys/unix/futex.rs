//! Process-shared futex wait and wake on 32-bit words in shared memory.
//!
//! These are *shared* futexes (no `FUTEX_PRIVATE_FLAG`): the kernel keys them by the backing
//! page, so processes that map the same segment at different addresses meet on the same word.
//! A waiter that dies simply stops waiting; the kernel keeps no state for it.
//!
//! macOS would use `os_sync_wait_on_address` / `os_sync_wake_by_address_any` with the
//! `OS_SYNC_*_SHARED` flags (macOS 14.4+), or `__ulock_wait2` before that.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use rustix::io::Errno;
use rustix::thread::futex;

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Woken, interrupted, or the word no longer held `expected`: check the condition again.
    Maybe,
    /// The deadline passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, until woken or `deadline` (none: no limit).
pub(crate) fn wait(
    word: &AtomicU32,
    expected: u32,
    deadline: Option<Instant>,
) -> io::Result<Woken> {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Woken::TimedOut);
            }
            Some(rustix::time::Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            })
        }
    };
    // FUTEX_WAIT takes a relative timeout measured on CLOCK_MONOTONIC.
    match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(Woken::Maybe),
        Err(Errno::TIMEDOUT) => Ok(Woken::TimedOut),
        Err(e) => Err(e.into()),
    }
}

/// Wakes up to `n` processes sleeping on `word`.
pub(crate) fn wake(word: &AtomicU32, n: u32) {
    // FUTEX_WAKE only fails for an invalid or misaligned address, which a `&AtomicU32`
    // cannot be; its result (how many woke) is of no use to callers.
    let _ = futex::wake(word, futex::Flags::empty(), n);
}
