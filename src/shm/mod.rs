//! Shared memory: [`SharedMemory`] (Python's `multiprocessing.shared_memory.SharedMemory`)
//! and [`SharedVec`], a buffer that travels between processes as a handle instead of a copy.
//!
//! # Anonymous and named segments
//!
//! * **Anonymous** ([`SharedMemory::new`], [`SharedVec`]): a sealed memfd with no name in any
//!   file system. It reaches other processes as a handle: pass it as a
//!   [`Process`](crate::Process) or [`Pool`](crate::Pool) argument, return it from a task, or
//!   send it in a [`Connection`](crate::Connection) message (its descriptor travels with the
//!   message, under every start method). The kernel frees it when the last handle in any
//!   process is gone, however the processes ended: nothing can leak.
//! * **Named** ([`SharedMemory::create_named`], [`SharedMemory::open_named`]): a file under
//!   `/dev/shm`, for processes that share no ancestry (or a Python program: the layout is the
//!   same raw bytes as Python's `SharedMemory(name=...)`). The name is removed when the
//!   creating handle is dropped, or its process dies, unless the creator called
//!   [`SharedMemory::persist`]; a handle that merely opened the segment never removes it (no
//!   bpo-38119), and nothing prints "leaked" warnings.
//!
//! # Resource cleanup: what survives a `SIGKILL`
//!
//! | resource | normal exit, drop, panic | `SIGKILL` (or abort) of its creator |
//! |---|---|---|
//! | anonymous `SharedMemory`, `SharedVec` | freed with the last handle | freed with the last handle (the kernel closes the dead process's descriptors) |
//! | named `SharedMemory` | name removed when the creator's handle drops | name removed by the creator's watcher, moments later |
//! | named `SharedMemory`, [`persist`](SharedMemory::persist)ed | **stays in `/dev/shm`** | **stays in `/dev/shm`** |
//! | mappings | unmapped on drop | unmapped by the kernel |
//!
//! A killed creator runs no code, so [`create_named`](SharedMemory::create_named) starts a
//! tiny watcher process (`/bin/sh`, about a millisecond) that waits on a pipe only the
//! creating handle holds: when the creator dies, the pipe closes and the watcher removes the
//! name. When the handle drops normally, is persisted or unlinks, the watcher is killed and
//! reaped first, so it never touches a name someone else reused. If the watcher cannot be
//! started (no `/bin/sh`), a `SIGKILL` leaves the name behind; remove it with
//! [`SharedMemory::unlink_named`]. A persisted segment lives until someone unlinks it or the
//! machine restarts: give it a name you can find again. Unlike Python's resource tracker,
//! nothing here prints "leaked" warnings, and an attacher's exit never removes a name.
//!
//! # Aliasing across processes
//!
//! No Rust aliasing guarantee can hold across processes: another process can write the bytes
//! under a `&[u8]` you hold. So:
//!
//! * **Concurrent writers must synchronise with readers** (a lock, an event, a message
//!   saying "done", or atomics). Reading bytes while another process writes them gives
//!   torn values: never undefined behaviour in the Rust sense for plain data (`Pod` types
//!   have no invalid bit patterns, which is why the typed views require them), but garbage.
//! * **Within one process** the API keeps Rust's rules: a `&mut` view comes only from
//!   `&mut self`, so it cannot coexist with another view through the same handle. Handles are
//!   not `Clone`: [`SharedMemory::try_clone`] maps the segment again, and a second handle is
//!   to be treated like another process.
//! * For words that several processes update at the same time, use the atomic views
//!   ([`SharedMemory::as_atomic_u64`], [`SharedMemory::as_atomic_u32`]) and do not hold a plain
//!   view of those bytes meanwhile.
//!
//! # Big payloads: [`SharedVec`]
//!
//! Sending a 64 MiB `Vec<u8>` through a pipe copies it several times (into the message, into
//! and out of the kernel, into the received value). A [`SharedVec<T>`] is one copy in
//! ([`SharedVec::from_slice`]) or none (fill [`SharedVec::zeroed`] in place), and the receiver
//! maps the same pages. Segments of dropped buffers are reused (see [`SharedVec`], "Dropping,
//! and reuse"), so repeated transfers run at about the speed of `memcpy` rather than the
//! speed at which the kernel hands out fresh pages. It is an
//! **explicit type rather than an automatic switch above a size threshold**, because the two
//! behave differently in ways a caller must choose: a shared buffer is shared (sender and
//! receiver see each other's writes, until one drops it), it costs a descriptor in flight and
//! a page-rounded segment, and it cannot go where descriptors cannot (a [`Queue`](crate::Queue)
//! item: queues move bytes through shared memory, which cannot carry a descriptor; put a
//! named [`SharedMemory`]'s name in the item instead, or send the `SharedVec` over a
//! [`Connection`](crate::Connection)). A type makes all of that visible where it matters.
//!
//! The segment layout and the checks a received handle must pass are in `README.md` next to
//! this file.

