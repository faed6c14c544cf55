//! The segment every primitive lives in: a size-sealed memfd of one control page (plus the
//! data pages of a `Value`/`Array`), with a header checked on receipt before anything is
//! mapped. The layout is written up in `README.md` next to this file.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::fdreg::RegisteredFd;
use crate::sys::{robust, shm};

/// Bytes of the control region (header, lock, words, slots); the data region follows.
pub(crate) const CONTROL: usize = 4096;
/// The robust lock of `Lock`, `RLock`, `Barrier`, `Value`, `Array`.
pub(crate) const LOCK: usize = 64;
/// The first 32-bit word of a primitive's own state (`W0`..`W3` at 128, 132, 136, 140).
pub(crate) const W0: usize = 128;
/// The 64-bit word at 144 (the Condition's ticket counter).
pub(crate) const Q0: usize = 144;
/// The first waiter slot (Condition, Barrier).
pub(crate) const SLOTS: usize = 256;
/// Bytes per waiter slot: `ident u64`, `ticket u64`, `state u32`, padding.
pub(crate) const SLOT_LEN: usize = 32;
/// Waiter slots in a control page.
pub(crate) const MAX_SLOTS: usize = (CONTROL - SLOTS) / SLOT_LEN;

const MAGIC: u64 = 0x6d70_7379_6e63_0001; // "mpsync" + 1
const VERSION: u32 = 1;
/// The largest data region accepted (1 TiB): a header claiming more is forged.
const MAX_DATA: u64 = 1 << 40;

// Header offsets (all little-endian words, read with `pread` before mapping).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_KIND: usize = 12;
const H_LOCK_FORMAT: usize = 16;
const H_ELEM_SIZE: usize = 20;
const H_ELEM_ALIGN: usize = 24;
const H_ELEM_HASH: usize = 32;
const H_COUNT: usize = 40;
const H_PARAM: usize = 48;
const HEADER: usize = 56;

/// Which primitive a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    BoundedSemaphore = 4,
    Event = 5,
    Condition = 6,
    Barrier = 7,
    Value = 8,
    Array = 9,
    RawValue = 10,
    RawArray = 11,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Lock,
        Kind::RLock,
        Kind::Semaphore,
        Kind::BoundedSemaphore,
        Kind::Event,
        Kind::Condition,
        Kind::Barrier,
        Kind::Value,
        Kind::Array,
        Kind::RawValue,
        Kind::RawArray,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Lock => "Lock",
            Kind::RLock => "RLock",
            Kind::Semaphore => "Semaphore",
            Kind::BoundedSemaphore => "BoundedSemaphore",
            Kind::Event => "Event",
            Kind::Condition => "Condition",
            Kind::Barrier => "Barrier",
            Kind::Value => "Value",
            Kind::Array => "Array",
            Kind::RawValue => "RawValue",
            Kind::RawArray => "RawArray",
        }
    }

    /// Whether the segment has a data region.
    fn has_data(self) -> bool {
        matches!(
            self,
            Kind::Value | Kind::Array | Kind::RawValue | Kind::RawArray
        )
    }
}

/// The element type of a `Value`/`Array` (all zero for the other primitives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elem {
    size: u32,
    align: u32,
    hash: u64,
}

impl Elem {
    pub(crate) const NONE: Elem = Elem {
        size: 0,
        align: 0,
        hash: 0,
    };

    /// `T`'s size, alignment and a hash (FNV-1a) of its name.
    pub(crate) fn of<T>() -> Elem {
        let hash = std::any::type_name::<T>()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        Elem {
            size: std::mem::size_of::<T>() as u32,
            align: std::mem::align_of::<T>() as u32,
            hash,
        }
    }
}

/// Bytes of the data region for `count` elements: whole pages.
fn data_len(elem: Elem, count: u64) -> Option<u64> {
    let bytes = count.checked_mul(u64::from(elem.size))?;
    let len = bytes.checked_add(CONTROL as u64 - 1)? / CONTROL as u64 * CONTROL as u64;
    (len <= MAX_DATA).then_some(len)
}

/// One process's mapping of a primitive's segment.
#[derive(Debug)]
pub(crate) struct Segment {
    fd: RegisteredFd,
    map: shm::Mapping,
    count: u64,
    param: u64,
    data: usize,
}

/// The error for a received descriptor that is not the primitive expected.
fn refused(kind: Kind, why: impl std::fmt::Display) -> String {
    format!(
        "the descriptor received as a multiproc {} handle is not one ({why}); a handle from \
         another program or build, or one sent for another type?",
        kind.name()
    )
}

impl Segment {
    /// Creates a segment for `kind` with `count` elements of `elem` and the kind's parameter
    /// (`Barrier` parties, `BoundedSemaphore` bound).
    pub(crate) fn create(kind: Kind, elem: Elem, count: u64, param: u64) -> Result<Segment> {
        let data = if kind.has_data() {
            if elem.size == 0 || elem.align as usize > CONTROL {
                return Err(Error::msg(
                    crate::ErrorKind::Unsupported,
                    format!(
                        "a shared {} of a zero-sized or more than {CONTROL}-aligned type",
                        kind.name()
                    ),
                ));
            }
            data_len(elem, count).ok_or_else(|| {
                Error::msg(
                    crate::ErrorKind::TooLarge,
                    format!("a shared {} of {count} elements is too large", kind.name()),
                )
            })?
        } else {
            0
        };
        let len = CONTROL as u64 + data;
        let fd = crate::fdreg::memfd("multiproc-sync", len)
            .map_err(|e| Error::io(e).context("creating a primitive's shared memory"))?;
        let map = shm::Mapping::map(fd.as_fd(), len as usize, CONTROL)
            .map_err(|e| Error::io(e).context("mapping a primitive's shared memory"))?;
        robust::init(&map, LOCK);
        let seg = Segment {
            fd,
            map,
            count,
            param,
            data: data as usize,
        };
        seg.u32(H_VERSION).store(VERSION, Relaxed);
        seg.u32(H_KIND).store(kind as u32, Relaxed);
        seg.u32(H_LOCK_FORMAT).store(robust::FORMAT, Relaxed);
        seg.u32(H_ELEM_SIZE).store(elem.size, Relaxed);
        seg.u32(H_ELEM_ALIGN).store(elem.align, Relaxed);
        seg.u64(H_ELEM_HASH).store(elem.hash, Relaxed);
        seg.u64(H_COUNT).store(count, Relaxed);
        seg.u64(H_PARAM).store(param, Relaxed);
        seg.u64(H_MAGIC).store(MAGIC, Release);
        Ok(seg)
    }

