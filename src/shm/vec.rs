//! [`SharedVec`]: a fixed-length buffer of plain data in an anonymous segment, which travels
//! between processes as a handle (no copy of the data).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use std::sync::atomic::{AtomicU64, Ordering};

use super::segment::{self, Elem, Header, Kind, HOLDERS};
use super::{FdIn, FdOut};
#[allow(unused_imports)] // named by the docs
use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::fdreg::RegisteredFd;
use crate::sys::shm;

/// From this size on, a new segment's memory is allocated and its page tables filled in one
/// go rather than a page fault per 4 KiB, and a dropped segment is kept for reuse.
const POPULATE_FROM: u64 = 1 << 20;

/// A buffer of `T` in shared memory that crosses process boundaries without being copied:
/// the way to hand a large array to a worker or get one back.
///
/// Sending it (as a [`Process`](crate::Process) or [`Pool`](crate::Pool) task argument, a
/// task's return value, or inside a [`Connection`](crate::Connection) message) sends a handle
/// to the same memory: the receiver maps the pages the sender wrote, so a 64 MiB array
/// costs one copy in ([`from_slice`](SharedVec::from_slice)), or none when the producer
/// fills the buffer in place ([`zeroed`](SharedVec::zeroed), then write through `DerefMut`).
///
/// ```
/// use multiproc::{Pool, SharedVec};
///
/// let pool = Pool::new(2)?;
/// let data = SharedVec::from_slice(&vec![3u64; 1 << 20])?; // 8 MiB, copied once
/// let sum = pool.apply(|v: SharedVec<u64>| v.iter().sum::<u64>(), data)?;
/// assert_eq!(sum, 3 << 20);
///
/// // A worker can fill one in place and return it: no copy on the way back either.
/// let squares = pool.apply(
///     |n: usize| {
///         let mut v = SharedVec::<u32>::zeroed(n).unwrap();
///         for (i, x) in v.iter_mut().enumerate() { *x = (i * i) as u32; }
///         v
///     },
///     5usize,
/// )?;
/// assert_eq!(&squares[..], &[0, 1, 4, 9, 16]);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Sharing, not moving
///
/// Serialising takes `&self`: after a send, the sender's handle and the receiver's map the
/// *same* memory, and a write by either is seen by the other. Treat a sent buffer as frozen
/// (drop your handle, or stop writing), or synchronise: see
/// [aliasing across processes](crate::shm#aliasing-across-processes). Within one handle,
/// Rust's rules hold: `&mut [T]` needs `&mut self`.
///
/// # Where it cannot go
///
/// A [`Queue`](crate::Queue) item cannot contain one (`put` fails with
/// [`ErrorKind::Encode`]): queues move bytes through shared memory, which cannot carry the
/// descriptor. Send it over a [`Connection`](crate::Connection), or put the name of a named
/// [`SharedMemory`](crate::SharedMemory) in the queue item.
///
/// # Received handles
///
/// The receiver checks, before mapping anything, that the descriptor is a size-sealed memfd
/// with this crate's header, a `SharedVec` (not a `SharedMemory`), and elements of the same
/// type (name, size and alignment): a `SharedVec<u64>` cannot be received as a
/// `SharedVec<u32>`. Anything else fails the decode with [`ErrorKind::Decode`].
///
/// # Dropping, and reuse
///
/// Dropping a handle unmaps it in this process; the kernel frees the memory with the last
/// handle in any process, also when processes are killed. Nothing is ever left in `/dev/shm`.
///
/// Allocating fresh shared memory is what makes a big transfer slow (the kernel zeroes and
/// maps every page: here about ten times the cost of copying the data), and so is mapping a
/// segment anew (a page fault per 4 KiB). So a process keeps the segments of its dropped
/// buffers of 1 MiB or more, mapped (at most 4 segments, 512 MiB, per process):
///
/// * the **creator** reuses one for a new buffer of a similar size once **no process holds
///   it and no handle to it is in flight** (a count in the segment, incremented for each
///   handle and each send, decremented on drop; a holder killed before its drop leaves the
///   count up, and that segment is simply never reused);
/// * a **receiver** uses its kept mapping when the same segment arrives again (as it does
///   when the creator reuses it), so a worker that is handed one big array after another
///   reads them without a fault per page.
///
/// [`release_cache`](crate::shm::release_cache) gives the kept segments back.
pub struct SharedVec<T> {
    /// `Some` until drop (which may hand it to the cache).
    seg: Option<Seg>,
    len: usize,
    _elem: PhantomData<T>,
}

