//! [`Pool`]: a fixed set of worker processes that run tasks, like Python's
//! `multiprocessing.Pool`, but a pool that never hangs when a worker dies.
//!
//! * `mod.rs`: the public types ([`Pool`], [`PoolBuilder`], [`AsyncResult`]).
//! * `completion.rs`: [`AsCompleted`] and the callback thread.
//! * `iter.rs`: feeding a job from an iterator, [`IMap`], `map`'s collector.
//! * `dispatch/`: the parent's state machine (types; `schedule.rs`, `route.rs`,
//!   `settle.rs`; unit tests with no processes in `tests.rs`).
//! * `supervisor.rs`: the pool thread and worker start-up.
//! * `worker.rs`: the worker process.
//! * `task.rs`: the wire format and the trampolines workers run.
//! * `state.rs`: per-worker state ([`with_worker_state`]).
//! * `progress.rs`: the optional progress bar.
//!
//! `README.md` next to this file describes the protocol and the failure handling.

mod completion;
mod dispatch;
mod iter;
mod progress;
mod state;
mod supervisor;
mod task;
mod worker;

#[cfg(feature = "mpi")]
pub(crate) use supervisor::start_worker_process;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::context::{cpu_count, get_start_method, StartMethod};
use crate::error::{Error, ErrorKind, Result};
use crate::wait::{deadline_after, wait_until};
use dispatch::{Actions, Config, Delivery, Init, OnSettled, Shared, Task, Why};
use iter::{Feeder, JobGuard};

pub use completion::{as_completed, AsCompleted};
pub use iter::IMap;
pub use state::with_worker_state;

/// Items per automatic chunk at most (`map`), whatever the input length.
const AUTO_CHUNK_MAX: usize = 16 * 1024;

/// A pool of worker processes (`multiprocessing.Pool`).
///
/// Tasks are function items or closures that capture nothing, with serde arguments and
/// results, as for [`Process`](crate::Process). Every method takes `&self`; a `Pool` is
/// `Send + Sync` and may be shared between threads.
///
/// ```
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.apply(square, 7)?, 49);
/// let r = pool.apply_async(square, 8);
/// assert_eq!(pool.map(square, 0..5u64)?, vec![0, 1, 4, 9, 16]);
/// assert_eq!(r.get()?, 64);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// A task that captures its environment does not compile; pass the data as arguments:
///
/// ```compile_fail
/// let pool = multiproc::Pool::new(1).unwrap();
/// let k = 3u64;
/// pool.map(move |x: u64| x * k, 0..10u64).unwrap(); // captures `k`
/// ```
///
/// # Failures
///
/// Each task fails on its own, with an [`Error`] saying why, and the pool keeps serving:
///
/// | what happened | error kind |
/// |---|---|
/// | the function panicked | [`ErrorKind::Panicked`] (with the message and location) |
/// | the worker died while running it (abort, segfault, SIGKILL, OOM kill, `exit`) | [`ErrorKind::WorkerLost`] (with the signal or exit code) |
/// | it ran longer than [`PoolBuilder::task_timeout`] (the worker is killed) | [`ErrorKind::Timeout`] |
/// | its arguments or result could not be (de)serialised | [`ErrorKind::Encode`] / [`ErrorKind::Decode`] |
/// | its arguments or result are larger than [`PoolBuilder::max_message_size`] | [`ErrorKind::TooLarge`] |
/// | the pool was terminated before it ran | [`ErrorKind::Cancelled`] |
/// | it was submitted after `close`/`terminate` | [`ErrorKind::Closed`] |
///
/// A dead worker is replaced at once. Only the item it was running fails: the tasks queued
/// behind it never started and are sent to other workers. When the pool cannot tell which
/// item was running (the worker died within about a millisecond of starting one of several
/// small tasks whose results it had not sent yet), it runs each of those items again on its
/// own, so the item that kills a worker again is the one reported. Consequences, stated
/// plainly: a task can run twice (its first result died with the worker), and a task whose
/// worker was killed from outside may simply succeed on its second run.
///
/// # Dropping
///
/// Dropping a `Pool` terminates it, like leaving Python's `with Pool() as p:` block: tasks
/// that have not finished fail with [`ErrorKind::Cancelled`] and the workers are killed.
/// Call [`close`](Self::close) and [`join`](Self::join) first to let queued work finish.
/// Dropping never hangs: it waits at most a few seconds for the workers to be reaped.
pub struct Pool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.shared.cfg.processes)
            .field("start_method", &self.shared.cfg.method)
            .field("pids", &{
                let conns = self.shared.lock().conns();
                conns.iter().map(|c| c.pid()).collect::<Vec<_>>()
            })
            .finish()
    }
}

