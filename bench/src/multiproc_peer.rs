//! multiproc's own measurements. Every row shows "not built" until a job
//! for it is registered here.
//!
//! To add one: write a function that measures ONE round and returns an
//! [`Obs`], and push a [`Job`] for it in [`jobs`]:
//!
//! ```text
//! fn pipe_round_trip(cfg: &Config) -> BenchResult<Obs> {
//!     let (a, b) = multiproc::pipe::<u64>()?;
//!     let child = multiproc::Process::new(move || { while let Ok(x) = b.recv() { b.send(x)?; } })
//!         .start()?;
//!     let mut v = Vec::new();
//!     for i in 0..(200 + cfg.rtt_msgs * cfg.batches) as u64 {
//!         let t0 = std::time::Instant::now();
//!         a.send(i)?;
//!         a.recv()?;
//!         if i >= 200 { v.push(t0.elapsed().as_secs_f64() * 1e6); } // µs, the row's unit
//!     }
//!     drop(a);
//!     child.join()?;
//!     Ok(Obs::Raw(v))
//! }
//!
//! // in jobs():
//! let c = cfg.clone();
//! jobs.push(Job::one(Who::Multiproc, Metric::PipeRtt, move || pipe_round_trip(&c)));
//! ```
//!
//! Rules, so the numbers are comparable with the peers of the row:
//! - Use the row's unit (see `Metric::spec`) and the sizes in [`Config`]
//!   (`rtt_msgs`, `bulk_bytes`, `map_items`, ...), and the workloads in
//!   `crate::work` (`double`, `heavy(cfg.cpu_iters, seed)`).
//! - Time each round trip / spawn on its own (Raw samples, as the peers do);
//!   time throughput per batch (one Raw sample per batch, after a warm-up).
//! - Build pools and children outside the timed region unless the row is
//!   about creating them; tear them down before returning.
//! - `Job::same_for(who, &[m1, m2], f)` feeds one measurement to several
//!   rows (e.g. the default start method also feeds `SpawnDefault`);
//!   `Job::many(who, group, label, f)` returns several rows at once.
//! - The CPU row wants `harness::speedup(&serial_secs, &parallel_secs)`.
//! - The imap RSS rows: wrap the imap in `rss::PeakSampler::start(std::process::id(), ..)`
//!   and report `peak.parent_mib()` / `peak.workers_mib()` as `Obs::Raw(vec![x])`.

use crate::config::Config;
#[allow(unused_imports)] // used as soon as the first job is registered
use crate::harness::{BenchResult, Job, Obs, Who};
#[allow(unused_imports)]
use crate::metrics::Metric;

/// multiproc's jobs; none yet (the library API does not exist yet).
pub fn jobs(cfg: &Config) -> Vec<Job> {
    let jobs: Vec<Job> = Vec::new();
    let _ = cfg;
    jobs
}
