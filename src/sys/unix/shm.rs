//! Anonymous shared memory: a sealed memfd mapped `MAP_SHARED` into every process holding it.
//!
//! A segment has no name in any file system, so nothing can leak in `/dev/shm`: the kernel
//! frees it when the last descriptor is closed and the last mapping is gone, however the
//! processes ended. Its size is sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) right
//! after creation, so no holder can shrink it under another's mapping (which would turn reads
//! into `SIGBUS`); a receiver checks the seals before it maps anything.
//!
//! A [`Mapping`] is split in two regions that are never accessed the same way:
//!
//! * the **control** region `[0, control)`: only atomics ([`Mapping::atomic_u64`],
//!   [`Mapping::atomic_u32`]), the lock slots of `robust.rs` included;
//! * the **data** region `[control, len)`: only raw byte copies ([`Mapping::write`],
//!   [`Mapping::read_append`]) of ranges the caller's protocol owns at that moment.
//!
//! Other processes write this memory too, outside anything Rust's memory model can see. We
//! never form a reference to non-atomic shared bytes: data only moves by copy, and the bytes
//! copied out are treated as untrusted input by the caller (the queue validates every record).
//!
//! macOS has no memfd: `shm_open` of a random name followed at once by `shm_unlink` gives the
//! same anonymous, descriptor-passable segment (without seals, so a receiver would have to
//! trust the size it is told and catch `SIGBUS`, or use `mach_make_memory_entry`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// The seals every segment carries: its size can never change.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// The system page size.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Creates a close-on-exec memfd of exactly `len` bytes (zero-filled, no memory allocated yet)
/// and seals its size.
pub(crate) fn create(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS)?;
    Ok(fd)
}

/// The size of `fd` if it is a memfd whose size is sealed the way [`create`] seals it;
/// `Ok(None)` for anything else (a socket, a regular file, an unsealed memfd).
pub(crate) fn sealed_len(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let st = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) if seals.contains(SIZE_SEALS) => Ok(Some(st.st_size as u64)),
        Ok(_) => Ok(None),
        // Files that do not support sealing answer EINVAL.
        Err(rustix::io::Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The identity of a segment's file: (device, inode).
pub(crate) fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Reads `buf.len()` bytes at `offset` of a segment without mapping it.
pub(crate) fn read_at(fd: BorrowedFd<'_>, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let n = rustix::io::pread(fd, &mut *buf, offset)?;
    if n == buf.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// Gives the memory of `[offset, offset + len)` of the segment back to the system; later
/// reads see zeros. `offset` and `len` must be multiples of the page size.
pub(crate) fn discard(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    debug_assert!(offset % page_size() as u64 == 0 && len % page_size() as u64 == 0);
    if len == 0 {
        return Ok(());
    }
    Ok(rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )?)
}

/// A `MAP_SHARED` read-write mapping of a whole segment; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// Start of the mapping (page-aligned).
    base: NonNull<u8>,
    /// Length in bytes.
    len: usize,
    /// Length of the control region (atomics and mutexes); the data region follows it.
    control: usize,
}

