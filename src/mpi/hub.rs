//! Rank 0: the hub thread, the only thread of the process that calls MPI.
//!
//! The pool talks to it through [`Hub::command`] (start, kill, shut down) and through the
//! sockets of its remote workers: the pool thread reads and writes a remote worker's channel
//! exactly as a local one, and the hub relays the other end's bytes to the worker's agent
//! rank and back. A remote worker's death is a descriptor that becomes readable (the hub
//! drops its end) after its exit code is stored, as a pidfd would for a local child.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mpi::topology::{Communicator, SimpleCommunicator};

use super::wire::{self, Died, Hello, Read, Relay, SpawnSpec, Welcome};
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys;
use crate::wait::{lock, wait_until};

/// How long rank 0 waits for every agent's `HELLO`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent rank, as rank 0 knows it.
#[derive(Debug, Clone)]
pub(crate) struct RankInfo {
    pub(crate) rank: i32,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) default_workers: u32,
    /// It runs on rank 0's kernel, in its pid namespace: `pid` is watchable from here.
    pub(crate) same_kernel: bool,
}

/// The agents after the handshake, or why the job was refused.
pub(crate) type Ranks = std::result::Result<Vec<RankInfo>, (ErrorKind, String)>;

/// What the pool asks of the hub.
enum Cmd {
    Spawn {
        id: u64,
        rank: i32,
        spec: SpawnSpec,
        fd: RegisteredFd,
        state: Arc<RemoteState>,
    },
    Kill(u64),
    Shutdown,
}

/// The hub as the pool sees it.
pub(crate) struct Hub {
    cmds: Mutex<VecDeque<Cmd>>,
    /// Written (one byte) after a command is queued; the hub polls the read end.
    wake_tx: RegisteredFd,
    /// The agents, once the handshake is done; or why the job was refused.
    pub(crate) ranks: Ranks,
    /// Ranks declared lost (they stopped answering): nobody talks to them again.
    lost: Mutex<Vec<i32>>,
    /// The last remote worker id handed out (unique over every MPI pool of the process).
    next_id: std::sync::atomic::AtomicU64,
    /// The process that started the hub: a `Fork` child inherits the exit handler, and must
    /// not shut down its parent's hub from there.
    owner: u32,
    /// When the MPI thread last went round its loop (ms since `EPOCH`): the watchdog's
    /// evidence that it is not stuck inside MPI.
    progress: std::sync::atomic::AtomicU64,
    /// The watchdog found the MPI thread stuck: no remote worker is usable any more.
    pub(crate) stalled: std::sync::atomic::AtomicBool,
    /// Every remote worker's state, for the watchdog to end them.
    states: Mutex<Vec<std::sync::Weak<RemoteState>>>,
    /// The hub thread has finalized MPI (or given up) and exited.
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("ranks", &self.ranks).finish()
    }
}

/// A remote worker's state, shared by its `Remote` handle and the hub.
#[derive(Debug)]
pub(crate) struct RemoteState {
    pub(crate) rank: i32,
    pub(crate) pid: AtomicU32,
    /// `None`: starting; `Some(Ok)`: started; `Some(Err)`: could not start.
    started: Mutex<Option<std::result::Result<(), String>>>,
    started_cv: Condvar,
    /// Set (before `dead_tx` is dropped) once the worker is gone: its exit code if known.
    code: Mutex<Option<Option<i32>>>,
    /// Held by the hub until the worker is gone; `dead_rx` then reads end of stream.
    dead_tx: Mutex<Option<RegisteredFd>>,
    pub(crate) dead_rx: RegisteredFd,
}

impl RemoteState {
    pub(crate) fn new(rank: i32) -> Result<Arc<RemoteState>> {
        let (rx, tx) = fdreg::socketpair()
            .map_err(|e| Error::io(e).context("creating a remote worker's death socket"))?;
        Ok(Arc::new(RemoteState {
            rank,
            pid: AtomicU32::new(0),
            started: Mutex::new(None),
            started_cv: Condvar::new(),
            code: Mutex::new(None),
            dead_tx: Mutex::new(Some(tx)),
            dead_rx: rx,
        }))
    }

    /// The worker is gone (`code`: its exit code if known): wakes whoever polls `dead_rx`.
    fn finish(&self, code: Option<i32>) {
        {
            let mut c = lock(&self.code);
            if c.is_none() {
                *c = Some(code);
            }
        }
        self.set_started(Err("the worker ended before it started".into()));
        drop(lock(&self.dead_tx).take());
    }

    fn set_started(&self, r: std::result::Result<(), String>) {
        let mut s = lock(&self.started);
        if s.is_none() {
            *s = Some(r);
        }
        drop(s);
        self.started_cv.notify_all();
    }