/// Configures a [`Pool`]: size, initializer, recycling, start method, task timeout.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Pool, StartMethod};
///
/// let pool = Pool::builder()
///     .processes(2)
///     .name("hasher")
///     .max_tasks_per_child(1000)
///     .task_timeout(Duration::from_secs(30))
///     .start_method(StartMethod::ForkServer)
///     .build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct PoolBuilder {
    processes: usize,
    method: Option<StartMethod>,
    name: Option<String>,
    max_tasks: u64,
    task_timeout: Option<Duration>,
    init: Option<Result<Init>>,
    progress: bool,
    ignore_sigint: bool,
    max_message: usize,
    #[cfg(feature = "mpi")]
    mpi: bool,
    #[cfg(feature = "mpi")]
    rank_timeout: Duration,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("start_method", &self.method)
            .field("name", &self.name)
            .field("max_tasks_per_child", &self.max_tasks)
            .field("task_timeout", &self.task_timeout)
            .field("initializer", &self.init.is_some())
            .field("ignore_sigint", &self.ignore_sigint)
            .field("max_message_size", &self.max_message)
            .finish()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolBuilder {
    /// A builder with the defaults: [`cpu_count`] workers, the default start method, no
    /// initializer, no recycling, no timeout.
    pub fn new() -> Self {
        PoolBuilder {
            processes: 0,
            method: None,
            name: None,
            max_tasks: 0,
            task_timeout: None,
            init: None,
            progress: false,
            ignore_sigint: false,
            max_message: crate::codec::frame::DEFAULT_MAX_MESSAGE,
            #[cfg(feature = "mpi")]
            mpi: false,
            #[cfg(feature = "mpi")]
            rank_timeout: crate::mpi::RANK_TIMEOUT,
        }
    }

    /// The number of worker processes (0, the default, means [`cpu_count`]).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = n;
        self
    }

    /// How workers are started (default: [`get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Workers are named `"{prefix}-{n}"` (default prefix `"PoolWorker"`); the name is what
    /// [`current_process`](crate::current_process) reports inside a worker.
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.name = Some(prefix.into());
        self
    }

    /// Replace a worker after it has run `n` tasks (Python's `maxtasksperchild`; 0, the
    /// default, never). A task is one call of `apply_async`, or one chunk of `map`/`imap`.
    /// The replacement runs the initializer again.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks = n;
        self
    }

    /// Kill the worker running an item for longer than `timeout`; that item fails with
    /// [`ErrorKind::Timeout`] and the worker is replaced. The limit applies to each item of a
    /// chunk on its own. It is enforced within a few milliseconds of the limit (the worker's
    /// watchdog reports a long element after one tick). A worker that is frozen (SIGSTOP) or
    /// stuck so that it sends nothing for a whole `timeout` while it has work is treated the
    /// same way: the parent's own clock bounds every task. `Duration::MAX` means no limit.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Run `f(args)` once in every worker before it takes tasks (Python's `initializer`,
    /// `initargs`), including replacement workers.
    ///
    /// `f` returns the worker's state, which stays in that worker process; tasks borrow it
    /// with [`with_worker_state`]. Return `()` if there is none. If `f` panics, the pool is
    /// broken: [`build`](Self::build) returns the error (or, for a replacement worker, every
    /// unfinished task fails with it).
    ///
    /// `f` must be a function item or a closure that captures nothing.
    pub fn initializer<F, A, S>(mut self, f: F, args: A) -> Self
    where
        F: Fn(A) -> S + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        S: 'static,
    {
        let _ = f;
        let entry = task::SealedEntry::of(task::init_entry::<F, A, S>());
        let mut bytes = Vec::new();
        let mut fds = Vec::new();
        self.init = Some(
            codec::encode(&args, &mut bytes, &mut fds)
                .map(|()| Init { entry, bytes, fds })
                .map_err(|e| e.context("encoding the initializer's arguments")),
        );
        self
    }

    /// Workers ignore SIGINT, so a Ctrl-C in the terminal stops only the parent's main
    /// thread's work, and the tasks that are running finish (Python's
    /// `initializer=lambda: signal.signal(SIGINT, SIG_IGN)` pattern). Default `false`:
    /// workers get the parent's disposition, and Ctrl-C kills them with the rest of the
    /// terminal's process group.
    ///
    /// The parent decides what to do on Ctrl-C (with its own handler): let the pool finish
    /// with [`Pool::close`] and [`Pool::join`], or stop it with [`Pool::terminate`]. A
    /// worker still dies from SIGTERM and SIGKILL.
    pub fn ignore_sigint(mut self, on: bool) -> Self {
        self.ignore_sigint = on;
        self
    }

    /// The largest task argument or result, in encoded bytes (default 1 GiB). A task whose
    /// arguments or result are larger fails alone with [`ErrorKind::TooLarge`]; the pool
    /// goes on. Raise it to pass bigger values (both ends accept messages up to it), lower
    /// it to bound what a worker may make the parent allocate.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message = bytes.max(1024);
        self
    }

    /// Show a progress bar on standard error during `map`, `starmap` and `imap` calls
    /// (feature `progress`).
    #[cfg(feature = "progress")]
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Place the workers on the other ranks of the MPI job this program was launched in
    /// (`mpirun -n N app`; feature `mpi`), [`processes`](Self::processes) per rank (0, the
    /// default: the host's cores divided among its ranks). Outside an MPI job, or in a job of
    /// one rank, the pool is an ordinary local pool. See [`crate::mpi`] for what runs where
    /// and what a failure does.
    ///
    /// ```
    /// let pool = multiproc::Pool::builder().mpi().processes(2).build()?;
    /// assert_eq!(pool.map(|x: u32| x + 1, 0..4u32)?, vec![1, 2, 3, 4]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(feature = "mpi")]
    pub fn mpi(mut self) -> Self {
        self.mpi = true;
        self
    }

    /// How long an agent rank may send nothing (it sends a heartbeat every 100 ms) before
    /// rank 0 declares it lost and runs its tasks elsewhere (default 10 s; feature `mpi`).
    /// The first MPI pool of a process sets it for the process.
    #[cfg(feature = "mpi")]
    pub fn mpi_rank_timeout(mut self, timeout: Duration) -> Self {
        self.rank_timeout = timeout;
        self
    }

    /// Starts the workers and waits until every one has run its initializer.
    ///
    /// # Errors
    /// [`ErrorKind::Encode`] if the initializer's arguments cannot be serialised; the
    /// initializer's error if it panicked; [`ErrorKind::Io`] if processes cannot be started.
    pub fn build(self) -> Result<Pool> {
        let init = self.init.transpose()?;
        #[cfg(feature = "mpi")]
        let cluster = if self.mpi {
            crate::mpi::Cluster::connect(self.processes, self.rank_timeout)?
        } else {
            None
        };
        #[cfg(feature = "mpi")]
        let remote = cluster.as_ref().map(|c| c.total());
        #[cfg(not(feature = "mpi"))]
        let remote: Option<usize> = None;
        let processes = match remote {
            Some(n) => n,
            None if self.processes == 0 => cpu_count(),
            None => self.processes,
        };
        // A limit too large to add to an `Instant` is no limit (the one timeout rule).
        let task_timeout = self.task_timeout.filter(|t| deadline_after(*t).is_some());
        let tick = match task_timeout {
            Some(t) => (t / 8).clamp(Duration::from_micros(200), Duration::from_millis(1)),
            None => Duration::from_millis(1),
        };
        // A busy worker says it is alive four times per limit (see `task_timeout`).
        let beat = task_timeout.map(|t| (t / 4).max(tick));
        let cfg = Config {
            processes,
            beat,
            ignore_sigint: self.ignore_sigint,
            max_message: self.max_message,
            method: self.method.unwrap_or_else(get_start_method),
            name: self.name.unwrap_or_else(|| "PoolWorker".into()),
            max_tasks: self.max_tasks,
            task_timeout,
            init,
            tick,
            progress: self.progress,
            #[cfg(feature = "mpi")]
            cluster,
        };
        let (shared, thread) = supervisor::start(cfg)?;
        Ok(Pool {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Pool {
    /// A pool of `processes` workers (0: [`cpu_count`]) with the default settings.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the processes cannot be started.
    pub fn new(processes: usize) -> Result<Pool> {
        PoolBuilder::new().processes(processes).build()
    }

    /// A builder for a pool with an initializer, recycling, a timeout or a start method.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.shared.cfg.processes
    }

    /// The MPI ranks the workers run on now and how many on each (`PoolBuilder::mpi`): a
    /// lost rank is left out and its share counted where it moved; empty for a local pool
    /// (feature `mpi`).
    #[cfg(feature = "mpi")]
    pub fn mpi_ranks(&self) -> Vec<(u32, usize)> {
        self.shared
            .cfg
            .cluster
            .as_ref()
            .map_or_else(Vec::new, |c| c.ranks())
    }

    /// The start method of the workers.
    pub fn start_method(&self) -> StartMethod {
        self.shared.cfg.method
    }

    /// The process ids of the current workers (they change when workers are replaced).
    ///
    /// A replacement that is being started is listed once it has announced itself; `pids`
    /// waits up to a second for replacements under way (never holding the pool's lock, so
    /// the pool keeps working meanwhile), then lists the workers it has.
    pub fn pids(&self) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let (st, _) = wait_until(
            &self.shared.changed,
            self.shared.lock(),
            Some(deadline),
            |st| st.launching == 0 || st.phase != dispatch::Phase::Open,
        );
        let conns = st.conns();
        drop(st);
        conns.iter().map(|c| c.pid()).collect()
    }

    /// Runs `f(args)` in a worker and waits for the result (`apply`).
    ///
    /// # Errors
    /// As [`AsyncResult::get`].
    pub fn apply<F, A, R>(&self, f: F, args: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.apply_async(f, args).get()
    }

    /// Submits `f(args)` and returns at once (`apply_async`); the [`AsyncResult`] gives the
    /// result later, blocking or as a `Future`.
    ///
    /// Submission does not fail: a pool that no longer accepts work, or arguments that cannot
    /// be serialised, give an `AsyncResult` that holds the error.
    ///
    /// ```
    /// use multiproc::Pool;
    ///
    /// let pool = Pool::new(2)?;
    /// let results: Vec<_> = (0..4u32).map(|i| pool.apply_async(|x: u32| x + 1, i)).collect();
    /// let sum: u32 = results.into_iter().map(|r| r.get().unwrap()).sum();
    /// assert_eq!(sum, 10);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn apply_async<F, A, R>(&self, f: F, args: A) -> AsyncResult<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        let entry = task::SealedEntry::of(task::chunk_entry::<F, A, R>());
        let mut bytes = Vec::with_capacity(16);
        let mut fds = Vec::new();
        let enc = codec::encode(std::slice::from_ref(&args), &mut bytes, &mut fds);
        drop(args);
        let job = JobGuard::new(&self.shared, false);
        let mut wake = Actions::default();
        let mut st = self.shared.lock();
        let enc = enc.map_err(|e| Why::encode(&e)).and_then(|()| {
            match Why::too_large(bytes.len(), self.shared.cfg.max_message) {
                Some(why) => Err(why),
                None => Ok(()),
            }
        });
        match enc {
            Ok(()) => st.submit(
                vec![Task {
                    job: job.id,
                    base: 0,
                    lo: 0,
                    hi: 1,
                    entry,
                    args: bytes,
                    fds,
                    suspect: false,
                }],
                &mut wake,
            ),
            Err(why) => st.deliver_now(
                job.id,
                Delivery::Failed {
                    index: 0,
                    count: 1,
                    why,
                },
                &mut wake,
            ),
        }
        self.shared.pump(st, wake);
        AsyncResult {
            job,
            finish: finish_one::<R>,
        }
    }

    /// [`apply_async`](Self::apply_async) with Python's `callback=` and `error_callback=`:
    /// `on_ok(value)` or `on_err(error)` runs on the pool's callback thread when the task
    /// finishes. The same as `pool.apply_async(f, args).then(on_ok, on_err)`; see
    /// [`AsyncResult::then`].
    pub fn apply_async_with<F, A, R, OK, ERR>(&self, f: F, args: A, on_ok: OK, on_err: ERR)
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
        OK: FnOnce(R) + Send + 'static,
        ERR: FnOnce(Error) + Send + 'static,
    {
        self.apply_async(f, args).then(on_ok, on_err)
    }

    /// Submits `f` over every item and returns at once (`map_async`); the
    /// [`AsyncResult`] gives every result in input order, or the first failure (by input
    /// position; the pool's failure table).
    ///
    /// The input is read and encoded now, in chunks as for [`map`](Self::map). The result
    /// is ready as soon as one item fails (as in Python), or once every item is done.
    ///
    /// ```
    /// let pool = multiproc::Pool::new(2)?;
    /// let r = pool.map_async(|x: u32| x + 1, 0..1000u32);
    /// let v = r.get()?;
    /// assert_eq!((v[0], v[999]), (1, 1000));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn map_async<F, A, R, I>(&self, f: F, items: I) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let v: Vec<A> = items.into_iter().collect();
        let chunk = v
            .len()
            .div_ceil(4 * self.processes())
            .clamp(1, AUTO_CHUNK_MAX);
        let mut feeder = self.feeder(f, v.into_iter(), chunk);
        feeder.max_elems = u64::MAX;
        let job = JobGuard::new(&self.shared, false);
        feeder.top_up(&job, 0);
        AsyncResult {
            job,
            finish: finish_map::<R>,
        }
    }

    /// `starmap_async`: [`map_async`](Self::map_async) over argument tuples (see
    /// [`starmap`](Self::starmap)).
    pub fn starmap_async<F, A, R, I>(&self, f: F, items: I) -> AsyncResult<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, items)
    }

    /// Applies `f` to every item and returns the results in input order (`map`).
    ///
    /// Items travel in chunks of `ceil(n / (4 × processes))` (Python's rule, at most 16 Ki
    /// items per chunk); an input of unknown length is collected first to learn `n`.
    ///
    /// # Errors
    /// The first error that arrives from any item (see [`Pool`]'s failure table); the
    /// remaining queued chunks are cancelled. Use [`imap`](Self::imap) for one `Result` per
    /// item.
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let it = items.into_iter();
        match it.size_hint() {
            (lo, Some(hi)) if lo == hi => self.map_auto(f, it, lo),
            _ => {
                let v: Vec<A> = it.collect();
                let n = v.len();
                self.map_auto(f, v.into_iter(), n)
            }
        }
    }

    fn map_auto<F, A, R, I>(&self, f: F, it: I, n: usize) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: Iterator<Item = A>,
    {
        let chunk = n.div_ceil(4 * self.processes()).clamp(1, AUTO_CHUNK_MAX);
        let mut feeder = self.feeder(f, it, chunk);
        feeder.auto = true;
        iter::collect_map(
            &self.shared,
            feeder,
            Some(n as u64),
            self.shared.cfg.progress,
        )
    }

    /// [`map`](Self::map) with an explicit number of items per task.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn map_chunked<F, A, R, I>(&self, f: F, items: I, chunksize: usize) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let it = items.into_iter();
        let (lo, hi) = it.size_hint();
        let total = (Some(lo) == hi).then_some(lo as u64);
        let feeder = self.feeder(f, it, chunksize);
        iter::collect_map(&self.shared, feeder, total, self.shared.cfg.progress)
    }

    /// `starmap`: [`map`](Self::map) over argument tuples. In Rust a task already takes its
    /// arguments as one value, so this is `map` with a tuple-taking closure; it exists so
    /// Python code reads the same.
    ///
    /// ```
    /// let pool = multiproc::Pool::new(2)?;
    /// let sums = pool.starmap(|(a, b): (u32, u32)| a + b, vec![(1, 2), (3, 4)])?;
    /// assert_eq!(sums, vec![3, 7]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn starmap<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map(f, items)
    }

    /// Lazily applies `f` to every item; results come in input order, one `Result` per item
    /// (`imap`). See [`IMap`] for chunking, the buffer bound and endless inputs.
    ///
    /// A pool that no longer accepts work yields one [`ErrorKind::Closed`] error.
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> IMap<'_, I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let feeder = self.feeder(f, items.into_iter(), 1);
        IMap::new(&self.shared, feeder, true, self.shared.cfg.progress)
    }

    /// Like [`imap`](Self::imap), but results come in completion order
    /// (`imap_unordered`).
    ///
    /// ```
    /// let pool = multiproc::Pool::new(2)?;
    /// let mut v: Vec<u32> = pool
    ///     .imap_unordered(|x: u32| x * 10, 0..100u32)
    ///     .collect::<Result<_, _>>()?;
    /// v.sort();
    /// assert_eq!(v[99], 990);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> IMap<'_, I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let feeder = self.feeder(f, items.into_iter(), 1);
        IMap::new(&self.shared, feeder, false, self.shared.cfg.progress)
    }

    fn feeder<F, A, R, I>(&self, f: F, it: I, chunksize: usize) -> Feeder<I>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: Iterator<Item = A>,
    {
        let _ = f;
        let entry = task::SealedEntry::of(task::chunk_entry::<F, A, R>());
        let chunksize = chunksize.max(1);
        let workers = self.processes() as u64;
        let max = (1024 * workers).max(chunksize as u64 * workers * 4);
        let mut feeder = Feeder::new(it, entry, chunksize, max);
        feeder.max_message = self.shared.cfg.max_message;
        feeder
    }

    /// Stops accepting work (`close`); queued tasks still run, and the workers exit once
    /// they are done. Later submissions fail with [`ErrorKind::Closed`]; an `imap` that is
    /// still pulling its input ends with that error too.
    pub fn close(&self) {
        let mut st = self.shared.lock();
        if st.phase == dispatch::Phase::Open {
            st.phase = dispatch::Phase::Closed;
        }
        drop(st);
        self.shared.wake();
    }

    /// Waits for every queued task to finish and every worker to exit (`join`). Closes the
    /// pool first if [`close`](Self::close) was not called. Callbacks
    /// ([`AsyncResult::then`]) of the finished tasks have run when it returns.
    ///
    /// # Errors
    /// The reason the pool broke, if it did (its initializer panicked, or workers could not
    /// be started); task failures are reported by the tasks themselves.
    pub fn join(&self) -> Result<()> {
        self.join_until(None)
    }

    /// [`join`](Self::join), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if work is still running (call it again to go on waiting);
    /// otherwise as [`join`](Self::join).
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_until(deadline_after(timeout))
    }

    /// [`join`](Self::join), waiting until `deadline` at most.
    ///
    /// # Errors
    /// As [`join_timeout`](Self::join_timeout).
    pub fn join_deadline(&self, deadline: Instant) -> Result<()> {
        self.join_until(Some(deadline))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<()> {
        self.close();
        let timeout = || Error::msg(ErrorKind::Timeout, "the pool's work has not finished yet");
        if !supervisor::wait_finished(&self.shared, deadline) {
            return Err(timeout());
        }
        self.reap_thread();
        let runner = self.shared.lock().runner.clone();
        if !runner.wait_idle(deadline) {
            return Err(timeout());
        }
        self.broken()
    }

    fn broken(&self) -> Result<()> {
        match &self.shared.lock().broken {
            Some(why) => Err(why.to_error()),
            None => Ok(()),
        }
    }

    fn reap_thread(&self) {
        if let Some(t) = crate::wait::lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// Stops at once (`terminate`): unfinished tasks fail with [`ErrorKind::Cancelled`] and
    /// the workers are killed (SIGKILL). Returns once the workers are reaped, or after a few
    /// seconds at most.
    pub fn terminate(&self) {
        let mut wake = Actions::default();
        self.shared.lock().terminate(&mut wake);
        wake.fire();
        self.shared.wake();
        // Starters backing off stop at once.
        self.shared.changed.notify_all();
        if supervisor::wait_finished(&self.shared, Some(Instant::now() + Duration::from_secs(5))) {
            self.reap_thread();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The pending result of [`Pool::apply_async`] or [`Pool::map_async`] (`AsyncResult`).
///
/// Block on it with [`get`](Self::get) / [`get_timeout`](Self::get_timeout), poll it with
/// [`ready`](Self::ready), `.await` it (it implements `Future<Output = Result<R>>` for any
/// executor; the pool's own thread wakes the task), hand it a callback with
/// [`then`](Self::then), or put it in an [`AsCompleted`] set with others.
///
/// ```
/// use std::time::Duration;
/// let pool = multiproc::Pool::new(1)?;
/// let r = pool.apply_async(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 50);
/// r.wait_timeout(Duration::from_secs(10));
/// assert_eq!(r.successful(), Some(true));
/// r.get()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Dropping
///
/// Dropping it does not cancel the task: it still runs, and its result is discarded (as in
/// Python, where `pool.apply_async(f, (x,))` without keeping the result is the usual way
/// to fire off work; [`Pool::join`] waits for it). To stop a task that has not started,
/// call [`cancel`](Self::cancel). The `AsyncResult` stays usable after its [`Pool`] is
/// dropped (it then reports [`ErrorKind::Cancelled`] if the task had not finished).
pub struct AsyncResult<R> {
    job: JobGuard,
    /// Turns the job's deliveries into the result (one task, or the chunks of a map).
    finish: fn(VecDeque<Delivery>) -> Result<R>,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("job", &self.job.id)
            .field("ready", &self.ready())
            .finish()
    }
}

/// The result of a job of one task.
fn finish_one<R: DeserializeOwned>(mut inbox: VecDeque<Delivery>) -> Result<R> {
    let mut out = None;
    if let Some(d) = inbox.pop_front() {
        iter::decode::<R>(d, |_, r| out = Some(r));
    }
    out.unwrap_or_else(|| Err(Error::new(ErrorKind::Cancelled)))
}

/// The result of a `map_async` job: every chunk in input order, or the first failure (by
/// input position).
fn finish_map<T: DeserializeOwned>(inbox: VecDeque<Delivery>) -> Result<Vec<T>> {
    let mut parts: Vec<Delivery> = inbox.into_iter().collect();
    parts.sort_by_key(|d| d.index());
    let total: usize = parts.iter().map(|d| d.count() as usize).sum();
    let mut out = Vec::with_capacity(total);
    let mut err: Option<(u64, Error)> = None;
    for d in parts {
        iter::decode::<T>(d, |i, r| match r {
            Ok(v) => out.push(v),
            Err(e) => {
                if err.as_ref().is_none_or(|(j, _)| i < *j) {
                    err = Some((i, e));
                }
            }
        });
    }
    match err {
        Some((_, e)) => Err(e),
        None => Ok(out),
    }
}

impl<R> AsyncResult<R> {
    /// Whether the task has finished (`ready`).
    pub fn ready(&self) -> bool {
        let st = self.job.shared.lock();
        st.jobs
            .get(&self.job.id)
            .is_none_or(|j| j.settled() || j.taken)
    }

    /// `Some(true)` if the task finished and returned normally, `Some(false)` if it failed,
    /// `None` while it runs (or once the result was taken).
    pub fn successful(&self) -> Option<bool> {
        let st = self.job.shared.lock();
        let j = st.jobs.get(&self.job.id)?;
        if j.taken || !j.settled() {
            return None;
        }
        Some(!j.failed)
    }

    /// Waits until the task has finished (`wait`).
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout`; returns whether the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let id = self.job.id;
        wait_until(&self.job.signal, self.job.shared.lock(), deadline, |st| {
            st.jobs.get(&id).is_none_or(|j| j.settled() || j.taken)
        })
        .1
    }

    /// Cancels the task if no worker has started it yet (Python's `Future.cancel`); returns
    /// whether it did. A cancelled task never runs, and its result is
    /// [`ErrorKind::Cancelled`]. For a [`Pool::map_async`] result, it cancels only if none
    /// of the map's chunks has started.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = multiproc::Pool::new(1)?;
    /// let nap = |ms: u64| std::thread::sleep(Duration::from_millis(ms));
    /// let busy = pool.apply_async(nap, 300);
    /// let queued = pool.apply_async(nap, 300);
    /// assert!(busy.wait_timeout(Duration::from_secs(30)));
    /// // `queued` has started by now (the only worker is free): too late to cancel.
    /// let third = pool.apply_async(nap, 1);
    /// let _ = third.cancel();
    /// assert!(!busy.cancel(), "a finished task cannot be cancelled");
    /// queued.get()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn cancel(&self) -> bool {
        let mut wake = Actions::default();
        let done = self.job.shared.lock().cancel(self.job.id, &mut wake);
        wake.fire();
        done
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the task and returns its result (`get`).
    ///
    /// # Errors
    /// The task's failure (see [`Pool`]'s failure table); [`ErrorKind::AlreadyJoined`] if
    /// [`get_timeout`](Self::get_timeout) already returned the result.
    pub fn get(self) -> Result<R> {
        self.wait();
        self.take_settled()
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if the task is still running (the `AsyncResult` stays usable);
    /// otherwise as [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R> {
        self.get_until(deadline_after(timeout))
    }

    /// [`get_timeout`](Self::get_timeout) with a deadline.
    ///
    /// # Errors
    /// As [`get_timeout`](Self::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<R> {
        self.get_until(Some(deadline))
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<R> {
        if !self.wait_until(deadline) {
            return Err(Error::msg(
                ErrorKind::Timeout,
                "the task has not finished yet",
            ));
        }
        self.take_settled()
    }

    /// Takes the result of a settled job.
    pub(super) fn take_settled(&self) -> Result<R> {
        let inbox = {
            let mut st = self.job.shared.lock();
            let Some(j) = st.jobs.get_mut(&self.job.id) else {
                return Err(Error::new(ErrorKind::Cancelled));
            };
            if j.taken {
                return Err(Error::msg(
                    ErrorKind::AlreadyJoined,
                    "get_timeout already returned this task's result",
                ));
            }
            j.taken = true;
            std::mem::take(&mut j.inbox)
        };
        (self.finish)(inbox)
    }

    /// Calls `on_ok(value)` or `on_err(error)` when the task finishes (Python's `callback=`
    /// and `error_callback=`), and returns at once.
    ///
    /// The callbacks run on the pool's callback thread, one at a time and in completion
    /// order, never in the calling thread and never in a worker; a slow callback delays
    /// the callbacks after it but no task. [`Pool::join`] returns after the callbacks of
    /// every finished task have run. If the pool is terminated or dropped first, `on_err`
    /// gets [`ErrorKind::Cancelled`]. A callback that panics is reported by the panic hook
    /// and the thread goes on.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// let pool = multiproc::Pool::new(2)?;
    /// let (tx, rx) = mpsc::channel();
    /// for i in 0..4u64 {
    ///     let (tx, tx2) = (tx.clone(), tx.clone());
    ///     pool.apply_async(|x: u64| x * x, i)
    ///         .then(move |v| tx.send(v).unwrap(), move |_| tx2.send(u64::MAX).unwrap());
    /// }
    /// pool.close();
    /// pool.join()?; // every callback has run
    /// let mut got: Vec<u64> = rx.try_iter().collect();
    /// got.sort();
    /// assert_eq!(got, vec![0, 1, 4, 9]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn then<OK, ERR>(self, on_ok: OK, on_err: ERR)
    where
        R: 'static,
        OK: FnOnce(R) + Send + 'static,
        ERR: FnOnce(Error) + Send + 'static,
    {
        let finish = self.finish;
        let cb: OnSettled = Box::new(move |inbox| match finish(inbox) {
            Ok(v) => on_ok(v),
            Err(e) => on_err(e),
        });
        let mut wake = Actions::default();
        {
            let mut st = self.job.shared.lock();
            st.attach_callback(self.job.id, cb, &mut wake);
        }
        wake.fire();
    }
}

impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        {
            let mut st = self.job.shared.lock();
            match st.jobs.get_mut(&self.job.id) {
                Some(j) if !j.settled() && !j.taken => {
                    match &j.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => j.waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                _ => {}
            }
        }
        Poll::Ready(self.take_settled())
    }
}
