//! The shared-memory core of every queue flavour: a ring of variable-length records in a
//! sealed memfd, one robust mutex per side, futex sleeps, crash repair.
//!
//! The protocol (record format, publication order, what each repair does and why) is written
//! up in `README.md` next to this file; the comments here say *why* at each step.

use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::{futex, robust, shm};

/// `b"mpqueue\0"`, the first word of every queue segment.
const MAGIC: u64 = u64::from_le_bytes(*b"mpqueue\0");
/// Bumped on any change to the layout or the protocol.
const VERSION: u32 = 1;
/// Bytes of control region before the ring (one page on every supported platform).
const HEADER_LEN: usize = 4096;
/// Smallest ring.
pub(crate) const MIN_CAPACITY: u64 = 64 << 10;
/// Largest ring a received handle may describe (address space, not memory).
pub(crate) const MAX_CAPACITY: u64 = 1 << 40;
/// Ring size of `Queue::new()` and friends.
pub(crate) const DEFAULT_CAPACITY: u64 = 1 << 30;
/// The part of the ring that steady traffic cycles through (see README "Memory").
const RESIDENT: u64 = 1 << 20;
/// How long a consumer in the middle of an item sleeps before checking that the producer
/// is still alive, and how often `join` checks for a dead producer's half-counted item.
const LIVENESS_TICK: Duration = Duration::from_millis(50);

/// Record header flags (bits 32..48 of the header word).
const FIRST: u64 = 1;
const LAST: u64 = 2;
const SKIP: u64 = 4;
const ABORT: u64 = 8;
/// Bits 48..64 of every record header: catches reading a header where there is none.
const TAG: u64 = 0x7155;
/// Bit 0 of `tail`: the last published record is a chunk of an unfinished item.
const OPEN: u64 = 1;
const POS_MASK: u64 = !7;

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
    fn name(self) -> &'static str {
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
struct Header {
    config: Config,
    put_lock: LockSlot,
    prod: Producer,
    prod_wait: Sleeper,
    get_lock: LockSlot,
    cons: Consumer,
    cons_wait: Sleeper,
    join: Joinable,
}

/// Written once by the creator before the segment is shared; read-only afterwards.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
struct Config {
    /// [`MAGIC`], stored last (Release) when the segment is ready.
    magic: u64,
    /// [`VERSION`].
    version: u32,
    /// [`HEADER_LEN`].
    header_len: u32,
    /// Ring size `C` in bytes: a power of two in `[MIN_CAPACITY, MAX_CAPACITY]`.
    capacity: u64,
    /// Soft wrap point `R` (`<= C`): producers wrap early past it when the queue is shallow.
    resident: u64,
    /// Python's `maxsize`: the most items queued at once; `u64::MAX` when unbounded.
    max_items: u64,
    /// The creating flavour ([`Kind`]).
    kind: u32,
    /// `size_of::<pthread_mutex_t>()` of the creator (layout check).
    mutex_size: u32,
    /// Hash of the item type's name, so a handle is not reopened with another item type.
    type_hash: u64,
    /// Random at creation: with the file's identity, recognises a segment already mapped.
    nonce: u64,
}

/// A robust process-shared mutex (`sys::robust`).
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
struct LockSlot([u8; robust::SLOT]);

/// Producer state; written only by the holder of `put_lock`.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
struct Producer {
    /// End of the published records (a ring position, 8-aligned) | [`OPEN`].
    tail: u64,
    /// Items completely published, ever.
    puts: u64,
    /// Journal of the last item-completing publication: 1 while it is in progress.
    jr_active: u64,
    /// Journal: the `tail` word being published.
    jr_tail: u64,
    /// Journal: `puts` before the publication (restored if `tail` never moved).
    jr_old_puts: u64,
    /// Ring offsets `[ext_lo, ext_hi)` beyond `resident` that may hold memory; 0,0 if none.
    ext_lo: u64,
    /// See `ext_lo`.
    ext_hi: u64,
}

/// A sleeping flag and the futex word the sleeper waits on.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
struct Sleeper {
    /// 1 while the lock holder of this side sleeps (only that holder ever sleeps here).
    sleeping: u32,
    /// Bumped by the other side before each futex wake.
    seq: u32,
}

