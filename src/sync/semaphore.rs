//! `Semaphore` and `BoundedSemaphore`: a count in a futex word.

use std::fmt;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::segment::{Elem, Kind, Segment, W0};
use super::sleep_until;
use crate::error::{Error, ErrorKind, Result};
use crate::wait::deadline_after;

/// The count (futex word).
const VALUE: usize = W0;
/// How many threads may sleep on `VALUE` (a dead sleeper only costs a spare wake).
const WAITERS: usize = W0 + 4;

/// A counting semaphore shared between processes, like Python's `multiprocessing.Semaphore`.
///
/// [`acquire`](Semaphore::acquire) takes one unit, waiting while the count is zero, and
/// returns a guard that gives it back when dropped (or [`SemaphoreGuard::forget`] keeps it
/// taken, for a unit another process will [`release`](Semaphore::release)).
///
/// **A process that dies holding units does not give them back**: the count stays lower by
/// the units it had taken (a semaphore does not know who took what, so nobody can tell its
/// units from ones handed on on purpose). Size counts for live processes, or re-create the
/// semaphore after a crash. A process that dies while *waiting* takes nothing.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let s = multiproc::sync::Semaphore::new(2)?;
/// let a = s.acquire()?;
/// let b = s.acquire()?;
/// assert!(s.try_acquire().unwrap_err().is_would_block());
/// drop(a);
/// assert_eq!(s.get_value(), 1);
/// # drop(b); Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    seg: Arc<Segment>,
    /// The bound (`u32::MAX` for a plain semaphore).
    bound: u32,
}

/// One unit of a [`Semaphore`] or [`BoundedSemaphore`]; released on drop.
#[must_use = "the unit is released when the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: Option<&'a Semaphore>,
}

impl SemaphoreGuard<'_> {
    /// Keeps the unit taken: nothing is released on drop.
    pub fn forget(mut self) {
        self.sem = None;
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.sem {
            // Over the bound only if somebody released units they had not taken.
            let _ = s.release();
        }
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard").finish_non_exhaustive()
    }
}

impl Semaphore {
    /// Creates a semaphore with `value` units.
    ///
    /// # Errors
    /// An `Io` error if the shared memory cannot be created; `InvalidState` for a `value` of
    /// `u32::MAX` (the largest count is `u32::MAX - 1`).
    pub fn new(value: u32) -> Result<Semaphore> {
        Semaphore::make(Kind::Semaphore, value, u32::MAX)
    }

    fn make(kind: Kind, value: u32, bound: u32) -> Result<Semaphore> {
        if value == u32::MAX {
            return Err(Error::msg(
                ErrorKind::InvalidState,
                "a semaphore counts up to u32::MAX - 1",
            ));
        }
        let seg = Segment::create(kind, Elem::NONE, 0, u64::from(bound))?;
        seg.u32(VALUE).store(value, Release);
        Ok(Semaphore {
            seg: Arc::new(seg),
            bound,
        })
    }

    fn from_segment(seg: Arc<Segment>) -> Semaphore {
        let bound = u32::try_from(seg.param()).unwrap_or(u32::MAX);
        Semaphore { seg, bound }
    }

    fn take(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<SemaphoreGuard<'_>> {
        let (value, waiters) = (self.seg.u32(VALUE), self.seg.u32(WAITERS));
        loop {
            let v = value.load(Relaxed);
            if v > 0 {
                if value
                    .compare_exchange_weak(v, v - 1, Acquire, Relaxed)
                    .is_ok()
                {
                    return Ok(SemaphoreGuard { sem: Some(self) });
                }
                continue;
            }
            if nonblocking {
                return Err(Error::msg(
                    ErrorKind::WouldBlock,
                    "the semaphore's count is zero",
                ));
            }
            waiters.fetch_add(1, SeqCst);
            // Ticks: a sleeper woken for a unit that then dies passes the wake to nobody, so
            // the others look again at each tick.
            let timed_out = sleep_until(value, 0, deadline);
            waiters.fetch_sub(1, SeqCst);
            if timed_out && value.load(Relaxed) == 0 {
                return Err(Error::msg(
                    ErrorKind::Timeout,
                    "the semaphore's count was still zero at the deadline",
                ));
            }
        }
    }

