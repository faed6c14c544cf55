//! The worker process: runs the initializer, then task batches from its pool channel, and
//! streams results back.
//!
//! Two threads. The **main thread** reads a frame of tasks, runs them in order and appends
//! each task's result to the outbox; it flushes the outbox when it has read every frame it
//! had (before it would block), when the outbox is large, and before exiting. The
//! **watchdog** wakes every `tick` while elements keep changing: when the running element
//! has made no progress for a whole tick it flushes the outbox and adds a RUNNING notice.
//! So a finished result is never held back behind a slow task for more than about a tick,
//! and the parent learns which element is running (for `task_timeout` and for blaming the
//! right task if the process dies). Once it has reported a long element, and while the
//! worker is idle, the watchdog parks: the main thread unparks it when the next element or
//! task starts, so a task that sleeps or waits on I/O costs no CPU. With a `task_timeout`
//! it also sends an ALIVE record every `beat` while a task runs, so the parent can tell a
//! frozen (SIGSTOPped) worker from a busy one.
//!
//! Entries arrive sealed (`task.rs`, "entry = ... seal = ..."): the main thread turns one
//! into a function only through `task::from_sealed`, once per entry change (the last entry
//! it opened is kept, so the first task of every frame, which names its entry again, costs
//! a comparison). The channel may be relayed by MPI agents, so its bytes are not trusted to
//! name code: a task whose seal does not match fails with `Failure::BadEntry` (the pool
//! reports a `Protocol` error for it) and the worker serves on; an initializer's makes
//! INIT_FAILED.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::task::{self as wire, Cursor, Failure, SealedEntry, ALL_OK, RESULT_HEADER, SOME_FAILED};
use crate::codec;
use crate::connection::channel::Channel;
use crate::fdreg::RegisteredFd;
use crate::sys;
use crate::task::{self, EntryFn, Outcome};

/// The worker's end of its pool channel, as a spawn argument (the descriptor travels).
pub(super) struct ChanFd(pub(super) RegisteredFd);

impl Serialize for ChanFd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        codec::serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for ChanFd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        codec::deserialize_fd(d).map(ChanFd)
    }
}

/// What a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(super) struct WorkerArgs {
    pub(super) chan: ChanFd,
    /// Exit after this many tasks (0: never).
    pub(super) max_tasks: u64,
    /// Watchdog period while a task runs, in microseconds.
    pub(super) tick_us: u64,
    /// Heartbeat period while a task runs, in microseconds (0: none; set with a
    /// `task_timeout`).
    pub(super) beat_us: u64,
    /// Ignore SIGINT (Ctrl-C reaches the parent only; running tasks finish).
    pub(super) ignore_sigint: bool,
    /// The largest message on the pool channel, both ways.
    pub(super) max_message: u64,
}

/// 1 + the number of the running task; 0 while idle.
static SEQ: AtomicU64 = AtomicU64::new(0);
/// Elements started so far (only the main thread writes it).
static PROGRESS: AtomicU64 = AtomicU64::new(0);
/// The running element's index in its chunk.
static ELEM: AtomicU32 = AtomicU32::new(0);
/// Some element of the current task failed (set by the chunk trampoline).
static ANY_FAILED: AtomicBool = AtomicBool::new(false);

/// The watchdog is parked (or about to park) until the main thread makes progress.
static PARKED: AtomicBool = AtomicBool::new(false);
/// The watchdog thread, to unpark it.
static WATCHDOG: OnceLock<std::thread::Thread> = OnceLock::new();

/// Called by the chunk trampoline before each element.
///
/// Relaxed on purpose (this runs once per element, and a full barrier here costs ~10 % of
/// a map of trivial items): a wake-up missed in the race with the watchdog parking is made
/// up by its bounded park during a long element (`LONG_PARK`). Task starts (`set_seq`)
/// are SeqCst on both sides and are never missed.
pub(super) fn element_started(j: u32) {
    ELEM.store(j, Ordering::Relaxed);
    let p = PROGRESS.load(Ordering::Relaxed);
    PROGRESS.store(p.wrapping_add(1), Ordering::Relaxed);
    if PARKED.load(Ordering::Relaxed) && PARKED.swap(false, Ordering::SeqCst) {
        if let Some(t) = WATCHDOG.get() {
            t.unpark();
        }
    }
}