// SAFETY: a mapping is plain memory owned by this value until drop. Every access to it goes
// through atomics, pthread mutex functions or raw copies of ranges the caller's protocol owns,
// so sharing the handle between threads adds nothing that sharing between processes does not.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all `len` bytes of `fd` shared and read-write; `control` bytes at the start are
    /// the control region. Pages are only allocated when touched (`MAP_NORESERVE`).
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize, control: usize) -> io::Result<Mapping> {
        Self::map_with(fd, len, control, MapFlags::empty())
    }

    /// [`Mapping::map`] with `extra` flags besides `MAP_SHARED | MAP_NORESERVE`.
    fn map_with(
        fd: BorrowedFd<'_>,
        len: usize,
        control: usize,
        extra: MapFlags,
    ) -> io::Result<Mapping> {
        assert!(control <= len && control % 64 == 0, "bad control region");
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint) aliases no Rust
        // object; `fd` is a valid descriptor for the duration of the call.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::NORESERVE | extra,
                fd.as_fd(),
                0,
            )?
        };
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { base, len, control })
    }

    /// A pointer to `size` bytes at `off` inside the control region, checked for bounds and
    /// `align`.
    pub(super) fn control_ptr(&self, off: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            off.checked_add(size).is_some_and(|end| end <= self.control) && off % align == 0,
            "control access out of bounds or misaligned: {off}+{size}"
        );
        // SAFETY: `off + size <= control <= len`, so the result stays inside the mapping.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// The shared 64-bit atomic at `off` (control region, 8-aligned).
    pub(crate) fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        let p = self.control_ptr(off, 8, 8);
        // SAFETY: `p` is in bounds and 8-aligned (checked above), the memory lives as long as
        // `self`, and the control region is only ever accessed atomically (module contract).
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    /// The shared 32-bit atomic at `off` (control region, 4-aligned).
    pub(crate) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        let p = self.control_ptr(off, 4, 4);
        // SAFETY: as for `atomic_u64`, with 4-byte alignment.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    pub(super) fn data_ptr(&self, off: usize, len: usize) -> *mut u8 {
        assert!(
            off >= self.control && off.checked_add(len).is_some_and(|end| end <= self.len),
            "data access out of bounds: {off}+{len}"
        );
        // SAFETY: `off + len <= self.len`, so the result stays inside the mapping.
        unsafe { self.base.as_ptr().add(off) }
    }

    /// Copies `src` into the data region at `off`.
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        let dst = self.data_ptr(off, src.len());
        // SAFETY: `dst..dst+len` is inside the mapping (checked), cannot overlap `src` (a
        // private buffer), and the caller's protocol gives it exclusive use of that range.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Copies `dst.len()` bytes of the data region at `off` into `dst`.
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) {
        let src = self.data_ptr(off, dst.len());
        // SAFETY: `src..src+len` is inside the mapping (checked) and cannot overlap `dst`, a
        // private buffer.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// Appends `len` bytes of the data region at `off` to `dst`.
    ///
    /// # Errors
    /// `OutOfMemory` if `dst` cannot grow by `len` bytes.
    pub(crate) fn read_append(&self, off: usize, len: usize, dst: &mut Vec<u8>) -> io::Result<()> {
        let src = self.data_ptr(off, len);
        dst.try_reserve(len)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let old = dst.len();
        // SAFETY: `src..src+len` is inside the mapping (checked) and the spare capacity of
        // `dst` holds at least `len` bytes (reserved above); they cannot overlap. After the
        // copy those `len` bytes are initialised, so the new length is valid.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr().add(old), len);
            dst.set_len(old + len);
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base..base+len` is exactly the mapping created in `map`, and nothing
        // borrowed from `self` can outlive it.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

// ---- Public shared memory (`crate::shm`): raw views, named segments, header I/O. ----
//
// The queue keeps to copies and control-region atomics; `SharedMemory` and `SharedVec` hand
// the user *views* of the data region. Those views are the one place where Rust references
// point into memory other processes write: `crate::shm`'s docs state the rule (writers that
// run concurrently with readers must synchronise, as with any shared memory), and the
// methods below keep Rust's own rules within this process: `&mut` views only from
// `&mut Mapping`.

/// The mode bits of a named segment this crate creates: the owner only, as Python's.
const NAMED_MODE: u32 = 0o600;

/// Where named segments live (glibc's `shm_open` uses the same directory).
pub(crate) const NAMED_DIR: &str = "/dev/shm";

/// Creates (`create`: exclusively, failing if the name exists, then sized to `len`) or opens
/// the named segment at `path`, close-on-exec, never following a symbolic link.
pub(crate) fn open_named(path: &str, create: bool, len: u64) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let mut flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if create {
        flags |= OFlags::CREATE | OFlags::EXCL;
    }
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(NAMED_MODE))?;
    if create {
        if let Err(e) = rustix::fs::ftruncate(&fd, len) {
            let _ = rustix::fs::unlink(path);
            return Err(e.into());
        }
    }
    Ok(fd)
}

/// Removes the name `path` of a named segment (mappings and descriptors stay valid).
pub(crate) fn unlink_named(path: &str) -> io::Result<()> {
    Ok(rustix::fs::unlink(path)?)
}

/// The size of the regular file behind `fd` (`None` for anything else).
pub(crate) fn regular_len(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let st = rustix::fs::fstat(fd)?;
    let regular =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    Ok(regular.then_some(st.st_size as u64))
}

/// Writes `buf` at `offset` of a segment without mapping it.
pub(crate) fn write_at(fd: BorrowedFd<'_>, offset: u64, buf: &[u8]) -> io::Result<()> {
    let n = rustix::io::pwrite(fd, buf, offset)?;
    if n == buf.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

/// Allocates the memory of `[offset, offset + len)` of a segment now (zero-filled), so that
/// writing it later does not fault page by page.
pub(crate) fn allocate(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    Ok(rustix::fs::fallocate(
        fd,
        FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )?)
}

impl Mapping {
    /// As [`Mapping::map`], with the page tables filled in at once (`MAP_POPULATE`): for a
    /// large segment that will be read or written whole, one system call instead of a fault
    /// per page.
    pub(crate) fn map_populated(
        fd: BorrowedFd<'_>,
        len: usize,
        control: usize,
    ) -> io::Result<Mapping> {
        Self::map_with(fd, len, control, MapFlags::POPULATE)
    }

    /// The length of the data region.
    pub(crate) fn data_len(&self) -> usize {
        self.len - self.control
    }

    /// The data region as bytes.
    ///
    /// Another process (or another mapping of the same segment in this one) may write these
    /// bytes while the slice lives; `crate::shm` documents that such writers must be
    /// synchronised with the readers. Within this mapping, no `&mut` view can coexist with
    /// this one (they need `&mut self`).
    pub(crate) fn data(&self) -> &[u8] {
        let p = self.data_ptr(self.control, self.data_len());
        // SAFETY: `p..p+data_len` is inside the mapping (checked), initialised (the kernel
        // zero-fills shared pages), and lives as long as `&self`; this mapping hands out no
        // `&mut` to it while `&self` is borrowed. Concurrent writes by other processes are
        // outside Rust's model and governed by the documented synchronisation rule.
        unsafe { std::slice::from_raw_parts(p, self.data_len()) }
    }

    /// The data region as mutable bytes (see [`Mapping::data`]).
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        let p = self.data_ptr(self.control, self.data_len());
        // SAFETY: as for `data`; `&mut self` makes this the only view through this mapping.
        unsafe { std::slice::from_raw_parts_mut(p, self.data_len()) }
    }

    /// The data region as 64-bit atomics (`None` if it is not a whole number of them; the
    /// region starts on a page boundary, so it is always aligned).
    pub(crate) fn data_atomic_u64(&self) -> Option<&[AtomicU64]> {
        let len = self.data_len();
        let p = self.data_ptr(self.control, len);
        if len % 8 != 0 || (p as usize) % 8 != 0 {
            return None;
        }
        // SAFETY: in bounds (checked), 8-aligned (checked), lives as long as `&self`.
        // `AtomicU64` has the size and alignment of `u64`; every access through it is
        // atomic, so sharing it with other processes' atomics is sound.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<AtomicU64>(), len / 8) })
    }

    /// The data region as 32-bit atomics (see [`Mapping::data_atomic_u64`]).
    pub(crate) fn data_atomic_u32(&self) -> Option<&[AtomicU32]> {
        let len = self.data_len();
        let p = self.data_ptr(self.control, len);
        if len % 4 != 0 || (p as usize) % 4 != 0 {
            return None;
        }
        // SAFETY: as for `data_atomic_u64`, with 4-byte size and alignment.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<AtomicU32>(), len / 4) })
    }
}