/// A shared byte buffer: [`SharedVec<u8>`].
pub type SharedBytes = SharedVec<u8>;

/// One mapped segment: its descriptor, and a mapping of the header and its whole capacity.
#[derive(Debug)]
pub(super) struct Seg {
    pub(super) fd: RegisteredFd,
    map: shm::Mapping,
    /// This process created the segment: only its creator reuses it for new buffers (a
    /// receiver keeps it only to map it again when the same segment arrives).
    mine: bool,
    /// The segment's file (device, inode): a received handle for a segment whose mapping
    /// this process kept finds it by this.
    id: (u64, u64),
}

impl Seg {
    fn holders(&self) -> &AtomicU64 {
        self.map.atomic_u64(HOLDERS)
    }

    /// Data bytes the segment can hold.
    fn capacity(&self) -> u64 {
        self.map.data_len() as u64
    }
}

impl<T: bytemuck::Pod> SharedVec<T> {
    /// A buffer of `len` elements: a reused segment (contents stale: `zero` says whether to
    /// clear them) or a fresh, zero-filled one.
    fn create(len: usize, zero: bool) -> Result<SharedVec<T>> {
        let elem = Elem::of::<T>();
        let bytes = (len as u64)
            .checked_mul(u64::from(elem.size))
            // Zero-sized elements have no bytes to share; alignment beyond a page cannot be
            // promised for the data region.
            .filter(|_| elem.size > 0 && elem.align as usize <= segment::HEADER_LEN)
            .ok_or_else(|| {
                super::invalid(format!(
                    "a SharedVec of {len} elements of {} bytes cannot be made",
                    elem.size
                ))
            })?;
        let header = Header {
            kind: Kind::Vec,
            data_len: bytes,
            elements: len as u64,
            elem,
        };
        if bytes >= POPULATE_FROM {
            if let Some(seg) = cache::claim(bytes) {
                // Nobody else holds it (claimed at a count of 0), so the header and data
                // are ours to rewrite.
                if segment::write_header(&seg.fd, header).is_ok() {
                    let mut v = SharedVec {
                        seg: Some(seg),
                        len,
                        _elem: PhantomData,
                    };
                    if zero {
                        v.bytes_mut().fill(0);
                    }
                    return Ok(v);
                }
            }
        }
        let fd = segment::create(header, "creating a SharedVec")?;
        let capacity = segment::segment_len(bytes) - segment::HEADER_LEN as u64;
        let map = segment::map(&fd, capacity, bytes >= POPULATE_FROM)?;
        let id = shm::identity(fd.as_fd()).map_err(Error::io)?;
        let seg = Seg {
            fd,
            map,
            mine: true,
            id,
        };
        seg.holders().store(1, Ordering::Relaxed);
        Ok(SharedVec {
            seg: Some(seg),
            len,
            _elem: PhantomData,
        })
    }

    /// A buffer of `len` zeroed elements, to fill in place (then send it: no copy at all).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if `T` is zero-sized, the size is over 1 TiB, or the memory cannot
    /// be created or mapped.
    pub fn zeroed(len: usize) -> Result<SharedVec<T>> {
        SharedVec::create(len, true)
    }

