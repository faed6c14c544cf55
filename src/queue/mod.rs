//! Queues shared by processes, like Python's `multiprocessing` queues.
//!
//! Three flavours over one shared-memory core ([`ring`]):
//!
//! * [`Queue`] (`queue.rs`): many producers, many consumers, unbounded or bounded
//!   (`maxsize`), with `try_`/`_timeout`/`_deadline` variants;
//! * [`SimpleQueue`] (`simple.rs`): the same surface, created without settings (unbounded);
//! * [`JoinableQueue`] (`joinable.rs`): a [`Queue`] that also counts unfinished tasks
//!   (`task_done`, `join`).
//!
//! Each is a thin typed wrapper over [`Handle`]; the methods they share are written once, as
//! macros in `methods.rs`. The handle encodes items (serde, postcard), moves
//! the bytes through the ring and carries the handle to other processes (the segment's memfd
//! travels as a descriptor). The ring's protocol, including crash repair, is described in
//! `ring/README.md`.

mod joinable;
mod methods;
#[allow(clippy::module_inception)] // `queue/queue.rs`: the flavour the folder is named after
mod queue;
pub(crate) mod ring;
mod simple;

pub use joinable::JoinableQueue;
pub use queue::{Queue, QueueBuilder};
pub use simple::SimpleQueue;

use std::cell::Cell;
use std::fmt;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, PutError, Result};
use ring::{Kind, Ring};

thread_local! {
    /// A reusable buffer for encoding and receiving items, so small puts and gets do not
    /// allocate. Taken out while in use (re-entrancy safe); not kept once it grew large.
    static BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest buffer a thread keeps between calls.
const KEEP_BUF: usize = 1 << 20;

fn with_buf<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = BUF.take();
    buf.clear();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP_BUF {
        BUF.set(buf);
    }
    r
}