    /// Waits until the agent says the worker started (or could not), at most until `deadline`.
    pub(crate) fn wait_started(&self, deadline: Instant) -> Result<()> {
        let (s, _) = wait_until(&self.started_cv, lock(&self.started), Some(deadline), |s| {
            s.is_some()
        });
        match &*s {
            Some(Ok(())) => Ok(()),
            Some(Err(m)) => Err(Error::msg(
                ErrorKind::Io,
                format!("starting a pool worker on MPI rank {}: {m}", self.rank),
            )),
            None => Err(Error::msg(
                ErrorKind::Timeout,
                format!(
                    "MPI rank {} did not start a pool worker within {:?}",
                    self.rank,
                    super::START_WAIT
                ),
            )),
        }
    }

    /// Whether the worker is gone, and its exit code if known.
    pub(crate) fn exit(&self) -> Option<Option<i32>> {
        *lock(&self.code)
    }
}

/// A remote worker in the hub.
struct Remote {
    rank: i32,
    relay: Relay,
    state: Arc<RemoteState>,
    /// The agent said it exited; finished once everything it sent is written.
    died: Option<Option<i32>>,
}

static HUB: std::sync::OnceLock<Arc<Hub>> = std::sync::OnceLock::new();

/// The hub of this process, started (and the handshake with every agent done) on first use.
pub(crate) fn hub(rank_timeout: Duration) -> Result<&'static Arc<Hub>> {
    if let Some(h) = HUB.get() {
        return Ok(h);
    }
    static START: Mutex<()> = Mutex::new(());
    let _g = lock(&START);
    if let Some(h) = HUB.get() {
        return Ok(h);
    }
    let key = crate::task::key();
    let fingerprint = crate::spawn::fingerprint()?.to_vec();
    let (wake_rx, wake_tx) =
        fdreg::pipe().map_err(|e| Error::io(e).context("creating the MPI hub's wake-up pipe"))?;
    // Never blocking: the hub drains it after taking the commands, and a command's byte may
    // have been read with an earlier one's (a blocking read then waited for the next command).
    rustix::fs::fcntl_getfl(&wake_rx)
        .and_then(|fl| rustix::fs::fcntl_setfl(&wake_rx, fl | rustix::fs::OFlags::NONBLOCK))
        .map_err(|e| {
            Error::io(e.into()).context("making the MPI hub's wake-up pipe non-blocking")
        })?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("multiproc-mpi".into())
        .spawn(move || run(key, fingerprint, rank_timeout, wake_rx, tx))
        .map_err(|e| Error::io(e).context("starting the MPI thread"))?;
    // MPI_Init itself waits for every rank of the job: a rank that never starts MPI (another
    // program, a hung host) would hold `build` forever. The handshake after it has its own
    // deadline; this one covers both, and the error says what to check.
    let ranks = match rx.recv_timeout(HELLO_TIMEOUT + Duration::from_secs(30)) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err((
            ErrorKind::Timeout,
            format!(
                "MPI did not finish starting within {:?} (MPI_Init and every rank's HELLO): \
                 is every rank of the job running this program, built with multiproc's `mpi` \
                 feature, and is every host up?",
                HELLO_TIMEOUT + Duration::from_secs(30)
            ),
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err((ErrorKind::Io, "the MPI thread ended during start-up".into()))
        }
    };
    let h = Arc::new(Hub {
        cmds: Mutex::new(VecDeque::new()),
        wake_tx,
        ranks,
        lost: Mutex::new(Vec::new()),
        next_id: std::sync::atomic::AtomicU64::new(0),
        owner: std::process::id(),
        progress: std::sync::atomic::AtomicU64::new(since_start()),
        stalled: std::sync::atomic::AtomicBool::new(false),
        states: Mutex::new(Vec::new()),
        done: Mutex::new(false),
        done_cv: Condvar::new(),
    });
    let _ = HUB.set(h);
    let h = HUB
        .get()
        .ok_or_else(|| Error::msg(ErrorKind::Io, "the MPI hub vanished"))?;
    // A thread that never calls MPI watches the one that does.
    let stall = rank_timeout.max(Duration::from_secs(1)) * 2;
    let _ = std::thread::Builder::new()
        .name("multiproc-mpi-watchdog".into())
        .spawn(move || watchdog(stall));
    // Finalize MPI at exit, so `mpirun` sees a clean end.
    sys::process::at_exit(stop_at_exit);
    // Hand the hub to its thread (it waited for it before its main loop).
    *lock(&HUB_READY.0) = true;
    HUB_READY.1.notify_all();
    Ok(h)
}

/// The pid that registered [`release_unused_agents`] (a forked child inherits the handler).
static RELEASER: AtomicU32 = AtomicU32::new(0);

/// Rank 0, before `main`: if the program never builds an MPI pool, the agents are still
/// waiting for its welcome at exit; [`release_unused_agents`] then tells them to leave.
pub(crate) fn release_agents_at_exit() {
    RELEASER.store(std::process::id(), Ordering::Release);
    sys::process::at_exit(release_unused_agents);
}

