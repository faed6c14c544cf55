//! The pool thread (results, deaths, timeouts, replacements) and worker start-up. The
//! state it works on, and dispatch, are in `dispatch.rs`; see `README.md`.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::dispatch::{
    Config, Conn, Phase, Shared, State, Status, Wakeups, Why, Worker, MAX_START_FAILURES,
    START_TIMEOUT,
};
use super::task::TAG_INIT;
use super::worker::{self, ChanFd, WorkerArgs};
use crate::connection::channel::{Channel, Frame};
use crate::connection::Waitable;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg;
use crate::process::Process;
use crate::sys;

/// Starts one worker process (outside the lock).
fn spawn_worker(shared: &Shared, id: u64) -> Result<Worker> {
    let cfg = &shared.cfg;
    let (ours, theirs) =
        fdreg::socketpair().map_err(|e| Error::io(e).context("creating a pool channel"))?;
    let chan = Channel::new(ours);
    let args = WorkerArgs {
        chan: ChanFd(theirs),
        max_tasks: cfg.max_tasks,
        tick_us: cfg.tick.as_micros() as u64,
    };
    let process = Process::builder()
        .name(format!("{}-{id}", cfg.name))
        .daemon(true)
        .start_method(cfg.method)
        .spawn(args, worker::worker_main)?;
    let mut frame = vec![TAG_INIT];
    let (entry, bytes, fds): (u64, &[u8], Vec<BorrowedFd<'_>>) = match &cfg.init {
        Some(i) => (i.entry, &i.bytes, i.fds.iter().map(|f| f.as_fd()).collect()),
        None => (0, &[], Vec::new()),
    };
    frame.extend_from_slice(&entry.to_le_bytes());
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(bytes);
    if let Err(e) = chan.send_raw(&frame, &fds) {
        let _ = process.kill();
        return Err(e.context("sending the initializer to a pool worker"));
    }
    Ok(Worker {
        id,
        conn: Arc::new(Conn { chan, process }),
        status: Status::Starting,
        since: Instant::now(),
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
    })
}

/// Starts `n` workers and adds them to the state.
fn start_workers(shared: &Shared, n: usize) -> Result<()> {
    for _ in 0..n {
        let id = {
            let mut st = shared.lock();
            let id = st.next_worker;
            st.next_worker += 1;
            id
        };
        let w = spawn_worker(shared, id)?;
        let mut st = shared.lock();
        if st.phase == Phase::Terminated || st.broken.is_some() {
            let _ = w.conn.process.kill();
        }
        st.workers.push(w);
    }
    Ok(())
}

