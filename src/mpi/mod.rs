//! The scale-out backend: one [`Pool`](crate::Pool) whose workers span every rank of an MPI
//! job (feature `mpi`).
//!
//! Keep the pool code, add [`PoolBuilder::mpi`](crate::PoolBuilder::mpi), and launch the
//! program with the cluster's own launcher:
//!
//! ```text
//! apt-get install -y libopenmpi-dev openmpi-bin libclang-dev pkg-config   # Debian/Ubuntu
//! cargo build --release --features mpi
//! mpirun -n 3 target/release/app          # as root: add --allow-run-as-root;
//!                                         # more ranks than cores: --oversubscribe --bind-to none
//! mpirun --enable-recovery -n 3 target/release/app   # Open MPI: the job outlives a killed
//!                                         # agent rank ("What a failure does")
//! ```
//!
//! ```no_run
//! use multiproc::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! let pool = Pool::builder().mpi().build()?;      // workers on ranks 1..N
//! let v = pool.map(square, 0..1_000_000u64)?;     // the local pool's API, unchanged
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! # What runs where
//!
//! * **Rank 0** runs `main`. Its first MPI pool starts one thread, `multiproc-mpi`, the only
//!   thread that calls MPI (it initialises MPI with `MPI_THREAD_FUNNELED`, and finalizes it
//!   at exit). That thread checks every rank's build-id (a rank running another executable
//!   is refused: [`ErrorKind::ExecutableMismatch`],
//!   naming the rank, its host and both build-ids), and hands every rank the entry key.
//! * **Every other rank never runs `main`.** The constructor that multiproc runs before
//!   `main` reads the rank from the launcher's environment (`OMPI_COMM_WORLD_RANK`,
//!   `PMI_RANK`, `PMIX_RANK`) and turns the process into a *node agent*: it starts ordinary
//!   local pool worker processes when rank 0 asks ([`PoolBuilder::processes`](crate::PoolBuilder::processes)
//!   per rank; 0, the default, is the host's cores divided among the ranks on that host), and
//!   relays each worker's channel to rank 0, byte for byte, over MPI.
//! * **The pool** on rank 0 is the local pool: the same dispatch, windows, chunking, result
//!   routing, `task_timeout`, crash handling and replacement; a remote worker is a channel
//!   whose other end is the MPI thread instead of a process. `map`, `imap`,
//!   `imap_unordered`, `apply_async`, `AsCompleted` and the rest behave as in the local pool.
//!
//! # What a failure does
//!
//! * A task that panics fails alone with `Panicked`, as locally.
//! * A task that segfaults, aborts, calls `exit` or is OOM-killed kills one local worker on
//!   its host. The agent reports the exit code; that task alone fails with `WorkerLost`, a
//!   replacement starts on the same rank, and the job goes on (plain MPI would abort the
//!   whole job). A task over `task_timeout` fails with `Timeout` and its worker is replaced.
//! * A rank that is **lost** (its agent died, or stopped answering): its workers count as
//!   lost with their host: every task they had not answered goes back to the queue
//!   untouched (none is blamed, none fails; at least once, as in the local pool) and runs on
//!   the other ranks, which also take over the lost rank's share of workers. `map`, `imap`
//!   and `apply_async` return every result; once *every* agent rank is lost, tasks fail with
//!   an error saying so ("every agent rank of the MPI job is lost"), never a hang. Rank 0
//!   says on standard error which rank it lost and why.
//! * **How a lost rank is found.** An agent on rank 0's own host (the same kernel and pid
//!   namespace: boot id and pid namespace are compared at the handshake) is watched through
//!   a pidfd, so its death is seen at once. Anywhere else, agents send a heartbeat every
//!   100 ms and rank 0 declares a rank silent for
//!   [`mpi_rank_timeout`](crate::PoolBuilder::mpi_rank_timeout) (default 10 s) lost: a dead
//!   agent on another host and a frozen one (a stopped process, a hung host) alike. MPI
//!   errors are returned, not fatal (`MPI_ERRORS_RETURN` on `MPI_COMM_WORLD` on every
//!   rank): a send, test or probe that fails on a rank loses that rank with MPI's own error
//!   text, and an agent whose call to rank 0 fails leaves. Neither library returned such an
//!   error in our measurements (a send to a dead rank succeeded, over shared memory and
//!   TCP), so the pidfd and the heartbeats are what decide.
//! * **Whether the job survives a dead rank is the launcher's choice.** Measured on one
//!   host (`tests/mpi.rs`; MPICH checked by hand on 2026-12-01; the last column with hosts
//!   in network namespaces, see "A host cut off the network" below):
//!
//!   | Launch | an agent rank killed | rank 0 killed | an agent stopped (`SIGSTOP`) | an agent's host cut off (its link down) |
//!   |---|---|---|---|---|
//!   | Open MPI 4.1.4 `mpirun -n N` | `mpirun` ends the whole job within ~1.5 s, rank 0 included (exit 137, names the rank and signal) | the job ends the same way | the map completes; the job ends when `main` finishes, failed (`mpirun` exits non-zero: 1, "rank 0 exiting improperly", in our runs) | the map completes (~2.1 s with a 2 s `mpi_rank_timeout`) and `main` ends; **`mpirun` does not end**: it waits for its daemon on the cut host (still waiting after 45 s; ended by `--timeout`) |
//!   | Open MPI 4.1.4 `mpirun --enable-recovery -n N` | **the job goes on**: the rank is lost, its tasks re-run elsewhere, the job ends by itself (exit 0) | each agent, hearing nothing from rank 0 for `mpi_rank_timeout`, ends its workers and leaves (exit 0) | as by default; rank 0 SIGKILLs the stopped agent at exit (exit 0) | as by default: the map completes, `main` ends, `mpirun` waits for the cut host (ended by `--timeout`, exit 110) |
//!   | MPICH 5.0.2 `mpiexec -n N`, with or without `-disable-auto-cleanup` | hydra ends the whole job within ~0.3 s | the job ends the same way | the map completes; the job ends when `main` finishes (exit 9) | not measured |
//!
//!   Tests: `killed_rank_ends_the_job_without_hanging` (default launch),
//!   `killed_ranks_under_enable_recovery_rerun_their_tasks` (four agents killed one after
//!   another: mid-`map` and mid-`imap`, which return every result in order; under pending
//!   `apply_async` results, each of which still arrives; and under the last agent, where the
//!   pending result is the "every agent rank" error),
//!   `killed_rank_0_under_enable_recovery_ends_the_agents` and
//!   `frozen_rank_is_lost_and_its_tasks_rerun` (both launches),
//!   `cut_link_neither_hangs_nor_loses_results` (both launches). So to outlive a dead agent,
//!   launch with Open MPI's `mpirun --enable-recovery`. Two things change with it: `mpirun`
//!   then exits 0 whatever the ranks' exit statuses, rank 0's included
//!   (`enable_recovery_hides_rank_0s_exit_status`), so have rank 0 report its outcome
//!   itself; and rank 0 can end a lost rank that keeps running (a frozen one) only on its own
//!   host, so with a frozen rank on another host the job would wait for it after `main` has
//!   finished (reasoned, not measured: the multi-host test does not freeze a rank). MPICH (the `mpich` 5.0.2
//!   wheel, `mpiexec -disable-auto-cleanup -n 3 ./tests` with the crate built against its
//!   `mpicc`) cannot be made to go on here: when a rank dies, hydra signals every other
//!   rank's process group with `SIGUSR1` (which also ends their pool workers), fails to
//!   forward the failure to the dead process ("write error (Broken pipe)") and then kills the
//!   whole job; its ULFM mode (`MPIR_CVAR_ENABLE_FT=1`, needed for its `MPIX_` calls) fails
//!   an assertion inside `MPI_Init_thread` (`ch4_request.h`, line 16) with either netmod,
//!   UCX or OFI, for a plain C program that only initialises MPI too, and the job then hangs.
//! * **A host cut off the network.** Measured with three hosts in network namespaces
//!   joined by a bridge (rank 0 on the first, `mpirun` there too; ranks 1 and 2 on the
//!   others; TCP only), the link of rank 2's host taken down while it runs a task
//!   (`cut_link_neither_hangs_nor_loses_results`): rank 0 hears nothing from rank 2 for
//!   `mpi_rank_timeout` (2 s), loses it, runs its unanswered task again on rank 1, and the
//!   `map` returns every result about 2.1 s after it started; rank 1 then serves alone, and
//!   `main` ends (rank 0 leaves without `MPI_Finalize`). On the cut host, the agent hears
//!   nothing from rank 0 for `mpi_rank_timeout`, ends its workers and exits by itself
//!   (~2.0 s after the cut, while mpirun's daemon there still runs; its sends to rank 0 went
//!   into the TCP socket's buffer and never blocked). **`mpirun` itself cannot
//!   end then**, under either launch: it waits for its daemon (`orted`) on the cut host to
//!   report that host's ranks, which that daemon cannot do. By default `mpirun` also tries
//!   to tell that daemon to kill its ranks and waits for TCP to give up on it (Linux retries
//!   for ~15 min; it was still waiting after 45 s); under `--enable-recovery` it waited
//!   past 45 s even once its TCP keepalive (`--mca oob_tcp_keepalive_time 1`) had dropped
//!   the connection to that daemon. No process of ours can end the launcher, so **launch
//!   with a time limit**: `mpirun --timeout SECONDS` (or `MPIEXEC_TIMEOUT`), a bound on the
//!   whole job's run time, set above the job's normal run time. With `--timeout 8` the job
//!   ended at 8 s, about 7.5 s after the cut (exit 1 by default, 110 under
//!   `--enable-recovery`, "The user-provided time limit for job execution has been
//!   reached"). The daemon on the cut host stays until its own TCP gives up on `mpirun`
//!   (more than 4 minutes with Linux's defaults; the test sets `net.ipv4.tcp_retries2=4`
//!   in that host's namespace, so it exits within seconds); the agent and workers there
//!   have left before.
//! * **Rank 0 leaves cleanly.** Rank 0 beats too; an agent that hears nothing from rank 0
//!   for `mpi_rank_timeout` ends its workers and exits. At exit, after a lost rank, rank 0
//!   leaves without `MPI_Finalize` (which would wait for the lost rank forever), tells the
//!   agents to do the same (their finalize waits for every rank too; that once hung the job
//!   under `--enable-recovery`), and SIGKILLs, through its pidfd, a lost agent of its host
//!   that still runs. A program that never builds an MPI pool releases the waiting agents at
//!   exit (`job_that_builds_no_pool_ends_cleanly`, both launches); that release goes
//!   through MPI, which waits for every rank, so it is given 10 s: with a stopped agent,
//!   rank 0 says so and leaves, and `mpirun` ends the job as failed
//!   (`job_without_a_pool_and_a_stopped_agent_still_ends`; under `--enable-recovery` the
//!   stopped agent would keep the job, as a stopped agent on another host does: reasoned,
//!   not measured). Every job in
//!   `tests/mpi.rs` is checked to leave no process behind. Not handled: rank 0 dying under
//!   `--enable-recovery` *before* its first MPI pool is built (the agents wait for its
//!   welcome without a timeout, since `main` may take any time to get there).
//! * The MPI thread never waits for a silent rank: its sends to agents are non-blocking
//!   (`MPI_Isend` on a buffer the send owns; a blocking send over Open MPI's shared memory
//!   waits until the receiver has taken the message, which a stopped rank never does), so
//!   are its receives (`MPI_Imrecv`: a message from a sender that stopped halfway through it
//!   never completes, and nothing waits for it), at most 128 KiB per worker are
//!   unacknowledged per rank, and a rank not heard for 350 ms is sent nothing until it
//!   speaks again. Should the MPI thread stall all the same, a watchdog thread (which
//!   never calls MPI) notices that it made no round for twice `mpi_rank_timeout`, says so
//!   on standard error, ends every remote worker (their
//!   tasks then fail with the pool's start error, which names the stuck MPI thread) and
//!   refuses later MPI pools, so rank 0 never hangs silently. Start `mpirun` with its
//!   standard input at `/dev/null` (`< /dev/null`): with an inherited one, a stopped rank
//!   was seen to stall the whole job (not understood yet).
//!
//! # How the MPI pool differs from the local pool
//!
//! * Arguments and results that hold descriptors ([`Connection`](crate::Connection),
//!   [`Queue`](crate::Queue)) cannot cross hosts: an initializer with such arguments is refused
//!   with `Unsupported`; do not pass them to tasks of an MPI pool.
//! * [`Pool::pids`](crate::Pool::pids) gives each worker's pid *on its own host*.
//! * [`Pool::mpi_ranks`](crate::Pool::mpi_ranks) lists the ranks and their worker counts;
//!   [`Pool::processes`](crate::Pool::processes) is their sum.
//! * Latency and idle CPU: MPI gives no descriptor to wait on, so the MPI thread and the
//!   agents poll it. For 2 ms after their last work they spin (yielding the processor every
//!   round), then poll their own sockets with a timeout that grows to 1 ms, and after
//!   250 ms without work to 5 ms; heartbeats do not count as work. Back-to-back calls and
//!   busy streams therefore keep about the local pool's latency (the apply round trip over
//!   shared memory is in BENCHMARKS.md, beside the local pool's), the first message after a
//!   pause can wait up to about 5 ms, and an idle pool wakes each rank about 200 times a
//!   second (the idle CPU row in BENCHMARKS.md).
//! * Speed: a relayed channel crosses MPI in messages of up to 64 KiB, one per socket read,
//!   into buffers that are reused. Open MPI's shared-memory transport sends only messages
//!   of up to 4 KiB in one copy by default: before `MPI_Init`, every rank sets
//!   `OMPI_MCA_btl_vader_eager_limit` and `OMPI_MCA_btl_vader_max_send_size` to 65536 in its
//!   environment, unless you set either of them (in the environment or with `mpirun --mca`).
//! * No progress bar (`PoolBuilder::progress`, feature `progress`) is drawn under `mpirun`,
//!   even from a terminal: rank 0's standard error is a pipe to the launcher, and the bar
//!   draws only on a terminal (checked by hand, 2026-12-01).
//! * Under `--enable-recovery`, Open MPI 4.1 prints `PMIX ERROR: BAD-PARAM in file
//!   ../src/event/pmix_event_notification.c at line 1033` once per job, also when nothing
//!   failed; it is the launcher's own message and harmless here.
//! * Outside an MPI job (no launcher variables, or a job of one rank) `.mpi()` builds an
//!   ordinary local pool, so the same program runs on a laptop unchanged.
//! * The entry key crosses the interconnect in clear (as every MPI message does): run jobs on
//!   a trusted network, as MPI itself requires.
//! * Join or drop the pool before `main` returns: rank 0 finalizes MPI at exit, and that ends
//!   the agents.
//!
//! # Which MPI
//!
//! Tested with Debian's Open MPI 4.1 (what CI installs) and by hand with MPICH 5.0.2 (the
//! `mpich` wheel from PyPI, built against with its `mpicc` first in `PATH` and its `lib` in
//! `LD_LIBRARY_PATH`): the same behaviour, including a frozen rank declared lost and its
//! tasks re-run, except for a dead rank (see the table above). Build against the library whose launcher
//! you use: a binary built against Open MPI and started by MPICH's `mpiexec` sees a job of
//! one rank on every rank.
//!
//! Under Slurm, launch with `srun --mpi=pmix -n 3 ./app` (`--overcommit` for more tasks than
//! allocated CPUs). Slurm's PMIx plugin gives each task `PMIX_RANK`, the job's size comes
//! from `SLURM_STEP_NUM_TASKS`, and an agent's default share of its host's cores from the
//! tasks Slurm placed there (`SLURM_GTIDS`). Slurm also offers `--mpi=pmi2`, but Debian's
//! Open MPI has no PMI-2 client: every task fails in `MPI_Init` and the step ends. Tested
//! with Debian's Slurm 22.05 on a single-node cluster that `tests/slurm.rs` starts itself.

