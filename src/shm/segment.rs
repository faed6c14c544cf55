//! The anonymous segment: a header page, then the data, in a size-sealed memfd.
//!
//! ```text
//! offset 0     header (written once by the creator, before the handle can travel)
//!   0  u64  magic  "mpshm\0\0\0"
//!   8  u32  version
//!  12  u32  kind            1 = SharedMemory (bytes), 2 = SharedVec<T>
//!  16  u64  data_len        bytes of data the creator asked for
//!  24  u64  elements        SharedVec: number of T (0 for SharedMemory)
//!  32  u32  elem_size       SharedVec: size_of::<T>() (1 for SharedMemory)
//!  36  u32  elem_align      SharedVec: align_of::<T>() (1 for SharedMemory)
//!  40  u64  elem_type       SharedVec: FNV-1a of type_name::<T>() (0 for SharedMemory)
//!  48  u32  header_len      4096
//!  64  u64  holders         SharedVec: live handles plus handles in flight (atomic)
//! offset 4096  data: data_len bytes, then unused bytes up to the segment's end (a page
//!              multiple; a recycled segment may be larger than its current data)
//! ```
//!
//! The header is read with `pread` and checked *before* the segment is mapped; after that only
//! `holders` is ever read again, so a holder that scribbles on the rest later changes nothing
//! for anyone who already opened it (and the sealed size cannot change at all). A segment is
//! rewritten (header and data) only by a process that claimed it for reuse, which requires
//! `holders` to be 0: nobody holds it and no handle to it is in flight (`vec.rs`).

use std::os::fd::AsFd;

use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys::shm;

/// `"mpshm\0\0\0"` little-endian.
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"mpshm\0\0\0");
/// The header layout version; a change to the header bumps it.
pub(super) const VERSION: u32 = 1;
/// Bytes before the data (one page on every Linux architecture we build for; fixed, so the
/// layout does not depend on the machine).
pub(super) const HEADER_LEN: usize = 4096;
/// The largest data region (1 TiB), so a forged header cannot ask for an absurd mapping.
pub(crate) const MAX_LEN: u64 = 1 << 40;
/// The meaningful prefix of the header (without `holders`).
const HEADER_BYTES: usize = 52;
/// The offset of the `holders` count.
pub(super) const HOLDERS: usize = 64;

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `SharedMemory`: untyped bytes.
    Bytes = 1,
    /// `SharedVec<T>`.
    Vec = 2,
}

/// The element a segment is typed with (`Elem::BYTES` for untyped bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Elem {
    pub(super) size: u32,
    pub(super) align: u32,
    pub(super) type_hash: u64,
}

impl Elem {
    pub(super) const BYTES: Elem = Elem {
        size: 1,
        align: 1,
        type_hash: 0,
    };

    /// The element description of `T`.
    pub(super) fn of<T>() -> Elem {
        Elem {
            size: std::mem::size_of::<T>() as u32,
            align: std::mem::align_of::<T>() as u32,
            type_hash: std::any::type_name::<T>()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                }),
        }
    }
}

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: Kind,
    pub(super) data_len: u64,
    pub(super) elements: u64,
    pub(super) elem: Elem,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.data_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.elements.to_le_bytes());
        b[32..36].copy_from_slice(&self.elem.size.to_le_bytes());
        b[36..40].copy_from_slice(&self.elem.align.to_le_bytes());
        b[40..48].copy_from_slice(&self.elem.type_hash.to_le_bytes());
        b[48..52].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b
    }
}

/// The total size of a segment with `data_len` bytes of data.
pub(super) fn segment_len(data_len: u64) -> u64 {
    let page = shm::page_size() as u64;
    HEADER_LEN as u64 + data_len.div_ceil(page) * page
}

/// Creates an anonymous segment for `header` (its header written, nothing mapped).
pub(super) fn create(header: Header, what: &'static str) -> Result<RegisteredFd> {
    if (header.data_len == 0 && header.kind == Kind::Bytes) || header.data_len > MAX_LEN {
        return Err(super::invalid(format!(
            "{what}: a shared-memory segment holds 1 byte to 1 TiB; {} bytes were asked for",
            header.data_len
        )));
    }
    let fd = fdreg::memfd("multiproc-shm", segment_len(header.data_len))
        .map_err(|e| Error::io(e).context(what))?;
    write_header(&fd, header).map_err(|e| e.context(what))?;
    Ok(fd)
}

