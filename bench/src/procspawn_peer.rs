//! procspawn 1.x, the Rust peer: re-exec of this binary per process (its
//! only start method), and its `Pool` (one IPC channel pair per task).
//!
//! procspawn needs `procspawn::init()` at the very top of `main`; the bench's
//! `main` does that first. That is procspawn's requirement, not multiproc's.

use std::collections::VecDeque;
use std::time::Instant;

use crate::config::Config;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::{Group, Metric};
use crate::work::double;

/// Tasks in flight at once on the pool: procspawn opens 4 fds per queued
/// task at submit time, so an unbounded submit dies with EMFILE.
const WINDOW: usize = 64;

pub fn jobs(cfg: &Config) -> Vec<Job> {
    let c = cfg.clone();
    let c2 = cfg.clone();
    vec![
        Job::same_for(
            Who::Procspawn,
            &[Metric::SpawnDefault, Metric::SpawnSpawn],
            move || spawn_join(&c),
        ),
        Job::many(Who::Procspawn, Group::Pool, "pool", move || pool(&c2)),
    ]
}

fn trivial(x: u64) -> u64 {
    x + 1
}

/// `procspawn::spawn(x, f).join()` of a trivial function; ms.
fn spawn_join(cfg: &Config) -> BenchResult<Obs> {
    let mut v = Vec::new();
    for i in 0..=cfg.spawn_reps {
        let t0 = Instant::now();
        let r = procspawn::spawn(i as u64, trivial).join()?;
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        if r != i as u64 + 1 {
            return Err("procspawn: wrong result".into());
        }
        if i > 0 {
            v.push(dt);
        }
    }
    Ok(Obs::Raw(v))
}

/// procspawn `Pool(2)`: one task per message (tasks/s per batch, at most
/// `WINDOW` in flight) and the single-task round trip (µs each).
fn pool(cfg: &Config) -> BenchResult<Vec<(Metric, Obs)>> {
    let pool = procspawn::Pool::new(2)?;
    for h in [pool.spawn(1, double), pool.spawn(2, double)] {
        h.join()?;
    }
    let n = cfg.procspawn_tasks;
    let mut rates = Vec::new();
    for _ in 0..cfg.batches {
        let t0 = Instant::now();
        let mut inflight = VecDeque::with_capacity(WINDOW);
        let mut sum = 0u64;
        for i in 0..n as u64 {
            if inflight.len() == WINDOW {
                let h: procspawn::JoinHandle<u64> = inflight.pop_front().expect("non-empty");
                sum += h.join()?;
            }
            inflight.push_back(pool.spawn(i, double));
        }
        for h in inflight {
            sum += h.join()?;
        }
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
        if sum != (n as u64) * (n as u64 - 1) {
            return Err("procspawn pool: wrong sum".into());
        }
    }
    let mut rtt = Vec::new();
    for i in 0..cfg.apply_reps {
        let t0 = Instant::now();
        let r = pool.spawn(1, double).join()?;
        if i >= 20 {
            rtt.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        debug_assert_eq!(r, 2);
    }
    pool.shutdown();
    Ok(vec![
        (Metric::PoolChunk1, Obs::Raw(rates)),
        (Metric::ApplyAsyncRtt, Obs::Raw(rtt)),
    ])
}
