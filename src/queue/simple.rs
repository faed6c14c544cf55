//! [`SimpleQueue`]: the lean flavour.

use std::marker::PhantomData;

use super::methods::{get_methods, put_methods, state_methods};
use super::ring::{Kind, DEFAULT_CAPACITY};
use super::{handle_serde, Handle};
use crate::error::Result;

/// An unbounded queue, like Python's `multiprocessing.SimpleQueue`.
///
/// It is the same shared-memory queue as [`Queue`](crate::Queue) (same speed, same crash
/// safety, same memory behaviour: a 1 GiB byte ring of address space, `put` blocks only
/// when that much is queued) and has the same methods; it is created without settings (no
/// `maxsize`, the default byte ring), and a handle of one flavour is never received as the
/// other.
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
/// assert!(q.try_get().unwrap_err().is_would_block());
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
}

state_methods!(SimpleQueue);
put_methods!(SimpleQueue);
get_methods!(SimpleQueue);

handle_serde!(SimpleQueue, super::ring::Kind::Simple);