/// Creates the shared core and the first workers, and waits until they are ready.
pub(super) fn start(cfg: Config) -> Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
    let (wake_rx, wake_tx) = Channel::pair()?;
    let n = cfg.processes;
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new()),
        cfg,
        changed: Condvar::new(),
        wake_rx,
        wake_tx,
    });
    let started = start_workers(&shared, n);
    let s2 = shared.clone();
    let thread = std::thread::Builder::new()
        .name("multiproc-pool".into())
        .spawn(move || pool_thread(s2))
        .map_err(|e| Error::io(e).context("starting the pool thread"));
    let thread = match (started, thread) {
        (Ok(()), Ok(t)) => t,
        (Err(e), Ok(t)) => {
            shutdown_now(&shared, t);
            return Err(e);
        }
        (_, Err(e)) => {
            let mut wake = Wakeups::default();
            shared.lock().terminate(&mut wake);
            return Err(e);
        }
    };
    // Wait for READY from every first worker (or a failure).
    let deadline = Instant::now() + START_TIMEOUT;
    let mut st = shared.lock();
    loop {
        if let Some(b) = &st.broken {
            let e = b.to_error();
            drop(st);
            shutdown_now(&shared, thread);
            return Err(e);
        }
        if st
            .workers
            .iter()
            .filter(|w| w.status == Status::Ready)
            .count()
            >= n
        {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            drop(st);
            shutdown_now(&shared, thread);
            return Err(Error::msg(
                ErrorKind::Timeout,
                "pool workers did not start within 60 s",
            ));
        }
        st = shared
            .changed
            .wait_timeout(st, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    drop(st);
    Ok((shared, thread))
}

fn shutdown_now(shared: &Arc<Shared>, thread: std::thread::JoinHandle<()>) {
    let mut wake = Wakeups::default();
    shared.lock().terminate(&mut wake);
    wake.fire();
    shared.wake();
    if wait_finished(shared, Some(Instant::now() + Duration::from_secs(10))) {
        let _ = thread.join();
    }
}

/// Waits until the pool thread has exited; `false` on timeout.
pub(super) fn wait_finished(shared: &Shared, deadline: Option<Instant>) -> bool {
    let mut st = shared.lock();
    while !st.finished {
        match deadline {
            None => st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return false;
                }
                st = shared
                    .changed
                    .wait_timeout(st, d - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
    true
}

fn pool_thread(shared: Arc<Shared>) {
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&shared)));
    let mut wake = Wakeups::default();
    let mut st = shared.lock();
    if res.is_err() {
        st.break_pool(
            Why::Start("internal error: the pool thread panicked".into()),
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

/// Frames read from one worker in one round.
struct Input {
    id: u64,
    conn: Arc<Conn>,
    frames: Vec<Frame>,
    dead: bool,
    broken: bool,
}

fn run(shared: &Arc<Shared>) {
    let cfg = &shared.cfg;
    loop {
        // 1. Under the lock: deadlines, and what to watch.
        let (conns, deadline) = {
            let mut st = shared.lock();
            let now = Instant::now();
            let deadline = st.check_deadlines(cfg, now);
            st.drain_if_done();
            let done = match st.phase {
                Phase::Terminated => st.workers.is_empty(),
                Phase::Closed => st.workers.is_empty() && !st.has_work(),
                Phase::Open => st.broken.is_some() && st.workers.is_empty(),
            };
            if done {
                return;
            }
            let conns: Vec<(u64, Arc<Conn>)> =
                st.workers.iter().map(|w| (w.id, w.conn.clone())).collect();
            (conns, deadline)
        };
        // 2. Wait for results, deaths or a wake-up.
        let mut set: Vec<(BorrowedFd<'_>, sys::socket::Events)> =
            Vec::with_capacity(1 + conns.len() * 2);
        let ev = sys::socket::Events::IN | sys::socket::Events::RDHUP;
        set.push((shared.wake_rx.fd(), ev));
        let mut already_dead = Vec::with_capacity(conns.len());
        for (_, c) in &conns {
            set.push((c.chan.fd(), ev));
            let (fd, done) = c.process.wait_handle();
            set.push((fd, ev));
            already_dead.push(done);
        }
        let any_buffered = conns.iter().any(|(_, c)| c.chan.has_buffered());
        let wait_until = if any_buffered || already_dead.iter().any(|d| *d) {
            Some(Instant::now())
        } else {
            deadline
        };
        let ready = sys::socket::poll_each(&set, wait_until).unwrap_or_default();
        let mut readable = vec![false; conns.len()];
        let mut exited = already_dead;
        for i in ready {
            if i == 0 {
                while shared.wake_rx.recv_frame(Some(Instant::now())).is_ok() {}
            } else {
                let k = (i - 1) / 2;
                if (i - 1) % 2 == 0 {
                    readable[k] = true;
                } else {
                    exited[k] = true;
                }
            }
        }
        drop(set);
        // 3. Read (outside the lock).
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
                    Err(e) if e.is_timeout() => break,
                    Err(e) if e.is_disconnected() => break,
                    Err(_) => {
                        inp.broken = true;
                        break;
                    }
                }
            }
            inputs.push(inp);
        }
        // Exit codes of dead workers (may wait briefly for the fork server's report).
        let codes: Vec<Option<i32>> = inputs
            .iter()
            .map(|i| {
                if i.dead {
                    i.conn.process.exitcode()
                } else {
                    None
                }
            })
            .collect();
        // 4. Under the lock: route results, settle deaths, dispatch.
        let mut wake = Wakeups::default();
        let mut st = shared.lock();
        let now = Instant::now();
        for (inp, code) in inputs.into_iter().zip(codes) {
            for f in inp.frames {
                if st.on_frame(inp.id, f, now, &mut wake).is_err() {
                    // A worker that breaks the protocol cannot be trusted: replace it.
                    let _ = inp.conn.process.kill();
                    break;
                }
            }
            if inp.broken {
                let _ = inp.conn.process.kill();
            }
            if inp.dead {
                st.on_death(inp.id, code, cfg.task_timeout, &mut wake);
            }
        }
        let missing = st.missing(cfg);
        shared.changed.notify_all();
        shared.pump(st, wake);
        if missing > 0 {
            if let Err(e) = start_workers(shared, missing) {
                let mut wake = Wakeups::default();
                let mut st = shared.lock();
                st.start_failures += 1;
                if st.start_failures >= MAX_START_FAILURES || st.workers.is_empty() {
                    st.break_pool(Why::Start(e.to_string()), &mut wake);
                }
                drop(st);
                wake.fire();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
