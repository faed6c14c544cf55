//! The shared-memory core of every queue flavour: a ring of variable-length records in a
//! sealed memfd, one robust lock per side, futex sleeps, crash repair, checks on everything
//! read from the segment (another process may have written anything there).
//!
//! The protocol (record format, publication order, what each repair does and why) is written
//! up in `README.md` next to this file; the comments in the code say *why* at each step.
//!
//! * `layout.rs`: the segment's control region (`#[repr(C)]`) and the record format;
//! * this file: creating and opening segments (with the checks a received handle must pass);
//! * `repair.rs`: taking the two robust locks, and repairing after a dead holder;
//! * `wait.rs`: spinning, sleeping and waking;
//! * `put.rs` / `get.rs`: the producer and consumer sides (and giving memory back);
//! * `join.rs`: `JoinableQueue`'s unfinished-task count.

mod get;
mod join;
mod layout;
mod put;
mod repair;
#[cfg(test)]
mod tests;
mod wait;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys::{robust, shm};
use layout::*;
pub(crate) use layout::{hooks, Kind, DEFAULT_CAPACITY, MAX_CAPACITY, MIN_CAPACITY};

/// The offset of a control-region field, e.g. `at!(prod.tail)`.
macro_rules! at {
    ($($f:tt)+) => {
        std::mem::offset_of!($crate::queue::ring::layout::Header, $($f)+)
    };
}
use at;

/// The error for a failed wait for a lock.
fn lock_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::TimedOut {
        Error::msg(ErrorKind::Timeout, "another process holds the queue's lock")
    } else {
        Error::io(e).context("waiting for the queue's lock")
    }
}

/// The error for a record that cannot be what the protocol wrote.
fn corrupt(what: String) -> Error {
    Error::msg(
        ErrorKind::Protocol,
        format!("the queue's shared memory is corrupt: {what}"),
    )
}

/// Holds one of the two locks; unlocks on drop.
struct Guard<'a> {
    ring: &'a Ring,
    off: usize,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The last handle of this process is going: the first part of an item kept here can
        // no longer be resumed, so let the other consumers drop the rest (README "Get").
        if self.stash_slot().and_then(|mut s| s.take()).is_some() {
            let _ = self.u64(at!(cons.stash_owner)).compare_exchange(
                robust::process_identity(),
                0,
                Relaxed,
                Relaxed,
            );
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Fails only if this thread does not hold the lock, which a Guard guarantees.
        let _ = robust::unlock(&self.ring.map, self.off);
    }
}

/// One process's view of a queue segment.
#[derive(Debug)]
pub(crate) struct Ring {
    fd: RegisteredFd,
    map: shm::Mapping,
    /// `C`: ring size, a power of two.
    cap: u64,
    /// `R`: soft wrap point.
    resident: u64,
    max_items: u64,
    /// Largest record (header included); larger items are split into chunks of this size.
    max_record: u64,
    kind: Kind,
    type_hash: u64,
    /// Identifies the segment among those this process maps (see `Ring::key`).
    key: Key,
    /// Process-local lower bounds of the other side's counters, so that the common case
    /// does not touch (and bounce) the other side's cache line. `seen_head` and `seen_gets`
    /// are only accessed under `put_lock`, `seen_tail` only under `get_lock`: the lock orders
    /// them, and the Acquire load that produced each value, between this process's threads.
    seen_head: AtomicU64,
    seen_gets: AtomicU64,
    seen_tail: AtomicU64,
    /// The first part of an item a `get` of this process timed out in (see `get.rs`,
    /// `stash_slot`).
    stash: std::sync::Mutex<Option<get::Stash>>,
}

/// What identifies a segment: its file (device, inode) and the creator's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    dev: u64,
    ino: u64,
    nonce: u64,
}

/// A value no other live segment is likely to have.
fn fresh_nonce(seed: usize) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(seed);
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The error for a descriptor that is not a queue of the expected flavour and item type.
fn type_error(kind: Kind, why: impl std::fmt::Display) -> String {
    format!(
        "the descriptor received as a {} handle is not one ({why}); a handle from another \
         program, or a different item type?",
        kind.name()
    )
}