    /// A buffer holding a copy of `src` (the one copy).
    ///
    /// # Errors
    /// As [`zeroed`](SharedVec::zeroed).
    pub fn from_slice(src: &[T]) -> Result<SharedVec<T>> {
        let mut v = SharedVec::create(src.len(), false)?;
        v.copy_from_slice(src);
        Ok(v)
    }

    /// Another handle on the same buffer, with its own mapping (see
    /// [`SharedMemory::try_clone`](crate::SharedMemory::try_clone)).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the descriptor cannot be duplicated or the buffer mapped.
    pub fn try_clone(&self) -> Result<SharedVec<T>> {
        let fd = self.seg().fd.try_clone().map_err(Error::io)?;
        let map = segment::map(&fd, self.seg().capacity(), false)?;
        let seg = Seg {
            fd,
            map,
            mine: false,
            id: self.seg().id,
        };
        seg.holders().fetch_add(1, Ordering::Relaxed);
        Ok(SharedVec {
            seg: Some(seg),
            len: self.len,
            _elem: PhantomData,
        })
    }

    fn byte_len(&self) -> usize {
        // Also for a SharedVec received from another process: the header's element count
        // and size were checked against the segment.
        self.len * std::mem::size_of::<T>()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.byte_len();
        &mut self.seg_mut().map.data_mut()[..n]
    }

    /// The elements (also through `Deref`).
    pub fn as_slice(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        bytemuck::cast_slice(&self.seg().map.data()[..self.byte_len()])
    }

    /// The elements, writable (also through `DerefMut`).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        if self.len == 0 {
            return &mut [];
        }
        bytemuck::cast_slice_mut(self.bytes_mut())
    }
}

impl<T> SharedVec<T> {
    fn seg(&self) -> &Seg {
        self.seg
            .as_ref()
            .expect("a SharedVec holds its segment until drop")
    }

    fn seg_mut(&mut self) -> &mut Seg {
        self.seg
            .as_mut()
            .expect("a SharedVec holds its segment until drop")
    }

    /// The descriptor (for tests).
    #[cfg(test)]
    pub(super) fn fd(&self) -> &RegisteredFd {
        &self.seg().fd
    }
}

impl<T> Drop for SharedVec<T> {
    fn drop(&mut self) {
        let Some(seg) = self.seg.take() else { return };
        // Release: this process's reads and writes of the data happen before a later
        // claimer's (Acquire) reuse.
        seg.holders().fetch_sub(1, Ordering::Release);
        if seg.capacity() >= POPULATE_FROM {
            cache::put(seg);
        }
    }
}

impl<T: bytemuck::Pod> Deref for SharedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: bytemuck::Pod> DerefMut for SharedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T> fmt::Debug for SharedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedVec")
            .field("elem", &std::any::type_name::<T>())
            .field("len", &self.len)
            .finish()
    }
}

impl<T> Serialize for SharedVec<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The handle in flight counts as a holder until the receiver's handle drops (a
        // message that never arrives leaves the count up: the segment is then never reused,
        // and still freed with its last descriptor).
        self.seg().holders().fetch_add(1, Ordering::Relaxed);
        FdOut(self.seg().fd.as_fd()).serialize(s)
    }
}

impl<'de, T: bytemuck::Pod> Deserialize<'de> for SharedVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let FdIn(fd) = FdIn::deserialize(d)?;
        let opened =
            segment::check(&fd, Kind::Vec, Elem::of::<T>(), "SharedVec").and_then(|(h, cap)| {
                let len = usize::try_from(h.elements).map_err(|e| e.to_string())?;
                let id = shm::identity(fd.as_fd()).map_err(|e| e.to_string())?;
                // Only the data (page-rounded): the rest of a reused segment's capacity, if
                // any, is none of a receiver's business.
                let _ = cap;
                let data = segment::segment_len(h.data_len) - segment::HEADER_LEN as u64;
                let seg = match cache::take_mapping(id, data) {
                    // The same segment again (its creator reuses it): the kept mapping has
                    // its page tables filled already. Our mapping keeps the file alive, so
                    // a matching (device, inode) is the very same segment.
                    Some(kept) => Seg {
                        fd,
                        map: kept.map,
                        mine: kept.mine,
                        id,
                    },
                    None => Seg {
                        map: segment::map(&fd, data, false).map_err(|e| e.to_string())?,
                        fd,
                        mine: false,
                        id,
                    },
                };
                // This handle takes over the count of the one in flight.
                Ok(SharedVec {
                    seg: Some(seg),
                    len,
                    _elem: PhantomData,
                })
            });
        opened.or_else(|msg| crate::codec::custom(msg, D::Error::custom))
    }
}

