//! `Lock` and `RLock`: the robust lock of `sys::robust` in a segment of their own.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::segment::{Elem, Kind, Segment, CONTROL, LOCK, W0};
use super::{handle_serde, lock_error};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::robust;
use crate::wait::deadline_after;

/// The kinds of segment whose lock a [`Lock`] handle may name (a `Value`'s lock is a `Lock`).
pub(super) const LOCK_KINDS: [Kind; 3] = [Kind::Lock, Kind::Value, Kind::Array];

/// A mutual-exclusion lock shared between processes, like Python's
/// `multiprocessing.Lock`, that survives the death of its holder.
///
/// A `Lock` is a handle: clone it, or pass it to a child as an argument (or inside a message,
/// a queue item, a pool task); every copy names the same lock. [`acquire`](Lock::acquire)
/// returns a guard that releases the lock when dropped.
///
/// **A holder that dies** (killed by any signal, `SIGKILL` included, or exiting without
/// releasing) does not block anyone for long: within one 50 ms tick the next acquirer takes
/// the lock over, and its guard says so once through [`LockGuard::owner_died`], so the program
/// can repair whatever the dead holder left half-done.
///
/// Unlike Python's, the lock belongs to the thread that acquired it (only its guard releases
/// it), and acquiring it again in the thread that holds it is an error
/// ([`ErrorKind::InvalidState`]) rather than a deadlock. Use an [`RLock`] to re-enter.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// use multiproc::sync::Lock;
/// let lock = Lock::new()?;
/// {
///     let guard = lock.acquire()?;
///     assert!(!guard.owner_died());
///     assert_eq!(lock.try_acquire().unwrap_err().kind(), multiproc::ErrorKind::InvalidState);
/// }
/// assert!(lock.try_acquire().is_ok());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lock {
    seg: Arc<Segment>,
}

/// Holds a [`Lock`]; releases it on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    _held: robust::Held<'a>,
    died: bool,
}

impl LockGuard<'_> {
    /// Whether the previous holder died holding the lock (so the state it protects may be
    /// half-updated). Only the guard of the acquisition that took the lock over says so.
    pub fn owner_died(&self) -> bool {
        self.died
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("owner_died", &self.died)
            .finish()
    }
}

impl Lock {
    /// Creates an unlocked lock.
    ///
    /// # Errors
    /// An `Io` error if the shared memory cannot be created.
    pub fn new() -> Result<Lock> {
        Ok(Lock {
            seg: Arc::new(Segment::create(Kind::Lock, Elem::NONE, 0, 0)?),
        })
    }

    /// The lock at `LOCK` of another primitive's segment (a `Value`'s).
    pub(crate) fn on(seg: Arc<Segment>) -> Lock {
        Lock { seg }
    }

    pub(super) fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    fn lock(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<LockGuard<'_>> {
        let (held, got) =
            robust::Held::lock(self.seg.map(), LOCK, CONTROL, 0, deadline, nonblocking)
                .map_err(|e| lock_error(e, "Lock", nonblocking))?;
        Ok(LockGuard {
            _held: held,
            died: got == robust::Acquired::OwnerDied,
        })
    }

    /// Acquires the lock, waiting as long as it takes.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] if this thread holds it already.
    pub fn acquire(&self) -> Result<LockGuard<'_>> {
        self.lock(None, false)
    }

    /// Acquires the lock if nobody holds it (or its holder is dead).
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] if a live thread holds it; `InvalidState` as for `acquire`.
    pub fn try_acquire(&self) -> Result<LockGuard<'_>> {
        self.lock(None, true)
    }

    /// Acquires the lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if it is still held then; `InvalidState` as for `acquire`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.lock(deadline_after(timeout), false)
    }

    /// Acquires the lock, waiting until `deadline` at most.
    ///
    /// # Errors
    /// As for [`acquire_timeout`](Lock::acquire_timeout).
    pub fn acquire_deadline(&self, deadline: Instant) -> Result<LockGuard<'_>> {
        self.lock(Some(deadline), false)
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").finish_non_exhaustive()
    }
}

handle_serde!(Lock, &LOCK_KINDS);

/// A reentrant lock shared between processes, like Python's `multiprocessing.RLock`: the
/// thread that holds it may acquire it again; it is released when every guard is dropped.
///
/// The owner is a thread of a process (its kernel thread id and start time, so a reused id is
/// not mistaken for the owner), with a recursion count kept beside the lock. A holder that
/// dies is handled as for [`Lock`]: the next acquirer takes it over within a tick and its
/// guard reports [`RLockGuard::owner_died`]; the dead holder's recursion is forgotten.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let r = multiproc::sync::RLock::new()?;
/// let outer = r.acquire()?;
/// let inner = r.acquire()?; // the same thread: no deadlock
/// drop(inner);
/// drop(outer);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RLock {
    seg: Arc<Segment>,
}