/// FNV-1a of the item type's name: a received handle must carry the same item type.
fn type_hash<T>() -> u64 {
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// What every flavour is made of: the shared ring, plus this handle's `closed` flag.
pub(crate) struct Handle {
    ring: Arc<Ring>,
    closed: AtomicBool,
}

impl Handle {
    fn create<T>(kind: Kind, capacity: u64, max_items: u64) -> Result<Handle> {
        let ring = Ring::create(kind, type_hash::<T>(), capacity, max_items)?;
        Ok(Handle::from_ring(mapped::register(ring)))
    }

    fn from_ring(ring: Arc<Ring>) -> Handle {
        Handle {
            ring,
            closed: AtomicBool::new(false),
        }
    }

    fn ring(&self) -> &Ring {
        &self.ring
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            Err(Error::msg(
                ErrorKind::Closed,
                "this queue handle was closed",
            ))
        } else {
            Ok(())
        }
    }

    /// Encodes and puts `item`. `nonblocking` reports a full queue as `WouldBlock`.
    fn put<T: Serialize>(
        &self,
        item: T,
        deadline: Option<Instant>,
        nonblocking: bool,
    ) -> std::result::Result<(), PutError<T>> {
        let res = self.check_open().and_then(|()| {
            with_buf(|buf| {
                encode(&item, buf)?;
                self.ring.put(buf, deadline)
            })
        });
        res.map_err(|e| PutError::new(item, would_block(e, nonblocking, "the queue is full")))
    }

    /// Takes and decodes one item. `nonblocking` reports an empty queue as `WouldBlock`.
    fn get<T: DeserializeOwned>(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<T> {
        self.check_open()?;
        with_buf(|buf| {
            self.ring.get(buf, deadline)?;
            crate::codec::decode(buf, Vec::new())
        })
        .map_err(|e| would_block(e, nonblocking, "the queue is empty"))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn len(&self) -> usize {
        usize::try_from(self.ring.len()).unwrap_or(usize::MAX)
    }

    fn maxsize(&self) -> Option<usize> {
        self.ring
            .max_items()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn is_full(&self) -> bool {
        self.maxsize().is_some_and(|m| self.len() >= m)
    }

    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("len", &self.len())
            .field("maxsize", &self.maxsize())
            .field("capacity_bytes", &self.ring.capacity_bytes())
            .field("closed", &self.is_closed())
            .finish()
    }

    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::codec::serialize_fd(self.ring.fd(), s)
    }

    fn deserialize<'de, D: Deserializer<'de>, T>(
        d: D,
        kind: Kind,
    ) -> std::result::Result<Handle, D::Error> {
        let fd = crate::codec::deserialize_fd(d)?;
        let opened = match mapped::find(fd.as_fd()) {
            // Already mapped here (sent to ourselves, or received again): share it.
            Some(ring) => ring.check(kind, type_hash::<T>()).map(|()| ring),
            None => Ring::open(fd, kind, type_hash::<T>()).map(mapped::register),
        };
        match opened {
            Ok(ring) => Ok(Handle::from_ring(ring)),
            Err(msg) => crate::codec::custom(msg, <D::Error as serde::de::Error>::custom),
        }
    }
}

impl Clone for Handle {
    /// Another handle on the same queue, open even if this one was closed.
    fn clone(&self) -> Self {
        Handle {
            ring: Arc::clone(&self.ring),
            closed: AtomicBool::new(false),
        }
    }
}

/// The segments this process maps, so that a handle received again (each task of a pool
/// carrying the same queue, say) reuses the mapping instead of mapping and faulting it in
/// anew.
mod mapped {
    use std::os::fd::BorrowedFd;
    use std::sync::{Arc, Mutex, Weak};

    use super::ring::{Key, Ring};

    static MAPPED: Mutex<Vec<(Key, Weak<Ring>)>> = Mutex::new(Vec::new());

    /// The live ring for the segment behind `fd`, if this process maps it already.
    pub(super) fn find(fd: BorrowedFd<'_>) -> Option<Arc<Ring>> {
        let key = Ring::peek_key(fd)?;
        // `try_lock`: in a child forked while another thread held the lock, skip the cache
        // rather than deadlock.
        let list = crate::wait::try_lock(&MAPPED)?;
        list.iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
    }

    /// Shares `ring` and remembers it.
    pub(super) fn register(ring: Ring) -> Arc<Ring> {
        let key = ring.key();
        let ring = Arc::new(ring);
        if let Some(mut list) = crate::wait::try_lock(&MAPPED) {
            list.retain(|(_, w)| w.strong_count() > 0);
            list.push((key, Arc::downgrade(&ring)));
        }
        ring
    }
}

/// Turns the ring's timeout into `WouldBlock` for the `try_` calls.
fn would_block(e: Error, nonblocking: bool, what: &str) -> Error {
    if nonblocking && e.kind() == ErrorKind::Timeout {
        Error::msg(ErrorKind::WouldBlock, what)
    } else {
        e
    }
}

thread_local! {
    /// The size of the last item this thread encoded, if it was large (see `encode`).
    static LAST_LARGE: Cell<usize> = const { Cell::new(0) };
}

/// Items from this size on are encoded into a buffer reserved in advance and backed by huge
/// pages: growing a 64 MiB buffer one 4 KiB page fault at a time costs more than the copy.
const LARGE_ITEM: usize = 4 << 20;

/// Encodes an item for the ring. Handles cannot travel through shared memory.
fn encode<T: Serialize>(item: &T, buf: &mut Vec<u8>) -> Result<()> {
    let hint = LAST_LARGE.get();
    if hint >= LARGE_ITEM && buf.try_reserve_exact(hint).is_ok() {
        // Large items come in runs: expect one like the last. Only address space is
        // reserved; pages are allocated as they are written.
        crate::sys::socket::advise_huge_pages(buf);
    }
    let mut fds = Vec::new();
    crate::codec::encode(item, buf, &mut fds)?;
    if !fds.is_empty() {
        return Err(Error::msg(
            ErrorKind::Encode,
            "a queue item cannot contain a handle (Connection, Queue, ...): queues move bytes \
             through shared memory, which cannot carry descriptors; send handles through a \
             Connection or as process arguments",
        ));
    }
    LAST_LARGE.set(if buf.len() >= LARGE_ITEM {
        buf.len()
    } else {
        0
    });
    Ok(())
}

/// Implements `Serialize`/`Deserialize` (as a handle) for a flavour.
macro_rules! handle_serde {
    ($ty:ident, $kind:expr) => {
        impl<T> serde::Serialize for $ty<T> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                self.h.serialize(s)
            }
        }

        impl<'de, T> serde::Deserialize<'de> for $ty<T> {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                Ok($ty {
                    h: $crate::queue::Handle::deserialize::<D, T>(d, $kind)?,
                    _item: std::marker::PhantomData,
                })
            }
        }
    };
}
use handle_serde;

#[cfg(test)]
mod tests;