mod segment;
mod vec;
mod watch;

pub use vec::{release_cache, SharedBytes, SharedVec};

use std::fmt;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys::shm;
use segment::{Elem, Header, Kind};

/// The longest name of a named segment (a file name under `/dev/shm`).
const MAX_NAME: usize = 255;

/// A block of memory shared by processes, like Python's
/// `multiprocessing.shared_memory.SharedMemory`.
///
/// ```
/// use multiproc::{Process, SharedMemory};
///
/// let mut shm = SharedMemory::new(4096)?;
/// shm.as_mut_slice()[..5].copy_from_slice(b"hello");
/// let p = Process::spawn(shm.try_clone()?, |mut shm: SharedMemory| {
///     let text = shm.as_slice()[..5].to_vec();
///     shm.as_mut_slice()[0] = b'j';
///     text
/// })?;
/// assert_eq!(p.join()?, b"hello");
/// assert_eq!(&shm.as_slice()[..5], b"jello"); // the child wrote into the same memory
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// See the [module docs](crate::shm) for anonymous versus named segments, what survives a
/// `SIGKILL`, and what aliasing means across processes.
///
/// # Dropping
///
/// Dropping a handle unmaps the segment in this process. An anonymous segment is freed by the
/// kernel with its last handle in any process. A named segment's name is removed when the
/// handle that created it drops, unless [`persist`](SharedMemory::persist) was called; the
/// memory itself lives on until the last mapping is gone.
pub struct SharedMemory {
    fd: RegisteredFd,
    map: shm::Mapping,
    /// The path of a named segment (`/dev/shm/<name>`); `None` for an anonymous one.
    path: Option<String>,
    /// This handle created the named segment and removes its name on drop.
    owner: AtomicBool,
    /// The creator's cleanup watcher (see `watch.rs`), while `owner` holds.
    watcher: Mutex<Option<watch::Watcher>>,
}

impl SharedMemory {
    /// An anonymous segment of `size` bytes, zero-filled (memory is allocated as pages are
    /// first written).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if `size` is 0 or over 1 TiB, or the memory cannot be created or
    /// mapped (`RLIMIT_NOFILE`, address space).
    pub fn new(size: usize) -> Result<SharedMemory> {
        let header = Header {
            kind: Kind::Bytes,
            data_len: size as u64,
            elements: 0,
            elem: Elem::BYTES,
        };
        let fd = segment::create(header, "creating shared memory")?;
        let map = segment::map(&fd, header.data_len, false)?;
        Ok(SharedMemory::wrap(fd, map, None))
    }

    /// A handle on a mapped segment that does not remove its name on drop.
    fn wrap(fd: RegisteredFd, map: shm::Mapping, path: Option<String>) -> SharedMemory {
        SharedMemory {
            fd,
            map,
            path,
            owner: AtomicBool::new(false),
            watcher: Mutex::new(None),
        }
    }

