//! [`SimpleQueue`]: the lean flavour.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ring::{Kind, DEFAULT_CAPACITY};
use super::{handle_serde, Handle};
use crate::error::{PutError, Result};

/// An unbounded queue with only `put`, `get`, `is_empty` and `close`, like Python's
/// `multiprocessing.SimpleQueue`.
///
/// It is the same shared-memory queue as [`Queue`](crate::Queue) (same speed, same crash
/// safety, same memory behaviour: a 1 GiB byte ring of address space, `put` blocks only
/// when that much is queued) with a smaller surface; use a `Queue` for timeouts, `try_`
/// calls or a `maxsize`.
///
/// ```
/// use multiproc::{Process, SimpleQueue};
///
/// let q: SimpleQueue<u64> = SimpleQueue::new()?;
/// let p = Process::spawn(q.clone(), |q| {
///     for i in 0..3 {
///         q.put(i).unwrap();
///     }
/// })?;
/// p.join()?; // no need to drain first
/// assert_eq!((q.get()?, q.get()?, q.get()?), (0, 1, 2));
/// assert!(q.is_empty());
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// Dropping a handle unmaps the queue in this process; the memory is freed with the last
/// handle in any process.
pub struct SimpleQueue<T> {
    pub(super) h: Handle,
    pub(super) _item: PhantomData<fn(T) -> T>,
}

impl<T> SimpleQueue<T> {
    /// A new, empty queue.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created or
    /// mapped.
    pub fn new() -> Result<Self> {
        Ok(SimpleQueue {
            h: Handle::create::<T>(Kind::Simple, DEFAULT_CAPACITY, u64::MAX)?,
            _item: PhantomData,
        })
    }

    /// Whether no item is queued; approximate while others use the queue.
    pub fn is_empty(&self) -> bool {
        self.h.len() == 0
    }

    /// Closes this handle: its `put` and `get` then fail with
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed). Other handles are not affected.
    pub fn close(&self) {
        self.h.close()
    }
}

impl<T: Serialize> SimpleQueue<T> {
    /// Puts an item; returns once it is in shared memory.
    ///
    /// # Errors
    /// As [`Queue::put`](crate::Queue::put); the item comes back in the error.
    pub fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.h.put(item, None, false)
    }
}

impl<T: DeserializeOwned> SimpleQueue<T> {
    /// Takes the next item, blocking until there is one.
    ///
    /// # Errors
    /// As [`Queue::get`](crate::Queue::get).
    pub fn get(&self) -> Result<T> {
        self.h.get(None, false)
    }
}

impl<T> Clone for SimpleQueue<T> {
    /// Another handle on the same queue.
    fn clone(&self) -> Self {
        SimpleQueue {
            h: self.h.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.h.debug("SimpleQueue", f)
    }
}

handle_serde!(SimpleQueue, super::ring::Kind::Simple);