/// The segments of dropped buffers this process keeps for reuse.
mod cache {
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use super::Seg;

    /// At most this many segments are kept...
    const MAX_SEGMENTS: usize = 4;
    /// ... holding at most this many bytes.
    const MAX_BYTES: u64 = 512 << 20;

    /// `(pid that kept it, segment)`, oldest first. A `Fork` child inherits the list with
    /// its parent's pid on every entry and ignores them (two processes must never claim
    /// from one list). Only ever taken with `crate::wait::try_lock`: a child forked while
    /// another thread held it skips the cache rather than deadlock.
    static KEPT: Mutex<Vec<(u32, Seg)>> = Mutex::new(Vec::new());

    /// A segment this process created and kept, that can hold `bytes` without wasting more
    /// than half of it, which no process holds: claimed (its count set from 0 to 1) and
    /// taken off the list.
    pub(super) fn claim(bytes: u64) -> Option<Seg> {
        let me = std::process::id();
        let mut list = crate::wait::try_lock(&KEPT)?;
        let i = list.iter().position(|(pid, seg)| {
            *pid == me
                && seg.mine
                && (bytes..=bytes.saturating_mul(2)).contains(&seg.capacity())
                && seg
                    .holders()
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })?;
        Some(list.remove(i).1)
    }

    /// The kept mapping of segment `id`, if it maps at least `data` bytes of data, taken off
    /// the list (a received handle for that segment uses it instead of mapping anew).
    pub(super) fn take_mapping(id: (u64, u64), data: u64) -> Option<Seg> {
        let me = std::process::id();
        let mut list = crate::wait::try_lock(&KEPT)?;
        let i = list
            .iter()
            .position(|(pid, seg)| *pid == me && seg.id == id && seg.capacity() >= data)?;
        Some(list.remove(i).1)
    }

    /// Keeps `seg` (evicting the oldest beyond the bounds).
    pub(super) fn put(seg: Seg) {
        let me = std::process::id();
        let mut evicted = Vec::new();
        if let Some(mut list) = crate::wait::try_lock(&KEPT) {
            let mut kept = Vec::with_capacity(list.len() + 1);
            for (pid, s) in list.drain(..) {
                if pid == me {
                    kept.push((pid, s));
                } else {
                    evicted.push(s);
                }
            }
            kept.push((me, seg));
            while kept.len() > MAX_SEGMENTS
                || kept.iter().map(|(_, s)| s.capacity()).sum::<u64>() > MAX_BYTES
            {
                evicted.push(kept.remove(0).1);
            }
            *list = kept;
        } else {
            evicted.push(seg);
        }
        // Unmapped and closed outside the lock.
        drop(evicted);
    }

    /// Drops every kept segment.
    pub(super) fn release() {
        let Some(mut list) = crate::wait::try_lock(&KEPT) else {
            return;
        };
        let all = std::mem::take(&mut *list);
        drop(list);
        drop(all);
    }
}

/// Gives back the shared memory this process keeps for reuse (the segments of dropped
/// [`SharedVec`]s of 1 MiB or more; see "Dropping, and reuse" there). Other processes that
/// still hold one keep it; the kernel frees it with the last of them. Call it after a burst
/// of large transfers if the memory matters, or before counting descriptors.
pub fn release_cache() {
    cache::release();
}