    /// Creates the named segment `name` (`/dev/shm/<name>`, mode `0600`) of `size` bytes,
    /// zero-filled; fails if the name exists. The name is removed when this handle drops, or
    /// by a watcher process when this process dies without dropping it (`SIGKILL`), unless
    /// you call [`persist`](SharedMemory::persist). See the
    /// [module docs](crate::shm#resource-cleanup-what-survives-a-sigkill).
    ///
    /// `name` may start with one `/` (as `shm_open` names do); otherwise it is a plain file
    /// name: no `/`, not `.` or `..`, at most 255 bytes.
    ///
    /// # Errors
    /// [`ErrorKind::Io`]: an invalid name or size, a name that exists (the source is an
    /// `io::Error` of kind `AlreadyExists`), no permission, no memory.
    pub fn create_named(name: &str, size: usize) -> Result<SharedMemory> {
        let path = named_path(name)?;
        if size == 0 || size as u64 > segment::MAX_LEN {
            return Err(invalid(format!(
                "a shared-memory segment holds 1 byte to 1 TiB; {size} bytes were asked for"
            )));
        }
        let fd = fdreg::shm_open(&path, true, size as u64)
            .map_err(|e| Error::io(e).context("creating a named shared-memory segment"))?;
        let shm = match SharedMemory::map_named(fd, path.clone(), size) {
            Ok(shm) => shm,
            Err(e) => {
                let _ = shm::unlink_named(&path);
                return Err(e);
            }
        };
        shm.owner.store(true, Ordering::Relaxed);
        // Without a watcher (no `/bin/sh`), a SIGKILL leaves the name behind, as documented.
        *crate::wait::lock(&shm.watcher) = watch::Watcher::start(&path).ok();
        Ok(shm)
    }

    /// Opens the existing named segment `name` (created by [`create_named`], by Python's
    /// `SharedMemory(create=True)`, or by any `shm_open` user) and maps all of it. This
    /// handle never removes the name (call [`unlink`](SharedMemory::unlink) for that).
    ///
    /// Named segments cannot be sealed: if another program shrinks the file while it is
    /// mapped, touching the lost pages raises `SIGBUS`. Segments made by this crate never
    /// change size.
    ///
    /// [`create_named`]: SharedMemory::create_named
    ///
    /// # Errors
    /// [`ErrorKind::Io`]: an invalid name, no such segment (the source is an `io::Error` of
    /// kind `NotFound`), an empty one, no permission.
    pub fn open_named(name: &str) -> Result<SharedMemory> {
        let path = named_path(name)?;
        let fd = fdreg::shm_open(&path, false, 0)
            .map_err(|e| Error::io(e).context("opening a named shared-memory segment"))?;
        let size = shm::regular_len(fd.as_fd())
            .map_err(Error::io)?
            .ok_or_else(|| invalid(format!("{path} is not a regular file")))?;
        if size == 0 || size > segment::MAX_LEN {
            return Err(invalid(format!(
                "{path} holds {size} bytes; a segment holds 1 byte to 1 TiB"
            )));
        }
        SharedMemory::map_named(fd, path, size as usize)
    }

    fn map_named(fd: RegisteredFd, path: String, size: usize) -> Result<SharedMemory> {
        let map = shm::Mapping::map(fd.as_fd(), size, 0);
        let map = match map {
            Ok(m) => m,
            Err(e) => return Err(Error::io(e).context("mapping shared memory")),
        };
        Ok(SharedMemory::wrap(fd, map, Some(path)))
    }

    /// Removes the named segment `name` (Python's `unlink()` on a handle you no longer
    /// have): for cleaning up after a creator that was killed. Processes that have it mapped
    /// keep their memory.
    ///
    /// # Errors
    /// [`ErrorKind::Io`]: an invalid name, no such segment (source: `NotFound`), no
    /// permission.
    pub fn unlink_named(name: &str) -> Result<()> {
        let path = named_path(name)?;
        shm::unlink_named(&path)
            .map_err(|e| Error::io(e).context("removing a named shared-memory segment"))
    }