mod agent;
mod hub;
mod wire;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;
use crate::wait::lock;

pub(crate) use wire::SpawnSpec;

/// The rank of this process in the MPI job it was launched in, read from the launcher's
/// environment (`OMPI_COMM_WORLD_RANK`, `PMI_RANK`, `PMIX_RANK`); `None` outside a job.
///
/// Only rank 0 (or a program not launched by `mpirun`) ever runs `main`: every other rank is
/// a node agent from before `main`.
pub fn rank() -> Option<u32> {
    agent::rank_from_env()
}

/// The number of ranks of the MPI job this process was launched in (`None` outside a job).
pub fn size() -> Option<u32> {
    agent::size_from_env()
}

/// Why no remote worker can start once the MPI thread was found stuck.
const STALLED: &str = "the MPI thread got stuck inside MPI (a rank stopped answering during a \
    send); no worker can be started on another rank any more";

/// How long starting one remote worker may take.
pub(crate) const START_WAIT: Duration = Duration::from_secs(60);

/// Default for [`PoolBuilder::mpi_rank_timeout`](crate::PoolBuilder::mpi_rank_timeout).
pub(crate) const RANK_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent ranks one MPI pool places its workers on.
#[derive(Debug)]
pub(crate) struct Cluster {
    hub: &'static hub::Hub,
    /// (rank, workers) for every agent rank.
    slots: Vec<(i32, usize)>,
    /// This pool's workers, to place replacements where workers are missing.
    placed: Mutex<Vec<Arc<hub::RemoteState>>>,
}

