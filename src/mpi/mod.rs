//! The scale-out backend: one [`Pool`](crate::Pool) whose workers span every rank of an MPI
//! job (feature `mpi`).
//!
//! Placeholder docs: see the section below.

mod agent;
mod hub;
mod wire;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;
use crate::wait::lock;

pub(crate) use agent::boot_rank;
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
        if size().unwrap_or(1) < 2 {
            return Ok(None);
        }
        let hub = hub::hub(rank_timeout)?;
        let ranks = hub
            .ranks
            .as_ref()
            .map_err(|(k, m)| Error::msg(*k, m.clone()))?;
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

    /// The ranks and their worker counts.
    pub(crate) fn ranks(&self) -> Vec<(u32, usize)> {
        self.slots.iter().map(|(r, n)| (*r as u32, *n)).collect()
    }

    /// Starts worker `id` on the rank that misses the most workers (a lost rank's share goes
    /// to the others); `fd` is the worker's end of its channel. Waits until it has started.
    pub(crate) fn spawn(&self, id: u64, spec: SpawnSpec, fd: RegisteredFd) -> Result<Remote> {
        let rank = {
            let mut placed = lock(&self.placed);
            placed.retain(|s| s.exit().is_none());
            let live = |r: i32| placed.iter().filter(|s| s.rank == r).count() as i64;
            self.slots
                .iter()
                .filter(|(r, _)| !self.hub.is_lost(*r))
                .max_by_key(|(r, n)| (*n as i64 - live(*r), -(*r as i64)))
                .map(|(r, _)| *r)
        };
        let Some(rank) = rank else {
            return Err(Error::msg(
                ErrorKind::WorkerLost,
                "every agent rank of the MPI job is lost; no worker can be started",
            ));
        };
        let state = hub::RemoteState::new(rank)?;
        lock(&self.placed).push(state.clone());
        self.hub.spawn(id, rank, spec, fd, state.clone());
        state.wait_started(Instant::now() + Duration::from_secs(60))?;
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

    /// Its Python-style exit code once gone (`None`: unknown, e.g. its rank was lost).
    pub(crate) fn exit_code(&self) -> Option<i32> {
        self.state.exit().flatten()
    }
}