/// At exit on rank 0, when no MPI pool was ever built: initialises MPI, sends every agent
/// `SHUTDOWN` and finalizes, so the job ends cleanly (otherwise the launcher reports rank 0 as
/// exiting without `MPI_Init`, or under `--enable-recovery` waits for the agents forever).
extern "C" fn release_unused_agents() {
    if HUB.get().is_some() || RELEASER.load(Ordering::Acquire) != std::process::id() {
        return;
    }
    // On a thread of its own, waited for a bounded time: MPI_Init and MPI_Finalize wait for
    // every rank, and a frozen one (a stopped agent, a hung host) would hold the exit forever.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("multiproc-mpi-release".into())
        .spawn(move || {
            // None: the program initialised MPI itself; its own finalize then ends the job.
            if let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) {
                let world = universe.world();
                let _ = sys::mpi::errors_return(&world);
                for r in 1..world.size() {
                    send(
                        &world,
                        r,
                        &wire::msg(wire::SHUTDOWN, 0, &shutdown_body(&[])),
                    );
                }
                drop(world);
                drop(universe);
            }
            let _ = tx.send(());
        });
    if spawned.is_ok() && rx.recv_timeout(RELEASE_WAIT).is_err() {
        say(&format!(
            "multiproc: the MPI job did not let rank 0 release its node agents within \
             {RELEASE_WAIT:?} (a rank is not answering); leaving without it"
        ));
    }
}

/// How long rank 0's exit waits to release the agents of a job without an MPI pool.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Set once `HUB` holds the hub (the thread's main loop needs it).
static HUB_READY: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Milliseconds since the first call (a clock for `Hub::progress`).
fn since_start() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Watches the MPI thread: a send to a rank that stopped answering can block inside MPI
/// (beyond what the credit window prevents), and then nothing else would notice. After
/// `stall` without a round, every remote worker ends (their tasks fail or run again as
/// for lost workers) and later MPI pools are refused, with a message saying why.
fn watchdog(stall: Duration) {
    let Some(hub) = HUB.get() else { return };
    loop {
        std::thread::sleep(stall / 4);
        if *lock(&hub.done) {
            return;
        }
        let last = hub.progress.load(Ordering::Acquire);
        if since_start().saturating_sub(last) > stall.as_millis() as u64 {
            say(&format!(
                "multiproc: the MPI thread has been stuck inside MPI for over {stall:?} \
                 (a rank stopped answering during a send); the MPI pool's remote workers \
                 are given up"
            ));
            hub.stalled.store(true, Ordering::Release);
            for s in lock(&hub.states).drain(..) {
                if let Some(s) = s.upgrade() {
                    s.finish(None);
                }
            }
            return;
        }
    }
}

extern "C" fn stop_at_exit() {
    if let Some(h) = HUB.get().filter(|h| h.owner == std::process::id()) {
        h.command(Cmd::Shutdown);
        let _ = wait_until(
            &h.done_cv,
            lock(&h.done),
            Some(Instant::now() + Duration::from_secs(10)),
            |d| *d,
        );
    }
}

impl Hub {
    fn command(&self, c: Cmd) {
        lock(&self.cmds).push_back(c);
        let _ = sys::socket::write_all(self.wake_tx.as_fd(), &[&[1u8]]);
    }

    /// Starts worker `id` on `rank`; `fd` is the worker's end of its channel.
    pub(crate) fn spawn(
        &self,
        id: u64,
        rank: i32,
        spec: SpawnSpec,
        fd: RegisteredFd,
        state: Arc<RemoteState>,
    ) {
        if self.stalled.load(Ordering::Acquire) {
            state.finish(None);
            return;
        }
        {
            let mut v = lock(&self.states);
            v.retain(|w| w.strong_count() > 0);
            v.push(Arc::downgrade(&state));
        }
        self.command(Cmd::Spawn {
            id,
            rank,
            spec,
            fd,
            state,
        });
    }

    /// SIGKILLs worker `id` (through its agent).
    pub(crate) fn kill(&self, id: u64) {
        self.command(Cmd::Kill(id));
    }

    /// A remote worker id no other worker of this process has had.
    pub(crate) fn next_worker_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether `rank` was declared lost.
    pub(crate) fn is_lost(&self, rank: i32) -> bool {
        lock(&self.lost).contains(&rank)
    }
}