    /// Removes this segment's name now (any handle may; Python's `unlink()`). Mappings stay
    /// valid; a later [`open_named`](SharedMemory::open_named) of the name fails. For an
    /// anonymous segment this does nothing.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the name is already gone (source: `NotFound`) or cannot be
    /// removed.
    pub fn unlink(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        self.disown();
        shm::unlink_named(path)
            .map_err(|e| Error::io(e).context("removing a named shared-memory segment"))
    }

    /// Keeps a named segment after this (creating) handle drops and after this process ends:
    /// its name then stays in `/dev/shm` until [`unlink`](SharedMemory::unlink) or
    /// [`unlink_named`](SharedMemory::unlink_named). Does nothing for anonymous segments
    /// (which cannot outlive their last handle) or handles that did not create the segment.
    pub fn persist(&self) {
        self.disown();
    }

    /// This handle no longer removes the name: neither on drop nor through its watcher.
    fn disown(&self) {
        self.owner.store(false, Ordering::Relaxed);
        if let Some(w) = crate::wait::lock(&self.watcher).take() {
            w.stop();
        }
    }

    /// The segment's name (without the leading `/`), `None` if anonymous.
    pub fn name(&self) -> Option<&str> {
        self.path.as_deref().map(|p| &p[shm::NAMED_DIR.len() + 1..])
    }

    /// Whether dropping this handle removes the segment's name (it created a named segment
    /// that was neither persisted nor unlinked).
    pub fn removes_name_on_drop(&self) -> bool {
        self.owner.load(Ordering::Relaxed)
    }

    /// The size in bytes (for an anonymous segment, the size asked for; for a named one, the
    /// size of the file when it was opened).
    pub fn size(&self) -> usize {
        self.map.data_len()
    }

    /// The bytes. Another process may write them while you read: see the
    /// [module docs](crate::shm#aliasing-across-processes).
    pub fn as_slice(&self) -> &[u8] {
        self.map.data()
    }

    /// The bytes, writable. Readers in other processes must be told when you are done (a
    /// lock, an event, a message).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.data_mut()
    }

    /// The bytes as `&[T]` for plain data `T` (`bytemuck::Pod`: any bit pattern is a valid
    /// `T`, so torn writes from other processes are garbage, never undefined behaviour).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] if the size is not a multiple of `size_of::<T>()` (the data
    /// starts on a page boundary, so alignment always holds for anonymous segments and for
    /// named ones).
    pub fn as_slice_of<T: bytemuck::Pod>(&self) -> Result<&[T]> {
        bytemuck::try_cast_slice(self.map.data()).map_err(|e| cast_error::<T>(e, self.size()))
    }

    /// As [`as_slice_of`](SharedMemory::as_slice_of), writable.
    ///
    /// # Errors
    /// As [`as_slice_of`](SharedMemory::as_slice_of).
    pub fn as_mut_slice_of<T: bytemuck::Pod>(&mut self) -> Result<&mut [T]> {
        let size = self.size();
        bytemuck::try_cast_slice_mut(self.map.data_mut()).map_err(|e| cast_error::<T>(e, size))
    }

    /// The bytes as 64-bit atomics, for counters and flags that several processes update at
    /// once (the atomics are address-free, so they work across processes).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] if the size is not a multiple of 8.
    pub fn as_atomic_u64(&self) -> Result<&[AtomicU64]> {
        self.map.data_atomic_u64().ok_or_else(|| {
            segment::decode_error(format!(
                "a segment of {} bytes is not a whole number of 8-byte atomics",
                self.size()
            ))
        })
    }

    /// The bytes as 32-bit atomics (see [`as_atomic_u64`](SharedMemory::as_atomic_u64)).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] if the size is not a multiple of 4.
    pub fn as_atomic_u32(&self) -> Result<&[AtomicU32]> {
        self.map.data_atomic_u32().ok_or_else(|| {
            segment::decode_error(format!(
                "a segment of {} bytes is not a whole number of 4-byte atomics",
                self.size()
            ))
        })
    }

    /// Another handle on the same segment, with its own mapping (so that `&mut` views of the
    /// two handles never share an address). A clone of a named segment never removes its
    /// name.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the descriptor cannot be duplicated or the segment mapped.
    pub fn try_clone(&self) -> Result<SharedMemory> {
        let fd = self.fd.try_clone().map_err(Error::io)?;
        let map = shm::Mapping::map(fd.as_fd(), self.map_len(), self.control_len())
            .map_err(|e| Error::io(e).context("mapping shared memory"))?;
        Ok(SharedMemory::wrap(fd, map, self.path.clone()))
    }

    fn control_len(&self) -> usize {
        if self.path.is_some() {
            0
        } else {
            segment::HEADER_LEN
        }
    }

    fn map_len(&self) -> usize {
        self.control_len() + self.size()
    }
}

