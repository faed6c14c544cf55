//! `Condition`: waiter slots in a segment of its own, over a `Lock` or an `RLock`.

use std::fmt;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::lock::{Lock, LockGuard, RLock, RLockGuard, LOCK_KINDS};
use super::segment::{Elem, Kind, RecvFd, Segment, SendFd, MAX_SLOTS, Q0};
use super::sleep_until;
use super::slots::{self, DONE, FREE, WAITING};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::{futex, robust};
use crate::wait::deadline_after;

/// The next waiter's ticket (waiters are notified oldest first).
const TICKET: usize = Q0;

/// A condition variable shared between processes, like Python's
/// `multiprocessing.Condition`, over a [`Lock`] or an [`RLock`] (a new `RLock` by default).
///
/// [`acquire`](Condition::acquire) takes the lock and returns a [`ConditionGuard`], on which
/// `wait`, `wait_for`, `notify` and `notify_all` are called (so they are only ever called
/// with the lock held, which Python checks at run time). Waiters are notified oldest first.
///
/// **Dead waiters**: a waiter that dies while waiting is forgotten; one that dies after it was
/// notified (before it got the lock back) passes its notification on to the oldest other
/// waiter within one 50 ms tick, so `notify(n)` wakes `n` live waiters when there are. The
/// lock follows the rules of [`Lock`]/[`RLock`] (a holder that dies is reported by the next
/// guard's [`owner_died`](ConditionGuard::owner_died)). At most 120 threads can wait at
/// once ([`ErrorKind::InvalidState`] beyond).
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// use std::time::Duration;
/// let c = multiproc::sync::Condition::new()?;
/// let mut g = c.acquire()?;
/// assert!(g.wait_timeout(Duration::from_millis(1)).unwrap_err().is_timeout());
/// g.notify_all(); // nobody waits: nothing happens
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Condition {
    seg: Arc<Segment>,
    lock: CondLock,
}

#[derive(Clone)]
enum CondLock {
    Lock(Lock),
    RLock(RLock),
}

/// Holds a [`Condition`]'s lock; releases it on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    held: Held<'a>,
    died: bool,
}

