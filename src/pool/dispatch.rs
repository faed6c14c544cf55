//! The parent side of a pool: shared state, dispatch, routing results to jobs, and settling
//! dead workers. The thread that drives it is in `supervisor.rs`; see `README.md`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::completion::{Notifier, Runner};
use super::task::{
    protocol, put_task_header, read_from_worker, Cursor, Failure, FromWorker, ALL_OK,
    TASK_HEADER_MAX,
};
use crate::connection::channel::{Channel, Frame};
use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;
use crate::process::Process;
use crate::sys;
use crate::wait::lock;

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
    /// Heartbeat period of a busy worker (with a `task_timeout`).
    pub(super) beat: Option<Duration>,
    /// Workers ignore SIGINT.
    pub(super) ignore_sigint: bool,
    /// The largest argument or result message.
    pub(super) max_message: usize,
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
    /// The encoded arguments are larger than the pool's `max_message_size`.
    TooLarge { size: u64, limit: u64 },
}

impl Why {
    /// Why arguments of `size` encoded bytes cannot be sent, if they cannot (the task header
    /// must fit in the same message).
    pub(super) fn too_large(size: usize, max_message: usize) -> Option<Why> {
        let limit = max_message.saturating_sub(TASK_HEADER_MAX);
        (size > limit).then_some(Why::TooLarge {
            size: size as u64,
            limit: limit as u64,
        })
    }

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
            Why::TooLarge { size, limit } => {
                Error::too_large(*size, *limit).context(super::task::TOO_LARGE)
            }
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

    /// Job index of its first element.
    pub(super) fn index(&self) -> u64 {
        match self {
            Delivery::Data { index, .. } | Delivery::Failed { index, .. } => *index,
        }
    }
}

/// What runs once a job is settled, on the pool's callback thread: decodes the deliveries
/// and calls the user's callback.
pub(super) type OnSettled = Box<dyn FnOnce(VecDeque<Delivery>) + Send>;

/// One call's bookkeeping (an `apply_async`, a `map`, an `imap`).
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
    /// Some delivery carries a failure (an `AsyncResult` of a `map_async` is settled then).
    pub(super) failed: bool,
    /// (`AsCompleted`) told once when the job is settled: the set and this job's key in it.
    pub(super) notify: Option<(Arc<Notifier>, u64)>,
    /// (`AsyncResult::then`) run once the job is settled.
    pub(super) on_settled: Option<OnSettled>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("inbox", &self.inbox.len())
            .field("pending", &self.pending)
            .field("abandoned", &self.abandoned)
            .field("taken", &self.taken)
            .field("callback", &self.on_settled.is_some())
            .finish()
    }
}

impl Job {
    /// The `AsyncResult` of this job can be taken: every task answered, or one failed.
    pub(super) fn settled(&self) -> bool {
        self.pending == 0 || self.failed
    }
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
    /// The last time it sent anything, or was given work while idle: with a
    /// `task_timeout`, a busy worker silent for that long is frozen (or over time).
    pub(super) heard: Instant,
    /// Seen dead; a reaper thread is getting its exit code, then settles its tasks.
    pub(super) exited: bool,
}