/// The error for an invalid argument.
pub(super) fn invalid(msg: String) -> Error {
    Error::msg(ErrorKind::Io, msg)
}

/// The error for a byte region that is not a `[T]`.
fn cast_error<T>(e: bytemuck::PodCastError, size: usize) -> Error {
    segment::decode_error(format!(
        "{size} bytes cannot be viewed as [{}] ({} bytes, aligned to {}): {e:?}",
        std::any::type_name::<T>(),
        std::mem::size_of::<T>(),
        std::mem::align_of::<T>()
    ))
}

/// `/dev/shm/<name>` for a valid segment name.
fn named_path(name: &str) -> Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty()
        || bare.len() > MAX_NAME
        || bare == "."
        || bare == ".."
        || bare.contains('/')
        || bare.contains('\0')
    {
        return Err(invalid(format!(
            "{name:?} is not a shared-memory name: one file name of 1 to {MAX_NAME} bytes, \
             no '/' (except one leading) and not '.' or '..'"
        )));
    }
    Ok(format!("{}/{bare}", shm::NAMED_DIR))
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.owner.load(Ordering::Relaxed) {
            // The watcher first, so that it cannot remove a name someone reuses after ours.
            self.disown();
            if let Some(path) = &self.path {
                // Already gone (someone called `unlink_named`) is fine.
                let _ = shm::unlink_named(path);
            }
        }
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name())
            .field("size", &self.size())
            .field("removes_name_on_drop", &self.removes_name_on_drop())
            .finish()
    }
}

/// How a `SharedMemory` travels: its descriptor (anonymous), or its name (named: the
/// receiver opens it as an attacher).
#[derive(Serialize)]
enum WireOut<'a> {
    Anonymous(FdOut<'a>),
    Named(&'a str),
}

#[derive(Deserialize)]
enum WireIn {
    Anonymous(FdIn),
    Named(String),
}

/// A descriptor going into the message's side table.
pub(crate) struct FdOut<'a>(pub(crate) std::os::fd::BorrowedFd<'a>);

impl Serialize for FdOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::codec::serialize_fd(self.0, s)
    }
}

/// A descriptor taken from the side table of the message being decoded.
pub(crate) struct FdIn(pub(crate) RegisteredFd);

impl<'de> Deserialize<'de> for FdIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::codec::deserialize_fd(d).map(FdIn)
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => WireOut::Named(name),
            None => WireOut::Anonymous(FdOut(self.fd.as_fd())),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let opened = match WireIn::deserialize(d)? {
            WireIn::Named(name) => SharedMemory::open_named(&name).map_err(|e| {
                format!("opening the named shared-memory segment {name:?} that arrived: {e}")
            }),
            WireIn::Anonymous(FdIn(fd)) => {
                segment::check(&fd, Kind::Bytes, Elem::BYTES, "SharedMemory").and_then(|(h, _)| {
                    let map = segment::map(&fd, h.data_len, false).map_err(|e| e.to_string())?;
                    Ok(SharedMemory::wrap(fd, map, None))
                })
            }
        };
        opened.or_else(|msg| crate::codec::custom(msg, D::Error::custom))
    }
}

#[cfg(test)]
mod tests;
