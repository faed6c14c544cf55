//! The parent side of a pool, as a state machine behind the pool's lock: the types here,
//! and its three jobs in their own files:
//!
//! * `schedule.rs`: queueing tasks and moving them into worker windows;
//! * `route.rs`: reading workers' frames and handing results to jobs;
//! * `settle.rs`: dead workers, deadlines, breaking and terminating the pool.
//!
//! `State` never does I/O or kills a process: its methods return what to do (frames to
//! send, workers to kill, how many workers to start) in [`Actions`] and values, and the
//! driver (`Shared::pump`, `supervisor.rs`) does it once the lock is released. So `tests.rs`
//! drives it with no processes. The thread that drives it is in `supervisor.rs`; see
//! `README.md`.

mod route;
mod schedule;
mod settle;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::completion::{Notifier, Runner};
use super::task::{Failure, SealedEntry, TASK_HEADER_MAX};
use crate::connection::channel::Channel;
use crate::context::StartMethod;
use crate::error::{Error, ErrorKind};
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

/// Encoded initializer: sealed entry and arguments (descriptors included).
#[derive(Debug)]
pub(super) struct Init {
    pub(super) entry: SealedEntry,
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
    /// The MPI ranks the workers run on (`PoolBuilder::mpi`); `None`: local workers.
    #[cfg(feature = "mpi")]
    pub(super) cluster: Option<crate::mpi::Cluster>,
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
    /// Workers could not be started: the kind of the last start error (e.g. `WorkerLost` when
    /// every MPI rank is lost, `Io` when the OS refused), and its text.
    Start(ErrorKind, String),
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
            Why::Start(k, m) => {
                // The start error's own text, less its kind's phrase (the kind says it again).
                let m = m
                    .strip_prefix(k.what())
                    .map_or(m.as_str(), |r| r.trim_start_matches(": "));
                Error::msg(*k, m).context("starting pool workers")
            }
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
    /// The function, sealed once where the job was made (frames carry the seal).
    pub(super) entry: SealedEntry,
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

/// A worker's channel and process.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) chan: Channel,
    /// `None` only for the state machine's unit tests, which run no processes, and for a
    /// worker on another MPI rank.
    pub(super) process: Option<Process<()>>,
    /// A worker on another MPI rank (its channel is relayed by the MPI thread).
    #[cfg(feature = "mpi")]
    pub(super) remote: Option<crate::mpi::Remote>,
}

impl Conn {
    pub(super) fn kill(&self) {
        if let Some(p) = &self.process {
            let _ = p.kill();
        }
        #[cfg(feature = "mpi")]
        if let Some(r) = &self.remote {
            r.kill();
        }
    }

    pub(super) fn pid(&self) -> u32 {
        #[cfg(feature = "mpi")]
        if let Some(r) = &self.remote {
            return r.pid();
        }
        self.process.as_ref().map_or(0, |p| p.pid())
    }

    /// A process stands behind it (always, but in the unit tests).
    pub(super) fn has_process(&self) -> bool {
        #[cfg(feature = "mpi")]
        if self.remote.is_some() {
            return true;
        }
        self.process.is_some()
    }

    /// The descriptor that becomes readable when the worker is gone, and whether it is;
    /// `None` without a process (the unit tests).
    pub(super) fn death_handle(&self) -> Option<(BorrowedFd<'_>, bool)> {
        #[cfg(feature = "mpi")]
        if let Some(r) = &self.remote {
            return Some(r.wait_handle());
        }
        self.process.as_ref().map(|p| {
            use crate::connection::Waitable;
            p.wait_handle()
        })
    }
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

    /// It may be sent a frame now.
    fn can_take(&self) -> bool {
        self.ready() && !self.writing && !self.isolating && self.quota > 0
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

/// What the state machine asks for, done by `fire` once the lock is released: condition
/// variables, wakers, `AsCompleted` sets and callbacks to signal, workers to kill, channels
/// to shut (end of stream: "exit now"). Frames to send come back from `State::dispatch`,
/// workers to start from `State::plan_starts`.
#[derive(Default)]
pub(super) struct Actions {
    signals: Vec<Arc<Condvar>>,
    wakers: Vec<Waker>,
    notify: Vec<(Arc<Notifier>, u64)>,
    callbacks: Vec<(Arc<Runner>, Callback)>,
    /// Workers to kill, by id.
    pub(super) kill: Vec<(u64, Arc<Conn>)>,
    /// Workers whose channel's write half to shut, by id.
    pub(super) shutdown: Vec<(u64, Arc<Conn>)>,
}

impl Actions {
    pub(super) fn fire(self) {
        for (_, c) in self.kill {
            c.kill();
        }
        for (_, c) in self.shutdown {
            let _ = sys::socket::shutdown(c.chan.fd(), sys::socket::Half::Write);
        }
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
    pub(super) fn pump(&self, mut st: MutexGuard<'_, State>, wake: Actions) {
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