/// The longest the watchdog parks during a long element, so a missed element change is
/// noticed this late at worst.
const LONG_PARK: Duration = Duration::from_millis(250);

/// Sets the running task's number (`SEQ`) and wakes a parked watchdog.
fn set_seq(v: u64) {
    SEQ.store(v, Ordering::SeqCst);
    wake_watchdog();
}

/// Unparks the watchdog if it parked; one load on the fast path. Pairs with the SeqCst
/// store-then-recheck in `Watchdog::park`, so a task start is never missed.
fn wake_watchdog() {
    if PARKED.load(Ordering::SeqCst) && PARKED.swap(false, Ordering::SeqCst) {
        if let Some(t) = WATCHDOG.get() {
            t.unpark();
        }
    }
}

/// Called by the chunk trampoline when some element failed.
pub(super) fn mark_failed() {
    ANY_FAILED.store(true, Ordering::Relaxed);
}

/// Flush the outbox once it holds this much.
const FLUSH_BYTES: usize = 256 * 1024;
/// Flush the outbox before it holds more descriptors than one frame may carry.
const FLUSH_FDS: usize = sys::socket::MAX_FDS_PER_FRAME;

#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    fds: Vec<RegisteredFd>,
}

/// The channel plus the outbox; every send happens with the outbox locked, so records leave
/// in the order they were appended.
struct Link {
    chan: Channel,
    out: Mutex<Outbox>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        crate::wait::lock(&self.out)
    }

    /// Sends what the outbox holds; `false` if the parent is gone.
    fn flush(&self, o: &mut Outbox) -> bool {
        if o.buf.is_empty() {
            return true;
        }
        let fds: Vec<BorrowedFd<'_>> = o.fds.iter().map(|f| f.as_fd()).collect();
        let ok = self.chan.send_raw(&o.buf, &fds).is_ok();
        drop(fds);
        o.buf.clear();
        o.fds.clear();
        if o.buf.capacity() > 4 * FLUSH_BYTES {
            o.buf = Vec::new();
        }
        ok
    }
}

/// Appends one RESULT record: the task's outcome, or `Err` when it could not run at all (a
/// result over `max_message` fails its task with TooLarge).
fn put_result(
    o: &mut Outbox,
    ran: Result<Outcome, Failure>,
    out: &[u8],
    out_fds: &mut Vec<RegisteredFd>,
    busy: u64,
    max_message: usize,
) {
    let failed_elem = ANY_FAILED.swap(false, Ordering::Relaxed);
    let failure = match ran.map_or_else(Some, Failure::from_outcome) {
        Some(f) => Some(f),
        None if out.len() + RESULT_HEADER > max_message => Some(Failure::TooLarge {
            size: out.len() as u64,
            limit: max_message.saturating_sub(RESULT_HEADER) as u64,
        }),
        None if out_fds.len() > FLUSH_FDS => Some(Failure::BadResult(format!(
            "the results of this task carry {} descriptors, more than one message may carry",
            out_fds.len()
        ))),
        None => None,
    };
    match failure {
        Some(f) => {
            out_fds.clear();
            wire::put_failed_result(&mut o.buf, busy, &f);
        }
        None => {
            let status = if failed_elem { SOME_FAILED } else { ALL_OK };
            wire::put_result(&mut o.buf, status, out_fds.len() as u8, busy, out);
            o.fds.append(out_fds);
        }
    }
}

/// The worker process's function.
pub(super) fn worker_main(args: WorkerArgs) {
    if args.ignore_sigint {
        sys::process::ignore_sigint();
    }
    task::install_panic_hook();
    let max_message = usize::try_from(args.max_message).unwrap_or(usize::MAX);
    let link = Arc::new(Link {
        chan: Channel::new(args.chan.0),
        out: Mutex::new(Outbox::default()),
    });
    link.chan.set_max_message(max_message);
    if !initialize(&link) {
        return;
    }
    let beat = (args.beat_us > 0).then(|| Duration::from_micros(args.beat_us));
    start_watchdog(
        link.clone(),
        Duration::from_micros(args.tick_us.max(100)),
        beat,
    );
    let mut w = Tasks {
        link: &link,
        max_tasks: args.max_tasks,
        max_message,
        seq: 0,
        out: Vec::new(),
        out_fds: Vec::new(),
        opened: None,
    };
    w.serve();
    set_seq(0);
    let mut o = link.lock();
    link.flush(&mut o);
}

