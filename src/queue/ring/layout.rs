//! The layout of a queue segment's control region and the format of ring records (see
//! `README.md`, "Segment layout" and "Records").

use std::mem::size_of;
use std::time::Duration;

use super::at;
use crate::sys::robust;

/// `b"mpqueue\0"`, the first word of every queue segment.
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"mpqueue\0");
/// Bumped on any change to the layout or the protocol (2: our own robust locks; 3: early
/// wraps only when the queue is empty, `skip_at`, a backlog may span `C` bytes past a SKIP).
pub(super) const VERSION: u32 = 3;
/// Bytes of control region before the ring (one page on every supported platform).
pub(super) const HEADER_LEN: usize = 4096;
/// Smallest ring.
pub(crate) const MIN_CAPACITY: u64 = 64 << 10;
/// Largest ring a received handle may describe (address space, not memory).
pub(crate) const MAX_CAPACITY: u64 = 1 << 40;
/// Ring size of `Queue::new()` and friends.
pub(crate) const DEFAULT_CAPACITY: u64 = 1 << 30;
/// The part of the ring that steady traffic cycles through (see README "Memory").
pub(super) const RESIDENT: u64 = 1 << 20;
/// How long a consumer in the middle of an item sleeps before checking that the producer
/// is still alive, and how often `join` checks for a dead producer's half-counted item.
pub(super) const LIVENESS_TICK: Duration = Duration::from_millis(50);

/// Record header flags (bits 32..48 of the header word).
pub(super) const FIRST: u64 = 1;
pub(super) const LAST: u64 = 2;
pub(super) const SKIP: u64 = 4;
pub(super) const ABORT: u64 = 8;
/// Bits 48..64 of every record header: catches reading a header where there is none.
pub(super) const TAG: u64 = 0x7155;
/// Bit 0 of `tail`: the last published record is a chunk of an unfinished item.
pub(super) const OPEN: u64 = 1;
pub(super) const POS_MASK: u64 = !7;
/// Positions at or beyond this are corrupt (see `Ring::positions_ok`).
pub(super) const POS_LIMIT: u64 = 1 << 62;

/// Which queue flavour created a segment; a handle only opens its own flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    /// `Queue<T>`.
    Queue = 1,
    /// `SimpleQueue<T>`.
    Simple = 2,
    /// `JoinableQueue<T>`.
    Joinable = 3,
}

