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
//! | `BulkShm` | a fresh `SharedVec` of `bulk_bytes` (one copy) sent to a child, child reads and acks (`shm_peer.rs`) | GB/s |
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

use std::time::Instant;

use multiproc::{Connection, Pipe, Pool, Process, Queue, StartMethod};

use crate::config::Config;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::Metric;
use crate::work::{double, heavy};

/// multiproc's jobs.
pub fn jobs(cfg: &Config) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    let default = multiproc::get_start_method();
    for (m, metric) in [
        (StartMethod::Fork, Metric::SpawnFork),
        (StartMethod::Spawn, Metric::SpawnSpawn),
        (StartMethod::ForkServer, Metric::SpawnForkserver),
    ] {
        let c = cfg.clone();
        let rows: Vec<Metric> = if m == default {
            vec![metric, Metric::SpawnDefault]
        } else {
            vec![metric]
        };
        jobs.push(Job::same_for(Who::Multiproc, &rows, move || {
            spawn_join(&c, m)
        }));
    }
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::SpawnResult, move || {
        spawn_join_result(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::PipeRtt, move || {
        round_trip(&c, false)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::SocketRtt, move || {
        round_trip(&c, true)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::BulkPipe, move || {
        bulk(&c, false)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::BulkSocket, move || {
        bulk(&c, true)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::BulkShm, move || {
        crate::shm_peer::bulk_shared_vec(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::Queue11, move || {
        queue_throughput(&c, 1)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::Queue22, move || {
        queue_throughput(&c, 2)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::QueueLatency, move || {
        queue_latency(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::PoolCreate, move || {
        pool_create(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::PoolChunk1, move || {
        pool_chunk1(&c, false)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(
        Who::Multiproc,
        Metric::PoolImapChunk1,
        move || pool_chunk1(&c, true),
    ));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::PoolMapAuto, move || {
        pool_map_auto(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::ApplyAsyncRtt, move || {
        apply_async_rtt(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::one(Who::Multiproc, Metric::CpuScaling, move || {
        cpu_scaling(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::many(
        Who::Multiproc,
        Metric::ImapRssParent.group(),
        "imap-rss",
        move || imap_rss(&c),
    ));
    jobs
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Spawn + join of a trivial function, each timed on its own (ms).
fn spawn_join(cfg: &Config, m: StartMethod) -> BenchResult<Obs> {
    // Warm-up (starts the fork server once, outside the timed samples).
    Process::builder()
        .start_method(m)
        .spawn((), |()| ())?
        .join()?;
    let reps = if m == StartMethod::Spawn {
        cfg.spawn_reps.min(20)
    } else {
        cfg.spawn_reps * 5
    };
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let p = Process::builder().start_method(m).spawn((), |()| ())?;
        p.join()?;
        v.push(ms(t));
    }
    Ok(Obs::Raw(v))
}

/// Spawn + join with the default method, returning a u64 (ms).
fn spawn_join_result(cfg: &Config) -> BenchResult<Obs> {
    let mut v = Vec::with_capacity(cfg.spawn_reps * 5);
    for i in 0..cfg.spawn_reps as u64 * 5 {
        let t = Instant::now();
        let p = Process::spawn(i, |x: u64| x * 2)?;
        if p.join()? != i * 2 {
            return Err("spawn-result: wrong value".into());
        }
        v.push(ms(t));
    }
    Ok(Obs::Raw(v))
}

fn echo(c: Connection<u64>) {
    while let Ok(x) = c.recv() {
        if c.send(&x).is_err() {
            break;
        }
    }
}

fn echo_split((rx, tx): (Connection<u64>, Connection<u64>)) {
    while let Ok(x) = rx.recv() {
        if tx.send(&x).is_err() {
            break;
        }
    }
}

/// u64 ping-pong with a child: one duplex connection, or two one-way pipes (µs per trip).
fn round_trip(cfg: &Config, duplex: bool) -> BenchResult<Obs> {
    let (send, recv, child) = if duplex {
        let (a, b) = Pipe::new::<u64>()?;
        let p = Process::spawn(b, echo)?;
        let a = std::sync::Arc::new(a);
        (a.clone(), a, p)
    } else {
        let (down_r, down_w) = Pipe::simplex::<u64>()?;
        let (up_r, up_w) = Pipe::simplex::<u64>()?;
        let p = Process::spawn((down_r, up_w), echo_split)?;
        (std::sync::Arc::new(down_w), std::sync::Arc::new(up_r), p)
    };
    let n = 200 + cfg.rtt_msgs * cfg.batches;
    let mut v = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        send.send(&i)?;
        if recv.recv()? != i {
            return Err("round trip: wrong value".into());
        }
        if i >= 200 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(send);
    drop(recv);
    child.join()?;
    Ok(Obs::Raw(v))
}

fn bulk_child((go, data, size): (Connection<()>, Connection<()>, usize)) {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    while go.recv_bytes().is_ok() {
        if data.send_bytes(&src).is_err() {
            break;
        }
    }
}

/// `bulk_bytes` from a child into a preallocated buffer, as the raw floor does (GB/s).
fn bulk(cfg: &Config, duplex: bool) -> BenchResult<Obs> {
    let size = cfg.bulk_bytes;
    let (go_r, go_w) = Pipe::simplex::<()>()?;
    let (data_here, data_there) = if duplex {
        Pipe::new::<()>()?
    } else {
        Pipe::simplex::<()>()?
    };
    let child = Process::spawn((go_r, data_there, size), bulk_child)?;
    let mut dst = vec![1u8; size];
    let mut v = Vec::with_capacity(cfg.batches);
    for b in 0..=cfg.batches {
        let t = Instant::now();
        go_w.send_bytes(&[1])?;
        let n = data_here.recv_bytes_into(&mut dst)?;
        if b > 0 {
            v.push(n as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    drop(go_w);
    child.join()?;
    if dst[size - 1] != (size - 1) as u8 {
        return Err("bulk: wrong data".into());
    }
    Ok(Obs::Raw(v))
}

/// `Pool::new(2)` + one task + close + join (ms).
fn pool_create(cfg: &Config) -> BenchResult<Obs> {
    let mut v = Vec::new();
    for _ in 0..cfg.spawn_reps {
        let t = Instant::now();
        let pool = Pool::new(2)?;
        if pool.apply(double, 21)? != 42 {
            return Err("pool: wrong value".into());
        }
        pool.close();
        pool.join()?;
        v.push(ms(t));
    }
    Ok(Obs::Raw(v))
}

/// One task per message: `map_chunked(double, .., 1)` or `imap_unordered` with chunksize 1
/// (tasks/s, one sample per run).
fn pool_chunk1(cfg: &Config, imap: bool) -> BenchResult<Obs> {
    let pool = Pool::new(2)?;
    pool.map_chunked(double, 0..1000u64, 1)?; // warm-up
    let n = cfg.map_items as u64;
    let mut v = Vec::new();
    for _ in 0..cfg.batches.min(3) {
        let t = Instant::now();
        let sum: u64 = if imap {
            pool.imap_unordered(double, 0..n)
                .chunksize(1)
                .map(|r| r.unwrap_or(0))
                .sum()
        } else {
            pool.map_chunked(double, 0..n, 1)?.iter().sum()
        };
        v.push(n as f64 / t.elapsed().as_secs_f64());
        if sum != n * (n - 1) {
            return Err("pool chunk1: wrong sum".into());
        }
    }
    Ok(Obs::Raw(v))
}

/// `map` with the automatic chunk size (tasks/s).
fn pool_map_auto(cfg: &Config) -> BenchResult<Obs> {
    let pool = Pool::new(2)?;
    pool.map(double, 0..1000u64)?;
    let n = cfg.map_items as u64;
    let mut v = Vec::new();
    for _ in 0..cfg.batches {
        let t = Instant::now();
        let r = pool.map(double, 0..n)?;
        v.push(n as f64 / t.elapsed().as_secs_f64());
        if r.len() != n as usize || r[r.len() - 1] != 2 * (n - 1) {
            return Err("pool map: wrong result".into());
        }
    }
    Ok(Obs::Raw(v))
}

/// `apply_async(double, i).get()` on a warm pool (µs each).
fn apply_async_rtt(cfg: &Config) -> BenchResult<Obs> {
    let pool = Pool::new(2)?;
    for _ in 0..200 {
        pool.apply_async(double, 1).get()?;
    }
    let mut v = Vec::with_capacity(cfg.apply_reps);
    for i in 0..cfg.apply_reps as u64 {
        let t = Instant::now();
        let r = pool.apply_async(double, i).get()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
        if r != 2 * i {
            return Err("apply_async: wrong value".into());
        }
    }
    Ok(Obs::Raw(v))
}

fn heavy_item((iters, seed): (u64, u64)) -> u64 {
    heavy(iters, seed)
}

/// Serial vs `Pool(2).map` (one item per task) over the heavy items, interleaved (speedup).
fn cpu_scaling(cfg: &Config) -> BenchResult<Obs> {
    let pool = Pool::new(2)?;
    let items: Vec<(u64, u64)> = (0..cfg.cpu_items as u64)
        .map(|s| (cfg.cpu_iters, s))
        .collect();
    pool.map(heavy_item, vec![(10u64, 1u64); 4])?;
    let (mut serial, mut parallel) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let t = Instant::now();
        let a: Vec<u64> = items.iter().map(|&x| heavy_item(x)).collect();
        serial.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let b = pool.map_chunked(heavy_item, items.clone(), 1)?;
        parallel.push(t.elapsed().as_secs_f64());
        if a != b {
            return Err("cpu scaling: results differ".into());
        }
    }
    Ok(crate::harness::speedup(&serial, &parallel))
}

/// Peak RSS of the parent and of the workers during a long `imap` (MiB).
fn imap_rss(cfg: &Config) -> BenchResult<Vec<(Metric, Obs)>> {
    let pool = Pool::new(2)?;
    let n = cfg.imap_items as u64;
    let sampler =
        crate::rss::PeakSampler::start(std::process::id(), std::time::Duration::from_millis(5));
    let mut count = 0u64;
    for r in pool.imap(double, 0..n).chunksize(cfg.imap_chunksize) {
        r?;
        count += 1;
    }
    let peak = sampler.stop();
    drop(pool);
    if count != n {
        return Err("imap: wrong count".into());
    }
    Ok(vec![
        (Metric::ImapRssParent, Obs::Raw(vec![peak.parent_mib()])),
        (Metric::ImapRssWorkers, Obs::Raw(vec![peak.workers_mib()])),
    ])
}

/// CLOCK_MONOTONIC in seconds: comparable across processes (unlike `Instant`'s values).
fn mono() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

const STOP: u64 = u64::MAX;

/// Producer: waits for "go", puts `n` items then one STOP; returns when it started.
fn q_producer((q, go, n): (Queue<u64>, Connection<()>, u64)) -> f64 {
    let _ = go.recv_bytes();
    let t0 = mono();
    for i in 0..n {
        q.put(i).unwrap();
    }
    q.put(STOP).unwrap();
    t0
}

/// Consumer: gets until one STOP; returns (when it finished, items seen).
fn q_consumer(q: Queue<u64>) -> (f64, u64) {
    let mut seen = 0;
    while q.get().unwrap() != STOP {
        seen += 1;
    }
    (mono(), seen)
}

/// `k` producer processes → `k` consumer processes through one queue (msgs/s).
fn queue_throughput(cfg: &Config, k: usize) -> BenchResult<Obs> {
    let n = cfg.queue_msgs as u64;
    let q: Queue<u64> = Queue::new()?;
    let consumers: Vec<_> = (0..k)
        .map(|_| Process::spawn(q.clone(), q_consumer))
        .collect::<Result<_, _>>()?;
    let mut gos = Vec::new();
    let mut producers = Vec::new();
    for _ in 0..k {
        let (go_r, go_w) = Pipe::simplex::<()>()?;
        gos.push(go_w);
        producers.push(Process::spawn((q.clone(), go_r, n / k as u64), q_producer)?);
    }
    std::thread::sleep(std::time::Duration::from_millis(20)); // everyone started
    for g in &gos {
        g.send_bytes(&[1])?;
    }
    let t0 = producers
        .iter()
        .map(|p| p.join())
        .collect::<Result<Vec<f64>, _>>()?;
    let ends = consumers
        .iter()
        .map(|c| c.join())
        .collect::<Result<Vec<(f64, u64)>, _>>()?;
    let total: u64 = ends.iter().map(|e| e.1).sum();
    if total != (n / k as u64) * k as u64 {
        return Err(format!("queue: {total} items arrived of {n}").into());
    }
    let start = t0.iter().cloned().fold(f64::INFINITY, f64::min);
    let end = ends.iter().map(|e| e.0).fold(0.0, f64::max);
    Ok(Obs::Raw(vec![total as f64 / (end - start)]))
}

fn q_echo_latency((q, ack, n): (Queue<f64>, Queue<f64>, usize)) -> Vec<f64> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = q.get().unwrap();
        lat.push((mono() - sent) * 1e6);
        ack.put(0.0).unwrap();
    }
    lat
}

/// Paced one-way latency: the producer puts its send time, the consumer records the delay
/// and acknowledges through a second queue before the next item (µs each).
fn queue_latency(cfg: &Config) -> BenchResult<Obs> {
    let q: Queue<f64> = Queue::new()?;
    let ack: Queue<f64> = Queue::new()?;
    let n = cfg.latency_msgs;
    let consumer = Process::spawn((q.clone(), ack.clone(), n), q_echo_latency)?;
    for _ in 0..n {
        q.put(mono()).map_err(multiproc::Error::from)?;
        ack.get()?;
    }
    let mut lat = consumer.join()?;
    lat.drain(..lat.len().min(100)); // warm-up
    Ok(Obs::Raw(lat))
}