impl Cluster {
    /// Joins the MPI job (on first use: starts the MPI thread, checks every rank's build-id,
    /// shares the entry key). `per_rank`: workers per agent rank (0: each agent's default).
    /// `None` when this process is not rank 0 of a job with at least two ranks.
    pub(crate) fn connect(per_rank: usize, rank_timeout: Duration) -> Result<Option<Cluster>> {
        // A launcher that names the rank but not the size (PMIx) still gets MPI's answer.
        if (rank().is_none() && size().unwrap_or(1) < 2) || size() == Some(1) {
            return Ok(None);
        }
        let hub = hub::hub(rank_timeout)?;
        let ranks = hub
            .ranks
            .as_ref()
            .map_err(|(k, m)| Error::msg(*k, m.clone()))?;
        if ranks.is_empty() {
            // A job of one rank: an ordinary local pool.
            return Ok(None);
        }
        if hub.stalled.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::msg(ErrorKind::WorkerLost, STALLED));
        }
        let slots = ranks
            .iter()
            .filter(|r| !hub.is_lost(r.rank))
            .map(|r| {
                (
                    r.rank,
                    if per_rank == 0 {
                        r.default_workers as usize
                    } else {
                        per_rank
                    },
                )
            })
            .collect::<Vec<_>>();
        if slots.is_empty() {
            return Err(Error::msg(
                ErrorKind::WorkerLost,
                "every agent rank of the MPI job is lost",
            ));
        }
        Ok(Some(Cluster {
            hub,
            slots,
            placed: Mutex::new(Vec::new()),
        }))
    }

    /// Workers over all ranks.
    pub(crate) fn total(&self) -> usize {
        self.slots.iter().map(|s| s.1).sum()
    }

    /// The ranks that are not lost and how many of this pool's workers run on each now (a
    /// lost rank's share moves to the others); before any worker started, the planned counts.
    pub(crate) fn ranks(&self) -> Vec<(u32, usize)> {
        let placed = lock(&self.placed);
        let live: Vec<i32> = placed
            .iter()
            .filter(|s| s.exit().is_none())
            .map(|s| s.rank)
            .collect();
        self.slots
            .iter()
            .filter(|(r, _)| !self.hub.is_lost(*r))
            .map(|(r, n)| {
                let now = live.iter().filter(|x| *x == r).count();
                (*r as u32, if placed.is_empty() { *n } else { now })
            })
            .filter(|(_, n)| *n > 0 || placed.is_empty())
            .collect()
    }

    /// Starts worker `id` on the rank that misses the most workers (a lost rank's share goes
    /// to the others); `fd` is the worker's end of its channel. Waits until it has started.
    pub(crate) fn spawn(&self, id: u64, spec: SpawnSpec, fd: RegisteredFd) -> Result<Remote> {
        if self.hub.stalled.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::msg(ErrorKind::WorkerLost, STALLED));
        }
        // Choose and record under one lock: starters run at the same time, and each must
        // see the others' choices.
        let state = {
            let mut placed = lock(&self.placed);
            placed.retain(|s| s.exit().is_none());
            let live = |r: i32| placed.iter().filter(|s| s.rank == r).count() as i64;
            let rank = self
                .slots
                .iter()
                .filter(|(r, _)| !self.hub.is_lost(*r))
                .max_by_key(|(r, n)| (*n as i64 - live(*r), -(*r as i64)))
                .map(|(r, _)| *r);
            let Some(rank) = rank else {
                return Err(Error::msg(
                    ErrorKind::WorkerLost,
                    "every agent rank of the MPI job is lost; no worker can be started",
                ));
            };
            let state = hub::RemoteState::new(rank)?;
            placed.push(state.clone());
            state
        };
        let rank = state.rank;
        // The hub and the agents know a worker by an id unique in this process: every pool
        // numbers its own workers from 1, and two MPI pools may run at once.
        let _ = id;
        let id = self.hub.next_worker_id();
        self.hub.spawn(id, rank, spec, fd, state.clone());
        state.wait_started(Instant::now() + START_WAIT)?;
        Ok(Remote {
            id,
            hub: self.hub,
            state,
        })
    }
}

/// The pool's handle on a worker that runs on another rank.
#[derive(Debug)]
pub(crate) struct Remote {
    id: u64,
    hub: &'static hub::Hub,
    state: Arc<hub::RemoteState>,
}

impl Remote {
    /// SIGKILLs the worker (through its agent).
    pub(crate) fn kill(&self) {
        self.hub.kill(self.id);
    }

    /// Its pid on its host.
    pub(crate) fn pid(&self) -> u32 {
        self.state.pid.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The descriptor that becomes readable when it is gone, and whether it is.
    pub(crate) fn wait_handle(&self) -> (BorrowedFd<'_>, bool) {
        (self.state.dead_rx.as_fd(), self.state.exit().is_some())
    }

    /// Whether it was lost with its rank (rank 0 declared the rank lost).
    pub(crate) fn host_lost(&self) -> bool {
        self.state.exit().is_some()
            && (self.hub.is_lost(self.state.rank)
                || self.hub.stalled.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Its Python-style exit code once gone (`None`: unknown, e.g. its rank was lost).
    pub(crate) fn exit_code(&self) -> Option<i32> {
        self.state.exit().flatten()
    }
}
