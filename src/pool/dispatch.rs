//! The parent side of a pool: shared state, dispatch, routing results to jobs, and settling
//! dead workers. The thread that drives it is in `supervisor.rs`; see `README.md`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::task::{
    protocol, Cursor, Failure, FLAG_ENTRY, TAG_INIT_FAILED, TAG_READY, TAG_RESULT, TAG_RUNNING,
    TAG_TASK, TASK_HEADER_MAX,
};
use crate::connection::channel::{Channel, Frame};
use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;
use crate::process::Process;
use crate::sys;

/// Bytes of tasks a worker may have unanswered. Below the socket's send buffer (208 KiB by
/// default on Linux, counted with per-message overhead), so a send within the budget never
/// blocks: the pool thread, which also reads, can never deadlock against a worker that is
/// itself blocked writing results.
const BUDGET: usize = 96 * 1024;
/// Budget charged per frame (kernel bookkeeping of one message).
const FRAME_COST: usize = 2048;
/// Budget charged per task on top of its bytes.
const TASK_COST: usize = 32;
/// Stop adding tasks to a frame past this size.
const FRAME_MAX: usize = 256 * 1024;
/// At most this many tasks in flight per worker.
const WINDOW_MAX: usize = 2048;
/// Keep about this much work (by the per-function estimate) queued at each worker.
const PREFETCH_NS: f64 = 500_000.0;
/// How long a new worker may take to start and run its initializer.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a worker told to exit (end of stream) may take before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// Consecutive worker start failures before the pool gives up.
pub(super) const MAX_START_FAILURES: u32 = 5;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Encoded initializer: entry offset and arguments (descriptors included).
#[derive(Debug)]
pub(super) struct Init {
    pub(super) entry: u64,
    pub(super) bytes: Vec<u8>,
    pub(super) fds: Vec<RegisteredFd>,
}

/// A pool's fixed settings.
#[derive(Debug)]
pub(super) struct Config {
    pub(super) processes: usize,
    pub(super) method: StartMethod,
    pub(super) name: String,
    pub(super) max_tasks: u64,
    pub(super) task_timeout: Option<Duration>,
    pub(super) init: Option<Init>,
    pub(super) tick: Duration,
    #[cfg_attr(not(feature = "progress"), allow(dead_code))]
    pub(super) progress: bool,
}

/// Why the parent failed a task itself (the worker never answered for it).
#[derive(Debug, Clone)]
pub(super) enum Why {
    /// Its worker died: Python-style exit code (negative: signal), when known.
    Lost(Option<i32>),
    /// It ran longer than `task_timeout`.
    Timeout(Duration),
    /// The pool was terminated.
    Cancelled,
    /// Submitted to a closed pool.
    Closed,
    /// The initializer failed.
    Init(Failure),
    /// The arguments could not be encoded.
    Encode(String),
    /// Workers could not be started.
    Start(String),
}

impl Why {
    /// An encoding failure in the parent (kept as text: `Error` is not `Clone`).
    pub(super) fn encode(e: &Error) -> Why {
        let text = e.to_string();
        let detail = text
            .strip_prefix("could not serialise the value: ")
            .unwrap_or(&text);
        Why::Encode(format!("the task's arguments: {detail}"))
    }

    pub(super) fn to_error(&self) -> Error {
        match self {
            Why::Lost(Some(c)) if *c < 0 => Error::killed(ErrorKind::WorkerLost, -c),
            Why::Lost(Some(c)) => Error::exited(ErrorKind::WorkerLost, *c),
            Why::Lost(None) => Error::msg(ErrorKind::WorkerLost, "its exit status is unknown"),
            Why::Timeout(d) => Error::msg(
                ErrorKind::Timeout,
                format!("the task ran longer than the pool's task_timeout ({d:?}); its worker was killed"),
            ),
            Why::Cancelled => Error::new(ErrorKind::Cancelled),
            Why::Closed => Error::msg(ErrorKind::Closed, "the pool no longer accepts work"),
            Why::Init(f) => f.to_error().context("the pool's initializer failed"),
            Why::Encode(m) => Error::msg(ErrorKind::Encode, m.clone()),
            Why::Start(m) => Error::msg(ErrorKind::Io, m.clone()).context("starting pool workers"),
        }
    }
}

