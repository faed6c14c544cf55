//! The pool thread (results, deaths, timeouts, replacements) and worker start-up. The
//! state machine it drives is in `dispatch/`; see `README.md`.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::dispatch::{
    Actions, Config, Conn, Phase, Shared, State, Status, Why, Worker, MAX_START_FAILURES,
    START_TIMEOUT,
};
use super::task::put_init;
use super::worker::{self, ChanFd, WorkerArgs};
use crate::connection::channel::{Channel, Frame};
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg;
use crate::process::Process;
use crate::sys;
use crate::wait::wait_until;

/// INIT frames up to this size are sent before the worker has announced itself.
const INIT_EARLY_MAX: usize = 32 * 1024;

/// Why a start failed: the process could not be created, or it ended before it announced
/// itself (README "Start-up failures": killed from outside, say with the fork server).
struct StartFailure {
    error: Error,
    /// It ended before announcing itself: a death before READY, never fatal to the pool.
    died: bool,
}

impl From<Error> for StartFailure {
    fn from(error: Error) -> Self {
        StartFailure { error, died: false }
    }
}

/// Starts one worker process (on a starter thread, outside the lock) and waits until it
/// has announced itself, so the pool thread only ever sees workers whose pid is known.
fn spawn_worker(shared: &Shared, id: u64) -> std::result::Result<Worker, StartFailure> {
    let cfg = &shared.cfg;
    #[cfg(feature = "mpi")]
    if let Some(cluster) = &cfg.cluster {
        return spawn_remote_worker(shared, cluster, id).map_err(StartFailure::from);
    }
    let (ours, theirs) =
        fdreg::socketpair().map_err(|e| Error::io(e).context("creating a pool channel"))?;
    let chan = Channel::new(ours);
    chan.set_max_message(cfg.max_message);
    let args = WorkerArgs {
        chan: ChanFd(theirs),
        max_tasks: cfg.max_tasks,
        tick_us: cfg.tick.as_micros() as u64,
        beat_us: cfg.beat.map_or(0, |b| b.as_micros().max(1) as u64),
        ignore_sigint: cfg.ignore_sigint,
        max_message: cfg.max_message as u64,
    };
    let process = Process::builder()
        .name(format!("{}-{id}", cfg.name))
        .daemon(true)
        .start_method(cfg.method)
        .spawn(args, worker::worker_main)?;
    let (frame, fds) = init_frame(cfg);
    let send_init = || {
        chan.send_raw(&frame, &fds)
            .map_err(|e| e.context("sending the initializer to a pool worker"))
    };
    // A small INIT fits the socket buffer: send it at once, so the worker finds it when it
    // starts. A large one waits until the worker has announced itself (a write that blocks
    // needs a reader).
    let early = frame.len() <= INIT_EARLY_MAX;
    let sent = if early { send_init() } else { Ok(()) };
    // A fork-server child announces its pid (this may wait, here and not in the pool thread,
    // for a slow or frozen fork server).
    let started = if process.pid() == 0 {
        Err(Error::msg(
            ErrorKind::Io,
            "the worker process did not start (the fork server did not answer)",
        ))
    } else {
        Ok(())
    };
    if let Err(e) = sent
        .and(started)
        .and_then(|()| if early { Ok(()) } else { send_init() })
    {
        // A child that already ended (its fork server was killed meanwhile, or it was) died
        // before READY; one that never answered counts as a failed creation.
        let died = process.exitcode().is_some();
        let _ = process.kill();
        return Err(StartFailure { error: e, died });
    }
    Ok(new_worker(
        id,
        cfg,
        Conn {
            chan,
            process: Some(process),
            #[cfg(feature = "mpi")]
            remote: None,
        },
    ))
}

/// The state's record of a worker that has just started.
fn new_worker(id: u64, cfg: &Config, conn: Conn) -> Worker {
    let now = Instant::now();
    Worker {
        id,
        conn: Arc::new(conn),
        status: Status::Starting,
        since: now,
        inflight: VecDeque::new(),
        bytes: 0,
        seq: 0,
        quota: if cfg.max_tasks == 0 {
            u64::MAX
        } else {
            cfg.max_tasks
        },
        isolating: false,
        writing: false,
        running: None,
        timed_out: None,
        heard: now,
        exited: false,
    }
}

