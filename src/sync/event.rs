//! `Event`: a flag in a futex word.

use std::fmt;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handle_serde;
use super::segment::{Elem, Kind, Segment, W0};
use crate::error::Result;
use crate::sys::futex;
use crate::wait::deadline_after;

/// The flag (futex word): 0 clear, anything else set.
const FLAG: usize = W0;
/// How many threads may sleep on `FLAG` (a dead sleeper only costs a spare wake).
const WAITERS: usize = W0 + 4;
/// Polls of the flag before a waiter sleeps: a set that follows within a microsecond or so
/// (a ping-pong between two processes) is seen without two system calls.
const SPINS: u32 = 200;

/// A flag shared between processes that threads can wait for, like Python's
/// `multiprocessing.Event`.
///
/// [`set`](Event::set) wakes every waiter; [`wait_timeout`](Event::wait_timeout) returns
/// whether the flag was set (a readiness question, as Python's `Event.wait` returns a bool).
/// A waiter that dies leaves nothing behind that the others need.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// use std::time::Duration;
/// let e = multiproc::sync::Event::new()?;
/// assert!(!e.wait_timeout(Duration::from_millis(1)));
/// e.set();
/// assert!(e.is_set() && e.wait_timeout(Duration::ZERO));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Event {
    seg: Arc<Segment>,
}

impl Event {
    /// Creates a cleared event.
    ///
    /// # Errors
    /// An `Io` error if the shared memory cannot be created.
    pub fn new() -> Result<Event> {
        Ok(Event {
            seg: Arc::new(Segment::create(Kind::Event, Elem::NONE, 0, 0)?),
        })
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.seg.u32(FLAG).store(1, SeqCst);
        if self.seg.u32(WAITERS).load(SeqCst) > 0 {
            // The kernel reads the count as an int: i32::MAX is "all" (u32::MAX would be -1,
            // which wakes one).
            futex::wake(self.seg.u32(FLAG), i32::MAX as u32);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.seg.u32(FLAG).store(0, SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.seg.u32(FLAG).load(Acquire) != 0
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag: whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    /// Waits until `deadline` at most for the flag: whether it is set.
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        self.wait_until(Some(deadline))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let flag = self.seg.u32(FLAG);
        for _ in 0..SPINS {
            if flag.load(Acquire) != 0 {
                return true;
            }
            std::hint::spin_loop();
        }
        let waiters = self.seg.u32(WAITERS);
        waiters.fetch_add(1, SeqCst);
        let set = loop {
            if flag.load(SeqCst) != 0 {
                break true;
            }
            // An error is impossible for a valid word; treat it as a spurious wake.
            if let Ok(futex::Woken::TimedOut) = futex::wait(flag, 0, deadline) {
                break flag.load(SeqCst) != 0;
            }
        };
        waiters.fetch_sub(1, SeqCst);
        set
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

handle_serde!(Event, &[Kind::Event]);