/// The recursion count (written only by the holder).
const COUNT: usize = W0;

/// Holds one level of an [`RLock`]; releases that level on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RLockGuard<'a> {
    rlock: &'a RLock,
    died: bool,
}

impl RLockGuard<'_> {
    /// Whether the previous holder died holding the lock; only the guard of the acquisition
    /// that took it over says so.
    pub fn owner_died(&self) -> bool {
        self.died
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard")
            .field("owner_died", &self.died)
            .finish()
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        self.rlock.release_one();
    }
}

impl RLock {
    /// Creates an unlocked reentrant lock.
    ///
    /// # Errors
    /// An `Io` error if the shared memory cannot be created.
    pub fn new() -> Result<RLock> {
        Ok(RLock {
            seg: Arc::new(Segment::create(Kind::RLock, Elem::NONE, 0, 0)?),
        })
    }

    pub(super) fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    pub(super) fn from_segment(seg: Arc<Segment>) -> RLock {
        RLock { seg }
    }

    /// Takes the lock (no recursion): whether its owner had died.
    pub(super) fn take(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<bool> {
        let map = self.seg.map();
        let got = if nonblocking {
            robust::try_lock_or_take_over(map, LOCK)
                .ok_or_else(|| std::io::ErrorKind::TimedOut.into())
        } else {
            robust::lock_spinning(map, LOCK, deadline)
        }
        .map_err(|e| lock_error(e, "RLock", nonblocking))?;
        Ok(got == robust::Acquired::OwnerDied)
    }

    fn lock(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<RLockGuard<'_>> {
        let count = self.seg.u32(COUNT);
        if robust::held_by_me(self.seg.map(), LOCK) {
            let c = count.load(std::sync::atomic::Ordering::Relaxed);
            if c == u32::MAX {
                return Err(Error::msg(
                    ErrorKind::InvalidState,
                    "an RLock acquired 2^32 - 1 times by one thread",
                ));
            }
            count.store(c.max(1) + 1, std::sync::atomic::Ordering::Relaxed);
            return Ok(RLockGuard {
                rlock: self,
                died: false,
            });
        }
        let died = self.take(deadline, nonblocking)?;
        count.store(1, std::sync::atomic::Ordering::Relaxed);
        Ok(RLockGuard { rlock: self, died })
    }

    /// Releases one level (the holder only).
    fn release_one(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let count = self.seg.u32(COUNT);
        let c = count.load(Relaxed);
        if c > 1 {
            count.store(c - 1, Relaxed);
        } else {
            count.store(0, Relaxed);
            let _ = robust::unlock(self.seg.map(), LOCK);
        }
    }

    /// Releases every level (for a Condition's wait): the count to restore.
    pub(super) fn release_all(&self) -> u32 {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.seg.u32(COUNT).swap(0, Relaxed).max(1);
        let _ = robust::unlock(self.seg.map(), LOCK);
        c
    }

    /// Re-takes the lock after `release_all` with `count` levels: whether its owner had died.
    pub(super) fn restore(&self, count: u32) -> Result<bool> {
        let died = self.take(None, false)?;
        self.seg
            .u32(COUNT)
            .store(count, std::sync::atomic::Ordering::Relaxed);
        Ok(died)
    }

    /// Acquires the lock (again, if this thread holds it), waiting as long as it takes.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] after 2³² − 1 nested acquisitions.
    pub fn acquire(&self) -> Result<RLockGuard<'_>> {
        self.lock(None, false)
    }

    /// Acquires the lock if this thread holds it or nobody (alive) does.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] if another live thread holds it.
    pub fn try_acquire(&self) -> Result<RLockGuard<'_>> {
        self.lock(None, true)
    }

    /// Acquires the lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if another thread still holds it then.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>> {
        self.lock(deadline_after(timeout), false)
    }

    /// Acquires the lock, waiting until `deadline` at most.
    ///
    /// # Errors
    /// As for [`acquire_timeout`](RLock::acquire_timeout).
    pub fn acquire_deadline(&self, deadline: Instant) -> Result<RLockGuard<'_>> {
        self.lock(Some(deadline), false)
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock").finish_non_exhaustive()
    }
}

handle_serde!(RLock, &[Kind::RLock]);