/// The initializer's INIT frame, and its descriptors.
fn init_frame(cfg: &Config) -> (Vec<u8>, Vec<BorrowedFd<'_>>) {
    let (entry, bytes, fds): (_, &[u8], Vec<BorrowedFd<'_>>) = match &cfg.init {
        Some(i) => (
            Some(i.entry),
            &i.bytes,
            i.fds.iter().map(|f| f.as_fd()).collect(),
        ),
        None => (None, &[], Vec::new()),
    };
    let mut frame = Vec::with_capacity(16 + bytes.len());
    put_init(&mut frame, entry, bytes);
    (frame, fds)
}

/// Starts a worker on another MPI rank (`PoolBuilder::mpi`): the MPI thread relays its
/// channel, so the rest of the pool treats it as a local one. The INIT frame goes through
/// the relay once the agent has started the worker.
#[cfg(feature = "mpi")]
fn spawn_remote_worker(shared: &Shared, cluster: &crate::mpi::Cluster, id: u64) -> Result<Worker> {
    let cfg = &shared.cfg;
    let (ours, theirs) =
        fdreg::socketpair().map_err(|e| Error::io(e).context("creating a pool channel"))?;
    let chan = Channel::new(ours);
    chan.set_max_message(cfg.max_message);
    let spec = crate::mpi::SpawnSpec {
        name: format!("{}-{id}", cfg.name),
        max_tasks: cfg.max_tasks,
        tick_us: cfg.tick.as_micros() as u64,
        beat_us: cfg.beat.map_or(0, |b| b.as_micros().max(1) as u64),
        ignore_sigint: cfg.ignore_sigint,
        max_message: cfg.max_message as u64,
    };
    let remote = cluster.spawn(id, spec, theirs)?;
    let (frame, fds) = init_frame(cfg);
    if !fds.is_empty() {
        remote.kill();
        return Err(Error::msg(
            ErrorKind::Unsupported,
            "an initializer whose arguments hold descriptors cannot run on another MPI rank",
        ));
    }
    if let Err(e) = chan.send_raw(&frame, &[]) {
        remote.kill();
        return Err(e.context("sending the initializer to a pool worker on another MPI rank"));
    }
    Ok(new_worker(
        id,
        cfg,
        Conn {
            chan,
            process: None,
            remote: Some(remote),
        },
    ))
}

/// Starts a local pool worker process for an MPI agent rank; returns the agent's end of its
/// channel and the process.
#[cfg(feature = "mpi")]
pub(crate) fn start_worker_process(
    spec: &crate::mpi::SpawnSpec,
) -> Result<(crate::fdreg::RegisteredFd, Process<()>)> {
    let (ours, theirs) =
        fdreg::socketpair().map_err(|e| Error::io(e).context("creating a pool channel"))?;
    let args = WorkerArgs {
        chan: ChanFd(theirs),
        max_tasks: spec.max_tasks,
        tick_us: spec.tick_us,
        beat_us: spec.beat_us,
        ignore_sigint: spec.ignore_sigint,
        max_message: spec.max_message,
    };
    let process = Process::builder()
        .name(spec.name.clone())
        .daemon(true)
        .spawn(args, worker::worker_main)?;
    if process.pid() == 0 {
        let _ = process.kill();
        return Err(Error::msg(
            ErrorKind::Io,
            "the worker process did not start (the fork server did not answer)",
        ));
    }
    Ok((ours, process))
}

/// The pause before the next start after `n` failed ones in a row: none, then 50 ms
/// doubling to 5 s.
fn backoff(n: u32) -> Duration {
    match n {
        0 => Duration::ZERO,
        n => (Duration::from_millis(50) * 2u32.saturating_pow(n.min(16) - 1))
            .min(Duration::from_secs(5)),
    }
}

/// Starts `n` workers, each on a starter thread of its own (a stuck start never blocks
/// dispatch). The caller has counted them in `State::launching`.
fn launch(shared: &Arc<Shared>, n: usize) {
    for _ in 0..n {
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("multiproc-pool-starter".into())
            .spawn(move || start_one(&s));
        if let Err(e) = spawned {
            started(
                shared,
                Err(Error::io(e)
                    .context("starting a pool starter thread")
                    .into()),
            );
        }
    }
}

