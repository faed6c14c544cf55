//! The worker process: runs the initializer, then task batches from its pool channel, and
//! streams results back.
//!
//! Two threads. The **main thread** reads a frame of tasks, runs them in order and appends
//! each task's result to the outbox; it flushes the outbox when it has read every frame it
//! had (before it would block), when the outbox is large, and before exiting. The
//! **watchdog** wakes every `tick` while a task runs (every 20 ms while idle): when the
//! running element has made no progress for a whole tick it flushes the outbox and adds a
//! RUNNING notice. So a finished result is never held back behind a slow task for more than
//! about a tick, and the parent learns which element is running (for `task_timeout` and for
//! blaming the right task if the process dies).

#![allow(unsafe_code)] // one block: `task::from_offset` on offsets from the pool channel

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::task::{
    Cursor, Failure, ALL_OK, FAILED, FLAG_ENTRY, MAX_RECORD, RESULT_HEADER, SOME_FAILED, TAG_INIT,
    TAG_INIT_FAILED, TAG_READY, TAG_RESULT, TAG_RUNNING, TAG_TASK,
};
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
}

/// 1 + the number of the running task; 0 while idle.
static SEQ: AtomicU64 = AtomicU64::new(0);
/// Elements started so far (only the main thread writes it).
static PROGRESS: AtomicU64 = AtomicU64::new(0);
/// The running element's index in its chunk.
static ELEM: AtomicU32 = AtomicU32::new(0);
/// Some element of the current task failed (set by the chunk trampoline).
static ANY_FAILED: AtomicBool = AtomicBool::new(false);

/// Called by the chunk trampoline before each element.
pub(super) fn element_started(j: u32) {
    ELEM.store(j, Ordering::Relaxed);
    let p = PROGRESS.load(Ordering::Relaxed);
    PROGRESS.store(p.wrapping_add(1), Ordering::Relaxed);
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
        self.out.lock().unwrap_or_else(|p| p.into_inner())
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

fn put_failure(buf: &mut Vec<u8>, tag_and_status: &[u8], busy: u64, f: &Failure) {
    let mut bytes = Vec::new();
    let _ = codec::encode(f, &mut bytes, &mut Vec::new());
    buf.extend_from_slice(tag_and_status);
    buf.push(0);
    buf.extend_from_slice(&busy.to_le_bytes());
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(&bytes);
}

/// Appends one RESULT record.
fn put_result(
    o: &mut Outbox,
    outcome: Outcome,
    out: &[u8],
    out_fds: &mut Vec<RegisteredFd>,
    busy: u64,
) {
    let failed_elem = ANY_FAILED.swap(false, Ordering::Relaxed);
    let failure = match Failure::from_outcome(outcome) {
        Some(f) => Some(f),
        None if out.len() > MAX_RECORD || out_fds.len() > FLUSH_FDS => {
            Some(Failure::BadResult(format!(
                "the results of this task take {} bytes, more than one message may carry",
                out.len()
            )))
        }
        None => None,
    };
    match failure {
        Some(f) => {
            out_fds.clear();
            put_failure(&mut o.buf, &[TAG_RESULT, FAILED], busy, &f);
        }
        None => {
            o.buf.reserve(RESULT_HEADER + out.len());
            o.buf.push(TAG_RESULT);
            o.buf.push(if failed_elem { SOME_FAILED } else { ALL_OK });
            o.buf.push(out_fds.len() as u8);
            o.buf.extend_from_slice(&busy.to_le_bytes());
            o.buf.extend_from_slice(&(out.len() as u32).to_le_bytes());
            o.buf.extend_from_slice(out);
            o.fds.append(out_fds);
        }
    }
}

/// The worker process's function.
pub(super) fn worker_main(args: WorkerArgs) {
    task::install_panic_hook();
    let link = Arc::new(Link {
        chan: Channel::new(args.chan.0),
        out: Mutex::new(Outbox::default()),
    });

    // 1. The initializer.
    let Ok(init) = link.chan.recv_frame(None) else {
        return;
    };
    let reply = match run_init(&init.payload, init.fds) {
        Ok(()) => vec![TAG_READY],
        Err(f) => {
            let mut b = Vec::new();
            let _ = codec::encode(&f, &mut b, &mut Vec::new());
            let mut m = vec![TAG_INIT_FAILED];
            m.extend_from_slice(&(b.len() as u32).to_le_bytes());
            m.extend_from_slice(&b);
            let _ = link.chan.send_raw(&m, &[]);
            return;
        }
    };
    if link.chan.send_raw(&reply, &[]).is_err() {
        return;
    }

    // 2. The watchdog.
    start_watchdog(link.clone(), Duration::from_micros(args.tick_us.max(100)));

    // 3. Tasks until end of stream (the pool closed) or the task quota.
    let mut seq: u64 = 0;
    let mut out = Vec::new();
    let mut out_fds = Vec::new();
    loop {
        let frame = match link.chan.recv_frame(None) {
            Ok(f) => f,
            Err(_) => break,
        };
        let mut fds = frame.fds.into_iter();
        let mut cur = Cursor::new(&frame.payload);
        let mut entry: Option<EntryFn> = None;
        while !cur.is_empty() {
            let Ok(t) = parse_task(&mut cur, &mut entry) else {
                // A malformed frame from our own parent: nothing sensible left to do.
                sys::process::exit_now(70);
            };
            let (f, nfds, targs) = t;
            let task_fds: Vec<RegisteredFd> = fds.by_ref().take(nfds).collect();
            SEQ.store(seq + 1, Ordering::Release);
            let t0 = Instant::now();
            out.clear();
            out_fds.clear();
            let outcome = task::catch_panic(|| f(targs, task_fds, &mut out, &mut out_fds))
                .unwrap_or_else(|(message, location)| Outcome::Panicked { message, location });
            let busy = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            seq += 1;
            let last = args.max_tasks != 0 && seq >= args.max_tasks;
            let mut o = link.lock();
            if o.fds.len() + out_fds.len() > FLUSH_FDS && !link.flush(&mut o) {
                return;
            }
            put_result(&mut o, outcome, &out, &mut out_fds, busy);
            if last {
                SEQ.store(0, Ordering::Release);
                link.flush(&mut o);
                return;
            }
            if (o.buf.len() >= FLUSH_BYTES || o.fds.len() >= FLUSH_FDS) && !link.flush(&mut o) {
                return;
            }
        }
        if !link.chan.has_buffered() {
            SEQ.store(0, Ordering::Release);
            let mut o = link.lock();
            if !link.flush(&mut o) {
                return;
            }
        }
    }
    SEQ.store(0, Ordering::Release);
    let mut o = link.lock();
    link.flush(&mut o);
}

type ParsedTask<'a> = (EntryFn, usize, &'a [u8]);

