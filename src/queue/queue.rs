//! [`Queue`]: many producers, many consumers, in any processes.

use std::fmt;
use std::marker::PhantomData;

use super::methods::{get_methods, put_methods, state_methods};
use super::ring::{Kind, DEFAULT_CAPACITY, MAX_CAPACITY, MIN_CAPACITY};
use super::{handle_serde, Handle, JoinableQueue};
use crate::error::{Error, ErrorKind, Result};

/// A first-in, first-out queue shared by processes, like Python's `multiprocessing.Queue`.
///
/// Any number of processes put and get; each item goes to exactly one getter. Items are any
/// serde type `T`; a `Queue` is a handle that you clone, pass to a child as an argument (any
/// start method) or send inside a [`Connection`](crate::Connection) message.
///
/// ```
/// use multiproc::{Process, Queue};
///
/// let q: Queue<String> = Queue::new()?;
/// let p = Process::spawn(q.clone(), |q| {
///     q.put("hello from the child".to_string()).unwrap();
/// })?;
/// assert_eq!(q.get()?, "hello from the child");
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # How it works, and how it differs from Python
///
/// The items live in a shared-memory ring (an anonymous memfd mapped by every process holding
/// the queue). [`put`](Queue::put) encodes the item and copies it into the ring: when it
/// returns, the item *is* in the queue. There is no feeder thread, so:
///
/// * a process that put items can exit, and be joined, before anyone reads them (Python's
///   "joining processes that use queues" deadlock does not exist here);
/// * nothing is lost or flushed at exit, and `join_thread`/`cancel_join_thread` are not
///   needed.
///
/// Producers take turns through one process-shared lock, consumers through another, so a
/// put and a get proceed in parallel. An item bigger than the ring travels in chunks while
/// the consumer reads, so its size is limited by memory, not by the ring.
///
/// # Capacity and memory
///
/// * `maxsize` ([`Queue::bounded`], [`QueueBuilder::maxsize`]) limits the number of items, as
///   in Python: `put` blocks while that many are queued. [`Queue::new`] has no item limit.
/// * Every queue also has a byte ring, 1 GiB by default ([`QueueBuilder::capacity_bytes`]):
///   `put` blocks while the queued items fill it. An item takes its encoded size rounded up
///   to 8, plus 8 bytes. The ring is address space, not memory: pages are allocated when
///   first written. Steady traffic cycles through the first 1 MiB only; memory that a burst
///   used beyond that is given back once consumers have caught up. A backlog may fill the
///   whole ring at any time, also while nobody reads and after traffic (a child can put
///   16 MiB and be joined before the parent drains).
///   See `ring/README.md`, "Memory".
///
/// # Crash safety
///
/// A process killed at any instant (`SIGKILL` included) inside `put` or `get` cannot corrupt
/// the queue or block the others: the locks are robust (a waiter checks every 50 ms that the
/// owner still exists, and takes the lock over from a dead one) and the next process to take one repairs the
/// state. **What can be lost is the one item the dead process was handling**:
///
/// * a producer killed inside `put`: its item is either delivered whole or not at all; a
///   large item whose first chunks were already read is dropped by its reader;
/// * a consumer killed inside `get`: if it had not finished taking the item, the item stays
///   in the queue for the next getter (small items), or its remaining chunks are dropped (a
///   large item it had started reading); if it had, the item is gone with it.
///
/// Items of other processes are never lost, duplicated or reordered by a crash.
///
/// # Stalled and hostile processes
///
/// Every `_timeout`/`_deadline` call returns at its deadline (plus scheduling) whatever other
/// processes do, including a producer stopped (`SIGSTOP`) in the middle of a large item: the
/// part received so far is kept in this process and the next `get` here resumes the item, so
/// it is not lost. Memory that a queue's shared segment makes a reader allocate follows the
/// bytes that actually arrived, never a size a process merely announced. A process that
/// writes garbage into the shared memory can make calls fail (with
/// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol), or time out), never crash or hang
/// another process's timed calls.
///
/// # Approximate answers
///
/// [`len`](Queue::len), [`is_empty`](Queue::is_empty) and [`is_full`](Queue::is_full) are
/// exact when nobody else is using the queue and snapshots otherwise: by the time you look
/// at the answer another process may have changed it.
///
/// # Dropping
///
/// Dropping a handle unmaps the queue in this process. The shared memory, with any items
/// still queued, is freed by the kernel when the last handle in any process is gone, also when
/// processes are killed; nothing is left in `/dev/shm` or elsewhere.
pub struct Queue<T> {
    pub(super) h: Handle,
    pub(super) _item: PhantomData<fn(T) -> T>,
}