/// Writes `header` into the segment (at creation, or when a claimed segment is reused).
pub(super) fn write_header(fd: &RegisteredFd, header: Header) -> Result<()> {
    shm::write_at(fd.as_fd(), 0, &header.encode()).map_err(Error::io)
}

/// The error for a received descriptor that is not the segment it should be.
pub(super) fn foreign(expected: &str, why: impl std::fmt::Display) -> String {
    format!(
        "the descriptor received as a {expected} handle is not one ({why}); a handle from \
         another program or another version of it, or a different element type?"
    )
}

/// Reads and checks the header of a received descriptor, before anything is mapped:
/// a sealed memfd of the size the header implies, our magic and version, the expected kind
/// and (for `Kind::Vec`) element. Returns the header and the segment's data capacity (the
/// data may use less of it).
pub(super) fn check(
    fd: &RegisteredFd,
    kind: Kind,
    elem: Elem,
    expected: &str,
) -> std::result::Result<(Header, u64), String> {
    let len = shm::sealed_len(fd.as_fd())
        .map_err(|e| format!("inspecting a received {expected} handle: {e}"))?
        .ok_or_else(|| foreign(expected, "not a size-sealed shared-memory segment"))?;
    if len < HEADER_LEN as u64 || len > segment_len(MAX_LEN) {
        return Err(foreign(expected, format_args!("a segment of {len} bytes")));
    }
    let mut b = [0u8; HEADER_BYTES];
    shm::read_at(fd.as_fd(), 0, &mut b)
        .map_err(|e| format!("reading a received {expected} handle: {e}"))?;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    if u64_at(0) != MAGIC {
        return Err(foreign(expected, "no shared-memory header"));
    }
    let version = u32_at(8);
    if version != VERSION {
        return Err(foreign(
            expected,
            format_args!("header version {version}, this build speaks {VERSION}"),
        ));
    }
    let found_kind = match u32_at(12) {
        1 => Kind::Bytes,
        2 => Kind::Vec,
        k => return Err(foreign(expected, format_args!("unknown segment kind {k}"))),
    };
    let header = Header {
        kind: found_kind,
        data_len: u64_at(16),
        elements: u64_at(24),
        elem: Elem {
            size: u32_at(32),
            align: u32_at(36),
            type_hash: u64_at(40),
        },
    };
    if u32_at(48) != HEADER_LEN as u32
        || (header.data_len == 0 && found_kind == Kind::Bytes)
        || header.data_len > MAX_LEN
        || segment_len(header.data_len) > len
        || (kind == Kind::Bytes && segment_len(header.data_len) != len)
    {
        return Err(foreign(
            expected,
            format_args!(
                "inconsistent header: {} data bytes in a segment of {len}",
                header.data_len
            ),
        ));
    }
    if found_kind != kind {
        let name = |k| match k {
            Kind::Bytes => "SharedMemory",
            Kind::Vec => "SharedVec",
        };
        return Err(foreign(
            expected,
            format_args!("it is a {}", name(found_kind)),
        ));
    }
    if kind == Kind::Vec {
        if header.elem != elem {
            return Err(foreign(
                expected,
                format_args!(
                    "its elements are of another type ({} bytes, aligned to {})",
                    header.elem.size, header.elem.align
                ),
            ));
        }
        let bytes = header.elements.checked_mul(u64::from(elem.size));
        if bytes != Some(header.data_len) {
            return Err(foreign(
                expected,
                "its element count does not match its size",
            ));
        }
    }
    Ok((header, len - HEADER_LEN as u64))
}

/// Maps the header and `data_len` bytes of data of a checked segment (`populate`: allocate
/// the memory and fill the page tables now, for a new segment that will be written whole).
pub(super) fn map(fd: &RegisteredFd, data_len: u64, populate: bool) -> Result<shm::Mapping> {
    let len = HEADER_LEN + data_len as usize;
    if populate {
        shm::allocate(fd.as_fd(), HEADER_LEN as u64, data_len)
            .map_err(|e| Error::io(e).context("allocating shared memory"))?;
    }
    let res = if populate {
        shm::Mapping::map_populated(fd.as_fd(), len, HEADER_LEN)
    } else {
        shm::Mapping::map(fd.as_fd(), len, HEADER_LEN)
    };
    res.map_err(|e| Error::io(e).context("mapping shared memory"))
}

/// Error for a `Decode` failure with `msg` (used by the typed views).
pub(super) fn decode_error(msg: String) -> Error {
    Error::msg(ErrorKind::Decode, msg)
}