impl Kind {
    /// The public type's name, for error messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Queue => "Queue",
            Kind::Simple => "SimpleQueue",
            Kind::Joinable => "JoinableQueue",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layout of the control region. These structs are never built: they document the layout and
// give the offsets (`offset_of!`) at which the fields are accessed as atomics. Each group sits
// on its own 128-byte block so that producers and consumers do not share cache lines.
// ---------------------------------------------------------------------------------------------

/// The control region: page 0 of the segment. The ring (`capacity` bytes) follows it.
#[allow(dead_code)] // layout only
#[repr(C)]
pub(super) struct Header {
    pub(super) config: Config,
    pub(super) put_lock: LockSlot,
    pub(super) prod: Producer,
    pub(super) prod_wait: Sleeper,
    pub(super) get_lock: LockSlot,
    pub(super) cons: Consumer,
    pub(super) cons_wait: Sleeper,
    pub(super) join: Joinable,
    pub(super) skip: SkipMark,
}

/// Written once by the creator before the segment is shared; read-only afterwards.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
pub(super) struct Config {
    /// [`MAGIC`], stored last (Release) when the segment is ready.
    pub(super) magic: u64,
    /// [`VERSION`].
    pub(super) version: u32,
    /// [`HEADER_LEN`].
    pub(super) header_len: u32,
    /// Ring size `C` in bytes: a power of two in `[MIN_CAPACITY, MAX_CAPACITY]`.
    pub(super) capacity: u64,
    /// Soft wrap point `R` (`<= C`): producers wrap early past it when the queue is empty.
    pub(super) resident: u64,
    /// Python's `maxsize`: the most items queued at once; `u64::MAX` when unbounded.
    pub(super) max_items: u64,
    /// The creating flavour ([`Kind`]).
    pub(super) kind: u32,
    /// [`robust::FORMAT`] of the creator (layout check).
    pub(super) lock_format: u32,
    /// Hash of the item type's name, so a handle is not reopened with another item type.
    pub(super) type_hash: u64,
    /// Random at creation: with the file's identity, recognises a segment already mapped.
    pub(super) nonce: u64,
}

/// A robust process-shared lock (`sys::robust`: owner word and futex word).
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
pub(super) struct LockSlot([u8; robust::SLOT]);

/// Producer state; written only by the holder of `put_lock`.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
pub(super) struct Producer {
    /// End of the published records (a ring position, 8-aligned) | [`OPEN`].
    pub(super) tail: u64,
    /// Items completely published, ever.
    pub(super) puts: u64,
    /// Journal of the last item-completing publication: 1 while it is in progress.
    pub(super) jr_active: u64,
    /// Journal: the `tail` word being published.
    pub(super) jr_tail: u64,
    /// Journal: `puts` before the publication (restored if `tail` never moved).
    pub(super) jr_old_puts: u64,
    /// Ring offsets `[ext_lo, ext_hi)` beyond `resident` that may hold memory; 0,0 if none.
    pub(super) ext_lo: u64,
    /// See `ext_lo`.
    pub(super) ext_hi: u64,
}

/// Where the last SKIP record was written; on its own line, as consumers read it at every
/// record and producers write it once a lap.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
pub(super) struct SkipMark {
    /// Position of the last SKIP record written ([`NO_SKIP`] before the first); written
    /// under `put_lock` before the SKIP is published. A consumer whose next record is at this
    /// position takes it as that SKIP without reading it, so the producers may use the rest
    /// of its lap, the SKIP's own bytes included (README "Memory").
    pub(super) at: u64,
}

/// `skip_at` before any SKIP was written (no position is ever equal to it).
pub(super) const NO_SKIP: u64 = u64::MAX;

/// A sleeping flag and the futex word the sleeper waits on.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
pub(super) struct Sleeper {
    /// 1 while the lock holder of this side sleeps (only that holder ever sleeps here).
    pub(super) sleeping: u32,
    /// Bumped by the other side before each futex wake.
    pub(super) seq: u32,
}

/// Consumer state; written only by the holder of `get_lock`.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
pub(super) struct Consumer {
    /// Start of the unconsumed records (a ring position, 8-aligned).
    pub(super) head: u64,
    /// Items completely taken, ever.
    pub(super) gets: u64,
    /// Journal of the last item-completing consumption: 1 while in progress.
    pub(super) jr_active: u64,
    /// Journal: the `head` being published.
    pub(super) jr_head: u64,
    /// Journal: `gets` after it (applied if `head` did move).
    pub(super) jr_gets: u64,
    /// The process (`robust::process_identity`) that timed out in the middle of the item
    /// starting before `head` and keeps its first part: only it takes the rest. 0: none.
    pub(super) stash_owner: u64,
}

/// `JoinableQueue` state.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
pub(super) struct Joinable {
    /// `task_done` calls, ever; unfinished tasks = `puts - done`.
    pub(super) done: u64,
    /// Bumped when the unfinished count reaches zero.
    pub(super) seq: u32,
    /// Processes inside `join` (a dead joiner's count only costs a spurious wake).
    pub(super) waiters: u32,
}

const _: () = assert!(size_of::<Header>() <= HEADER_LEN);

/// What `crate::__chaos::queue` shows forgers of segments.
pub(crate) mod hooks {
    use super::at;
    pub(crate) const FIRST: u64 = super::FIRST;
    pub(crate) const RING: usize = super::HEADER_LEN;
    pub(crate) const TAG: u64 = super::TAG;
    pub(crate) const PUT_LOCK: usize = at!(put_lock);
    pub(crate) const GET_LOCK: usize = at!(get_lock);
    pub(crate) const LOCK_SLOT: usize = super::robust::SLOT;
    pub(crate) const TAIL: usize = at!(prod.tail);
    pub(crate) const HEAD: usize = at!(cons.head);
}

/// Offsets of one side's sleeper.
#[derive(Clone, Copy)]
pub(super) struct Side {
    pub(super) sleeping: usize,
    pub(super) seq: usize,
}
pub(super) const PRODUCERS: Side = Side {
    sleeping: at!(prod_wait.sleeping),
    seq: at!(prod_wait.seq),
};
pub(super) const CONSUMERS: Side = Side {
    sleeping: at!(cons_wait.sleeping),
    seq: at!(cons_wait.seq),
};
