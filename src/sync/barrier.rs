//! `Barrier`: a robust lock, a count and waiter slots in one segment.

use std::fmt;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::segment::{Elem, Kind, Segment, CONTROL, LOCK, MAX_SLOTS, W0};
use super::slots::{self, BROKEN, DONE, WAITING};
use super::{lock_error, sleep_until};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::{futex, robust};
use crate::wait::deadline_after;

/// Parties arrived in the current round (written under the lock).
const COUNT: usize = W0;
/// Non-zero while the barrier is broken (written under the lock).
const BROKEN_FLAG: usize = W0 + 4;
/// The most parties: a round's waiters and the previous round's (not yet gone) fit the slots.
const MAX_PARTIES: usize = MAX_SLOTS / 2;

/// A barrier for a fixed number of parties shared between processes, like Python's
/// `multiprocessing.Barrier`: each [`wait`](Barrier::wait) blocks until `parties` threads
/// (in any processes) wait, then all go on, each with a distinct index `0..parties` (its
/// arrival order), and the barrier is ready for the next round.
///
/// The barrier **breaks** (every waiter, and every later `wait` until [`reset`](Barrier::reset),
/// fails with [`ErrorKind::BrokenBarrier`]) when a wait times out (that waiter gets
/// [`ErrorKind::Timeout`]), when [`abort`](Barrier::abort) is called, or when a party **dies**
/// while others wait (found within one 50 ms tick: each waiting party records its thread,
/// and waiters check at each tick that the others are alive) or dies inside a barrier call.
/// `reset` breaks the current round's waiters and makes the barrier usable again.
///
/// Python's `action` callable has no counterpart (a closure cannot cross processes): the
/// party that gets index `parties - 1` (the last to arrive) can run it before the others
/// meet again. At most 60 parties.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let b = multiproc::sync::Barrier::new(1)?;
/// assert_eq!(b.wait()?, 0);
/// b.abort();
/// assert!(b.broken());
/// assert_eq!(b.wait().unwrap_err().kind(), multiproc::ErrorKind::BrokenBarrier);
/// b.reset();
/// assert_eq!(b.wait()?, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    seg: Arc<Segment>,
}

fn broken_error() -> Error {
    Error::msg(
        ErrorKind::BrokenBarrier,
        "a party timed out, died or aborted it; reset() makes it usable again",
    )
}

impl Barrier {
    /// Creates a barrier for `parties` threads.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] unless `1 <= parties <= 60`; an `Io` error if the shared
    /// memory cannot be created.
    pub fn new(parties: usize) -> Result<Barrier> {
        if !(1..=MAX_PARTIES).contains(&parties) {
            return Err(Error::msg(
                ErrorKind::InvalidState,
                format!("a barrier has 1 to {MAX_PARTIES} parties, not {parties}"),
            ));
        }
        Ok(Barrier {
            seg: Arc::new(Segment::create(
                Kind::Barrier,
                Elem::NONE,
                0,
                parties as u64,
            )?),
        })
    }

    /// The number of parties.
    pub fn parties(&self) -> usize {
        self.seg.param() as usize
    }

    /// How many parties wait in the current round (a snapshot).
    pub fn n_waiting(&self) -> usize {
        self.seg.u32(COUNT).load(Relaxed) as usize
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.seg.u32(BROKEN_FLAG).load(Relaxed) != 0
    }