    /// Opens a received segment after checking, without mapping it, that it is a sealed
    /// segment of one of `kinds` with elements of `elem`: size, seals, magic, version, lock
    /// format, kind, element type, and a size that matches the header.
    pub(crate) fn open(
        fd: RegisteredFd,
        kinds: &[Kind],
        elem: Elem,
    ) -> std::result::Result<Segment, String> {
        let want = kinds[0];
        let len = shm::sealed_len(fd.as_fd())
            .map_err(|e| format!("inspecting a received {} handle: {e}", want.name()))?
            .ok_or_else(|| refused(want, "not a sealed shared-memory segment"))?;
        if len < CONTROL as u64 {
            return Err(refused(want, format_args!("a segment of {len} bytes")));
        }
        let mut h = [0u8; HEADER];
        shm::read_at(fd.as_fd(), 0, &mut h)
            .map_err(|e| format!("reading a received {} handle: {e}", want.name()))?;
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        if u64_at(H_MAGIC) != MAGIC {
            return Err(refused(want, "no multiproc primitive header"));
        }
        if u32_at(H_VERSION) != VERSION || u32_at(H_LOCK_FORMAT) != robust::FORMAT {
            return Err(refused(
                want,
                format_args!(
                    "layout version {}, this build speaks {VERSION}",
                    u32_at(H_VERSION)
                ),
            ));
        }
        let Some(kind) = Kind::ALL.into_iter().find(|k| *k as u32 == u32_at(H_KIND)) else {
            return Err(refused(want, "an unknown kind of primitive"));
        };
        if !kinds.contains(&kind) {
            return Err(refused(want, format_args!("it is a {}", kind.name())));
        }
        let found = Elem {
            size: u32_at(H_ELEM_SIZE),
            align: u32_at(H_ELEM_ALIGN),
            hash: u64_at(H_ELEM_HASH),
        };
        // `Elem::NONE` asks for no element type: a `Lock` handle on a `Value`'s lock.
        if kind.has_data() && elem != Elem::NONE && found != elem {
            return Err(refused(
                want,
                format_args!(
                    "its elements are of another type ({} bytes, align {}), not the {} bytes, \
                     align {} expected",
                    found.size, found.align, elem.size, elem.align
                ),
            ));
        }
        let count = u64_at(H_COUNT);
        let data = if kind.has_data() {
            data_len(found, count)
        } else {
            Some(0)
        };
        if data.map(|d| d + CONTROL as u64) != Some(len) || (kind == Kind::Value && count != 1) {
            return Err(refused(
                want,
                format_args!("a {len}-byte segment for {count} elements"),
            ));
        }
        let param = u64_at(H_PARAM);
        let map = shm::Mapping::map(fd.as_fd(), len as usize, CONTROL)
            .map_err(|e| format!("mapping a received {}: {e}", want.name()))?;
        Ok(Segment {
            fd,
            map,
            count,
            param,
            data: len as usize - CONTROL,
        })
    }

    pub(crate) fn map(&self) -> &shm::Mapping {
        &self.map
    }

    /// Elements in the data region.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The kind's parameter, as created (read once from the header).
    pub(crate) fn param(&self) -> u64 {
        self.param
    }

    /// Bytes of the data region.
    pub(crate) fn data_len(&self) -> usize {
        self.data
    }

    pub(crate) fn u32(&self, off: usize) -> &AtomicU32 {
        self.map.atomic_u32(off)
    }

    pub(crate) fn u64(&self, off: usize) -> &AtomicU64 {
        self.map.atomic_u64(off)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Serialises a segment as its descriptor (into the codec's descriptor table).
pub(crate) struct SendFd<'a>(pub(crate) &'a Segment);

impl Serialize for SendFd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::codec::serialize_fd(self.0.fd(), s)
    }
}

/// A received descriptor, not yet checked.
pub(crate) struct RecvFd(pub(crate) RegisteredFd);

impl<'de> Deserialize<'de> for RecvFd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::codec::deserialize_fd(d).map(RecvFd)
    }
}

impl RecvFd {
    /// Checks and maps the segment, turning a refusal into `E`'s error.
    pub(crate) fn open<E: serde::de::Error>(
        self,
        kinds: &[Kind],
        elem: Elem,
    ) -> std::result::Result<std::sync::Arc<Segment>, E> {
        match Segment::open(self.0, kinds, elem) {
            Ok(s) => Ok(std::sync::Arc::new(s)),
            Err(msg) => crate::codec::custom(msg, E::custom),
        }
    }
}

/// Receives one segment of one of `kinds`.
pub(crate) fn receive<'de, D: Deserializer<'de>>(
    d: D,
    kinds: &[Kind],
    elem: Elem,
) -> std::result::Result<std::sync::Arc<Segment>, D::Error> {
    RecvFd::deserialize(d)?.open(kinds, elem)
}