/// One unit of work: elements `lo..hi` of an encoded chunk.
#[derive(Debug)]
pub(super) struct Task {
    pub(super) job: u64,
    /// Job index of element 0 of `args`.
    pub(super) base: u64,
    pub(super) lo: u32,
    pub(super) hi: u32,
    pub(super) entry: u64,
    /// postcard `Vec<A>`.
    pub(super) args: Vec<u8>,
    pub(super) fds: Vec<RegisteredFd>,
    /// Re-run alone after an ambiguous crash, to find out whether it is the one that crashes.
    pub(super) suspect: bool,
}

impl Task {
    fn piece(&self, lo: u32, hi: u32, suspect: bool) -> Task {
        Task {
            job: self.job,
            base: self.base,
            lo,
            hi,
            entry: self.entry,
            args: self.args.clone(),
            fds: self.fds.iter().filter_map(|f| f.try_clone().ok()).collect(),
            suspect,
        }
    }
}

/// What reaches a job: a worker's result record, or a failure decided by the parent.
#[derive(Debug)]
pub(super) enum Delivery {
    Data {
        index: u64,
        count: u32,
        status: u8,
        frame: Arc<Vec<u8>>,
        start: usize,
        end: usize,
        fds: Vec<RegisteredFd>,
    },
    Failed {
        index: u64,
        count: u32,
        why: Why,
    },
}

impl Delivery {
    pub(super) fn count(&self) -> u32 {
        match self {
            Delivery::Data { count, .. } | Delivery::Failed { count, .. } => *count,
        }
    }
}

/// One call's bookkeeping (an `apply_async`, a `map`, an `imap`).
#[derive(Debug)]
pub(super) struct Job {
    pub(super) inbox: VecDeque<Delivery>,
    /// Tasks queued or in flight.
    pub(super) pending: usize,
    pub(super) signal: Arc<Condvar>,
    pub(super) waker: Option<Waker>,
    /// The handle is gone: drop deliveries, forget the job once nothing is pending.
    pub(super) abandoned: bool,
    /// (`AsyncResult`) the result was handed out.
    pub(super) taken: bool,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) chan: Channel,
    pub(super) process: Process<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Started; waiting for READY.
    Starting,
    Ready,
    /// Told to exit (end of stream sent).
    Draining,
}

#[derive(Debug)]
pub(super) struct InFlight {
    task: Task,
    seq: u64,
    cost: usize,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) id: u64,
    pub(super) conn: Arc<Conn>,
    pub(super) status: Status,
    pub(super) since: Instant,
    pub(super) inflight: VecDeque<InFlight>,
    pub(super) bytes: usize,
    /// Tasks sent so far (the next task's number).
    pub(super) seq: u64,
    /// Tasks it may still be sent (`max_tasks_per_child`).
    pub(super) quota: u64,
    /// Running a suspect alone.
    pub(super) isolating: bool,
    /// A thread is sending it a frame outside the lock.
    pub(super) writing: bool,
    /// From the latest RUNNING notice: (task number, element, estimated start).
    pub(super) running: Option<(u64, u32, Instant)>,
    /// We killed it for a timeout of (task number, element).
    pub(super) timed_out: Option<(u64, u32)>,
}

/// Whether the pool accepts work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Open,
    Closed,
    Terminated,
}

/// Everything behind the pool's lock.
#[derive(Debug)]
pub(super) struct State {
    pub(super) workers: Vec<Worker>,
    queue: VecDeque<Task>,
    suspects: VecDeque<Task>,
    pub(super) jobs: HashMap<u64, Job>,
    next_job: u64,
    pub(super) next_worker: u64,
    pub(super) phase: Phase,
    pub(super) broken: Option<Why>,
    /// Nanoseconds per task, by entry offset.
    estimates: HashMap<u64, f64>,
    /// The pool thread has exited.
    pub(super) finished: bool,
    pub(super) start_failures: u32,
    rr: usize,
    spare: Vec<Vec<u8>>,
}

