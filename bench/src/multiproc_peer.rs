//! multiproc's own measurements. Every row shows "not built" until a job
//! for it is registered here.
//!
//! To add one: write a function that measures ONE round and returns an
//! [`Obs`] in the row's unit, and push a [`Job`] for it in [`jobs`]. A
//! sketch with the names of `shared/API.md` (the API does not exist yet):
//!
//! ```text
//! fn pipe_round_trip(cfg: &Config) -> BenchResult<Obs> {
//!     let (a, b) = multiproc::Pipe::new()?;
//!     let child = multiproc::Process::spawn(b, |b: multiproc::Connection<u64>| {
//!         while let Ok(x) = b.recv() {
//!             b.send(&x).unwrap();
//!         }
//!     })?;
//!     let mut v = Vec::new();
//!     for i in 0..(200 + cfg.rtt_msgs * cfg.batches) as u64 {
//!         let t0 = std::time::Instant::now();
//!         a.send(&i)?;
//!         let _: u64 = a.recv()?;
//!         if i >= 200 {
//!             v.push(t0.elapsed().as_secs_f64() * 1e6); // µs, the row's unit
//!         }
//!     }
//!     drop(a); // the child sees EOF and returns
//!     child.join()?;
//!     Ok(Obs::Raw(v))
//! }
//!
//! // in jobs():
//! let c = cfg.clone();
//! jobs.push(Job::one(Who::Multiproc, Metric::PipeRtt, move || pipe_round_trip(&c)));
//! // one measurement feeding two rows (the default start method is fork):
//! let c = cfg.clone();
//! jobs.push(Job::same_for(
//!     Who::Multiproc,
//!     &[Metric::SpawnFork, Metric::SpawnDefault],
//!     move || spawn_join(&c, StartMethod::Fork),
//! ));
//! ```
//!
//! What each row expects of multiproc (unit; sizes from [`Config`]):
//!
//! | `Metric` | measure | unit, sample |
//! |---|---|---|
//! | `SpawnFork` / `SpawnSpawn` / `SpawnForkserver` | `Process::spawn` of a trivial fn + `join`, per start method; the default method also feeds `SpawnDefault` | ms, each spawn+join (`spawn_reps`) |
//! | `SpawnResult` | the same, returning a `u64` | ms, each |
//! | `PipeRtt` / `SocketRtt` | u64 ping-pong over `Pipe::simplex` pair / duplex `Pipe::new` | µs, each round trip (`rtt_msgs * batches`) |
//! | `BulkPipe` / `BulkSocket` | `send_bytes` of `bulk_bytes` to a child, child acks | GB/s (1e9), per transfer (`batches`) |
//! | `BulkShm` | the same through shared memory, one copy | GB/s |
//! | `Queue11` / `Queue22` | `queue_msgs` u64 from 1 (2) producer processes to 1 (2) consumers | msgs/s, per run |
//! | `QueueLatency` | one-way put→get, paced (next put after an ack) | µs, each message (`latency_msgs`) |
//! | `PoolCreate` | `Pool::new(2)` + one task + close + join | ms, each |
//! | `PoolChunk1` / `PoolImapChunk1` | `map_chunked(double, 0..map_items, 1)` / `imap_unordered` chunksize 1 | tasks/s, per run |
//! | `PoolMapAuto` | `pool.map(double, 0..map_items)` | tasks/s, per run |
//! | `ApplyAsyncRtt` | `apply_async(double, 1).get()` on a warm pool | µs, each (`apply_reps`) |
//! | `CpuScaling` | `cpu_items` × `heavy(cfg.cpu_iters, i)`: serial vs `Pool(2).map` | `harness::speedup` |
//! | `ImapRssParent` / `ImapRssWorkers` | `imap(double, 0..imap_items)` chunksize `imap_chunksize` under `rss::PeakSampler` | MiB, one value |
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
