//! [`JoinableQueue`]: a queue that counts unfinished tasks.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{deadline_after, handle_serde, Handle, QueueBuilder};
use crate::error::{PutError, Result};

/// A [`Queue`](crate::Queue) whose consumers report when they have *finished* each item,
/// so that a producer can wait for all the work to be done, like Python's
/// `multiprocessing.JoinableQueue`.
///
/// Every [`put`](JoinableQueue::put) adds an unfinished task; every
/// [`task_done`](JoinableQueue::task_done) (called by whoever processed an item) removes one;
/// [`join`](JoinableQueue::join) blocks until none is left. The count lives in the queue's
/// shared memory, so any process can do any of the three.
///
/// ```
/// use multiproc::{JoinableQueue, Process};
///
/// let q: JoinableQueue<u64> = JoinableQueue::new()?;
/// let worker = Process::spawn(q.clone(), |q| loop {
///     let n = q.get().unwrap();
///     // ... work on n ...
///     q.task_done().unwrap();
///     if n == 9 {
///         break;
///     }
/// })?;
/// for n in 0..10 {
///     q.put(n)?;
/// }
/// q.join()?; // all ten processed
/// worker.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// Everything said about [`Queue`](crate::Queue) (capacity, memory, crash safety, dropping)
/// holds here. About crashes in particular: a consumer killed after `get` and before
/// `task_done` leaves its task unfinished forever, so `join` would wait forever; use
/// [`join_timeout`](JoinableQueue::join_timeout) where consumers may die. A producer killed
/// inside `put` never leaves a task counted for an item that was not delivered.
pub struct JoinableQueue<T> {
    pub(super) h: Handle,
    pub(super) _item: PhantomData<fn(T) -> T>,
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue. For a byte capacity use
    /// `Queue::builder()...build_joinable()`.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    pub fn new() -> Result<Self> {
        QueueBuilder::new().build_joinable()
    }

    /// A joinable queue holding at most `maxsize` items.
    ///
    /// # Errors
    /// As [`Queue::bounded`](crate::Queue::bounded).
    pub fn bounded(maxsize: usize) -> Result<Self> {
        QueueBuilder::new().maxsize(maxsize).build_joinable()
    }

    /// Marks one task finished (`task_done()`): call it once per item taken, after
    /// processing it.
    ///
    /// # Errors
    /// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) if there is no unfinished task
    /// (Python raises `ValueError`).
    pub fn task_done(&self) -> Result<()> {
        self.h.ring().task_done()
    }

    /// Blocks until every item ever put has been marked done (`join()`).
    ///
    /// # Errors
    /// Only on operating-system failures.
    pub fn join(&self) -> Result<()> {
        self.h.ring().join(None)
    }

    /// As [`join`](JoinableQueue::join), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if tasks are still unfinished.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.h.ring().join(Some(deadline_after(timeout)))
    }

    /// As [`join`](JoinableQueue::join), waiting until `deadline`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if tasks are still unfinished.
    pub fn join_deadline(&self, deadline: Instant) -> Result<()> {
        self.h.ring().join(Some(deadline))
    }

    /// Items put and not yet marked done; approximate while others use the queue.
    pub fn unfinished_tasks(&self) -> usize {
        usize::try_from(self.h.ring().unfinished()).unwrap_or(usize::MAX)
    }

    /// As [`Queue::len`](crate::Queue::len).
    pub fn len(&self) -> usize {
        self.h.len()
    }

    /// As [`Queue::is_empty`](crate::Queue::is_empty).
    pub fn is_empty(&self) -> bool {
        self.h.len() == 0
    }

    /// As [`Queue::is_full`](crate::Queue::is_full).
    pub fn is_full(&self) -> bool {
        self.h.is_full()
    }

    /// As [`Queue::maxsize`](crate::Queue::maxsize).
    pub fn maxsize(&self) -> Option<usize> {
        self.h.maxsize()
    }

    /// As [`Queue::close`](crate::Queue::close).
    pub fn close(&self) {
        self.h.close()
    }

    /// As [`Queue::is_closed`](crate::Queue::is_closed).
    pub fn is_closed(&self) -> bool {
        self.h.is_closed()
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// Puts an item (one more unfinished task); as [`Queue::put`](crate::Queue::put).
    ///
    /// # Errors
    /// As [`Queue::put`](crate::Queue::put); the item comes back in the error.
    pub fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.h.put(item, None, false)
    }

    /// As [`Queue::try_put`](crate::Queue::try_put).
    ///
    /// # Errors
    /// As [`Queue::try_put`](crate::Queue::try_put).
    pub fn try_put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.h.put(item, Some(Instant::now()), true)
    }

    /// As [`Queue::put_timeout`](crate::Queue::put_timeout).
    ///
    /// # Errors
    /// As [`Queue::put_timeout`](crate::Queue::put_timeout).
    pub fn put_timeout(&self, item: T, timeout: Duration) -> std::result::Result<(), PutError<T>> {
        self.h.put(item, Some(deadline_after(timeout)), false)
    }

    /// As [`Queue::put_deadline`](crate::Queue::put_deadline).
    ///
    /// # Errors
    /// As [`Queue::put_deadline`](crate::Queue::put_deadline).
    pub fn put_deadline(&self, item: T, deadline: Instant) -> std::result::Result<(), PutError<T>> {
        self.h.put(item, Some(deadline), false)
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// As [`Queue::get`](crate::Queue::get).
    ///
    /// # Errors
    /// As [`Queue::get`](crate::Queue::get).
    pub fn get(&self) -> Result<T> {
        self.h.get(None, false)
    }

    /// As [`Queue::try_get`](crate::Queue::try_get).
    ///
    /// # Errors
    /// As [`Queue::try_get`](crate::Queue::try_get).
    pub fn try_get(&self) -> Result<Option<T>> {
        self.h.try_get()
    }

    /// As [`Queue::get_timeout`](crate::Queue::get_timeout).
    ///
    /// # Errors
    /// As [`Queue::get_timeout`](crate::Queue::get_timeout).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.h.get(Some(deadline_after(timeout)), false)
    }

    /// As [`Queue::get_deadline`](crate::Queue::get_deadline).
    ///
    /// # Errors
    /// As [`Queue::get_deadline`](crate::Queue::get_deadline).
    pub fn get_deadline(&self, deadline: Instant) -> Result<T> {
        self.h.get(Some(deadline), false)
    }
}

impl<T> Clone for JoinableQueue<T> {
    /// Another handle on the same queue (open even if this one was closed).
    fn clone(&self) -> Self {
        JoinableQueue {
            h: self.h.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.h.debug("JoinableQueue", f)
    }
}

handle_serde!(JoinableQueue, super::ring::Kind::Joinable);
