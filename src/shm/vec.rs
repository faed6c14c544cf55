//! [`SharedVec`]: a fixed-length buffer of plain data in an anonymous segment, which travels
//! between processes as a handle (no copy of the data).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::segment::{self, Elem, Header, Kind};
use super::{FdIn, FdOut};
#[allow(unused_imports)] // named by the docs
use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::fdreg::RegisteredFd;
use crate::sys::shm;

/// From this size on, a segment's memory is allocated and its page tables filled in one go
/// (creating, and receiving), rather than a page fault per 4 KiB.
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
/// # Dropping
///
/// Unmaps it in this process; the kernel frees the memory with the last handle in any
/// process, also when processes are killed. Nothing is ever left in `/dev/shm`.
pub struct SharedVec<T> {
    pub(super) fd: RegisteredFd,
    map: shm::Mapping,
    len: usize,
    _elem: PhantomData<T>,
}

/// A shared byte buffer: [`SharedVec<u8>`].
pub type SharedBytes = SharedVec<u8>;

impl<T: bytemuck::Pod> SharedVec<T> {
    fn create(len: usize) -> Result<SharedVec<T>> {
        let elem = Elem::of::<T>();
        let bytes = (len as u64)
            .checked_mul(u64::from(elem.size))
            .filter(|_| elem.size > 0)
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
        let fd = segment::create(header, "creating a SharedVec")?;
        let map = segment::map(&fd, &header, bytes >= POPULATE_FROM)?;
        Ok(SharedVec {
            fd,
            map,
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
        SharedVec::create(len)
    }

    /// A buffer holding a copy of `src` (the one copy).
    ///
    /// # Errors
    /// As [`zeroed`](SharedVec::zeroed).
    pub fn from_slice(src: &[T]) -> Result<SharedVec<T>> {
        let mut v = SharedVec::create(src.len())?;
        v.copy_from_slice(src);
        Ok(v)
    }

    /// Another handle on the same buffer, with its own mapping (see
    /// [`SharedMemory::try_clone`](crate::SharedMemory::try_clone)).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the descriptor cannot be duplicated or the buffer mapped.
    pub fn try_clone(&self) -> Result<SharedVec<T>> {
        let fd = self.fd.try_clone().map_err(Error::io)?;
        let map = shm::Mapping::map(
            fd.as_fd(),
            segment::HEADER_LEN + self.map.data_len(),
            segment::HEADER_LEN,
        )
        .map_err(|e| Error::io(e).context("mapping a SharedVec"))?;
        Ok(SharedVec {
            fd,
            map,
            len: self.len,
            _elem: PhantomData,
        })
    }

    /// The elements (also through `Deref`).
    pub fn as_slice(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        bytemuck::cast_slice(self.map.data())
    }

    /// The elements, writable (also through `DerefMut`).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        if self.len == 0 {
            return &mut [];
        }
        bytemuck::cast_slice_mut(self.map.data_mut())
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
        FdOut(self.fd.as_fd()).serialize(s)
    }
}

impl<'de, T: bytemuck::Pod> Deserialize<'de> for SharedVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let FdIn(fd) = FdIn::deserialize(d)?;
        let opened = segment::check(&fd, Kind::Vec, Elem::of::<T>(), "SharedVec").and_then(|h| {
            let len = usize::try_from(h.elements).map_err(|e| e.to_string())?;
            let map =
                segment::map(&fd, &h, h.data_len >= POPULATE_FROM).map_err(|e| e.to_string())?;
            Ok(SharedVec {
                fd,
                map,
                len,
                _elem: PhantomData,
            })
        });
        opened.or_else(|msg| crate::codec::custom(msg, D::Error::custom))
    }
}