/// Consumer state; written only by the holder of `get_lock`.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
struct Consumer {
    /// Start of the unconsumed records (a ring position, 8-aligned).
    head: u64,
    /// Items completely taken, ever.
    gets: u64,
    /// Journal of the last item-completing consumption: 1 while in progress.
    jr_active: u64,
    /// Journal: the `head` being published.
    jr_head: u64,
    /// Journal: `gets` after it (applied if `head` did move).
    jr_gets: u64,
}

/// `JoinableQueue` state.
#[allow(dead_code)] // layout only
#[repr(C, align(128))]
struct Joinable {
    /// `task_done` calls, ever; unfinished tasks = `puts - done`.
    done: u64,
    /// Bumped when the unfinished count reaches zero.
    seq: u32,
    /// Processes inside `join` (a dead joiner's count only costs a spurious wake).
    waiters: u32,
}

const _: () = assert!(size_of::<Header>() <= HEADER_LEN);

macro_rules! at {
    ($($f:tt)+) => {
        offset_of!(Header, $($f)+)
    };
}

/// Offsets of one side's sleeper.
#[derive(Clone, Copy)]
struct Side {
    sleeping: usize,
    seq: usize,
}
const PRODUCERS: Side = Side {
    sleeping: at!(prod_wait.sleeping),
    seq: at!(prod_wait.seq),
};
const CONSUMERS: Side = Side {
    sleeping: at!(cons_wait.sleeping),
    seq: at!(cons_wait.seq),
};

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Ready,
    TimedOut,
    /// A liveness tick passed (only when asked for ticks).
    Tick,
}

/// Spin, then yield, then park: how long a waiter stays on the CPU before it sleeps in the
/// kernel. Spinning covers the gap between two puts of a busy producer (~100 ns) without
/// making that producer pay a futex wake (several microseconds in a VM); giving up the CPU
/// soon matters when processes outnumber cores.
struct Backoff {
    start: Option<Instant>,
    yields: u32,
}

/// How long a waiter spins before it gives up the CPU.
const SPIN: Duration = Duration::from_micros(5);
/// How many times it then yields before it sleeps in the kernel (lets a producer that shares
/// its CPU run first, without the cost of a futex wake).
const YIELDS: u32 = 2;

impl Backoff {
    fn new() -> Self {
        Backoff {
            start: None,
            yields: 0,
        }
    }

    /// Waits a little; `false` when it is time to sleep in the kernel.
    fn snooze(&mut self) -> bool {
        let start = *self.start.get_or_insert_with(Instant::now);
        if start.elapsed() < SPIN {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
            return true;
        }
        if self.yields < YIELDS {
            self.yields += 1;
            std::thread::yield_now();
            return true;
        }
        false
    }

    /// A short spin for lock acquisition (holders keep a lock for one copy).
    fn spin_lock(&mut self) -> bool {
        let start = *self.start.get_or_insert_with(Instant::now);
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        start.elapsed() < SPIN
    }
}

fn lock_error(e: std::io::Error, what: &'static str) -> Error {
    if e.raw_os_error() == Some(libc::ENOTRECOVERABLE) {
        Error::msg(
            ErrorKind::Protocol,
            "the queue's lock is unrecoverable (a process unlocked it without repairing)",
        )
    } else {
        Error::io(e).context(what)
    }
}

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

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Fails only if this thread does not hold the lock, which a Guard guarantees.
        let _ = robust::unlock(&self.ring.map, self.off);
    }
}

/// One process's view of a queue segment.
#[derive(Debug)]
pub(crate) struct Ring {
    fd: OwnedFd,
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
}