fn parse_task<'a>(
    cur: &mut Cursor<'a>,
    entry: &mut Option<EntryFn>,
) -> Result<ParsedTask<'a>, crate::error::Error> {
    let tag = cur.u8()?;
    if tag & !FLAG_ENTRY != TAG_TASK {
        return Err(super::task::protocol("unknown message from the pool"));
    }
    if tag & FLAG_ENTRY != 0 {
        let offset = cur.u64()?;
        // SAFETY: this offset came from `task::to_offset` in our parent, over the pool channel
        // whose other end only the parent holds: the descriptor reached this process as a
        // spawn argument over the process's private control stream (or by `fork`), and the
        // parent only ever writes offsets of `run_chunk` instances to it. `Process` checked
        // that the parent runs this very executable (same fingerprint) before our function
        // started (`Fork` children are copies of it), so the offset names the same function
        // here.
        *entry = Some(unsafe { task::from_offset(offset) });
    }
    let f = entry.ok_or_else(|| super::task::protocol("task without an entry point"))?;
    let nfds = cur.u8()? as usize;
    let len = cur.u32()? as usize;
    let targs = cur.bytes(len)?;
    Ok((f, nfds, targs))
}

/// Runs the initializer frame; `Err` if it failed.
fn run_init(payload: &[u8], fds: Vec<RegisteredFd>) -> Result<(), Failure> {
    let bad = |m: &str| Failure::BadArgs(format!("malformed initializer message: {m}"));
    let mut cur = Cursor::new(payload);
    if cur.u8().map_err(|_| bad("empty"))? != TAG_INIT {
        return Err(bad("wrong tag"));
    }
    let offset = cur.u64().map_err(|_| bad("truncated"))?;
    let len = cur.u32().map_err(|_| bad("truncated"))? as usize;
    let bytes = cur.bytes(len).map_err(|_| bad("truncated"))?;
    if offset == 0 {
        return Ok(());
    }
    // SAFETY: as in `parse_task`: the offset came from `task::to_offset` (of `run_init`) in
    // our parent, over the pool channel only the parent can write to, and the parent runs
    // this very executable.
    let f = unsafe { task::from_offset(offset) };
    let mut out = Vec::new();
    let mut out_fds = Vec::new();
    let outcome = task::catch_panic(|| f(bytes, fds, &mut out, &mut out_fds))
        .unwrap_or_else(|(message, location)| Outcome::Panicked { message, location });
    match Failure::from_outcome(outcome) {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

fn start_watchdog(link: Arc<Link>, tick: Duration) {
    let idle = Duration::from_millis(20).max(tick);
    let spawned = std::thread::Builder::new()
        .name("multiproc-pool-watchdog".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut last = (0u64, 0u64);
            let mut since = Instant::now();
            let mut noticed = false;
            loop {
                let busy = SEQ.load(Ordering::Acquire) != 0;
                std::thread::sleep(if busy { tick } else { idle });
                let now = (
                    SEQ.load(Ordering::Acquire),
                    PROGRESS.load(Ordering::Relaxed),
                );
                if now.0 == 0 || now != last {
                    last = now;
                    since = Instant::now();
                    noticed = false;
                    continue;
                }
                if noticed {
                    continue;
                }
                let mut o = link.lock();
                // Re-check under the lock: the main thread appends results holding it.
                if (
                    SEQ.load(Ordering::Acquire),
                    PROGRESS.load(Ordering::Relaxed),
                ) != last
                {
                    continue;
                }
                let running_us = since.elapsed().as_micros().min(u64::MAX as u128) as u64;
                o.buf.push(TAG_RUNNING);
                o.buf.extend_from_slice(&(last.0 - 1).to_le_bytes());
                o.buf
                    .extend_from_slice(&ELEM.load(Ordering::Relaxed).to_le_bytes());
                o.buf.extend_from_slice(&running_us.to_le_bytes());
                if !link.flush(&mut o) {
                    return;
                }
                noticed = true;
            }
        });
    // Without a watchdog the worker still works; only timeouts and crash attribution of long
    // tasks get coarser.
    drop(spawned);
}