/// A starter thread: back off if starts failed, start one worker, hand it to the state.
fn start_one(shared: &Arc<Shared>) {
    let stopping = |st: &mut State| st.phase == Phase::Terminated || st.broken.is_some();
    let delay = {
        let st = shared.lock();
        backoff(st.start_failures + st.init_deaths)
    };
    let (mut st, stop) = wait_until(
        &shared.changed,
        shared.lock(),
        Some(Instant::now() + delay),
        stopping,
    );
    if stop {
        st.launching -= 1;
        return;
    }
    let id = st.next_worker;
    st.next_worker += 1;
    drop(st);
    started(shared, spawn_worker(shared, id));
}

/// A start ended: add the worker (or count the failure), and wake the pool thread.
fn started(shared: &Shared, r: std::result::Result<Worker, StartFailure>) {
    let mut wake = Actions::default();
    let mut st = shared.lock();
    st.launching -= 1;
    match r {
        Ok(w) if st.finished => {
            // The pool thread is gone: nobody will watch it. The reaper takes it.
            w.conn.kill();
        }
        Ok(w) => {
            if st.phase == Phase::Terminated || st.broken.is_some() {
                w.conn.kill();
            }
            st.workers.push(w);
        }
        // Replaced with the back-off of a death before READY, whatever else is left.
        Err(StartFailure { died: true, .. }) => st.init_deaths += 1,
        Err(StartFailure { error, .. }) => {
            st.start_failures += 1;
            let none_left = st.workers.is_empty() && st.launching == 0;
            if st.start_failures >= MAX_START_FAILURES || none_left {
                st.break_pool(Why::Start(error.kind(), error.to_string()), &mut wake);
            }
        }
    }
    drop(st);
    wake.fire();
    shared.changed.notify_all();
    shared.wake();
}

/// Creates the shared core and the first workers, and waits until they are ready.
pub(super) fn start(cfg: Config) -> Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
    let (wake_rx, wake_tx) = Channel::pair()?;
    let n = cfg.processes;
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(cfg.max_message)),
        cfg,
        changed: Condvar::new(),
        wake_rx,
        wake_tx,
    });
    // The first workers start now, each on a starter thread; the pool thread replaces them.
    let starts = shared.lock().plan_starts(&shared.cfg);
    launch(&shared, starts);
    let s2 = shared.clone();
    let thread = std::thread::Builder::new()
        .name("multiproc-pool".into())
        .spawn(move || pool_thread(s2))
        .map_err(|e| Error::io(e).context("starting the pool thread"));
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            // No pool thread: the starters kill what they start.
            let mut acts = Actions::default();
            shared.lock().terminate(&mut acts);
            acts.fire();
            shared.changed.notify_all();
            return Err(e);
        }
    };
    // Wait for READY from every first worker (or a failure).
    let ready = |st: &mut State| {
        st.broken.is_some()
            || st
                .workers
                .iter()
                .filter(|w| w.status == Status::Ready)
                .count()
                >= n
    };
    let (st, _) = wait_until(
        &shared.changed,
        shared.lock(),
        Some(Instant::now() + START_TIMEOUT),
        ready,
    );
    let failed = match &st.broken {
        Some(b) => Some(b.to_error()),
        None if st
            .workers
            .iter()
            .filter(|w| w.status == Status::Ready)
            .count()
            < n =>
        {
            Some(Error::msg(
                ErrorKind::Timeout,
                "pool workers did not start within 60 s",
            ))
        }
        None => None,
    };
    drop(st);
    if let Some(e) = failed {
        shutdown_now(&shared, thread);
        return Err(e);
    }
    Ok((shared, thread))
}

fn shutdown_now(shared: &Arc<Shared>, thread: std::thread::JoinHandle<()>) {
    let mut wake = Actions::default();
    shared.lock().terminate(&mut wake);
    wake.fire();
    shared.wake();
    if wait_finished(shared, Some(Instant::now() + Duration::from_secs(10))) {
        let _ = thread.join();
    }
}

/// Waits until the pool thread has exited; `false` on timeout.
pub(super) fn wait_finished(shared: &Shared, deadline: Option<Instant>) -> bool {
    wait_until(&shared.changed, shared.lock(), deadline, |st| st.finished).1
}