enum Held<'a> {
    /// `None` only after a failed re-acquisition in `wait`.
    Lock(Option<LockGuard<'a>>),
    /// Kept for its drop (which releases one level).
    RLock(#[allow(dead_code)] RLockGuard<'a>),
}

impl Condition {
    /// A condition over a new [`RLock`], as Python's default.
    ///
    /// # Errors
    /// An `Io` error if the shared memory cannot be created.
    pub fn new() -> Result<Condition> {
        Condition::with_rlock(RLock::new()?)
    }

    /// A condition over `lock` (which other code may also acquire directly).
    ///
    /// # Errors
    /// As for [`new`](Condition::new).
    pub fn with_lock(lock: Lock) -> Result<Condition> {
        Condition::make(CondLock::Lock(lock))
    }

    /// A condition over `lock`, a reentrant lock: `wait` releases every level this thread
    /// holds and takes them all back.
    ///
    /// # Errors
    /// As for [`new`](Condition::new).
    pub fn with_rlock(lock: RLock) -> Result<Condition> {
        Condition::make(CondLock::RLock(lock))
    }

    fn make(lock: CondLock) -> Result<Condition> {
        Ok(Condition {
            seg: Arc::new(Segment::create(Kind::Condition, Elem::NONE, 0, 0)?),
            lock,
        })
    }

    fn lock(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<ConditionGuard<'_>> {
        let (held, died) = match &self.lock {
            CondLock::Lock(l) => {
                let g = if nonblocking {
                    l.try_acquire()
                } else {
                    match deadline {
                        Some(d) => l.acquire_deadline(d),
                        None => l.acquire(),
                    }
                }?;
                let died = g.owner_died();
                (Held::Lock(Some(g)), died)
            }
            CondLock::RLock(l) => {
                let g = if nonblocking {
                    l.try_acquire()
                } else {
                    match deadline {
                        Some(d) => l.acquire_deadline(d),
                        None => l.acquire(),
                    }
                }?;
                let died = g.owner_died();
                (Held::RLock(g), died)
            }
        };
        Ok(ConditionGuard {
            cond: self,
            held,
            died,
        })
    }

    /// Acquires the underlying lock.
    ///
    /// # Errors
    /// As for [`Lock::acquire`] / [`RLock::acquire`].
    pub fn acquire(&self) -> Result<ConditionGuard<'_>> {
        self.lock(None, false)
    }

    /// Acquires the underlying lock if it is free.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] if another thread holds it.
    pub fn try_acquire(&self) -> Result<ConditionGuard<'_>> {
        self.lock(None, true)
    }

    /// Acquires the underlying lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if it is still held then.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<ConditionGuard<'_>> {
        match deadline_after(timeout) {
            Some(d) => self.lock(Some(d), false),
            None => self.lock(None, false),
        }
    }

    /// Acquires the underlying lock, waiting until `deadline` at most.
    ///
    /// # Errors
    /// As for [`acquire_timeout`](Condition::acquire_timeout).
    pub fn acquire_deadline(&self, deadline: Instant) -> Result<ConditionGuard<'_>> {
        self.lock(Some(deadline), false)
    }

    /// Passes notifications on from waiters that died after being notified, and forgets
    /// waiters that died waiting (a tick's repair; `mine` is the caller's slot).
    fn repair(&self, mine: usize) {
        for (j, s) in slots::all(&self.seg) {
            let id = s.ident.load(Acquire);
            if j == mine || id == 0 || robust::thread_alive(id) {
                continue;
            }
            let st = s.state.load(Acquire);
            if s.state.compare_exchange(st, FREE, AcqRel, Relaxed).is_ok() {
                let _ = s.ident.compare_exchange(id, 0, Release, Relaxed);
                if st == DONE {
                    self.notify_n(1);
                }
            }
        }
    }

    /// Notifies up to `n` waiters, oldest first.
    fn notify_n(&self, n: usize) {
        let mut woken = 0;
        while woken < n {
            let oldest = slots::all(&self.seg)
                .filter(|(_, s)| s.state.load(Acquire) == WAITING)
                .min_by_key(|(_, s)| s.ticket.load(Relaxed));
            let Some((_, s)) = oldest else { break };
            if s.state
                .compare_exchange(WAITING, DONE, AcqRel, Relaxed)
                .is_ok()
            {
                futex::wake(s.state, 1);
                woken += 1;
            }
        }
    }
}