impl<T> Queue<T> {
    /// An unbounded queue (`multiprocessing.Queue()`).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the shared memory cannot be created or mapped.
    pub fn new() -> Result<Self> {
        QueueBuilder::new().build()
    }

    /// A queue holding at most `maxsize` items (`multiprocessing.Queue(maxsize)`).
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] for `maxsize == 0`; [`ErrorKind::Io`] as for
    /// [`new`](Queue::new).
    pub fn bounded(maxsize: usize) -> Result<Self> {
        QueueBuilder::new().maxsize(maxsize).build()
    }

    /// A builder for the less common settings (byte capacity).
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder::new()
    }
}

state_methods!(Queue);
put_methods!(Queue);
get_methods!(Queue);
handle_serde!(Queue, super::ring::Kind::Queue);

/// Settings for a [`Queue`] or [`JoinableQueue`].
///
/// ```
/// use multiproc::Queue;
/// let q: Queue<Vec<u8>> = Queue::builder().maxsize(100).capacity_bytes(16 << 20).build()?;
/// assert_eq!(q.maxsize(), Some(100));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct QueueBuilder<T> {
    maxsize: Option<usize>,
    capacity_bytes: u64,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> Default for QueueBuilder<T> {
    fn default() -> Self {
        QueueBuilder::new()
    }
}

impl<T> Clone for QueueBuilder<T> {
    fn clone(&self) -> Self {
        QueueBuilder {
            maxsize: self.maxsize,
            capacity_bytes: self.capacity_bytes,
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("maxsize", &self.maxsize)
            .field("capacity_bytes", &self.capacity_bytes)
            .finish()
    }
}

impl<T> QueueBuilder<T> {
    /// Unbounded, with the default byte ring (1 GiB of address space).
    pub fn new() -> Self {
        QueueBuilder {
            maxsize: None,
            capacity_bytes: DEFAULT_CAPACITY,
            _item: PhantomData,
        }
    }

    /// At most `n` items queued at once (`0` is rejected by `build`).
    pub fn maxsize(mut self, n: usize) -> Self {
        self.maxsize = Some(n);
        self
    }

    /// The byte ring: how many bytes of encoded items may be queued at once. Rounded up to
    /// a power of two between 64 KiB and 1 TiB. Items larger than the ring still go through,
    /// in chunks.
    pub fn capacity_bytes(mut self, bytes: usize) -> Self {
        self.capacity_bytes = (bytes as u64).clamp(MIN_CAPACITY, MAX_CAPACITY);
        self
    }

    fn max_items(&self) -> Result<u64> {
        match self.maxsize {
            None => Ok(u64::MAX),
            Some(0) => Err(Error::msg(
                ErrorKind::Unsupported,
                "a bounded queue needs room for at least one item (maxsize 0)",
            )),
            Some(n) => Ok((n as u64).min(u64::MAX - 1)),
        }
    }

    /// Creates the [`Queue`].
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] for `maxsize(0)`; [`ErrorKind::Io`] if the shared memory
    /// cannot be created or mapped.
    pub fn build(&self) -> Result<Queue<T>> {
        Ok(Queue {
            h: Handle::create::<T>(Kind::Queue, self.capacity_bytes, self.max_items()?)?,
            _item: PhantomData,
        })
    }

    /// Creates a [`JoinableQueue`].
    ///
    /// # Errors
    /// As [`build`](QueueBuilder::build).
    pub fn build_joinable(&self) -> Result<JoinableQueue<T>> {
        Ok(JoinableQueue {
            h: Handle::create::<T>(Kind::Joinable, self.capacity_bytes, self.max_items()?)?,
            _item: PhantomData,
        })
    }
}