fn pool_thread(shared: Arc<Shared>) {
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&shared)));
    let mut wake = Actions::default();
    let mut st = shared.lock();
    if res.is_err() {
        st.break_pool(
            Why::Start(
                ErrorKind::Io,
                "internal error: the pool thread panicked".into(),
            ),
            &mut wake,
        );
    }
    // Nothing can be answered any more: fail whatever is left.
    st.fail_all(&Why::Cancelled, &mut wake);
    st.workers.clear();
    st.finished = true;
    drop(st);
    wake.fire();
    shared.changed.notify_all();
}

/// Reaps a dead worker and returns its Python-style exit code (negative: signal).
///
/// `join` rather than `exitcode`: joining also forgets the child in the process registry,
/// so a dead worker keeps no descriptor (its control stream, pidfd, status socket).
fn reap(p: &Process<()>) -> Option<i32> {
    exit_code(p.join_timeout(Duration::from_secs(5)))
}

/// The Python-style exit code in the outcome of joining a worker (`None`: not known).
fn exit_code(r: Result<()>) -> Option<i32> {
    match r {
        Ok(()) => Some(0),
        // Not reaped yet: dropping the handle leaves it to the background reaper.
        Err(e) if e.is_timeout() => None,
        Err(e) => match (e.signal(), e.exit_code()) {
            (Some(sig), _) => Some(-sig),
            (None, Some(code)) => Some(code),
            (None, None) if e.kind() == ErrorKind::Panicked => Some(1),
            (None, None) => None,
        },
    }
}

/// Frames read from one worker in one round.
struct Input {
    id: u64,
    conn: Arc<Conn>,
    frames: Vec<Frame>,
    dead: bool,
    broken: bool,
}

/// The pool thread's loop, in four phases per round.
fn run(shared: &Arc<Shared>) {
    while let Some(round) = plan(shared) {
        let (readable, exited) = wait_for_events(shared, &round);
        let inputs = read_inputs(&round.conns, &readable, &exited);
        let dead = apply(shared, inputs);
        // Deaths are settled once the exit code is known, off this thread: for a fork-server
        // child it arrives from the server, which may be slow or frozen.
        for (id, conn) in dead {
            settle_death(shared, id, conn);
        }
    }
}

/// What one round watches, and until when.
struct Round {
    conns: Vec<(u64, Arc<Conn>)>,
    deadline: Option<Instant>,
}

/// Phase 1, under the lock: deadlines, drain, what to watch, replacements to start. `None`
/// once the pool thread is done.
fn plan(shared: &Arc<Shared>) -> Option<Round> {
    let mut acts = Actions::default();
    let mut st = shared.lock();
    let deadline = st.check_deadlines(&shared.cfg, Instant::now(), &mut acts);
    st.drain_if_done(&mut acts);
    let done = match st.phase {
        Phase::Terminated => st.workers.is_empty(),
        // A start under way ends with a worker to drain (join waits for every worker).
        Phase::Closed => st.workers.is_empty() && !st.has_work() && st.launching == 0,
        Phase::Open => st.broken.is_some() && st.workers.is_empty(),
    };
    let conns: Vec<(u64, Arc<Conn>)> = st
        .workers
        .iter()
        .filter(|w| !w.exited && w.conn.has_process())
        .map(|w| (w.id, w.conn.clone()))
        .collect();
    // Replacements start on starter threads; they wake us when they are added.
    let starts = if done { 0 } else { st.plan_starts(&shared.cfg) };
    drop(st);
    acts.fire();
    launch(shared, starts);
    (!done).then_some(Round { conns, deadline })
}

