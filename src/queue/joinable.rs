//! [`JoinableQueue`]: a queue that counts unfinished tasks.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use super::methods::{get_methods, put_methods, state_methods};
use super::{handle_serde, Handle, QueueBuilder};
use crate::error::Result;
use crate::wait::deadline_after;

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

    /// As [`join`](JoinableQueue::join), waiting at most `timeout` (`Duration::MAX`: no
    /// limit).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if tasks are still unfinished.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.h.ring().join(deadline_after(timeout))
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
}

state_methods!(JoinableQueue);
put_methods!(JoinableQueue);
get_methods!(JoinableQueue);

handle_serde!(JoinableQueue, super::ring::Kind::Joinable);