/// The pool's shared core (the `Pool` handle, the pool thread and every `AsyncResult`).
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) cfg: Config,
    /// Signalled when workers become ready and when the pool thread exits.
    pub(super) changed: Condvar,
    pub(super) wake_rx: Channel,
    pub(super) wake_tx: Channel,
}

/// Condition variables and wakers to signal once the lock is released.
#[derive(Default)]
pub(super) struct Wakeups {
    signals: Vec<Arc<Condvar>>,
    wakers: Vec<Waker>,
}

impl Wakeups {
    pub(super) fn fire(self) {
        for s in self.signals {
            s.notify_all();
        }
        for w in self.wakers {
            w.wake();
        }
    }
}

/// A frame to send once the lock is released.
pub(super) struct Outgoing {
    worker: u64,
    conn: Arc<Conn>,
    frame: Vec<u8>,
    fds: Vec<RegisteredFd>,
}

fn target_window(est: Option<f64>) -> usize {
    match est {
        None => 1,
        Some(ns) => (1 + (PREFETCH_NS / ns.max(20.0)) as usize).min(WINDOW_MAX),
    }
}

impl State {
    pub(super) fn new() -> Self {
        State {
            workers: Vec::new(),
            queue: VecDeque::new(),
            suspects: VecDeque::new(),
            jobs: HashMap::new(),
            next_job: 1,
            next_worker: 1,
            phase: Phase::Open,
            broken: None,
            estimates: HashMap::new(),
            finished: false,
            start_failures: 0,
            rr: 0,
            spare: Vec::new(),
        }
    }

    /// Registers a new job.
    pub(super) fn new_job(&mut self) -> (u64, Arc<Condvar>) {
        let id = self.next_job;
        self.next_job += 1;
        let signal = Arc::new(Condvar::new());
        self.jobs.insert(
            id,
            Job {
                inbox: VecDeque::new(),
                pending: 0,
                signal: signal.clone(),
                waker: None,
                abandoned: false,
                taken: false,
            },
        );
        (id, signal)
    }

    /// Why a new submission is refused, if it is.
    pub(super) fn refusal(&self) -> Option<Why> {
        if let Some(b) = &self.broken {
            return Some(b.clone());
        }
        match self.phase {
            Phase::Open => None,
            _ => Some(Why::Closed),
        }
    }

    /// Queues tasks (or fails them at once if the pool refuses work).
    pub(super) fn submit(&mut self, tasks: Vec<Task>, wake: &mut Wakeups) {
        let refusal = self.refusal();
        for t in tasks {
            match &refusal {
                Some(why) => {
                    let d = Delivery::Failed {
                        index: t.base + t.lo as u64,
                        count: t.hi - t.lo,
                        why: why.clone(),
                    };
                    self.deliver_now(t.job, d, wake);
                }
                None => {
                    if let Some(j) = self.jobs.get_mut(&t.job) {
                        j.pending += 1;
                    }
                    self.queue.push_back(t);
                }
            }
        }
    }