/// Phase 2: waits for results, deaths, a wake-up or the deadline. Returns which workers'
/// channels are readable and which have exited.
fn wait_for_events(shared: &Shared, round: &Round) -> (Vec<bool>, Vec<bool>) {
    let conns = &round.conns;
    let mut set: Vec<(BorrowedFd<'_>, sys::socket::Events)> =
        Vec::with_capacity(1 + conns.len() * 2);
    let ev = sys::socket::Events::IN | sys::socket::Events::RDHUP;
    set.push((shared.wake_rx.fd(), ev));
    let mut exited = Vec::with_capacity(conns.len());
    for (_, c) in conns {
        set.push((c.chan.fd(), ev));
        // `plan` lists only workers with a process (or a remote one).
        if let Some((fd, done)) = c.death_handle() {
            set.push((fd, ev));
            exited.push(done);
        }
    }
    // A whole frame waiting in a reader's buffer: do not wait. The start of one whose rest
    // is still to come (a relay may deliver a frame in pieces) waits on the descriptor.
    let any_buffered = conns.iter().any(|(_, c)| c.chan.has_frame());
    let until = if any_buffered || exited.iter().any(|d| *d) {
        Some(Instant::now())
    } else {
        round.deadline
    };
    let ready = sys::socket::poll_each(&set, until).unwrap_or_default();
    let mut readable = vec![false; conns.len()];
    for i in ready {
        if i == 0 {
            while shared.wake_rx.recv_frame(Some(Instant::now())).is_ok() {}
        } else if (i - 1) % 2 == 0 {
            readable[(i - 1) / 2] = true;
        } else {
            exited[(i - 1) / 2] = true;
        }
    }
    (readable, exited)
}

/// Phase 3, outside the lock: reads what the workers sent (everything, from a dead one).
fn read_inputs(conns: &[(u64, Arc<Conn>)], readable: &[bool], exited: &[bool]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for (k, (id, c)) in conns.iter().enumerate() {
        if !(readable[k] || exited[k] || c.chan.has_buffered()) {
            continue;
        }
        let mut inp = Input {
            id: *id,
            conn: c.clone(),
            frames: Vec::new(),
            dead: exited[k],
            broken: false,
        };
        // A dead worker's stream holds everything it sent: read all of it.
        let max = if exited[k] { usize::MAX } else { 64 };
        while inp.frames.len() < max {
            match c.chan.recv_frame(Some(Instant::now())) {
                Ok(f) => inp.frames.push(f),
                Err(e) if e.is_timeout() || e.is_disconnected() => break,
                Err(_) => {
                    inp.broken = true;
                    break;
                }
            }
        }
        inputs.push(inp);
    }
    inputs
}

/// Phase 4, under the lock: route results, mark deaths, dispatch. Returns the dead.
fn apply(shared: &Shared, inputs: Vec<Input>) -> Vec<(u64, Arc<Conn>)> {
    let mut acts = Actions::default();
    let mut st = shared.lock();
    let now = Instant::now();
    let mut dead = Vec::new();
    for inp in inputs {
        for f in inp.frames {
            if st.on_frame(inp.id, f, now, &mut acts).is_err() {
                // A worker that breaks the protocol cannot be trusted: replace it.
                acts.kill.push((inp.id, inp.conn.clone()));
                break;
            }
        }
        if inp.broken {
            acts.kill.push((inp.id, inp.conn.clone()));
        }
        if inp.dead {
            st.mark_exited(inp.id);
            dead.push((inp.id, inp.conn));
        }
    }
    shared.changed.notify_all();
    shared.pump(st, acts);
    dead
}

/// Gets a dead worker's exit code (on a thread of its own unless it is known at once), then
/// settles its tasks.
fn settle_death(shared: &Arc<Shared>, id: u64, conn: Arc<Conn>) {
    // A remote worker's exit code is stored before its death is visible; one lost with its
    // rank gives its tasks back untouched.
    #[cfg(feature = "mpi")]
    if let Some(r) = &conn.remote {
        if r.host_lost() {
            let mut st = shared.lock();
            st.on_host_lost(id);
            drop(st);
        }
        return settle_now(shared, id, r.exit_code());
    }
    let Some(p) = &conn.process else {
        return settle_now(shared, id, None);
    };
    // Most exits are known by now (a direct child, or a fork-server report already in).
    let r = p.join_timeout(Duration::ZERO);
    if !matches!(&r, Err(e) if e.is_timeout()) {
        return settle_now(shared, id, exit_code(r));
    }
    let settle = move |shared: &Arc<Shared>| {
        let code = conn.process.as_ref().and_then(reap);
        settle_now(shared, id, code);
    };
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("multiproc-pool-reaper".into())
        .spawn({
            let settle = settle.clone();
            move || settle(&s)
        });
    if spawned.is_err() {
        settle(shared);
    }
}

/// Settles dead worker `id` with its exit code, and starts its replacement.
fn settle_now(shared: &Arc<Shared>, id: u64, code: Option<i32>) {
    let mut acts = Actions::default();
    let mut st = shared.lock();
    st.on_death(id, code, shared.cfg.task_timeout, &mut acts);
    // The replacement starts now (not on the pool thread's next round).
    let starts = st.plan_starts(&shared.cfg);
    shared.changed.notify_all();
    shared.pump(st, acts);
    launch(shared, starts);
    shared.wake();
}
