//! Ranks other than 0: the node agent, entered before `main` from the boot constructor.
//!
//! The agent initialises MPI on the process's only thread, introduces itself to rank 0
//! (build-id, host, default worker count), adopts rank 0's entry key, then serves: it starts
//! local pool workers when rank 0 asks, relays each worker's channel to rank 0 byte for byte,
//! reports their exits, and kills them on request. A task that crashes kills its local
//! worker only; the agent reports the exit and goes on. It never returns to `main`.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use mpi::topology::{Communicator, SimpleCommunicator};

use super::wire::{self, Died, Hello, Read, Relay, SpawnSpec, Welcome};
use crate::connection::Waitable;
use crate::process::Process;
use crate::sys;

/// A worker whose exit code does not arrive within this time is reported with none.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(5);

/// The rank this process has in an MPI job, from the launcher's environment (Open MPI,
/// MPICH/Hydra, PMIx launchers such as `srun --mpi=pmix`).
pub(crate) fn rank_from_env() -> Option<u32> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// The job's size from the launcher's environment. Slurm's PMIx plugin (`srun --mpi=pmix`)
/// sets `PMIX_RANK` but no size variable: there the step's task count is the job's size (read
/// only beside `PMIX_RANK`, so a plain `srun` of a non-MPI program is no MPI job).
pub(crate) fn size_from_env() -> Option<u32> {
    let var = |v: &str| std::env::var(v).ok()?.trim().parse().ok();
    var("OMPI_COMM_WORLD_SIZE")
        .or_else(|| var("PMI_SIZE"))
        .or_else(|| std::env::var_os("PMIX_RANK").and_then(|_| var("SLURM_STEP_NUM_TASKS")))
}

/// The MPI backend's own constructor, beside `spawn::bootstrap`'s: in a normal start (no
/// multiproc boot variable: not a child, not the fork server), a rank above 0 becomes an agent
/// and never returns; rank 0 (and a program not under an MPI launcher) returns at once. The
/// order of the two constructors does not matter: each one acts only when the other does not.
// SAFETY: (`ctor(unsafe)`: code before `main`) it runs on the process's only thread, reads
// the environment and, on a rank above 0, initialises MPI and serves until it exits the
// process; it needs nothing of `main`'s set-up (std's stdio, allocation, threads and
// environment all work before `main` on Linux), and it never returns into `main` there.
#[ctor::ctor(unsafe)]
fn boot_mpi_rank() {
    if std::env::var_os(crate::spawn::bootstrap::BOOT_ENV).is_none() {
        boot_rank();
    }
}

/// A non-zero rank becomes an agent and never returns; rank 0 returns at once, having
/// arranged to release the agents at exit if it never builds an MPI pool. Every rank first
/// sets the MPI tuning the relay relies on for its speed.
fn boot_rank() {
    let rank = rank_from_env();
    if rank.is_some() {
        tune_transport();
    }
    match rank {
        Some(r) if r > 0 => serve(),
        Some(0) if size_from_env() != Some(1) => super::hub::release_agents_at_exit(),
        _ => {}
    }
}

/// Raises Open MPI's shared-memory eager limit to 64 KiB ([`wire::EAGER_ENV`]) so that each
/// relayed piece is one copy, unless the user set either variable (in the environment or on
/// `mpirun`'s command line, which passes them the same way). Before `main`, on the only
/// thread, before `MPI_Init`; other MPI libraries ignore the variables.
fn tune_transport() {
    for (k, v) in transport_settings(|k| std::env::var_os(k).is_some()) {
        // Sound: no other thread exists before `main`.
        std::env::set_var(k, v);
    }
}

/// The variables [`tune_transport`] sets, given which ones are set already (`is_set`): all
/// of [`wire::EAGER_ENV`], or none when the user set any of them (they go together).
fn transport_settings(is_set: impl Fn(&str) -> bool) -> &'static [(&'static str, &'static str)] {
    if wire::EAGER_ENV.iter().any(|(k, _)| is_set(k)) {
        &[]
    } else {
        &wire::EAGER_ENV
    }
}

/// This process's kernel (its boot id, random per boot) and pid namespace: two processes
/// with the same non-empty id see the same pids. Empty where either cannot be read.
pub(crate) fn kernel_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let ns = std::fs::read_link("/proc/self/ns/pid");
    match (boot, ns) {
        (Ok(b), Ok(n)) if !b.trim().is_empty() => format!("{} {}", b.trim(), n.display()),
        _ => String::new(),
    }
}

