//! rayon: the thread-pool reference where threads are the natural peer
//! (CPU-bound scaling, map over trivial items).

use rayon::prelude::*;

use crate::config::Config;
use crate::harness::{speedup, time, BenchResult, Job, Obs, Who};
use crate::metrics::Metric;
use crate::work::{double, heavy};

/// Worker threads: the same 2 workers as every other pool in the table.
pub const WORKERS: usize = 2;

pub fn jobs(cfg: &Config) -> Vec<Job> {
    let c = cfg.clone();
    let c2 = cfg.clone();
    vec![
        Job::one(Who::Rayon, Metric::CpuScaling, move || cpu_scaling(&c)),
        Job::one(Who::Rayon, Metric::PoolMapAuto, move || map_trivial(&c2)),
    ]
}

fn pool() -> BenchResult<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()?)
}

/// Serial vs `par_iter().map` over the heavy items, interleaved pairs.
fn cpu_scaling(cfg: &Config) -> BenchResult<Obs> {
    let pool = pool()?;
    let items: Vec<u64> = (0..cfg.cpu_items as u64).collect();
    let iters = cfg.cpu_iters;
    let expect: Vec<u64> = items.iter().map(|&s| heavy(iters, s)).collect();
    pool.install(|| items.par_iter().map(|&s| heavy(10, s)).sum::<u64>());
    let (mut serial, mut parallel) = (Vec::new(), Vec::new());
    for _ in 0..cfg.cpu_reps {
        let (dt, r) = time(|| items.iter().map(|&s| heavy(iters, s)).collect::<Vec<_>>());
        assert_eq!(r, expect);
        serial.push(dt);
        let (dt, r) = time(|| {
            pool.install(|| {
                items
                    .par_iter()
                    .map(|&s| heavy(iters, s))
                    .collect::<Vec<_>>()
            })
        });
        assert_eq!(r, expect);
        parallel.push(dt);
    }
    Ok(speedup(&serial, &parallel))
}

/// `par_iter().map(double)` over `map_items` trivial items; tasks/s.
fn map_trivial(cfg: &Config) -> BenchResult<Obs> {
    let pool = pool()?;
    let n = cfg.map_items as u64;
    let run = || pool.install(|| (0..n).into_par_iter().map(double).collect::<Vec<u64>>());
    run();
    let mut v = Vec::new();
    for _ in 0..cfg.batches {
        let (dt, r) = time(run);
        assert_eq!(r.len() as u64, n);
        v.push(n as f64 / dt);
    }
    Ok(Obs::Raw(v))
}