impl ConditionGuard<'_> {
    /// Whether the lock's previous holder died holding it (at `acquire`, or when `wait` took
    /// the lock back): the state it protects may be half-updated.
    pub fn owner_died(&self) -> bool {
        self.died
    }

    /// Releases the lock (every level of an RLock): the levels to restore.
    fn release(&mut self) -> u32 {
        match &mut self.held {
            Held::Lock(g) => {
                drop(g.take());
                1
            }
            Held::RLock(_) => match &self.cond.lock {
                CondLock::RLock(l) => l.release_all(),
                CondLock::Lock(_) => unreachable!("an RLock guard comes from an RLock"),
            },
        }
    }

    /// Takes the lock back after `release`.
    fn reacquire(&mut self, levels: u32) -> Result<()> {
        let cond = self.cond;
        self.died = match (&mut self.held, &cond.lock) {
            (Held::Lock(g), CondLock::Lock(l)) => {
                let new = l.acquire()?;
                let died = new.owner_died();
                *g = Some(new);
                died
            }
            (Held::RLock(_), CondLock::RLock(l)) => l.restore(levels)?,
            _ => unreachable!("the guard matches the condition's lock"),
        };
        Ok(())
    }

    fn check_held(&self) -> Result<()> {
        match &self.held {
            Held::Lock(None) => Err(Error::msg(
                ErrorKind::InvalidState,
                "this condition guard lost its lock when a wait failed to take it back",
            )),
            _ => Ok(()),
        }
    }

    fn wait_inner(&mut self, deadline: Option<Instant>) -> Result<()> {
        self.check_held()?;
        let seg = &self.cond.seg;
        let i = slots::claim(seg, false).ok_or_else(|| {
            Error::msg(
                ErrorKind::InvalidState,
                format!("more than {MAX_SLOTS} threads wait on this condition"),
            )
        })?;
        let s = slots::slot(seg, i);
        s.ticket
            .store(seg.u64(TICKET).fetch_add(1, Relaxed), Relaxed);
        s.state.store(WAITING, SeqCst);
        let levels = self.release();
        let mut timed_out = false;
        while s.state.load(Acquire) == WAITING {
            let passed = sleep_until(s.state, WAITING, deadline);
            if s.state.load(Acquire) != WAITING {
                break;
            }
            if passed {
                timed_out = true;
                break;
            }
            self.cond.repair(i);
        }
        let relocked = self.reacquire(levels);
        // A notification that arrived after the deadline still counts.
        let notified = !timed_out
            || s.state
                .compare_exchange(WAITING, FREE, AcqRel, Acquire)
                .is_err();
        slots::free(&s);
        relocked?;
        if notified {
            Ok(())
        } else {
            Err(Error::msg(
                ErrorKind::Timeout,
                "the condition was not notified before the deadline",
            ))
        }
    }

    /// Releases the lock, waits to be notified, and takes the lock back.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidState`] when 120 threads wait already.
    pub fn wait(&mut self) -> Result<()> {
        self.wait_inner(None)
    }

    /// As [`wait`](ConditionGuard::wait), for at most `timeout`; the lock is held again either
    /// way.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if no notification came.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.wait_inner(deadline_after(timeout))
    }

    /// As [`wait`](ConditionGuard::wait), until `deadline` at most.
    ///
    /// # Errors
    /// As for [`wait_timeout`](ConditionGuard::wait_timeout).
    pub fn wait_deadline(&mut self, deadline: Instant) -> Result<()> {
        self.wait_inner(Some(deadline))
    }

    fn wait_for_inner(
        &mut self,
        mut predicate: impl FnMut() -> bool,
        deadline: Option<Instant>,
    ) -> Result<()> {
        loop {
            if predicate() {
                return Ok(());
            }
            match self.wait_inner(deadline) {
                Err(e) if e.is_timeout() => {
                    return if predicate() { Ok(()) } else { Err(e) };
                }
                r => r?,
            }
        }
    }

    /// Waits until `predicate` (called with the lock held) returns true.
    ///
    /// # Errors
    /// As for [`wait`](ConditionGuard::wait).
    pub fn wait_for(&mut self, predicate: impl FnMut() -> bool) -> Result<()> {
        self.wait_for_inner(predicate, None)
    }

    /// Waits at most `timeout` until `predicate` returns true.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if it is still false at the deadline.
    pub fn wait_for_timeout(
        &mut self,
        predicate: impl FnMut() -> bool,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_for_inner(predicate, deadline_after(timeout))
    }

    /// Waits until `deadline` at most until `predicate` returns true.
    ///
    /// # Errors
    /// As for [`wait_for_timeout`](ConditionGuard::wait_for_timeout).
    pub fn wait_for_deadline(
        &mut self,
        predicate: impl FnMut() -> bool,
        deadline: Instant,
    ) -> Result<()> {
        self.wait_for_inner(predicate, Some(deadline))
    }

    /// Wakes up to `n` waiters, oldest first.
    pub fn notify(&self, n: usize) {
        self.cond.notify_n(n);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.cond.notify_n(usize::MAX);
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard")
            .field("owner_died", &self.died)
            .finish()
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let over = match self.lock {
            CondLock::Lock(_) => "Lock",
            CondLock::RLock(_) => "RLock",
        };
        f.debug_struct("Condition")
            .field("lock", &over)
            .finish_non_exhaustive()
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let (reentrant, lock) = match &self.lock {
            CondLock::Lock(l) => (false, l.segment()),
            CondLock::RLock(l) => (true, l.segment()),
        };
        (SendFd(&self.seg), reentrant, SendFd(lock)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (cond, reentrant, lock) = <(RecvFd, bool, RecvFd)>::deserialize(d)?;
        let seg = cond.open::<D::Error>(&[Kind::Condition], Elem::NONE)?;
        let lock = if reentrant {
            let seg = lock.open::<D::Error>(&[Kind::RLock], Elem::NONE)?;
            CondLock::RLock(RLock::from_segment(seg))
        } else {
            CondLock::Lock(Lock::on(lock.open::<D::Error>(&LOCK_KINDS, Elem::NONE)?))
        };
        Ok(Condition { seg, lock })
    }
}