    /// Takes the barrier's lock; a holder that died inside a barrier call breaks it.
    fn locked(&self) -> Result<robust::Held<'_>> {
        let (held, got) = robust::Held::lock(self.seg.map(), LOCK, CONTROL, 0, None, false)
            .map_err(|e| lock_error(e, "Barrier", false))?;
        if got == robust::Acquired::OwnerDied {
            self.break_round(true);
        }
        Ok(held)
    }

    /// Fails the current round's waiters (under the lock); `broken`: and stays broken.
    fn break_round(&self, broken: bool) {
        for (_, s) in slots::all(&self.seg) {
            if s.state
                .compare_exchange(WAITING, BROKEN, AcqRel, Relaxed)
                .is_ok()
            {
                futex::wake(s.state, 1);
            }
        }
        self.seg.u32(COUNT).store(0, Relaxed);
        self.seg.u32(BROKEN_FLAG).store(u32::from(broken), Relaxed);
    }

    fn wait_inner(&self, deadline: Option<Instant>) -> Result<usize> {
        let parties = self.parties();
        let held = self.locked()?;
        if self.broken() {
            return Err(broken_error());
        }
        let idx = self.seg.u32(COUNT).load(Relaxed) as usize;
        if idx >= parties || parties > MAX_PARTIES {
            self.break_round(true);
            return Err(broken_error());
        }
        if idx + 1 == parties {
            for (_, s) in slots::all(&self.seg) {
                if s.state
                    .compare_exchange(WAITING, DONE, AcqRel, Relaxed)
                    .is_ok()
                {
                    futex::wake(s.state, 1);
                }
            }
            self.seg.u32(COUNT).store(0, Relaxed);
            return Ok(idx);
        }
        let Some(i) = slots::claim(&self.seg, true) else {
            self.break_round(true);
            return Err(broken_error());
        };
        let s = slots::slot(&self.seg, i);
        s.state.store(WAITING, SeqCst);
        self.seg.u32(COUNT).store(idx as u32 + 1, Relaxed);
        drop(held);
        let mut timed_out = false;
        while s.state.load(Acquire) == WAITING {
            let passed = sleep_until(s.state, WAITING, deadline);
            if s.state.load(Acquire) != WAITING {
                break;
            }
            let held = self.locked()?;
            if passed {
                timed_out = true;
                if s.state.load(Acquire) == WAITING {
                    self.break_round(true);
                }
            } else if slots::all(&self.seg).any(|(_, o)| {
                o.state.load(Acquire) == WAITING && !robust::thread_alive(o.ident.load(Acquire))
            }) {
                self.break_round(true);
            }
            drop(held);
        }
        let state = s.state.load(Acquire);
        slots::free(&s);
        match state {
            DONE => Ok(idx),
            _ if timed_out => Err(Error::msg(
                ErrorKind::Timeout,
                "the barrier's other parties did not arrive before the deadline (the barrier \
                 is now broken)",
            )),
            _ => Err(broken_error()),
        }
    }

    /// Waits for the other parties: this party's arrival index, `0..parties`.
    ///
    /// # Errors
    /// [`ErrorKind::BrokenBarrier`] if the barrier is or becomes broken.
    pub fn wait(&self) -> Result<usize> {
        self.wait_inner(None)
    }

    /// As [`wait`](Barrier::wait), for at most `timeout`; on timeout the barrier breaks.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] for this party when time runs out; `BrokenBarrier` as for
    /// `wait`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        self.wait_inner(deadline_after(timeout))
    }

    /// As [`wait`](Barrier::wait), until `deadline` at most.
    ///
    /// # Errors
    /// As for [`wait_timeout`](Barrier::wait_timeout).
    pub fn wait_deadline(&self, deadline: Instant) -> Result<usize> {
        self.wait_inner(Some(deadline))
    }

    /// Breaks the barrier: current and later waits fail until [`reset`](Barrier::reset).
    pub fn abort(&self) {
        if let Ok(_held) = self.locked() {
            self.break_round(true);
        }
    }

    /// Makes the barrier usable again: the current round's waiters fail with `BrokenBarrier`.
    pub fn reset(&self) {
        if let Ok(_held) = self.locked() {
            self.break_round(false);
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .finish()
    }
}

impl serde::Serialize for Barrier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        super::segment::SendFd(&self.seg).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Barrier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let seg = super::segment::receive(d, &[Kind::Barrier], Elem::NONE)?;
        if !(1..=MAX_PARTIES as u64).contains(&seg.param()) {
            return crate::codec::custom(
                format!(
                    "the received Barrier handle claims {} parties (1 to {MAX_PARTIES} exist)",
                    seg.param()
                ),
                <D::Error as serde::de::Error>::custom,
            );
        }
        Ok(Barrier { seg })
    }
}