/// The hub thread: initialise MPI, shake hands, relay until shut down, finalize.
fn run(
    key: [u64; 2],
    fingerprint: Vec<u8>,
    rank_timeout: Duration,
    wake_rx: RegisteredFd,
    report: std::sync::mpsc::SyncSender<Ranks>,
) {
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
        let _ = report.send(Err((ErrorKind::Io, "MPI was already initialised in this process (multiproc's MPI thread must be the one that initialises it)".into())));
        return;
    };
    let world = universe.world();
    // A failed call to a rank that died returns its error (the rank is then lost) instead
    // of aborting the job, where the library and launcher let the job go on.
    if let Err(e) = sys::mpi::errors_return(&world) {
        say(&format!("multiproc: MPI errors stay fatal on rank 0: {e}"));
    }
    let (ranks, mut lost) = handshake(&world, key, &fingerprint, rank_timeout);
    let ok = ranks.is_ok();
    let _ = report.send(ranks.clone());
    // Wait until `hub` has stored the hub.
    let (g, _) = wait_until(
        &HUB_READY.1,
        lock(&HUB_READY.0),
        Some(Instant::now() + Duration::from_secs(10)),
        |r| *r,
    );
    drop(g);
    let Some(hub) = HUB.get() else { return };
    if let Ok(r) = &ranks {
        watch_agents(r);
    }
    if ok {
        relay_loop(&world, hub, &wake_rx, rank_timeout, &mut lost);
    } else {
        // Refused: nothing to relay; wait for the shutdown at exit.
        loop {
            if lock(&hub.cmds).iter().any(|c| matches!(c, Cmd::Shutdown)) {
                break;
            }
            let _ = sys::socket::poll_each(
                &[(wake_rx.as_fd(), sys::socket::Events::IN)],
                Some(Instant::now() + Duration::from_millis(100)),
            );
            let mut b = [0u8; 64];
            let _ = rustix::io::read(wake_rx.as_fd(), &mut b);
        }
    }
    if lost.is_empty() {
        drop(world);
        drop(universe);
    } else {
        // MPI_Finalize waits for every rank, and a lost one never comes: leave without it
        // (the launcher then reports the job as failed, which it is).
        say(&format!(
            "multiproc: MPI rank(s) {lost:?} lost; rank 0 leaves without MPI_Finalize"
        ));
        kill_lost_agents(&lost);
        std::mem::forget(world);
        std::mem::forget(universe);
    }
    *lock(&hub.done) = true;
    hub.done_cv.notify_all();
}

/// Receives one message if one is waiting: (source rank, bytes). A failed receive is noted
/// for [`lose_failed`].
fn try_recv(world: &SimpleCommunicator) -> Option<(i32, Vec<u8>)> {
    sys::mpi::try_recv_any(world)
        .map_err(sys::mpi::note_failed)
        .ok()
        .flatten()
}

/// A blocking send (the handshake's); a failure is noted for [`lose_failed`].
fn send(world: &SimpleCommunicator, rank: i32, m: &[u8]) {
    if let Err(e) = sys::mpi::send(world, rank, m) {
        sys::mpi::note_failed(e);
    }
}

/// Writes a line to standard error directly: the hub's diagnostics are for whoever runs the
/// job, and a test harness capturing the output of the thread that built the pool (which the
/// hub thread inherits) would swallow them.
fn say(line: &str) {
    sys::process::write_stderr_raw(format!("{line}\n").as_bytes());
}

/// Declares lost every rank an MPI call failed on (errors are returned, not fatal: a send,
/// test or probe that fails on a rank means MPI gave up on that rank). A failure that names
/// no rank loses none: it is reported once, and the heartbeats decide.
fn lose_failed(hub: &Hub, lost: &mut Vec<i32>, workers: &mut HashMap<u64, Remote>) {
    static UNNAMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    for e in sys::mpi::take_failed() {
        match e.rank {
            Some(r) if r != 0 => {
                if !lost.contains(&r) {
                    lose(
                        r,
                        &format!("MPI says it is unreachable: {e}"),
                        hub,
                        lost,
                        workers,
                    );
                }
            }
            _ => {
                if !UNNAMED.swap(true, Ordering::Relaxed) {
                    say(&format!("multiproc: an MPI call on rank 0 failed: {e}"));
                }
            }
        }
    }
}

/// Sends that have not completed, per rank: a message to an agent is never waited for (a
/// blocking send of more than a few hundred bytes waits, in Open MPI's shared-memory
/// transport, until the receiver has taken it, which a stopped rank never does).
type Pending = HashMap<i32, VecDeque<sys::mpi::Isend>>;

/// Starts sending `m` to `rank` without waiting.
fn isend(world: &SimpleCommunicator, rank: i32, m: Vec<u8>, pending: &mut Pending) {
    pending
        .entry(rank)
        .or_default()
        .push_back(sys::mpi::Isend::start(world, rank, m));
}

/// A rank whose last heartbeat is older than this is sent nothing until it speaks again: a
/// send to a process that stopped can block inside MPI.
const QUIET: Duration = Duration::from_millis(350);

fn quiet(heard: &HashMap<i32, Instant>, rank: i32) -> bool {
    heard.get(&rank).is_none_or(|t| t.elapsed() > QUIET)
}

/// Sends `m` to `rank` now, or holds it until the rank speaks again if it is quiet (or
/// messages are held for it already: order is kept).
fn post(
    world: &SimpleCommunicator,
    rank: i32,
    m: Vec<u8>,
    heard: &HashMap<i32, Instant>,
    held: &mut HashMap<i32, VecDeque<Vec<u8>>>,
    pending: &mut Pending,
) {
    let q = held.entry(rank).or_default();
    if q.is_empty() && !quiet(heard, rank) {
        isend(world, rank, m, pending);
    } else {
        q.push_back(m);
    }
}

