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
                MapFlags::SHARED | MapFlags::NORESERVE,
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