    /// Hands a delivery to a job without counting a task as resolved.
    pub(super) fn deliver_now(&mut self, job: u64, d: Delivery, wake: &mut Wakeups) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending += 1;
        }
        self.deliver(job, d, wake);
    }

    /// A task of `job` is resolved with `d`.
    fn deliver(&mut self, job: u64, d: Delivery, wake: &mut Wakeups) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.pending = j.pending.saturating_sub(1);
        if j.abandoned {
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
            return;
        }
        j.inbox.push_back(d);
        if !wake
            .signals
            .last()
            .is_some_and(|s| Arc::ptr_eq(s, &j.signal))
        {
            wake.signals.push(j.signal.clone());
        }
        if let Some(w) = j.waker.take() {
            wake.wakers.push(w);
        }
    }

    /// The job's handle is gone: cancel its queued tasks, drop what arrives later.
    pub(super) fn abandon(&mut self, job: u64) {
        let mut removed = 0;
        self.queue.retain(|t| {
            let keep = t.job != job;
            removed += usize::from(!keep);
            keep
        });
        self.suspects.retain(|t| {
            let keep = t.job != job;
            removed += usize::from(!keep);
            keep
        });
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending = j.pending.saturating_sub(removed);
            j.inbox.clear();
            j.abandoned = true;
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
        }
    }

    /// Whether any task is queued or in flight.
    pub(super) fn has_work(&self) -> bool {
        !self.queue.is_empty()
            || !self.suspects.is_empty()
            || self.workers.iter().any(|w| !w.inflight.is_empty())
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.conn.process.pid()).collect()
    }

    /// Moves queued tasks into worker windows; returns the frames to send.
    pub(super) fn dispatch(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.phase == Phase::Terminated || self.broken.is_some() {
            return out;
        }
        // Suspects go alone to idle workers.
        for wi in 0..self.workers.len() {
            if self.suspects.is_empty() {
                break;
            }
            let w = &self.workers[wi];
            if w.status != Status::Ready
                || w.writing
                || w.isolating
                || !w.inflight.is_empty()
                || w.quota == 0
            {
                continue;
            }
            let t = self.suspects.pop_front().expect("checked non-empty");
            let mut frame = self.spare.pop().unwrap_or_default();
            let w = &mut self.workers[wi];
            w.isolating = true;
            let fds = push_task(w, &mut frame, t, true);
            w.writing = true;
            out.push(Outgoing {
                worker: w.id,
                conn: w.conn.clone(),
                frame,
                fds,
            });
        }
        if self.queue.is_empty() {
            return out;
        }
        let n = self.workers.len();
        let candidates = self
            .workers
            .iter()
            .filter(|w| w.status == Status::Ready && !w.writing && !w.isolating && w.quota > 0)
            .count();
        if candidates == 0 {
            return out;
        }
        let share = self.queue.len().div_ceil(candidates).max(1);
        // Suspects wait for an idle worker: let the least busy one run dry.
        let reserve = if self.suspects.is_empty() || candidates < 2 {
            None
        } else {
            (0..n)
                .filter(|&i| self.workers[i].status == Status::Ready && !self.workers[i].isolating)
                .min_by_key(|&i| self.workers[i].inflight.len())
        };
        self.rr = (self.rr + 1) % n.max(1);
        for k in 0..n {
            if self.queue.is_empty() {
                break;
            }
            let wi = (self.rr + k) % n;
            if Some(wi) == reserve {
                continue;
            }
            {
                let w = &self.workers[wi];
                if w.status != Status::Ready || w.writing || w.isolating || w.quota == 0 {
                    continue;
                }
            }
            let mut frame = self.spare.pop().unwrap_or_default();
            let mut fds = Vec::new();
            let mut taken = 0;
            let mut last_entry = None;
            while taken < share {
                let Some(t) = self.queue.front() else { break };
                let w = &self.workers[wi];
                let window = target_window(self.estimates.get(&t.entry).copied());
                let cost = t.args.len() + TASK_COST + if frame.is_empty() { FRAME_COST } else { 0 };
                let alone = w.inflight.is_empty() && frame.is_empty();
                if w.quota == 0
                    || (w.inflight.len() >= window && !alone)
                    || (w.bytes + cost > BUDGET && !alone)
                    || frame.len() >= FRAME_MAX
                    || fds.len() + t.fds.len() > sys::socket::MAX_FDS_PER_FRAME
                {
                    break;
                }
                let t = self.queue.pop_front().expect("checked non-empty");
                let same = last_entry == Some(t.entry);
                last_entry = Some(t.entry);
                let w = &mut self.workers[wi];
                fds.extend(push_task(w, &mut frame, t, !same));
                taken += 1;
            }
            if frame.is_empty() {
                self.spare.push(frame);
                continue;
            }
            let w = &mut self.workers[wi];
            w.writing = true;
            out.push(Outgoing {
                worker: w.id,
                conn: w.conn.clone(),
                frame,
                fds,
            });
        }
        out
    }

    /// After the frames of `sent` were written: the workers may be sent more.
    fn sent(&mut self, sent: Vec<Outgoing>) {
        for o in sent {
            if let Some(w) = self.workers.iter_mut().find(|w| w.id == o.worker) {
                w.writing = false;
            }
            let mut f = o.frame;
            if f.capacity() <= FRAME_MAX * 2 && self.spare.len() < 8 {
                f.clear();
                self.spare.push(f);
            }
        }
    }

    /// Processes one frame from worker `id`.
    pub(super) fn on_frame(
        &mut self,
        id: u64,
        frame: Frame,
        now: Instant,
        wake: &mut Wakeups,
    ) -> Result<()> {
        let Some(wi) = self.workers.iter().position(|w| w.id == id) else {
            return Ok(());
        };
        let payload = Arc::new(frame.payload);
        let mut fds = frame.fds.into_iter();
        let mut cur = Cursor::new(&payload);
        while !cur.is_empty() {
            match cur.u8()? {
                TAG_RESULT => {
                    let status = cur.u8()?;
                    let nfds = cur.u8()? as usize;
                    let busy = cur.u64()?;
                    let len = cur.u32()? as usize;
                    let start = cur.pos();
                    cur.bytes(len)?;
                    let w = &mut self.workers[wi];
                    let f = w
                        .inflight
                        .pop_front()
                        .ok_or_else(|| protocol("a result for a task never sent"))?;
                    w.bytes = w.bytes.saturating_sub(f.cost);
                    if w.running.is_some_and(|r| r.0 == f.seq) {
                        w.running = None;
                    }
                    if f.task.suspect {
                        w.isolating = false;
                    }
                    let est = self.estimates.entry(f.task.entry).or_insert(busy as f64);
                    *est = *est * 0.7 + busy as f64 * 0.3;
                    let d = Delivery::Data {
                        index: f.task.base + f.task.lo as u64,
                        count: f.task.hi - f.task.lo,
                        status,
                        frame: payload.clone(),
                        start,
                        end: start + len,
                        fds: fds.by_ref().take(nfds).collect(),
                    };
                    self.deliver(f.task.job, d, wake);
                }
                TAG_RUNNING => {
                    let seq = cur.u64()?;
                    let elem = cur.u32()?;
                    let us = cur.u64()?;
                    let w = &mut self.workers[wi];
                    if w.inflight.front().is_some_and(|f| f.seq == seq) {
                        let start = now.checked_sub(Duration::from_micros(us)).unwrap_or(now);
                        w.running = Some((seq, elem, start));
                    }
                }
                TAG_READY => {
                    let w = &mut self.workers[wi];
                    if w.status == Status::Starting {
                        w.status = Status::Ready;
                        self.start_failures = 0;
                    }
                }
                TAG_INIT_FAILED => {
                    let len = cur.u32()? as usize;
                    let f: Failure = crate::codec::decode(cur.bytes(len)?, Vec::new())?;
                    self.break_pool(Why::Init(f), wake);
                }
                _ => return Err(protocol("unknown message from a worker")),
            }
        }
        Ok(())
    }

    /// The pool cannot go on: fail everything with `why`, stop the workers.
    pub(super) fn break_pool(&mut self, why: Why, wake: &mut Wakeups) {
        if self.broken.is_none() {
            self.broken = Some(why.clone());
        }
        self.fail_all(&why, wake);
    }

    /// Fails every queued and in-flight task with `why` and kills every worker.
    pub(super) fn fail_all(&mut self, why: &Why, wake: &mut Wakeups) {
        let mut tasks: Vec<Task> = self.queue.drain(..).collect();
        tasks.extend(self.suspects.drain(..));
        for w in &mut self.workers {
            tasks.extend(w.inflight.drain(..).map(|f| f.task));
            w.bytes = 0;
            let _ = w.conn.process.kill();
        }
        for t in tasks {
            let d = Delivery::Failed {
                index: t.base + t.lo as u64,
                count: t.hi - t.lo,
                why: why.clone(),
            };
            self.deliver(t.job, d, wake);
        }
    }

    /// Worker `id` has exited with `code`: settle the tasks it held.
    pub(super) fn on_death(
        &mut self,
        id: u64,
        code: Option<i32>,
        limit: Option<Duration>,
        wake: &mut Wakeups,
    ) {
        let Some(wi) = self.workers.iter().position(|w| w.id == id) else {
            return;
        };
        let w = self.workers.swap_remove(wi);
        if w.status == Status::Starting {
            self.start_failures += 1;
            if self.start_failures >= MAX_START_FAILURES {
                let why = Why::Start(format!(
                    "{} workers in a row exited before they were ready (last exit code {code:?})",
                    self.start_failures
                ));
                self.break_pool(why, wake);
            }
        }
        let mut held: VecDeque<InFlight> = w.inflight;
        let Some(front) = held.front() else {
            return;
        };
        let (front_seq, single) = (
            front.seq,
            held.len() == 1 && front.task.hi - front.task.lo == 1,
        );
        let culprit = match (w.timed_out, w.running) {
            (Some((seq, elem)), _) if seq == front_seq => {
                Some((elem, Why::Timeout(limit.unwrap_or_default())))
            }
            (_, Some((seq, elem, _))) if seq == front_seq => Some((elem, Why::Lost(code))),
            _ if single => Some((front.task.lo, Why::Lost(code))),
            _ => None,
        };
        match culprit {
            Some((elem, why)) => {
                let f = held.pop_front().expect("front exists");
                let t = f.task;
                let elem = elem.clamp(t.lo, t.hi.saturating_sub(1));
                // The tasks behind it never started: back to the front of the queue, in order.
                for later in held.into_iter().rev() {
                    self.queue.push_front(later.task);
                }
                // Elements after the culprit never started; those before it finished but their
                // results died with the worker: both run again.
                let mut pieces = Vec::new();
                if elem + 1 < t.hi {
                    pieces.push(t.piece(elem + 1, t.hi, false));
                }
                if t.lo < elem {
                    pieces.push(t.piece(t.lo, elem, false));
                }
                if let Some(j) = self.jobs.get_mut(&t.job) {
                    j.pending += pieces.len();
                }
                for p in pieces {
                    self.queue.push_front(p);
                }
                let d = Delivery::Failed {
                    index: t.base + elem as u64,
                    count: 1,
                    why,
                };
                self.deliver(t.job, d, wake);
            }
            None => {
                // We cannot tell which task was running: every element becomes a suspect and
                // runs alone, so the one that kills a worker again is identified exactly.
                for f in held {
                    let t = f.task;
                    let n = (t.hi - t.lo) as usize;
                    if let Some(j) = self.jobs.get_mut(&t.job) {
                        j.pending += n - 1;
                    }
                    if n == 1 {
                        let mut t = t;
                        t.suspect = true;
                        self.suspects.push_back(t);
                    } else {
                        for e in t.lo..t.hi {
                            self.suspects.push_back(t.piece(e, e + 1, true));
                        }
                    }
                }
            }
        }
    }

    /// Kills workers whose running element is over the limit; returns the next deadline.
    pub(super) fn check_deadlines(&mut self, cfg: &Config, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for w in &mut self.workers {
            match w.status {
                Status::Starting => {
                    let d = w.since + START_TIMEOUT;
                    if now >= d {
                        let _ = w.conn.process.kill();
                    } else {
                        earliest(d);
                    }
                }
                Status::Draining => {
                    let d = w.since + EXIT_GRACE;
                    if now >= d {
                        let _ = w.conn.process.kill();
                    } else {
                        earliest(d);
                    }
                }
                Status::Ready => {}
            }
            let Some(limit) = cfg.task_timeout else {
                continue;
            };
            if let Some((seq, elem, start)) = w.running {
                if w.timed_out.is_some() {
                    continue;
                }
                if w.inflight.front().is_none_or(|f| f.seq != seq) {
                    w.running = None;
                    continue;
                }
                let d = start + limit;
                if now >= d {
                    w.timed_out = Some((seq, elem));
                    let _ = w.conn.process.kill();
                } else {
                    earliest(d);
                }
            } else if !w.inflight.is_empty() {
                // The watchdog reports a long element within a tick; look again then.
                earliest(now + cfg.tick * 2);
            }
        }
        next
    }

    /// How many workers to start now.
    pub(super) fn missing(&self, cfg: &Config) -> usize {
        if self.broken.is_some() || self.phase == Phase::Terminated {
            return 0;
        }
        if self.phase == Phase::Closed && !self.has_work() {
            return 0;
        }
        let live = self
            .workers
            .iter()
            .filter(|w| w.status != Status::Draining)
            .count();
        cfg.processes.saturating_sub(live)
    }

    /// Closed and idle: tell every worker to exit (end of stream).
    pub(super) fn drain_if_done(&mut self) {
        if self.phase != Phase::Closed || self.has_work() {
            return;
        }
        let now = Instant::now();
        for w in &mut self.workers {
            if w.status != Status::Draining && !w.writing {
                let _ = sys::socket::shutdown(w.conn.chan.fd(), sys::socket::Half::Write);
                w.status = Status::Draining;
                w.since = now;
            }
        }
    }

    /// `terminate`: fail everything with `Cancelled`, kill every worker.
    pub(super) fn terminate(&mut self, wake: &mut Wakeups) {
        if self.phase == Phase::Terminated {
            return;
        }
        self.phase = Phase::Terminated;
        self.fail_all(&Why::Cancelled, wake);
    }
}

