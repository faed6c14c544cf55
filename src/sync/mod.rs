//! Synchronisation primitives shared between processes, like Python's `multiprocessing`
//! `Lock`, `RLock`, `Semaphore`, `BoundedSemaphore`, `Event`, `Condition` and `Barrier`, and
//! robust to the death of any process using them.
//!
//! Each primitive is a handle on a small anonymous shared-memory segment (a size-sealed
//! memfd): clone it, or pass it to a child as an ordinary argument, inside a message, a queue
//! item or a pool task, under every start method; every copy names the same primitive, and
//! the segment is freed with its last handle (nothing to leak, even after `SIGKILL`). A
//! received handle is checked (size, seals, header, kind) before anything is mapped.
//!
//! **Dead processes** (killed by any signal, `SIGKILL` included):
//!
//! * a [`Lock`]/[`RLock`] whose holder died is handed to the next acquirer within one 50 ms
//!   tick, whose guard reports `owner_died()` once, so the program can repair its state;
//! * a [`Barrier`] party that dies while others wait breaks the barrier for them
//!   ([`ErrorKind::BrokenBarrier`](crate::ErrorKind)) within a tick;
//! * a [`Condition`] waiter that dies after being notified passes the notification on to
//!   another waiter within a tick; one that dies while waiting is forgotten;
//! * a [`Semaphore`] does not get back the units a dead process had taken;
//! * an [`Event`] is not affected.
//!
//! The shared words, the slots and the repair rules are written up in `src/sync/README.md`.
//!
//! ```
//! # fn main() -> multiproc::Result<()> {
//! use multiproc::{sync::Lock, Process, Value};
//!
//! fn add(v: Value<u64>) {
//!     for _ in 0..100 {
//!         *v.lock().unwrap() += 1;
//!     }
//! }
//!
//! let counter = Value::new(0u64)?;
//! let children: Vec<_> = (0..2)
//!     .map(|_| Process::spawn(counter.clone(), add))
//!     .collect::<multiproc::Result<_>>()?;
//! for c in &children {
//!     c.join()?;
//! }
//! assert_eq!(counter.get()?, 200);
//! # let _ = Lock::new()?;
//! # Ok(()) }
//! ```

mod barrier;
mod condition;
mod event;
mod lock;
mod segment;
mod semaphore;
mod value;

use std::sync::atomic::AtomicU32;
use std::time::Instant;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};
pub use value::{Array, ArrayGuard, RawArray, RawValue, Value, ValueGuard};

use crate::error::{Error, ErrorKind};
use crate::sys::{futex, robust};

/// The error for a failed lock wait.
fn lock_error(e: std::io::Error, what: &str, nonblocking: bool) -> Error {
    match e.kind() {
        std::io::ErrorKind::TimedOut if nonblocking => Error::msg(
            ErrorKind::WouldBlock,
            format!("the {what} is held by another thread or process"),
        ),
        std::io::ErrorKind::TimedOut => Error::msg(
            ErrorKind::Timeout,
            format!("the {what} was still held by another thread or process at the deadline"),
        ),
        std::io::ErrorKind::Deadlock => Error::msg(
            ErrorKind::InvalidState,
            format!(
                "this thread already holds this {what}, which is not reentrant (drop the \
                 guard first, or use an RLock)"
            ),
        ),
        _ => Error::io(e).context("waiting for a lock"),
    }
}

/// Sleeps while `word == expected`, for at most one tick and until `deadline`: whether the
/// deadline has passed.
fn sleep_until(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
    let tick = Instant::now() + robust::TICK;
    let until = deadline.map_or(tick, |d| d.min(tick));
    // An error is impossible for a valid word; it counts as a spurious wake.
    let _ = futex::wait(word, expected, Some(until));
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// `Serialize`/`Deserialize` for a handle made of one segment (`seg` field) of `kinds`.
macro_rules! handle_serde {
    ($ty:ident, $kinds:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                $crate::sync::segment::SendFd(&self.seg).serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                Ok($ty {
                    seg: $crate::sync::segment::receive(
                        d,
                        $kinds,
                        $crate::sync::segment::Elem::NONE,
                    )?,
                })
            }
        }
    };
}
use handle_serde;

/// Waiter slots (Condition, Barrier): who waits (a thread identity, 0 = free), in which order
/// (a ticket), and in what state (a futex word the waiter sleeps on).
mod slots {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

    use super::segment::{Segment, MAX_SLOTS, SLOTS, SLOT_LEN};
    use crate::sys::robust;

    /// No waiter (or one still claiming the slot).
    pub(super) const FREE: u32 = 0;
    /// Waiting to be notified / released.
    pub(super) const WAITING: u32 = 1;
    /// Notified (Condition) or released (Barrier); the waiter frees the slot.
    pub(super) const DONE: u32 = 2;
    /// The barrier broke while the party waited.
    pub(super) const BROKEN: u32 = 3;

    pub(super) struct Slot<'a> {
        pub(super) ident: &'a AtomicU64,
        pub(super) ticket: &'a AtomicU64,
        pub(super) state: &'a AtomicU32,
    }

    pub(super) fn slot(seg: &Segment, i: usize) -> Slot<'_> {
        let at = SLOTS + i * SLOT_LEN;
        Slot {
            ident: seg.u64(at),
            ticket: seg.u64(at + 8),
            state: seg.u32(at + 16),
        }
    }

    pub(super) fn all(seg: &Segment) -> impl Iterator<Item = (usize, Slot<'_>)> {
        (0..MAX_SLOTS).map(move |i| (i, slot(seg, i)))
    }

    /// Claims a free slot for the calling thread, in state FREE; `None` if all are taken (after
    /// freeing those of dead threads that were claiming one, and, with `reap_done`, those of
    /// dead threads released but not yet gone).
    pub(super) fn claim(seg: &Segment, reap_done: bool) -> Option<usize> {
        let me = robust::thread_identity();
        for pass in 0..2 {
            for (i, s) in all(seg) {
                if s.ident.compare_exchange(0, me, AcqRel, Relaxed).is_ok() {
                    return Some(i);
                }
            }
            if pass == 0 {
                for (_, s) in all(seg) {
                    let id = s.ident.load(Relaxed);
                    let st = s.state.load(Relaxed);
                    if id != 0
                        && (st == FREE || (reap_done && st != WAITING))
                        && !robust::thread_alive(id)
                    {
                        s.state.store(FREE, Relaxed);
                        let _ = s.ident.compare_exchange(id, 0, Release, Relaxed);
                    }
                }
            }
        }
        None
    }

    /// Frees a slot the calling thread claimed.
    pub(super) fn free(s: &Slot<'_>) {
        s.state.store(FREE, Release);
        s.ident.store(0, Release);
    }
}
#[cfg(test)]
mod tests;