impl Worker {
    /// It may be sent tasks.
    fn ready(&self) -> bool {
        self.status == Status::Ready && !self.exited
    }
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
    /// Consecutive failures to create a worker process (the pool breaks at
    /// `MAX_START_FAILURES`).
    pub(super) start_failures: u32,
    /// Consecutive workers that died before they were ready without an initializer error
    /// (killed from outside): replaced with a growing back-off, never fatal.
    pub(super) init_deaths: u32,
    /// Workers being started by starter threads.
    pub(super) launching: usize,
    rr: usize,
    spare: Vec<Vec<u8>>,
    /// The thread that runs `AsyncResult::then` callbacks.
    pub(super) runner: Arc<Runner>,
    /// The largest frame to a worker (`max_message_size`).
    max_message: usize,
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

/// A callback ready to run on the callback thread.
pub(super) type Callback = Box<dyn FnOnce() + Send>;

/// Condition variables, wakers, `AsCompleted` sets and callbacks to signal once the lock
/// is released.
#[derive(Default)]
pub(super) struct Wakeups {
    signals: Vec<Arc<Condvar>>,
    wakers: Vec<Waker>,
    notify: Vec<(Arc<Notifier>, u64)>,
    callbacks: Vec<(Arc<Runner>, Callback)>,
}

impl Wakeups {
    pub(super) fn fire(self) {
        for s in self.signals {
            s.notify_all();
        }
        for w in self.wakers {
            w.wake();
        }
        for (n, key) in self.notify {
            n.push(key);
        }
        for (r, cb) in self.callbacks {
            r.run(cb);
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
    pub(super) fn new(max_message: usize) -> Self {
        State {
            max_message,
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
            init_deaths: 0,
            launching: 0,
            rr: 0,
            spare: Vec::new(),
            runner: Arc::new(Runner::default()),
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
                failed: false,
                notify: None,
                on_settled: None,
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
        j.failed |= match &d {
            Delivery::Failed { .. } => true,
            Delivery::Data { status, .. } => *status != ALL_OK,
        };
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
        if !j.settled() {
            return;
        }
        if let Some(n) = j.notify.take() {
            wake.notify.push(n);
        }
        if let Some(cb) = j.on_settled.take() {
            // The callback owns the result now; whatever arrives later is dropped.
            let inbox = std::mem::take(&mut j.inbox);
            j.taken = true;
            j.abandoned = true;
            wake.callbacks
                .push((self.runner.clone(), Box::new(move || cb(inbox))));
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
        }
    }

    /// The job's handle is gone. Results that arrive later are dropped; with `cancel`, its
    /// queued tasks are dropped too (`map`, `imap`), otherwise they still run (`AsyncResult`,
    /// as in Python). A job with a callback lives on until the callback has its result.
    pub(super) fn abandon(&mut self, job: u64, cancel: bool) {
        if self.jobs.get(&job).is_some_and(|j| j.on_settled.is_some()) {
            return;
        }
        let removed = if cancel { self.unqueue(job) } else { 0 };
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending = j.pending.saturating_sub(removed);
            j.inbox.clear();
            j.abandoned = true;
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
        }
    }

    /// `AsyncResult::then`: `cb` gets the job's result once it is settled (at once if it is).
    pub(super) fn attach_callback(&mut self, job: u64, cb: OnSettled, wake: &mut Wakeups) {
        let Some(j) = self.jobs.get_mut(&job) else {
            let runner = self.runner.clone();
            wake.callbacks
                .push((runner, Box::new(move || cb(VecDeque::new()))));
            return;
        };
        if j.taken || j.settled() {
            let inbox = if j.taken {
                VecDeque::new()
            } else {
                std::mem::take(&mut j.inbox)
            };
            j.taken = true;
            j.abandoned = true;
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
            let runner = self.runner.clone();
            wake.callbacks.push((runner, Box::new(move || cb(inbox))));
        } else {
            j.on_settled = Some(cb);
        }
    }

    /// Removes the queued tasks of `job`; returns how many.
    fn unqueue(&mut self, job: u64) -> usize {
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
        removed
    }

    /// `AsyncResult::cancel`: fails the job with `Cancelled` if none of its tasks has been
    /// sent to a worker yet; returns whether it did.
    pub(super) fn cancel(&mut self, job: u64, wake: &mut Wakeups) -> bool {
        let Some(j) = self.jobs.get(&job) else {
            return false;
        };
        if j.settled() || j.taken {
            return false;
        }
        let queued = self.queue.iter().filter(|t| t.job == job).count()
            + self.suspects.iter().filter(|t| t.job == job).count();
        if queued != j.pending {
            return false; // some task is running, or done
        }
        let mut tasks: Vec<Task> = Vec::new();
        let mut rest = VecDeque::new();
        for t in self.queue.drain(..) {
            if t.job == job {
                tasks.push(t);
            } else {
                rest.push_back(t);
            }
        }
        self.queue = rest;
        self.suspects.retain(|t| t.job != job);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending = 1;
        }
        let total: u32 = tasks.iter().map(|t| t.hi - t.lo).sum();
        let d = Delivery::Failed {
            index: 0,
            count: total,
            why: Why::Cancelled,
        };
        if let Some(j) = self.jobs.get_mut(&job) {
            j.failed = true;
        }
        self.deliver(job, d, wake);
        true
    }

    /// Whether any task is queued or in flight.
    pub(super) fn has_work(&self) -> bool {
        !self.queue.is_empty()
            || !self.suspects.is_empty()
            || self.workers.iter().any(|w| !w.inflight.is_empty())
    }

    /// The live workers' connections (to ask for pids outside the lock).
    pub(super) fn conns(&self) -> Vec<Arc<Conn>> {
        self.workers
            .iter()
            .filter(|w| !w.exited)
            .map(|w| w.conn.clone())
            .collect()
    }

    /// Worker `id` was seen dead: no more tasks or polling until `on_death` settles it.
    pub(super) fn mark_exited(&mut self, id: u64) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == id) {
            w.exited = true;
        }
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
            if !w.ready() || w.writing || w.isolating || !w.inflight.is_empty() || w.quota == 0 {
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
            .filter(|w| w.ready() && !w.writing && !w.isolating && w.quota > 0)
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
                .filter(|&i| self.workers[i].ready() && !self.workers[i].isolating)
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
                if !w.ready() || w.writing || w.isolating || w.quota == 0 {
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
                    || (!frame.is_empty()
                        && frame.len() + TASK_HEADER_MAX + t.args.len() > self.max_message)
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
        self.workers[wi].heard = now;
        let payload = Arc::new(frame.payload);
        let mut fds = frame.fds.into_iter();
        let mut cur = Cursor::new(&payload);
        while !cur.is_empty() {
            match read_from_worker(&mut cur)? {
                FromWorker::Result {
                    status,
                    nfds,
                    busy_ns,
                    start,
                    len,
                } => {
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
                    let busy = busy_ns as f64;
                    let est = self.estimates.entry(f.task.entry).or_insert(busy);
                    *est = *est * 0.7 + busy * 0.3;
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
                FromWorker::Running {
                    seq,
                    elem,
                    running_us,
                } => {
                    let w = &mut self.workers[wi];
                    if w.inflight.front().is_some_and(|f| f.seq == seq) {
                        let start = now
                            .checked_sub(Duration::from_micros(running_us))
                            .unwrap_or(now);
                        w.running = Some((seq, elem, start));
                    }
                }
                // Hearing from it (`heard`, above) is all an ALIVE says.
                FromWorker::Alive => {}
                FromWorker::Ready => {
                    let w = &mut self.workers[wi];
                    if w.status == Status::Starting {
                        w.status = Status::Ready;
                        self.start_failures = 0;
                        self.init_deaths = 0;
                    }
                }
                FromWorker::InitFailed(f) => self.break_pool(Why::Init(f), wake),
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
            // No INIT_FAILED came (that breaks the pool in `on_frame`): the worker was killed
            // from outside, or crashed, while starting. Replace it, backing off (as Python).
            self.init_deaths += 1;
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
            if w.exited {
                continue;
            }
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
            if w.status == Status::Ready && w.timed_out.is_none() {
                if let Some(front) = w.inflight.front() {
                    // A busy worker sends ALIVE every beat: silence for a whole limit means
                    // it is frozen (SIGSTOP) or stuck; our dispatch time bounds the task.
                    let d = w.heard + limit;
                    if now >= d {
                        let elem = match w.running {
                            Some((seq, elem, _)) if seq == front.seq => elem,
                            _ => front.task.lo,
                        };
                        w.timed_out = Some((front.seq, elem));
                        let _ = w.conn.process.kill();
                        continue;
                    }
                    earliest(d);
                }
            }
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
            .filter(|w| w.status != Status::Draining && !w.exited)
            .count();
        cfg.processes.saturating_sub(live + self.launching)
    }

    /// Closed and idle: tell every worker to exit (end of stream).
    pub(super) fn drain_if_done(&mut self) {
        if self.phase != Phase::Closed || self.has_work() {
            return;
        }
        let now = Instant::now();
        for w in &mut self.workers {
            if w.status != Status::Draining && !w.writing && !w.exited {
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
    if w.inflight.is_empty() {
        w.heard = Instant::now();
    }
    frame.reserve(TASK_HEADER_MAX + t.args.len());
    let entry = (with_entry || first).then_some(t.entry);
    put_task_header(frame, entry, t.fds.len() as u8, t.args.len(), t.lo, t.hi);
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

impl Drop for Shared {
    fn drop(&mut self) {
        self.lock().runner.close();
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