/// Collects every agent's `HELLO` and answers `WELCOME` (or `REFUSE` to all when a rank runs
/// another binary or never reports). Returns the agents, and the ranks that never reported.
fn handshake(
    world: &SimpleCommunicator,
    key: [u64; 2],
    fingerprint: &[u8],
    rank_timeout: Duration,
) -> (Ranks, Vec<i32>) {
    let size = world.size();
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut seen: HashMap<i32, Hello> = HashMap::new();
    let mut problems = Vec::new();
    while (seen.len() as i32) < size - 1 && Instant::now() < deadline {
        let Some((src, m)) = try_recv(world) else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let parsed = wire::parse(&m).and_then(|(k, _, b)| {
            if k == wire::HELLO {
                wire::body::<Hello>(b, "HELLO")
            } else {
                Err(Error::msg(
                    ErrorKind::Protocol,
                    format!("message kind {k} before HELLO"),
                ))
            }
        });
        match parsed {
            Ok(h) => {
                seen.insert(src, h);
            }
            Err(e) => problems.push(format!("rank {src}: {e}")),
        }
    }
    let missing: Vec<i32> = (1..size).filter(|r| !seen.contains_key(r)).collect();
    let mine = hex(fingerprint);
    for (r, h) in &seen {
        if h.fingerprint != fingerprint {
            problems.push(format!(
                "rank {r} (host {}, pid {}) runs a different binary ({}, rank 0 has {mine}); start every rank from the same executable",
                h.host, h.pid, hex(&h.fingerprint)
            ));
        }
    }
    if !missing.is_empty() {
        problems.push(format!("rank(s) {missing:?} did not report within {HELLO_TIMEOUT:?}: is every rank running this program, built with multiproc's `mpi` feature?"));
    }
    if !problems.is_empty() {
        problems.sort();
        let text = format!("the MPI job was refused: {}", problems.join("; "));
        for r in seen.keys() {
            send(world, *r, &wire::msg(wire::REFUSE, 0, text.as_bytes()));
        }
        let kind = if seen.values().any(|h| h.fingerprint != fingerprint) {
            ErrorKind::ExecutableMismatch
        } else {
            ErrorKind::Protocol
        };
        return (Err((kind, text)), missing);
    }
    let kernel = super::agent::kernel_id();
    let mut ranks: Vec<RankInfo> = seen
        .into_iter()
        .map(|(rank, h)| RankInfo {
            rank,
            host: h.host,
            pid: h.pid,
            default_workers: h.default_workers.max(1),
            same_kernel: !kernel.is_empty() && h.kernel == kernel,
        })
        .collect();
    ranks.sort_by_key(|r| r.rank);
    for r in &ranks {
        send(
            world,
            r.rank,
            &wire::msg_with(
                wire::WELCOME,
                0,
                &Welcome {
                    key,
                    rank_timeout_ms: rank_timeout.as_millis().min(u64::MAX as u128) as u64,
                },
            ),
        );
    }
    (Ok(ranks), missing)
}

/// A fingerprint as people compare it: `build-id:` then the id in hex, as `readelf -n`
/// prints it (or `hash:` and the file's hash).
fn hex(b: &[u8]) -> String {
    let (label, id) = [&b"build-id:"[..], b"hash:"]
        .iter()
        .find_map(|p| b.strip_prefix(*p).map(|rest| (*p, rest)))
        .unwrap_or((&b""[..], b));
    let digits: String = id.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}{digits}", String::from_utf8_lossy(label))
}