impl Ring {
    /// Creates a segment with a ring of at least `capacity` bytes (rounded up to a power of
    /// two) holding at most `max_items` items (`u64::MAX`: unbounded).
    pub(crate) fn create(
        kind: Kind,
        type_hash: u64,
        capacity: u64,
        max_items: u64,
    ) -> Result<Ring> {
        let cap = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        let resident = cap.min(RESIDENT);
        let fd = fdreg::memfd("multiproc-queue", HEADER_LEN as u64 + cap)
            .map_err(|e| Error::io(e).context("creating the queue's shared memory"))?;
        let map = shm::Mapping::map(fd.as_fd(), HEADER_LEN + cap as usize, HEADER_LEN)
            .map_err(|e| Error::io(e).context("mapping the queue's shared memory"))?;
        robust::init(&map, at!(put_lock));
        robust::init(&map, at!(get_lock));
        let (dev, ino) = shm::identity(fd.as_fd()).map_err(Error::io)?;
        let key = Key {
            dev,
            ino,
            nonce: fresh_nonce(&map as *const _ as usize),
        };
        let ring = Ring::new(fd, map, cap, resident, max_items, kind, type_hash, key);
        ring.u64(at!(config.nonce)).store(key.nonce, Relaxed);
        ring.u32(at!(config.version)).store(VERSION, Relaxed);
        ring.u32(at!(config.header_len))
            .store(HEADER_LEN as u32, Relaxed);
        ring.u64(at!(config.capacity)).store(cap, Relaxed);
        ring.u64(at!(config.resident)).store(resident, Relaxed);
        ring.u64(at!(config.max_items)).store(max_items, Relaxed);
        ring.u32(at!(config.kind)).store(kind as u32, Relaxed);
        ring.u32(at!(config.lock_format))
            .store(robust::FORMAT, Relaxed);
        ring.u64(at!(config.type_hash)).store(type_hash, Relaxed);
        ring.u64(at!(skip.at)).store(NO_SKIP, Relaxed);
        ring.u64(at!(config.magic)).store(MAGIC, Release);
        Ok(ring)
    }

    #[allow(clippy::too_many_arguments)] // a private constructor, called twice
    fn new(
        fd: RegisteredFd,
        map: shm::Mapping,
        cap: u64,
        resident: u64,
        max_items: u64,
        kind: Kind,
        type_hash: u64,
        key: Key,
    ) -> Ring {
        Ring {
            fd,
            map,
            cap,
            resident,
            max_items,
            max_record: resident.min(cap) / 4,
            kind,
            type_hash,
            key,
            seen_head: AtomicU64::new(0),
            seen_gets: AtomicU64::new(0),
            seen_tail: AtomicU64::new(0),
            stash: std::sync::Mutex::new(None),
        }
    }

    /// Opens a segment received from another process, checking that it is a queue of the
    /// expected flavour and item type before touching anything in it.
    pub(crate) fn open(
        fd: RegisteredFd,
        kind: Kind,
        type_hash: u64,
    ) -> std::result::Result<Ring, String> {
        let len = shm::sealed_len(fd.as_fd())
            .map_err(|e| format!("inspecting a received queue handle: {e}"))?
            .ok_or_else(|| type_error(kind, "not a sealed shared-memory segment"))?;
        let cap = len.wrapping_sub(HEADER_LEN as u64);
        if len < HEADER_LEN as u64 + MIN_CAPACITY
            || len > HEADER_LEN as u64 + MAX_CAPACITY
            || !cap.is_power_of_two()
        {
            return Err(type_error(kind, format_args!("a segment of {len} bytes")));
        }
        // Map the header page alone first: the ring is only mapped once the header proves
        // this is one of our queues.
        let map = shm::Mapping::map(fd.as_fd(), HEADER_LEN, HEADER_LEN)
            .map_err(|e| format!("mapping a received queue: {e}"))?;
        let (dev, ino) =
            shm::identity(fd.as_fd()).map_err(|e| format!("inspecting a queue handle: {e}"))?;
        let header = map;
        if header.atomic_u64(at!(config.magic)).load(Acquire) != MAGIC {
            return Err(type_error(kind, "no queue header"));
        }
        let version = header.atomic_u32(at!(config.version)).load(Relaxed);
        if version != VERSION {
            return Err(type_error(
                kind,
                format_args!("queue layout version {version}, this build speaks {VERSION}"),
            ));
        }
        let resident = header.atomic_u64(at!(config.resident)).load(Relaxed);
        let max_items = header.atomic_u64(at!(config.max_items)).load(Relaxed);
        let layout_ok = header.atomic_u32(at!(config.header_len)).load(Relaxed)
            == HEADER_LEN as u32
            && header.atomic_u64(at!(config.capacity)).load(Relaxed) == cap
            && header.atomic_u32(at!(config.lock_format)).load(Relaxed) == robust::FORMAT
            && resident.is_power_of_two()
            && (MIN_CAPACITY..=cap).contains(&resident)
            && max_items >= 1;
        if !layout_ok {
            return Err(type_error(kind, "inconsistent queue header"));
        }
        let found = header.atomic_u32(at!(config.kind)).load(Relaxed);
        let found_hash = header.atomic_u64(at!(config.type_hash)).load(Relaxed);
        let key = Key {
            dev,
            ino,
            nonce: header.atomic_u64(at!(config.nonce)).load(Relaxed),
        };
        drop(header);
        let Some(found) = [Kind::Queue, Kind::Simple, Kind::Joinable]
            .into_iter()
            .find(|k| *k as u32 == found)
        else {
            return Err(type_error(kind, "unknown kind of queue"));
        };
        let map = shm::Mapping::map(fd.as_fd(), len as usize, HEADER_LEN)
            .map_err(|e| format!("mapping a received queue: {e}"))?;
        let ring = Ring::new(fd, map, cap, resident, max_items, found, found_hash, key);
        ring.check(kind, type_hash)?;
        Ok(ring)
    }