/// Runs the INIT frame and answers READY or INIT_FAILED; `false` if the worker must exit.
fn initialize(link: &Link) -> bool {
    let Ok(init) = link.chan.recv_frame(None) else {
        return false;
    };
    let mut reply = Vec::new();
    let ok = match run_init(&init.payload, init.fds) {
        Ok(()) => {
            wire::put_ready(&mut reply);
            true
        }
        Err(f) => {
            wire::put_init_failed(&mut reply, &f);
            false
        }
    };
    link.chan.send_raw(&reply, &[]).is_ok() && ok
}

/// The main thread's task loop.
struct Tasks<'a> {
    link: &'a Link,
    /// Exit after this many tasks (0: never).
    max_tasks: u64,
    max_message: usize,
    /// Tasks run so far.
    seq: u64,
    out: Vec<u8>,
    out_fds: Vec<RegisteredFd>,
    /// The last entry whose seal matched, and its function: naming it again costs no check.
    opened: Option<(SealedEntry, EntryFn)>,
}

impl Tasks<'_> {
    /// Runs task frames until end of stream (the pool closed), the quota, or a lost parent.
    fn serve(&mut self) {
        while let Ok(frame) = self.link.chan.recv_frame(None) {
            let mut fds = frame.fds.into_iter();
            let mut cur = Cursor::new(&frame.payload);
            // The entry of this frame's tasks (each frame names its own first): a refused
            // one fails every task that runs it, never falls back to an earlier entry.
            let mut entry: Option<Result<EntryFn, Failure>> = None;
            while !cur.is_empty() {
                let Ok(t) = wire::read_task(&mut cur) else {
                    // A malformed frame: it will not resynchronise, nothing sensible is left.
                    sys::process::exit_now(70);
                };
                if let Some(sealed) = t.entry {
                    entry = Some(self.open(sealed));
                }
                let f = match &entry {
                    Some(Ok(f)) => Ok(*f),
                    Some(Err(refused)) => Err(refused.clone()),
                    // A task without an entry point: malformed, as above.
                    None => sys::process::exit_now(70),
                };
                let task_fds: Vec<RegisteredFd> = fds.by_ref().take(t.nfds).collect();
                if !self.run_one(f, t.body, task_fds) {
                    return;
                }
            }
            if !self.link.chan.has_buffered() {
                set_seq(0);
                let mut o = self.link.lock();
                if !self.link.flush(&mut o) {
                    return;
                }
            }
        }
    }

    /// The function `sealed` names, if its seal matches (checked once per entry change).
    fn open(&mut self, sealed: SealedEntry) -> Result<EntryFn, Failure> {
        match self.opened {
            Some((known, f)) if known == sealed => Ok(f),
            _ => {
                let f = sealed.open()?;
                self.opened = Some((sealed, f));
                Ok(f)
            }
        }
    }

    /// Runs one task (or, for a refused entry, answers it failed) and queues its result;
    /// `false` if the worker must exit.
    fn run_one(
        &mut self,
        f: Result<EntryFn, Failure>,
        targs: &[u8],
        task_fds: Vec<RegisteredFd>,
    ) -> bool {
        set_seq(self.seq + 1);
        let t0 = Instant::now();
        self.out.clear();
        self.out_fds.clear();
        let (out, out_fds) = (&mut self.out, &mut self.out_fds);
        let ran = f.map(|f| {
            task::catch_panic(|| f(targs, task_fds, out, out_fds))
                .unwrap_or_else(|(message, location)| Outcome::Panicked { message, location })
        });
        let busy = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.seq += 1;
        let last = self.max_tasks != 0 && self.seq >= self.max_tasks;
        let link = self.link;
        let mut o = link.lock();
        let full = o.fds.len() + self.out_fds.len() > FLUSH_FDS
            || o.buf.len() + self.out.len() + RESULT_HEADER > self.max_message;
        if full && !link.flush(&mut o) {
            return false;
        }
        put_result(
            &mut o,
            ran,
            &self.out,
            &mut self.out_fds,
            busy,
            self.max_message,
        );
        if last {
            set_seq(0);
            link.flush(&mut o);
            return false;
        }
        !((o.buf.len() >= FLUSH_BYTES || o.fds.len() >= FLUSH_FDS) && !link.flush(&mut o))
    }
}