/// The relay: commands, MPI messages, worker sockets, heartbeats; until `Shutdown`.
fn relay_loop(
    world: &SimpleCommunicator,
    hub: &Hub,
    wake_rx: &RegisteredFd,
    rank_timeout: Duration,
    lost: &mut Vec<i32>,
) {
    let ranks: Vec<i32> = match &hub.ranks {
        Ok(r) => r.iter().map(|r| r.rank).collect(),
        Err(_) => return,
    };
    let mut heard: HashMap<i32, Instant> = ranks.iter().map(|r| (*r, Instant::now())).collect();
    // Sends in flight, per rank.
    let mut pending: Pending = HashMap::new();
    // Receives in flight, per rank, in arrival order (handled in that order).
    let mut recvs: HashMap<i32, VecDeque<sys::mpi::Irecv>> = HashMap::new();
    // Control messages held for ranks that are quiet (see `post`).
    let mut held: HashMap<i32, VecDeque<Vec<u8>>> = HashMap::new();
    // DATA bytes sent to each rank and not credited back yet.
    let mut unacked: HashMap<i32, usize> = ranks.iter().map(|r| (*r, 0)).collect();
    let mut workers: HashMap<u64, Remote> = HashMap::new();
    let mut spare = wire::Buffers::default();
    let mut scratch = vec![0u8; wire::PIECE - 9];
    let mut last_beat = Instant::now();
    let mut idle = wire::Idle::new();
    // The wake-up pipe became readable in the last wait.
    let mut woken = false;
    // Workers per rank (this round's, for the credit window).
    let mut per_rank: HashMap<i32, usize> = HashMap::new();
    loop {
        let mut busy = false;
        // 1. Commands from the pool. Their wake-up bytes are read first, so that a command
        // whose byte is read is taken in this round too (a command is queued before its byte
        // is written); a byte left for a command taken earlier wakes one more round.
        if std::mem::take(&mut woken) || !lock(&hub.cmds).is_empty() {
            let mut b = [0u8; 256];
            while matches!(rustix::io::read(wake_rx.as_fd(), &mut b), Ok(n) if n == b.len()) {}
        }
        let cmds: Vec<Cmd> = lock(&hub.cmds).drain(..).collect();
        for c in cmds {
            busy = true;
            match c {
                Cmd::Spawn {
                    id,
                    rank,
                    spec,
                    fd,
                    state,
                } => {
                    if lost.contains(&rank) {
                        state.finish(None);
                        continue;
                    }
                    post(
                        world,
                        rank,
                        wire::msg_with(wire::SPAWN, id, &spec),
                        &heard,
                        &mut held,
                        &mut pending,
                    );
                    workers.insert(
                        id,
                        Remote {
                            rank,
                            relay: Relay::new(fd),
                            state,
                            died: None,
                        },
                    );
                }
                Cmd::Kill(id) => {
                    if let Some(w) = workers.get(&id) {
                        post(
                            world,
                            w.rank,
                            wire::msg(wire::KILL, id, &[]),
                            &heard,
                            &mut held,
                            &mut pending,
                        );
                    }
                }
                Cmd::Shutdown => {
                    // A lost rank's sends never complete: do not wait for them.
                    pending.retain(|r, _| !lost.contains(r));
                    let m = wire::msg(wire::SHUTDOWN, 0, &shutdown_body(lost));
                    for r in &ranks {
                        if !lost.contains(r) {
                            isend(world, *r, m.clone(), &mut pending);
                        }
                    }
                    // Give the sends a moment; what is still pending then is leaked.
                    let until = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < until
                        && pending.values_mut().any(|q| {
                            q.retain_mut(|s| !s.test());
                            !q.is_empty()
                        })
                    {
                        std::thread::yield_now();
                    }
                    for (_, w) in workers.drain() {
                        w.state.finish(None);
                    }
                    return;
                }
            }
        }
        // 2. Messages from the agents: each one that arrived is received without waiting
        // (one that needs a stopped sender's help never completes, and nothing waits for
        // it) and handled as soon as it is complete, in order per rank; what it carries for
        // the pool is written to the worker's socket at once, before the next probe.
        let mut touched: Vec<i32> = Vec::new();
        for _ in 0..256 {
            let p = match sys::mpi::probe(world) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    // Acted on below (`lose_failed`).
                    sys::mpi::note_failed(e);
                    break;
                }
            };
            let src = p.source;
            let r = p.start(spare.get());
            if lost.contains(&src) {
                continue;
            }
            heard.insert(src, Instant::now());
            recvs.entry(src).or_default().push_back(r);
            if !touched.contains(&src) {
                touched.push(src);
            }
            busy |= take_messages(
                src,
                &mut recvs,
                &mut spare,
                hub,
                lost,
                &mut workers,
                &mut unacked,
            );
        }
        // Ranks MPI gave up on are lost; their receives under way are dropped (leaked if
        // MPI may still write them, never waited for).
        lose_failed(hub, lost, &mut workers);
        recvs.retain(|r, _| !lost.contains(r));
        // Receives that completed since (large messages).
        for src in recvs
            .iter()
            .filter(|(r, q)| !q.is_empty() && !touched.contains(r))
            .map(|(r, _)| *r)
            .collect::<Vec<_>>()
        {
            busy |= take_messages(
                src,
                &mut recvs,
                &mut spare,
                hub,
                lost,
                &mut workers,
                &mut unacked,
            );
        }
        // Completed sends give their buffers back.
        for q in pending.values_mut() {
            while let Some(b) = q.front_mut().and_then(|s| s.take()) {
                q.pop_front();
                spare.put(b);
            }
        }
        // Held messages go out, in order, to ranks that spoke again.
        for (r, q) in held.iter_mut() {
            if !q.is_empty() && !quiet(&heard, *r) && !lost.contains(r) {
                busy = true;
                for m in q.drain(..) {
                    isend(world, *r, m, &mut pending);
                }
            }
        }
        // 3. Worker sockets: what the pool wrote goes to the agent (not to a quiet rank, or
        // one whose window is full: the bytes wait in the socket).
        per_rank.clear();
        for w in workers.values() {
            *per_rank.entry(w.rank).or_default() += 1;
        }
        for (id, w) in workers.iter_mut() {
            if quiet(&heard, w.rank) || held.get(&w.rank).is_some_and(|q| !q.is_empty()) {
                continue;
            }
            if w.died.is_some() {
                continue;
            }
            let window = wire::WINDOW_PER_WORKER * per_rank.get(&w.rank).copied().unwrap_or(1);
            let mut read = 0;
            while read < wire::READ_MAX {
                let sent = unacked.entry(w.rank).or_default();
                let room = window.saturating_sub(*sent).min(scratch.len());
                if room == 0 {
                    break;
                }
                match w.relay.read_some(&mut scratch[..room]) {
                    Read::Nothing => break,
                    Read::Data(n) => {
                        busy = true;
                        *sent += n;
                        read += n;
                        let m = spare.msg(wire::DATA, *id, &scratch[..n]);
                        isend(world, w.rank, m, &mut pending);
                    }
                    Read::End => {
                        if !w.relay.shut_pending {
                            // Once: the pool shut its write half (or dropped the channel).
                            w.relay.shut_pending = true;
                            busy = true;
                            post(
                                world,
                                w.rank,
                                wire::msg(wire::EOF, *id, &[]),
                                &heard,
                                &mut held,
                                &mut pending,
                            );
                        }
                        break;
                    }
                }
            }
        }
        // 4. What the socket did not take at once goes to the pool; finished workers are
        // released.
        let mut gone = Vec::new();
        for (id, w) in workers.iter_mut() {
            if w.relay.has_output() {
                busy |= w.relay.flush();
            }
            if let Some(code) = w.died {
                if !w.relay.has_output() {
                    w.state.finish(code);
                    gone.push(*id);
                }
            }
        }
        for id in gone {
            workers.remove(&id);
        }
        hub.progress.store(since_start(), Ordering::Release);
        // 5. Ranks that stopped answering (agents beat every 100 ms; rank 0 sends them
        // nothing unasked, so a silent rank is sent as little as possible).
        let now = Instant::now();
        if now.duration_since(last_beat) >= wire::BEAT {
            last_beat = now;
            beat_agents(world, &ranks, lost, &heard, &mut pending);
            lose_exited(hub, lost, &mut workers);
            for r in &ranks {
                if lost.contains(r) {
                    continue;
                }
                if heard
                    .get(r)
                    .is_some_and(|t| now.duration_since(*t) > rank_timeout)
                {
                    lose(
                        *r,
                        &format!("it sent nothing for {rank_timeout:?}"),
                        hub,
                        lost,
                        &mut workers,
                    );
                    // Its receives under way never complete: leaked, never waited for.
                    recvs.remove(r);
                }
            }
        }
        if busy {
            idle.reset();
        } else {
            let mut set: Vec<(BorrowedFd<'_>, sys::socket::Events)> =
                vec![(wake_rx.as_fd(), sys::socket::Events::IN)];
            for w in workers.values() {
                if w.died.is_none() {
                    set.push((w.relay.fd.as_fd(), w.relay.events()));
                }
            }
            woken = idle.wait(&set);
        }
    }
}