/// Workers per agent by default: this host's cores divided among its ranks.
fn default_workers() -> u32 {
    let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
        // Slurm's step daemon lists the global ids of the tasks on this node ("0,1,2").
        .or_else(|| Some(std::env::var("SLURM_GTIDS").ok()?.split(',').count()))
        .unwrap_or(1)
        .max(1);
    (crate::context::cpu_count() / local).max(1) as u32
}

struct Local {
    relay: Relay,
    process: Process<()>,
    /// Seen exited, since when (its exit code may arrive later from the fork server).
    exited: Option<Instant>,
}

/// Sends one message to rank 0, built in `buf`. Blocking: a copy up to the eager limit;
/// above it (a limit the user lowered), until rank 0 takes it, which it does every round.
/// If MPI fails it (rank 0 is unreachable), the agent leaves.
fn send(world: &SimpleCommunicator, buf: &mut Vec<u8>, kind: u8, id: u64, body: &[u8]) {
    wire::header(buf, kind, id);
    buf.extend_from_slice(body);
    if let Err(e) = sys::mpi::send(world, 0, buf) {
        leave_without_finalize(&format!("rank 0 is unreachable: {e}"));
    }
}

/// Set when the agent must exit without `MPI_Finalize`: rank 0 said a rank was lost (the
/// finalize would wait for it forever), or rank 0 itself is gone.
static NO_FINALIZE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The agent's exit code: 1 once rank 0 is gone (the job failed), else 0.
static EXIT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Marks the agent as leaving without `MPI_Finalize`, because rank 0 is gone (`why` goes to
/// standard error, once) or, with an empty `why`, because rank 0 said so.
fn leave_without_finalize(why: &str) {
    NO_FINALIZE.store(true, std::sync::atomic::Ordering::Release);
    if !why.is_empty() && EXIT_CODE.swap(1, std::sync::atomic::Ordering::AcqRel) == 0 {
        sys::process::write_stderr_raw(
            format!(
                "multiproc: MPI agent rank {} (pid {}) leaves, ending its workers: {why}\n",
                rank_from_env().unwrap_or(0),
                std::process::id()
            )
            .as_bytes(),
        );
    }
}

/// Whether the relay must stop now: rank 0 is unreachable or has been silent for longer than
/// its `mpi_rank_timeout`.
fn leaving() -> bool {
    if let Some(limit) = RANK0_TIMEOUT.get() {
        let silent = HEARD0.with(|h| h.get().map(|t| t.elapsed()));
        if silent.is_some_and(|s| s > *limit) {
            leave_without_finalize(&format!("rank 0 sent nothing for {limit:?}"));
        }
    }
    NO_FINALIZE.load(std::sync::atomic::Ordering::Acquire)
}

/// How long rank 0 may be silent once it welcomed this agent (its `mpi_rank_timeout`).
static RANK0_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

thread_local! {
    /// When rank 0 was last heard from (set from the welcome on).
    static HEARD0: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// `SHUTDOWN`'s body is `[1]` when rank 0 lost a rank: leave without `MPI_Finalize`.
fn on_shutdown(body: &[u8]) {
    if body == [1] {
        leave_without_finalize("");
    }
}

fn exit_code(r: crate::Result<()>) -> Option<Option<i32>> {
    match r {
        Ok(()) => Some(Some(0)),
        Err(e) if e.is_timeout() => None,
        Err(e) => Some(match (e.signal(), e.exit_code()) {
            (Some(s), _) => Some(-s),
            (None, Some(c)) => Some(c),
            (None, None) if e.kind() == crate::ErrorKind::Panicked => Some(1),
            (None, None) => None,
        }),
    }
}

fn serve() -> ! {
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
        eprintln!("multiproc: MPI could not be initialised on this rank");
        sys::process::exit_now(70)
    };
    let world = universe.world();
    // A failed call to rank 0 returns its error (and the agent leaves) instead of aborting.
    if let Err(e) = sys::mpi::errors_return(&world) {
        eprintln!("multiproc: MPI errors stay fatal on this rank: {e}");
    }
    // Children (and tasks) can find their agent, e.g. to test what a lost rank does.
    // Sound: no other thread exists before `main`.
    std::env::set_var("MULTIPROC_MPI_AGENT_PID", std::process::id().to_string());
    let hello = Hello {
        fingerprint: crate::spawn::fingerprint()
            .map(|f| f.to_vec())
            .unwrap_or_default(),
        host: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        pid: std::process::id(),
        default_workers: default_workers(),
        kernel: kernel_id(),
    };
    let hello = postcard::to_stdvec(&hello).unwrap_or_default();
    send(&world, &mut Vec::new(), wire::HELLO, 0, &hello);
    // Wait for rank 0's answer (it may be long: rank 0 answers when `main` builds an MPI
    // pool). Only rank 0 talks to us.
    let mut idle = wire::Idle::new();
    loop {
        if let Some((src, m)) = try_recv(&world) {
            idle.reset();
            if src != 0 {
                continue;
            }
            match wire::parse(&m) {
                Ok((wire::WELCOME, _, b)) => match wire::body::<Welcome>(b, "WELCOME") {
                    Ok(w) => {
                        crate::task::adopt_key(w.key);
                        let _ = RANK0_TIMEOUT.set(
                            Duration::from_millis(w.rank_timeout_ms).max(Duration::from_secs(1)),
                        );
                        HEARD0.with(|h| h.set(Some(Instant::now())));
                        break;
                    }
                    Err(e) => refuse_and_exit(universe, world, &e.to_string()),
                },
                Ok((wire::REFUSE, _, b)) => {
                    let why = String::from_utf8_lossy(b).into_owned();
                    refuse_and_exit(universe, world, &why)
                }
                Ok((wire::SHUTDOWN, _, b)) => {
                    on_shutdown(b);
                    finish(universe, world, HashMap::new())
                }
                _ => {}
            }
        } else if leaving() {
            finish(universe, world, HashMap::new())
        } else {
            idle.wait(&[]);
        }
    }
    let workers = relay(&world);
    finish(universe, world, workers)
}

fn refuse_and_exit(
    universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    why: &str,
) -> ! {
    eprintln!(
        "multiproc: MPI rank {} refused by rank 0: {why}",
        world.rank()
    );
    finish(universe, world, HashMap::new())
}

/// Kills what is left, finalizes MPI (unless a rank was lost: see [`NO_FINALIZE`]) and exits
/// 0 (a non-zero exit would abort the job), or 1 once rank 0 is gone.
fn finish(
    universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    workers: HashMap<u64, Local>,
) -> ! {
    for w in workers.values() {
        let _ = w.process.kill();
    }
    for w in workers.values() {
        let _ = w.process.join_timeout(Duration::from_secs(5));
    }
    drop(workers);
    if leaving() {
        // MPI_Finalize waits for every rank, and a lost one never comes.
        std::mem::forget(world);
        std::mem::forget(universe);
    } else {
        drop(world);
        drop(universe);
    }
    std::process::exit(EXIT_CODE.load(std::sync::atomic::Ordering::Acquire))
}

/// Receives one message if one is waiting; if MPI fails the receive, the agent leaves.
fn try_recv(world: &SimpleCommunicator) -> Option<(i32, Vec<u8>)> {
    match sys::mpi::try_recv_any(world) {
        Ok(m) => {
            if m.as_ref().is_some_and(|(src, _)| *src == 0) {
                HEARD0.with(|h| {
                    if h.get().is_some() {
                        h.set(Some(Instant::now()));
                    }
                });
            }
            m
        }
        Err(e) => {
            leave_without_finalize(&format!("receiving from rank 0 failed: {e}"));
            None
        }
    }
}

/// Serves rank 0 until `SHUTDOWN`; returns the workers left.
fn relay(world: &SimpleCommunicator) -> HashMap<u64, Local> {
    let mut workers: HashMap<u64, Local> = HashMap::new();
    let mut idle = wire::Idle::new();
    let mut last_beat = Instant::now();
    // One buffer for the message being received and one for the message being sent (sends
    // are blocking: MPI has copied it when `send` returns): nothing allocated per message.
    let mut rbuf: Vec<u8> = Vec::new();
    let mut sbuf: Vec<u8> = Vec::new();
    let mut scratch = vec![0u8; wire::PIECE - 9];
    loop {
        let mut busy = false;
        let mut taken = 0u64;
        // 1. Rank 0's messages.
        for _ in 0..256 {
            let p = match sys::mpi::probe(world) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    leave_without_finalize(&format!("receiving from rank 0 failed: {e}"));
                    break;
                }
            };
            let src = p.source;
            if let Err(e) = p.receive_into(&mut rbuf) {
                leave_without_finalize(&format!("receiving from rank 0 failed: {e}"));
                break;
            }
            if src != 0 {
                continue;
            }
            HEARD0.with(|h| h.set(Some(Instant::now())));
            let Ok((kind, id, body)) = wire::parse(&rbuf) else {
                continue;
            };
            // Rank 0's heartbeats do not keep the idle loop spinning.
            busy |= kind != wire::BEAT_MSG;
            match kind {
                wire::SPAWN => match wire::body::<SpawnSpec>(body, "SPAWN")
                    .and_then(|s| crate::pool::start_worker_process(&s))
                {
                    Ok((fd, process)) => {
                        let pid = process.pid();
                        workers.insert(
                            id,
                            Local {
                                relay: Relay::new(fd),
                                process,
                                exited: None,
                            },
                        );
                        send(world, &mut sbuf, wire::SPAWNED, id, &pid.to_le_bytes());
                    }
                    Err(e) => send(
                        world,
                        &mut sbuf,
                        wire::SPAWN_FAILED,
                        id,
                        e.to_string().as_bytes(),
                    ),
                },
                wire::DATA => {
                    taken += body.len() as u64;
                    if let Some(w) = workers.get_mut(&id) {
                        w.relay.write(body);
                    }
                }
                wire::EOF => {
                    if let Some(w) = workers.get_mut(&id) {
                        w.relay.shut_pending = true;
                        w.relay.flush();
                    }
                }
                wire::KILL => {
                    if let Some(w) = workers.get(&id) {
                        let _ = w.process.kill();
                    }
                }
                wire::SHUTDOWN => {
                    on_shutdown(body);
                    return workers;
                }
                _ => {}
            }
        }
        if taken > 0 {
            send(world, &mut sbuf, wire::CREDIT, 0, &taken.to_le_bytes());
        }
        // 2. Workers: their bytes go to rank 0; their exits are reported after them.
        let mut gone = Vec::new();
        for (id, w) in workers.iter_mut() {
            if w.relay.has_output() {
                busy |= w.relay.flush();
            }
            let (_, dead) = w.process.wait_handle();
            // Everything a dead worker wrote is in its socket: read it all first.
            let mut read = 0;
            while let Read::Data(n) = w.relay.read_some(&mut scratch) {
                busy = true;
                send(world, &mut sbuf, wire::DATA, *id, &scratch[..n]);
                read += n;
                if !dead && w.exited.is_none() && read >= wire::READ_MAX {
                    break;
                }
            }
            let dead = dead || w.relay.read_done;
            if dead {
                let since = *w.exited.get_or_insert_with(Instant::now);
                let code = exit_code(w.process.join_timeout(Duration::ZERO));
                let code = match code {
                    Some(c) => Some(c),
                    None if since.elapsed() > EXIT_CODE_WAIT => Some(None),
                    None => None,
                };
                if let Some(code) = code {
                    busy = true;
                    let d = postcard::to_stdvec(&Died { code }).unwrap_or_default();
                    send(world, &mut sbuf, wire::DIED, *id, &d);
                    gone.push(*id);
                }
            }
        }
        for id in gone {
            workers.remove(&id);
        }
        if last_beat.elapsed() >= wire::BEAT {
            last_beat = Instant::now();
            send(world, &mut sbuf, wire::BEAT_MSG, 0, &[]);
        }
        if leaving() {
            return workers;
        }
        if busy {
            idle.reset();
        } else {
            let set: Vec<(BorrowedFd<'_>, sys::socket::Events)> = workers
                .values()
                .flat_map(|w| {
                    let (fd, _) = w.process.wait_handle();
                    [
                        (w.relay.fd.as_fd(), w.relay.events()),
                        (fd, sys::socket::Events::IN),
                    ]
                })
                .collect();
            idle.wait(&set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eager_limit_is_raised_unless_the_user_set_it() {
        let set = transport_settings(|_| false);
        assert!(set.contains(&("OMPI_MCA_btl_vader_eager_limit", "65536")));
        assert!(set.contains(&("OMPI_MCA_btl_vader_max_send_size", "65536")));
        // The pieces the relay sends fit the limit it sets, header included.
        let limit: usize = set[0].1.parse().unwrap();
        assert!(wire::PIECE <= limit);
        for (k, _) in wire::EAGER_ENV {
            assert!(
                transport_settings(|v| v == k).is_empty(),
                "{k} set by the user: nothing is overridden"
            );
        }
    }
}