    /// Whether this segment is a `kind` queue of items of the type hashed `type_hash`.
    pub(crate) fn check(&self, kind: Kind, type_hash: u64) -> std::result::Result<(), String> {
        if self.kind != kind {
            return Err(type_error(
                kind,
                format_args!("it is a {}", self.kind.name()),
            ));
        }
        if self.type_hash != type_hash {
            return Err(type_error(kind, "its items are of another type"));
        }
        Ok(())
    }

    /// This segment's identity.
    pub(crate) fn key(&self) -> Key {
        self.key
    }

    /// The identity of the segment behind a received descriptor, read without mapping it;
    /// `None` if it cannot be a queue (the full checks of `open` then report why).
    pub(crate) fn peek_key(fd: BorrowedFd<'_>) -> Option<Key> {
        let (dev, ino) = shm::identity(fd).ok()?;
        let mut nonce = [0u8; 8];
        shm::read_at(fd, at!(config.nonce) as u64, &mut nonce).ok()?;
        Some(Key {
            dev,
            ino,
            nonce: u64::from_le_bytes(nonce),
        })
    }

    /// The segment's descriptor (to send the handle to another process).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Python's `maxsize`, `None` when unbounded.
    pub(crate) fn max_items(&self) -> Option<u64> {
        (self.max_items != u64::MAX).then_some(self.max_items)
    }

    /// The ring size in bytes.
    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.cap
    }

    /// The control-region word at `off` (an `at!` offset).
    fn u64(&self, off: usize) -> &AtomicU64 {
        self.map.atomic_u64(off)
    }

    /// As `u64`, for 32-bit words.
    fn u32(&self, off: usize) -> &AtomicU32 {
        self.map.atomic_u32(off)
    }

    /// Whether `head <= tail` are positions the protocol can produce: the published records
    /// fit in the ring (`tail - head <= C`, or up to `2C` when the record at `head` is the
    /// last SKIP written: `get_locked` and `read_header` check which), and neither is near
    /// overflowing (`2^62` bytes are centuries of traffic).
    fn positions_ok(&self, head: u64, tail: u64) -> bool {
        head <= tail && tail < POS_LIMIT && tail - head <= 2 * self.cap
    }

    /// Where ring position `pos` lives in the mapping.
    fn data_off(&self, pos: u64) -> usize {
        HEADER_LEN + (pos & (self.cap - 1)) as usize
    }

    /// Items queued now: approximate while others put and get.
    pub(crate) fn len(&self) -> u64 {
        // A process killed between publishing and counting leaves a count one off until
        // somebody repairs: do it now if that is what happened.
        self.repair_early();
        let gets = self.u64(at!(cons.gets)).load(Acquire);
        let puts = self.u64(at!(prod.puts)).load(Acquire);
        puts.saturating_sub(gets)
    }
}