/// Appends task `t` to `frame` for worker `w` and records it in flight.
fn push_task(w: &mut Worker, frame: &mut Vec<u8>, t: Task, with_entry: bool) -> Vec<RegisteredFd> {
    let first = frame.is_empty();
    frame.reserve(TASK_HEADER_MAX + t.args.len());
    if with_entry || first {
        frame.push(TAG_TASK | FLAG_ENTRY);
        frame.extend_from_slice(&t.entry.to_le_bytes());
    } else {
        frame.push(TAG_TASK);
    }
    frame.push(t.fds.len() as u8);
    frame.extend_from_slice(&((t.args.len() + 8) as u32).to_le_bytes());
    frame.extend_from_slice(&t.lo.to_le_bytes());
    frame.extend_from_slice(&t.hi.to_le_bytes());
    frame.extend_from_slice(&t.args);
    let fds = t.fds.iter().filter_map(|f| f.try_clone().ok()).collect();
    let cost = t.args.len() + TASK_COST + if first { FRAME_COST } else { 0 };
    w.bytes += cost;
    w.quota = w.quota.saturating_sub(1);
    w.inflight.push_back(InFlight {
        task: t,
        seq: w.seq,
        cost,
    });
    w.seq += 1;
    fds
}

/// Sends frames built by `dispatch` (outside the lock).
fn send_all(out: &[Outgoing]) {
    for o in out {
        let fds: Vec<BorrowedFd<'_>> = o.fds.iter().map(|f| f.as_fd()).collect();
        // A failed send means the worker died; the pool thread notices and re-dispatches.
        let _ = o.conn.chan.send_raw(&o.frame, &fds);
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Wakes the pool thread (close, terminate).
    pub(super) fn wake(&self) {
        let _ = self.wake_tx.try_send_raw(&[]);
    }

    /// Dispatches what can be dispatched, sending outside the lock; fires `wake` after
    /// releasing it.
    pub(super) fn pump(&self, mut st: MutexGuard<'_, State>, wake: Wakeups) {
        let mut out = st.dispatch();
        drop(st);
        wake.fire();
        while !out.is_empty() {
            send_all(&out);
            let mut st = self.lock();
            st.sent(out);
            out = st.dispatch();
        }
    }
}