/// Runs the initializer frame; `Err` if it failed (or its entry was refused: nothing ran).
fn run_init(payload: &[u8], fds: Vec<RegisteredFd>) -> Result<(), Failure> {
    let (entry, bytes) = wire::read_init(payload)
        .map_err(|e| Failure::BadArgs(format!("malformed initializer message: {e}")))?;
    let Some(sealed) = entry else {
        return Ok(());
    };
    let f = sealed.open()?;
    let mut out = Vec::new();
    let mut out_fds = Vec::new();
    let outcome = task::catch_panic(|| f(bytes, fds, &mut out, &mut out_fds))
        .unwrap_or_else(|(message, location)| Outcome::Panicked { message, location });
    match Failure::from_outcome(outcome) {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

fn start_watchdog(link: Arc<Link>, tick: Duration, beat: Option<Duration>) {
    let spawned = std::thread::Builder::new()
        .name("multiproc-pool-watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = WATCHDOG.set(std::thread::current());
            Watchdog {
                link,
                tick,
                beat,
                last: (0, 0),
                since: Instant::now(),
                noticed: false,
                last_beat: Instant::now(),
            }
            .run()
        });
    // Without a watchdog the worker still works; only timeouts and crash attribution of long
    // tasks get coarser.
    drop(spawned);
}

/// The watchdog's state (see the module docs).
struct Watchdog {
    link: Arc<Link>,
    tick: Duration,
    beat: Option<Duration>,
    /// (`SEQ`, `PROGRESS`) when last looked at.
    last: (u64, u64),
    /// When `last` was first seen.
    since: Instant,
    /// The element in `last` was reported (RUNNING).
    noticed: bool,
    /// When the last record (RUNNING or ALIVE) went out.
    last_beat: Instant,
}

fn observe() -> (u64, u64) {
    (SEQ.load(Ordering::SeqCst), PROGRESS.load(Ordering::SeqCst))
}

impl Watchdog {
    fn run(mut self) {
        loop {
            let now = observe();
            if now != self.last {
                self.last = now;
                self.since = Instant::now();
                self.noticed = false;
            }
            let ok = if now.0 == 0 {
                // Idle: sleep until a task starts.
                self.park(None);
                true
            } else if !self.noticed {
                std::thread::sleep(self.tick);
                if observe() == self.last {
                    self.notice()
                } else {
                    self.maybe_beat()
                }
            } else {
                // A long element was reported: sleep until it ends (or the next beat).
                let left = self
                    .beat
                    .map_or(LONG_PARK, |b| b.saturating_sub(self.last_beat.elapsed()))
                    .min(LONG_PARK);
                self.park(Some(left));
                self.maybe_beat()
            };
            if !ok {
                return;
            }
        }
    }

    /// Parks until the main thread moves on, or `timeout`.
    fn park(&self, timeout: Option<Duration>) {
        PARKED.store(true, Ordering::SeqCst);
        if observe() == self.last {
            match timeout {
                Some(t) => std::thread::park_timeout(t),
                None => std::thread::park(),
            }
        }
        PARKED.store(false, Ordering::SeqCst);
    }

    /// The element in `last` ran a whole tick: flush, and say which it is. `false` if the
    /// parent is gone.
    fn notice(&mut self) -> bool {
        let mut o = self.link.lock();
        // Re-check under the lock: the main thread appends results holding it.
        if observe() != self.last || self.last.0 == 0 {
            return true;
        }
        let running_us = self.since.elapsed().as_micros().min(u64::MAX as u128) as u64;
        super::task::put_running(
            &mut o.buf,
            self.last.0 - 1,
            ELEM.load(Ordering::Relaxed),
            running_us,
        );
        self.noticed = true;
        self.last_beat = Instant::now();
        self.link.flush(&mut o)
    }

    /// With a `task_timeout`: flush and send ALIVE if a task runs and the beat is due.
    fn maybe_beat(&mut self) -> bool {
        let Some(beat) = self.beat else {
            return true;
        };
        if self.last_beat.elapsed() < beat {
            return true;
        }
        let mut o = self.link.lock();
        let seq = SEQ.load(Ordering::SeqCst);
        if seq == 0 {
            return true;
        }
        super::task::put_alive(&mut o.buf, seq - 1);
        self.last_beat = Instant::now();
        self.link.flush(&mut o)
    }
}

#[cfg(test)]
mod tests;