/// What identifies a segment: its file (device, inode) and the creator's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    dev: u64,
    ino: u64,
    nonce: u64,
}

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
        let fd = shm::create("multiproc-queue", HEADER_LEN as u64 + cap)
            .map_err(|e| Error::io(e).context("creating the queue's shared memory"))?;
        let map = shm::Mapping::map(fd.as_fd(), HEADER_LEN + cap as usize, HEADER_LEN)
            .map_err(|e| Error::io(e).context("mapping the queue's shared memory"))?;
        robust::init(&map, at!(put_lock)).map_err(|e| lock_error(e, "creating a queue lock"))?;
        robust::init(&map, at!(get_lock)).map_err(|e| lock_error(e, "creating a queue lock"))?;
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
        ring.u32(at!(config.mutex_size))
            .store(size_of::<libc::pthread_mutex_t>() as u32, Relaxed);
        ring.u64(at!(config.type_hash)).store(type_hash, Relaxed);
        ring.u64(at!(config.magic)).store(MAGIC, Release);
        Ok(ring)
    }

    #[allow(clippy::too_many_arguments)] // a private constructor, called twice
    fn new(
        fd: OwnedFd,
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
        }
    }

    /// Opens a segment received from another process, checking that it is a queue of the
    /// expected flavour and item type before touching anything in it.
    pub(crate) fn open(
        fd: OwnedFd,
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
        let key = Key { dev, ino, nonce: 0 };
        let probe = Ring::new(fd, map, cap, cap, 1, kind, type_hash, key);
        if probe.u64(at!(config.magic)).load(Acquire) != MAGIC {
            return Err(type_error(kind, "no queue header"));
        }
        let version = probe.u32(at!(config.version)).load(Relaxed);
        if version != VERSION {
            return Err(type_error(
                kind,
                format_args!("queue layout version {version}, this build speaks {VERSION}"),
            ));
        }
        let resident = probe.u64(at!(config.resident)).load(Relaxed);
        let max_items = probe.u64(at!(config.max_items)).load(Relaxed);
        let layout_ok = probe.u32(at!(config.header_len)).load(Relaxed) == HEADER_LEN as u32
            && probe.u64(at!(config.capacity)).load(Relaxed) == cap
            && probe.u32(at!(config.mutex_size)).load(Relaxed)
                == size_of::<libc::pthread_mutex_t>() as u32
            && resident.is_power_of_two()
            && (MIN_CAPACITY..=cap).contains(&resident)
            && max_items >= 1;
        if !layout_ok {
            return Err(type_error(kind, "inconsistent queue header"));
        }
        let found = probe.u32(at!(config.kind)).load(Relaxed);
        let found_hash = probe.u64(at!(config.type_hash)).load(Relaxed);
        let key = Key {
            nonce: probe.u64(at!(config.nonce)).load(Relaxed),
            ..key
        };
        let Ring {
            fd, map: header, ..
        } = probe;
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

    fn u64(&self, off: usize) -> &AtomicU64 {
        self.map.atomic_u64(off)
    }

    fn u32(&self, off: usize) -> &AtomicU32 {
        self.map.atomic_u32(off)
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

    // -----------------------------------------------------------------------------------------
    // Locks and repair
    // -----------------------------------------------------------------------------------------

    fn lock(&self, off: usize, deadline: Option<Instant>) -> Result<(Guard<'_>, bool)> {
        let mut backoff = Backoff::new();
        let got = loop {
            match robust::try_lock(&self.map, off).map_err(|e| lock_error(e, "queue lock"))? {
                Some(a) => break a,
                None if backoff.spin_lock() => {}
                None => {
                    break robust::lock(&self.map, off, deadline)
                        .map_err(|e| lock_error(e, "waiting for the queue lock"))?
                }
            }
        };
        Ok((
            Guard { ring: self, off },
            got == robust::Acquired::OwnerDied,
        ))
    }

    /// Takes `put_lock`, repairing after a producer that died holding it, and terminates an
    /// item a previous holder left unfinished.
    fn lock_put(&self, deadline: Option<Instant>) -> Result<Guard<'_>> {
        let (g, died) = self.lock(at!(put_lock), deadline)?;
        if died {
            self.repair_producer()?;
        }
        self.close_open_item();
        Ok(g)
    }

    /// Undoes or completes what a dead producer left half done. Idempotent: if we die here
    /// the next locker is told the owner died again and redoes it.
    fn repair_producer(&self) -> Result<()> {
        // The dead holder may have been the one sleeping for space.
        self.u32(PRODUCERS.sleeping).store(0, Relaxed);
        if self.u64(at!(prod.jr_active)).load(Acquire) != 0 {
            // `puts` is raised before `tail` moves: if the tail never moved, take it back.
            if self.u64(at!(prod.tail)).load(Acquire) != self.u64(at!(prod.jr_tail)).load(Relaxed) {
                let old = self.u64(at!(prod.jr_old_puts)).load(Relaxed);
                self.u64(at!(prod.puts)).store(old, Release);
            }
            self.u64(at!(prod.jr_active)).store(0, Release);
        }
        robust::mark_consistent(&self.map, at!(put_lock))
            .map_err(|e| lock_error(e, "repairing the queue"))
    }

    /// If the last published record is a chunk of an unfinished item (its producer died or
    /// gave up), publishes an ABORT record so consumers drop the partial item. The producer
    /// reserved 8 free bytes for exactly this when it published the chunk.
    fn close_open_item(&self) {
        let tail = self.u64(at!(prod.tail)).load(Relaxed);
        if tail & OPEN == 0 {
            return;
        }
        let pos = tail & POS_MASK;
        debug_assert!(
            pos + 8 - self.head_pos(true) <= self.cap,
            "ABORT reserve missing"
        );
        self.write_header(pos, 0, ABORT);
        self.note_ext(pos, pos + 8);
        self.u64(at!(prod.tail)).store(pos + 8, Release);
        self.wake(CONSUMERS);
    }

    /// Takes `get_lock`, repairing after a consumer that died holding it.
    fn lock_get(&self, deadline: Option<Instant>) -> Result<Guard<'_>> {
        let (g, died) = self.lock(at!(get_lock), deadline)?;
        if died {
            self.repair_consumer()?;
        }
        Ok(g)
    }

    /// Completes what a dead consumer left half done (idempotent, like `repair_producer`).
    fn repair_consumer(&self) -> Result<()> {
        self.u32(CONSUMERS.sleeping).store(0, Relaxed);
        if self.u64(at!(cons.jr_active)).load(Acquire) != 0 {
            // `gets` is raised after `head` moves: if the head moved, finish the job.
            if self.u64(at!(cons.head)).load(Acquire) == self.u64(at!(cons.jr_head)).load(Relaxed) {
                let gets = self.u64(at!(cons.jr_gets)).load(Relaxed);
                self.u64(at!(cons.gets)).store(gets, Release);
            }
            self.u64(at!(cons.jr_active)).store(0, Release);
        }
        // Chunks of an item the dead consumer had started are recognised by their flags
        // (no FIRST) and dropped by the normal get path: nothing else to repair.
        robust::mark_consistent(&self.map, at!(get_lock))
            .map_err(|e| lock_error(e, "repairing the queue"))
    }

    /// Repairs now if a lock's owner died (cheap when none did: a read of each lock word).
    fn repair_early(&self) {
        if robust::maybe_owner_died(&self.map, at!(put_lock)) {
            let _ = self.check_producer();
        }
        if robust::maybe_owner_died(&self.map, at!(get_lock)) {
            let _ = self.check_consumer();
        }
    }

    /// As `check_producer`, for the consumers' lock (so counts are right after a crash even
    /// before the next get).
    fn check_consumer(&self) -> Result<()> {
        let got =
            robust::try_lock(&self.map, at!(get_lock)).map_err(|e| lock_error(e, "queue lock"))?;
        if let Some(a) = got {
            let _g = Guard {
                ring: self,
                off: at!(get_lock),
            };
            if a == robust::Acquired::OwnerDied {
                self.repair_consumer()?;
            }
        }
        Ok(())
    }

    /// Called by waiters that depend on producers (a consumer in the middle of an item, a
    /// joiner): if the producer holding `put_lock` died, repair now rather than waiting for
    /// the next producer to come along.
    fn check_producer(&self) -> Result<()> {
        let got =
            robust::try_lock(&self.map, at!(put_lock)).map_err(|e| lock_error(e, "queue lock"))?;
        if let Some(a) = got {
            let _g = Guard {
                ring: self,
                off: at!(put_lock),
            };
            if a == robust::Acquired::OwnerDied {
                self.repair_producer()?;
            }
            self.close_open_item();
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Sleeping and waking
    // -----------------------------------------------------------------------------------------

    /// Waits until `ready()`, the deadline, or (with `tick`) a liveness tick. Only the lock
    /// holder of `side` calls this, so there is at most one sleeper per side.
    fn wait(
        &self,
        side: Side,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Waited> {
        if ready() {
            return Ok(Waited::Ready);
        }
        let expired = |d: Option<Instant>| d.is_some_and(|d| Instant::now() >= d);
        if expired(deadline) {
            return Ok(Waited::TimedOut);
        }
        let mut backoff = Backoff::new();
        while backoff.snooze() {
            if ready() {
                return Ok(Waited::Ready);
            }
        }
        let sleeping = self.u32(side.sleeping);
        let seq = self.u32(side.seq);
        let until = match (deadline, tick.map(|t| Instant::now() + t)) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        loop {
            let s = seq.load(Acquire);
            sleeping.store(1, Relaxed);
            // Pairs with the fence in `wake`: either we see the new state or the waker sees
            // `sleeping` (store-buffer pattern, both sides fenced).
            fence(SeqCst);
            if ready() {
                sleeping.store(0, Relaxed);
                return Ok(Waited::Ready);
            }
            let r = futex::wait(seq, s, until).map_err(Error::io);
            sleeping.store(0, Relaxed);
            if ready() {
                return Ok(Waited::Ready);
            }
            if r? == futex::Woken::TimedOut {
                return Ok(if expired(deadline) {
                    Waited::TimedOut
                } else {
                    Waited::Tick
                });
            }
        }
    }

    /// Wakes the sleeper of `side`, if there is one. Called after publishing.
    fn wake(&self, side: Side) {
        fence(SeqCst);
        if self.u32(side.sleeping).load(Relaxed) != 0 {
            self.u32(side.seq).fetch_add(1, Release);
            futex::wake(self.u32(side.seq), 1);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Producer side
    // -----------------------------------------------------------------------------------------

    fn head_pos(&self, fresh: bool) -> u64 {
        if !fresh {
            return self.seen_head.load(Relaxed);
        }
        let h = self.u64(at!(cons.head)).load(Acquire) & POS_MASK;
        self.seen_head.fetch_max(h, Relaxed);
        h
    }

    /// Whether the ring has room up to position `end` (exclusive).
    fn room_until(&self, end: u64) -> bool {
        end - self.head_pos(false) <= self.cap || end - self.head_pos(true) <= self.cap
    }

    fn below_max_items(&self) -> bool {
        let puts = self.u64(at!(prod.puts)).load(Relaxed);
        let room = |gets: u64| puts.wrapping_sub(gets) < self.max_items;
        room(self.seen_gets.load(Relaxed)) || {
            let gets = self.u64(at!(cons.gets)).load(Acquire);
            self.seen_gets.fetch_max(gets, Relaxed);
            room(gets)
        }
    }

    /// Puts one encoded item. On a timeout nothing of it is delivered.
    pub(crate) fn put(&self, item: &[u8], deadline: Option<Instant>) -> Result<()> {
        let _g = self.lock_put(deadline)?;
        if self.max_items != u64::MAX {
            match self.wait(PRODUCERS, deadline, None, || self.below_max_items())? {
                Waited::Ready => {}
                _ => return Err(Error::msg(ErrorKind::Timeout, "the queue is full")),
            }
        }
        let max_payload = (self.max_record - 8) as usize;
        if item.len() <= max_payload {
            return self.write_record(FIRST | LAST, &[], item, deadline);
        }
        // A large item: chunks, all under this one lock hold so they stay contiguous.
        let total = (item.len() as u64).to_le_bytes();
        let mut done = 0;
        while done < item.len() {
            let first = done == 0;
            let room = if first { max_payload - 8 } else { max_payload };
            let n = room.min(item.len() - done);
            let last = done + n == item.len();
            let flags = if first { FIRST } else { 0 } | if last { LAST } else { 0 };
            let prefix: &[u8] = if first { &total } else { &[] };
            if let Err(e) = self.write_record(flags, prefix, &item[done..done + n], deadline) {
                // Published chunks are cancelled; consumers drop them.
                self.close_open_item();
                return Err(e);
            }
            done += n;
        }
        Ok(())
    }

    /// Writes one record and publishes it. A record that ends an item (`LAST`) counts the
    /// item; any other leaves `OPEN` set and 8 bytes reserved for an ABORT.
    fn write_record(
        &self,
        flags: u64,
        prefix: &[u8],
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let len = (prefix.len() + payload.len()) as u64;
        let size = 8 + len.next_multiple_of(8);
        debug_assert!(size <= self.max_record);
        let reserve = if flags & LAST != 0 { 0 } else { 8 };
        let tail = self.u64(at!(prod.tail)).load(Relaxed);
        debug_assert_eq!(tail & OPEN, u64::from(flags & FIRST == 0), "chunk order");
        let t = tail & POS_MASK;
        let off = t & (self.cap - 1);
        let lap_end = t - off + self.cap;
        // Where the record goes: here, or at the start of the next lap behind a SKIP record.
        // Records never straddle the end of the ring, and past `resident` we wrap early as
        // soon as the consumers are far enough along (see README "Memory").
        let must_wrap = off + size > self.cap;
        let may_wrap = !must_wrap && off + size > self.resident && off != 0;
        let pos = loop {
            if (must_wrap || may_wrap) && self.room_until(lap_end + size + reserve) {
                break lap_end;
            }
            if !must_wrap && self.room_until(t + size + reserve) {
                break t;
            }
            let need = if must_wrap { lap_end } else { t } + size + reserve;
            if self.wait(PRODUCERS, deadline, None, || self.room_until(need))? != Waited::Ready {
                return Err(Error::msg(ErrorKind::Timeout, "the queue is full"));
            }
        };
        if pos != t {
            self.write_header(t, 0, SKIP);
            self.note_ext(t, t + 8);
        }
        let at = self.data_off(pos);
        self.write_header(pos, len, flags);
        self.map.write(at + 8, prefix);
        self.map.write(at + 8 + prefix.len(), payload);
        self.note_ext(pos, pos + size);
        let end = pos + size;
        if flags & LAST != 0 {
            // Journal, then count, then publish: a repairer can tell whether the tail moved.
            let puts = self.u64(at!(prod.puts)).load(Relaxed);
            self.u64(at!(prod.jr_tail)).store(end, Relaxed);
            self.u64(at!(prod.jr_old_puts)).store(puts, Relaxed);
            self.u64(at!(prod.jr_active)).store(1, Release);
            self.u64(at!(prod.puts)).store(puts + 1, Release);
            self.u64(at!(prod.tail)).store(end, Release);
            self.u64(at!(prod.jr_active)).store(0, Release);
        } else {
            self.u64(at!(prod.tail)).store(end | OPEN, Release);
        }
        self.wake(CONSUMERS);
        Ok(())
    }

    fn write_header(&self, pos: u64, len: u64, flags: u64) {
        debug_assert!(pos % 8 == 0 && len < 1 << 32);
        let word = len | flags << 32 | TAG << 48;
        self.map.write(self.data_off(pos), &word.to_le_bytes());
    }

    /// Records that ring bytes `[start, end)` (positions) were written, for trimming.
    fn note_ext(&self, start: u64, end: u64) {
        let (s, e) = (start & (self.cap - 1), (end - 1) & (self.cap - 1));
        if e < self.resident {
            return;
        }
        let (lo, hi) = (self.u64(at!(prod.ext_lo)), self.u64(at!(prod.ext_hi)));
        let s = s.max(self.resident);
        if hi.load(Relaxed) == 0 {
            lo.store(s, Relaxed);
            hi.store(e + 1, Relaxed);
        } else {
            lo.fetch_min(s, Relaxed);
            hi.fetch_max(e + 1, Relaxed);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Consumer side
    // -----------------------------------------------------------------------------------------

    fn tail_pos(&self) -> u64 {
        let t = self.u64(at!(prod.tail)).load(Acquire) & POS_MASK;
        self.seen_tail.fetch_max(t, Relaxed);
        t
    }

    fn has_data(&self, head: u64) -> bool {
        self.seen_tail.load(Relaxed) > head || self.tail_pos() > head
    }

    /// Publishes a new `head`; `completes` counts one item taken.
    fn publish_head(&self, new: u64, completes: bool) {
        if completes {
            let gets = self.u64(at!(cons.gets)).load(Relaxed) + 1;
            self.u64(at!(cons.jr_head)).store(new, Relaxed);
            self.u64(at!(cons.jr_gets)).store(gets, Relaxed);
            self.u64(at!(cons.jr_active)).store(1, Release);
            self.u64(at!(cons.head)).store(new, Release);
            self.u64(at!(cons.gets)).store(gets, Release);
            self.u64(at!(cons.jr_active)).store(0, Release);
        } else {
            self.u64(at!(cons.head)).store(new, Release);
        }
        self.wake(PRODUCERS);
    }

    /// Takes one item, appending its bytes to `out` (which must be empty).
    ///
    /// The deadline applies until the first chunk of an item is taken; from then on the
    /// item is finished (or found abandoned by a dead producer) so that it is not lost.
    pub(crate) fn get(&self, out: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        debug_assert!(out.is_empty());
        let _g = self.lock_get(deadline)?;
        let mut mid_item = false;
        loop {
            let head = self.u64(at!(cons.head)).load(Relaxed);
            debug_assert_eq!(head & !POS_MASK, 0);
            if !self.has_data(head) {
                let (limit, tick) = if mid_item {
                    (None, Some(LIVENESS_TICK))
                } else {
                    (deadline, None)
                };
                match self.wait(CONSUMERS, limit, tick, || self.has_data(head))? {
                    Waited::Ready => {}
                    Waited::Tick => {
                        self.check_producer()?;
                        continue;
                    }
                    Waited::TimedOut => {
                        return Err(Error::msg(ErrorKind::Timeout, "the queue is empty"))
                    }
                }
            }
            let tail = self.seen_tail.load(Relaxed);
            let (len, flags) = self.read_header(head, tail)?;
            let at = self.data_off(head);
            let size = 8 + len.next_multiple_of(8);
            if flags & SKIP != 0 {
                let next = (head & !(self.cap - 1)) + self.cap;
                self.publish_head(next, false);
                self.maybe_trim(head, next);
                continue;
            }
            if flags & ABORT != 0 {
                out.clear();
                mid_item = false;
                self.publish_head(head + 8, false);
                continue;
            }
            let first = flags & FIRST != 0;
            let last = flags & LAST != 0;
            if !first && !mid_item {
                // The rest of an item whose start a consumer took before dying: drop it.
                self.publish_head(head + size, last);
                continue;
            }
            if first {
                // A FIRST while mid-item means the previous item was abandoned.
                out.clear();
            }
            let mut body = at + 8;
            let mut body_len = len as usize;
            if first && !last {
                let mut total = [0u8; 8];
                self.map.read(body, &mut total);
                let total = u64::from_le_bytes(total);
                body += 8;
                body_len -= 8;
                let fits = usize::try_from(total).is_ok_and(|t| out.try_reserve_exact(t).is_ok());
                if fits && total >= 4 << 20 {
                    // One page fault per 2 MiB instead of per 4 KiB while it fills.
                    crate::sys::socket::advise_huge_pages(out);
                }
                if !fits {
                    // Give up on this item; its remaining chunks are dropped by the next get.
                    self.publish_head(head + size, false);
                    return Err(Error::msg(
                        ErrorKind::TooLarge,
                        format!("a queue item of {total} bytes does not fit in memory"),
                    ));
                }
            }
            if let Err(e) = self.map.read_append(body, body_len, out) {
                self.publish_head(head + size, last);
                return Err(Error::io(e).context("receiving a queue item"));
            }
            self.publish_head(head + size, last);
            self.maybe_trim(head, head + size);
            if last {
                return Ok(());
            }
            mid_item = true;
        }
    }

    /// Reads and checks the record header at `head` (published up to `tail`).
    fn read_header(&self, head: u64, tail: u64) -> Result<(u64, u64)> {
        let mut word = [0u8; 8];
        self.map.read(self.data_off(head), &mut word);
        let word = u64::from_le_bytes(word);
        let (len, flags, tag) = (word & 0xffff_ffff, (word >> 32) & 0xffff, word >> 48);
        let off = head & (self.cap - 1);
        let size = 8 + len.next_multiple_of(8);
        let known = flags & !(FIRST | LAST | SKIP | ABORT) == 0;
        let control = flags & (SKIP | ABORT) != 0;
        let lap_end = (head & !(self.cap - 1)) + self.cap;
        let ok = tag == TAG
            && known
            && if control {
                len == 0 && (flags == ABORT || (flags == SKIP && lap_end < tail))
            } else {
                size <= self.max_record
                    && off + size <= self.cap
                    && head + size <= tail
                    && (flags & (FIRST | LAST) != FIRST || len >= 8)
            };
        if !ok {
            return Err(corrupt(format!(
                "bad record header {word:#018x} at position {head} (tail {tail})"
            )));
        }
        Ok((len, flags))
    }

    /// Gives memory beyond `resident` back to the system when the consumers pass a multiple
    /// of `resident` (see README "Memory"). Needs both locks: we hold `get_lock` and only
    /// try `put_lock`, so a busy producer just postpones the trim.
    fn maybe_trim(&self, old_head: u64, new_head: u64) {
        let block = !(self.resident - 1);
        if self.resident == self.cap
            || old_head & block == new_head & block
            || self.u64(at!(prod.ext_hi)).load(Relaxed) == 0
        {
            return;
        }
        let Ok(Some(a)) = robust::try_lock(&self.map, at!(put_lock)) else {
            return;
        };
        let _g = Guard {
            ring: self,
            off: at!(put_lock),
        };
        if a == robust::Acquired::OwnerDied && self.repair_producer().is_err() {
            return;
        }
        self.close_open_item();
        let (h, t) = (new_head, self.tail_pos());
        if h / self.cap != t / self.cap {
            return; // live data wraps around the end of the ring: trim another time
        }
        let page = shm::page_size() as u64;
        let (lo, hi) = (
            self.u64(at!(prod.ext_lo)).load(Relaxed),
            self.u64(at!(prod.ext_hi)).load(Relaxed),
        );
        let (h_off, t_off) = (h & (self.cap - 1), t & (self.cap - 1));
        let (h_page, t_page) = (h_off / page * page, t_off.next_multiple_of(page));
        // Live records occupy [h_off, t_off); in this lap every other byte is free, so whole
        // pages of [lo, hi) outside that range can go (`resident` is page-aligned).
        let (lo_page, hi_page) = (
            (lo / page * page).max(self.resident),
            hi.next_multiple_of(page),
        );
        let behind = (lo_page, hi_page.min(h_page));
        let ahead = (lo_page.max(t_page), hi_page);
        for (s, e) in [behind, ahead] {
            if s < e {
                let _ = shm::discard(self.fd.as_fd(), HEADER_LEN as u64 + s, e - s);
            }
        }
        let keep_lo = lo.max(h_page);
        let keep_hi = hi.min(t_page);
        let (lo2, hi2) = if keep_lo < keep_hi {
            (keep_lo, keep_hi)
        } else {
            (0, 0)
        };
        self.u64(at!(prod.ext_lo)).store(lo2, Relaxed);
        self.u64(at!(prod.ext_hi)).store(hi2, Relaxed);
    }

    // -----------------------------------------------------------------------------------------
    // JoinableQueue
    // -----------------------------------------------------------------------------------------

    /// Marks one task done (`task_done`).
    pub(crate) fn task_done(&self) -> Result<()> {
        let done = self.u64(at!(join.done));
        let puts = self.u64(at!(prod.puts));
        let mut d = done.load(Acquire);
        loop {
            if d >= puts.load(Acquire) {
                return Err(Error::msg(
                    ErrorKind::Protocol,
                    "task_done() called more times than there were items put",
                ));
            }
            match done.compare_exchange_weak(d, d + 1, SeqCst, Acquire) {
                Ok(_) => break,
                Err(now) => d = now,
            }
        }
        fence(SeqCst);
        if d + 1 >= puts.load(Acquire) && self.u32(at!(join.waiters)).load(Relaxed) != 0 {
            self.u32(at!(join.seq)).fetch_add(1, Release);
            futex::wake(self.u32(at!(join.seq)), u32::MAX);
        }
        Ok(())
    }

    /// Unfinished tasks: items put and not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        self.repair_early();
        let d = self.u64(at!(join.done)).load(Acquire);
        self.u64(at!(prod.puts)).load(Acquire).saturating_sub(d)
    }

    /// Waits until every item put has been marked done (`join`).
    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<()> {
        let seq = self.u32(at!(join.seq));
        let waiters = self.u32(at!(join.waiters));
        loop {
            let s = seq.load(Acquire);
            if self.unfinished() == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::msg(
                    ErrorKind::Timeout,
                    format!("{} tasks still unfinished", self.unfinished()),
                ));
            }
            waiters.fetch_add(1, SeqCst);
            let r = if self.unfinished() == 0 {
                Ok(futex::Woken::Maybe)
            } else {
                let tick = Instant::now() + LIVENESS_TICK;
                futex::wait(seq, s, Some(deadline.map_or(tick, |d| d.min(tick))))
            };
            waiters.fetch_sub(1, SeqCst);
            if r.map_err(Error::io)? == futex::Woken::TimedOut {
                // A producer that died between counting an item and publishing it leaves
                // `puts` one too high until someone repairs: do it now.
                self.check_producer()?;
            }
        }
    }
}