/// Handles the messages from `src` whose receive has completed, in order (stops at the
/// first one still arriving). Returns whether any was work (not a heartbeat): heartbeats do
/// not keep the idle loop spinning.
fn take_messages(
    src: i32,
    recvs: &mut HashMap<i32, VecDeque<sys::mpi::Irecv>>,
    spare: &mut wire::Buffers,
    hub: &Hub,
    lost: &mut Vec<i32>,
    workers: &mut HashMap<u64, Remote>,
    unacked: &mut HashMap<i32, usize>,
) -> bool {
    let mut work = false;
    let Some(q) = recvs.get_mut(&src) else {
        return false;
    };
    while let Some(m) = q.front_mut().and_then(|r| r.take()) {
        q.pop_front();
        // A failed receive: noted, and the rank is lost this round (`lose_failed`).
        let Some(m) = m else { continue };
        work |= m.first() != Some(&wire::BEAT_MSG);
        let r = on_message(src, &m, workers, unacked);
        spare.put(m);
        if let Err(e) = r {
            lose(
                src,
                &format!("it sent a malformed message ({e})"),
                hub,
                lost,
                workers,
            );
            recvs.remove(&src);
            return true;
        }
    }
    work
}

/// Declares `rank` lost: its workers end with an unknown exit code (the pool re-queues their
/// tasks), and nothing is sent to it again.
fn lose(rank: i32, why: &str, hub: &Hub, lost: &mut Vec<i32>, workers: &mut HashMap<u64, Remote>) {
    let at = match &hub.ranks {
        Ok(r) => r
            .iter()
            .find(|i| i.rank == rank)
            .map(|i| format!(" (host {}, pid {})", i.host, i.pid))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    say(&format!(
        "multiproc: MPI rank {rank}{at} is lost: {why}; its tasks go to the other ranks"
    ));
    lost.push(rank);
    lock(&hub.lost).push(rank);
    workers.retain(|_, w| {
        if w.rank == rank {
            w.state.finish(None);
            false
        } else {
            true
        }
    });
}

/// Pidfds of the agents on rank 0's own kernel (see [`RankInfo::same_kernel`]).
static WATCHED: Mutex<Vec<(i32, RegisteredFd)>> = Mutex::new(Vec::new());

/// Opens a pidfd on every agent that runs on this kernel. Certain: an agent leaves only
/// when rank 0 tells it to (or cannot reach rank 0), so while it lives its pid is its own,
/// and a pidfd that reports an exit means the agent has died, whatever it then names.
fn watch_agents(ranks: &[RankInfo]) {
    let mut w = lock(&WATCHED);
    for r in ranks.iter().filter(|r| r.same_kernel) {
        // None or an error: gone already, or no pidfds here; the heartbeats decide.
        if let Ok(Some(fd)) = fdreg::pidfd_open(r.pid as i32) {
            w.push((r.rank, fd));
        }
    }
}

/// At exit, SIGKILLs (through their pidfds: no other process can be hit) the lost agents on
/// this host that still run, e.g. a stopped one: under `mpirun --enable-recovery` nothing
/// else would end them, and the job would never finish. (By default the launcher ends the
/// whole job once rank 0 leaves without `MPI_Finalize`.)
fn kill_lost_agents(lost: &[i32]) {
    for (r, fd) in lock(&WATCHED).iter() {
        if lost.contains(r) {
            let _ = sys::process::signal_pidfd(fd.as_fd(), sys::process::SIGKILL);
        }
    }
}

/// Declares lost every watched agent whose process has exited (its pidfd is readable): at
/// once, not after `mpi_rank_timeout` of silence.
fn lose_exited(hub: &Hub, lost: &mut Vec<i32>, workers: &mut HashMap<u64, Remote>) {
    let mut w = lock(&WATCHED);
    if w.is_empty() {
        return;
    }
    let set: Vec<(BorrowedFd<'_>, sys::socket::Events)> = w
        .iter()
        .map(|(_, fd)| (fd.as_fd(), sys::socket::Events::IN))
        .collect();
    let Ok(ready) = sys::socket::poll_each(&set, Some(Instant::now())) else {
        return;
    };
    drop(set);
    let mut gone: Vec<i32> = ready
        .iter()
        .filter_map(|i| w.get(*i).map(|x| x.0))
        .collect();
    gone.sort_unstable();
    w.retain(|(r, _)| !gone.contains(r));
    drop(w);
    for r in gone {
        if !lost.contains(&r) {
            lose(
                r,
                "its process has exited (seen from rank 0, on the same host)",
                hub,
                lost,
                workers,
            );
        }
    }
}

/// Rank 0's heartbeat, to every rank that is neither lost nor quiet: an agent that stops
/// hearing rank 0 (killed, frozen) leaves instead of serving nobody forever.
fn beat_agents(
    world: &SimpleCommunicator,
    ranks: &[i32],
    lost: &[i32],
    heard: &HashMap<i32, Instant>,
    pending: &mut Pending,
) {
    for r in ranks {
        if !lost.contains(r) && !quiet(heard, *r) {
            isend(world, *r, wire::msg(wire::BEAT_MSG, 0, &[]), pending);
        }
    }
}

/// `SHUTDOWN`'s body: `[1]` when a rank was lost, so the agents leave without
/// `MPI_Finalize` too (it waits for every rank, rank 0 and the lost one included).
fn shutdown_body(lost: &[i32]) -> [u8; 1] {
    [u8::from(!lost.is_empty())]
}

/// One message from agent `src`.
fn on_message(
    src: i32,
    m: &[u8],
    workers: &mut HashMap<u64, Remote>,
    unacked: &mut HashMap<i32, usize>,
) -> Result<()> {
    let (kind, id, body) = wire::parse(m)?;
    if kind == wire::CREDIT {
        let n: [u8; 8] = body
            .try_into()
            .map_err(|_| Error::msg(ErrorKind::Protocol, "CREDIT without a count"))?;
        let u = unacked.entry(src).or_default();
        *u = u.saturating_sub(u64::from_le_bytes(n) as usize);
        return Ok(());
    }
    let w = workers.get_mut(&id).filter(|w| w.rank == src);
    match kind {
        wire::BEAT_MSG | wire::HELLO => {}
        wire::DATA => {
            if let Some(w) = w {
                w.relay.write(body);
            }
        }
        wire::SPAWNED => {
            let pid: [u8; 4] = body
                .try_into()
                .map_err(|_| Error::msg(ErrorKind::Protocol, "SPAWNED without a pid"))?;
            if let Some(w) = w {
                w.state
                    .pid
                    .store(u32::from_le_bytes(pid), Ordering::Release);
                w.state.set_started(Ok(()));
            }
        }
        wire::SPAWN_FAILED => {
            if let Some(w) = w {
                w.state
                    .set_started(Err(String::from_utf8_lossy(body).into_owned()));
                w.died = Some(None);
            }
        }
        wire::DIED => {
            let d: Died = wire::body(body, "DIED")?;
            if let Some(w) = w {
                w.died = Some(d.code);
            }
        }
        k => {
            return Err(Error::msg(
                ErrorKind::Protocol,
                format!("unknown message kind {k}"),
            ))
        }
    }
    Ok(())
}