    /// Takes one unit, waiting while the count is zero.
    ///
    /// # Errors
    /// None in practice (the signature matches the timed calls).
    pub fn acquire(&self) -> Result<SemaphoreGuard<'_>> {
        self.take(None, false)
    }

    /// Takes one unit if the count is above zero.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] if it is zero.
    pub fn try_acquire(&self) -> Result<SemaphoreGuard<'_>> {
        self.take(None, true)
    }

    /// Takes one unit, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if the count stayed zero.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>> {
        self.take(deadline_after(timeout), false)
    }

    /// Takes one unit, waiting until `deadline` at most.
    ///
    /// # Errors
    /// As for [`acquire_timeout`](Semaphore::acquire_timeout).
    pub fn acquire_deadline(&self, deadline: Instant) -> Result<SemaphoreGuard<'_>> {
        self.take(Some(deadline), false)
    }

    /// Adds one unit (whoever took it), waking a waiter.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] if the count is at its bound (a [`BoundedSemaphore`]'s
    /// initial value, or `u32::MAX - 1`): nothing is added.
    pub fn release(&self) -> Result<()> {
        let bound = self.bound.min(u32::MAX - 1);
        self.seg
            .u32(VALUE)
            .fetch_update(SeqCst, Relaxed, |v| (v < bound).then_some(v + 1))
            .map_err(|v| {
                Error::msg(
                    ErrorKind::InvalidState,
                    format!(
                        "semaphore released too many times (its count is {v}, the bound {bound})"
                    ),
                )
            })?;
        if self.seg.u32(WAITERS).load(SeqCst) > 0 {
            crate::sys::futex::wake(self.seg.u32(VALUE), 1);
        }
        Ok(())
    }

    /// The current count (a snapshot: other processes may change it at once).
    pub fn get_value(&self) -> u32 {
        self.seg.u32(VALUE).load(Relaxed)
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.get_value())
            .finish()
    }
}

impl serde::Serialize for Semaphore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        super::segment::SendFd(&self.seg).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Semaphore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        super::segment::receive(d, &[Kind::Semaphore], Elem::NONE).map(Semaphore::from_segment)
    }
}

/// A [`Semaphore`] whose count may not be released above its initial value, like Python's
/// `multiprocessing.BoundedSemaphore`: [`release`](Semaphore::release) past the bound is an
/// [`ErrorKind::InvalidState`] error. It derefs to [`Semaphore`] for everything else.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let s = multiproc::sync::BoundedSemaphore::new(1)?;
/// assert_eq!(s.release().unwrap_err().kind(), multiproc::ErrorKind::InvalidState);
/// s.acquire()?.forget();
/// s.release()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoundedSemaphore {
    sem: Semaphore,
}

impl BoundedSemaphore {
    /// Creates a semaphore with `value` units, which is also its bound.
    ///
    /// # Errors
    /// As for [`Semaphore::new`].
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            sem: Semaphore::make(Kind::BoundedSemaphore, value, value)?,
        })
    }

    /// The bound (the initial value).
    pub fn bound(&self) -> u32 {
        self.sem.bound
    }
}

impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;
    fn deref(&self) -> &Semaphore {
        &self.sem
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore")
            .field("value", &self.get_value())
            .field("bound", &self.sem.bound)
            .finish()
    }
}

impl serde::Serialize for BoundedSemaphore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.sem.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        super::segment::receive(d, &[Kind::BoundedSemaphore], Elem::NONE).map(|seg| {
            BoundedSemaphore {
                sem: Semaphore::from_segment(seg),
            }
        })
    }
}
