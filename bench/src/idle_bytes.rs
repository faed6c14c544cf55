//! Two cost rows of issue 8: CPU burnt by pool workers whose tasks wait (8.8), and byte
//! buffers through a pool or a process (8.9). Python's sides are `extra.py idle` and
//! `extra.py bytes`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use multiproc::{Pool, Process};
use serde_bytes::ByteBuf;

use crate::config::Config;
use crate::cputime;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::{Group, Metric};

/// The idle rows' task: sleeps, then says which worker ran it.
fn sleep_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// CPU seconds the `n` workers of a fresh pool use while each runs one task that sleeps
/// `cfg.idle_secs` (the pool is built and warm before, and joined after, the measured
/// interval; the workers' CPU clocks are read at both ends).
fn idle(cfg: &Config, n: usize) -> BenchResult<Obs> {
    let pool = Pool::new(n)?;
    let pids = pool.pids();
    let ms = (cfg.idle_secs * 1e3) as u64;
    let before = cputime::sum(&pids)?;
    let ran = pool.map_chunked(sleep_then_pid, vec![ms; n], 1)?;
    let used = cputime::sum(&pids)? - before;
    pool.close();
    pool.join()?;
    let distinct: BTreeSet<u32> = ran.into_iter().collect();
    if distinct.len() != n {
        return Err(format!(
            "{n} sleeping tasks ran on {} workers, not {n}",
            distinct.len()
        )
        .into());
    }
    Ok(Obs::Raw(vec![used]))
}

fn make_vec(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

fn make_buf(n: usize) -> ByteBuf {
    ByteBuf::from(vec![7u8; n])
}

fn len_vec(v: Vec<u8>) -> usize {
    v.len()
}

fn len_buf(v: ByteBuf) -> usize {
    v.len()
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// `bytes_reps` timed transfers of `bytes_mb` MB each way through `Pool(1).apply`, as
/// `Vec<u8>` and as `ByteBuf`, and as a `Process` result; the buffers are made in the
/// worker (results) or before the timer (arguments).
fn bytes(cfg: &Config) -> BenchResult<Vec<(Metric, Obs)>> {
    let n = cfg.bytes_mb * 1_000_000;
    let reps = cfg.bytes_reps.max(1);
    let pool = Pool::new(1)?;
    pool.apply(make_vec, 16)?; // warm-up
    let mut rows: Vec<(Metric, Vec<f64>)> = [
        Metric::BytesVecResult,
        Metric::BytesBufResult,
        Metric::BytesVecArg,
        Metric::BytesBufArg,
        Metric::BytesVecProcess,
        Metric::BytesBufProcess,
    ]
    .into_iter()
    .map(|m| (m, Vec::new()))
    .collect();
    let wrong = |what: &str| format!("bytes: wrong {what}");
    for _ in 0..reps {
        let t = Instant::now();
        let v = pool.apply(make_vec, n)?;
        rows[0].1.push(ms_since(t));
        if v.len() != n || v[n - 1] != 7 {
            return Err(wrong("Vec<u8> result").into());
        }
        drop(v);

        let t = Instant::now();
        let b = pool.apply(make_buf, n)?;
        rows[1].1.push(ms_since(t));
        if b.len() != n || b[n - 1] != 7 {
            return Err(wrong("ByteBuf result").into());
        }
        drop(b);

        let v = make_vec(n);
        let t = Instant::now();
        let len = pool.apply(len_vec, v)?;
        rows[2].1.push(ms_since(t));
        if len != n {
            return Err(wrong("Vec<u8> argument").into());
        }

        let b = make_buf(n);
        let t = Instant::now();
        let len = pool.apply(len_buf, b)?;
        rows[3].1.push(ms_since(t));
        if len != n {
            return Err(wrong("ByteBuf argument").into());
        }

        let t = Instant::now();
        let v = Process::spawn(n, make_vec)?.join()?;
        rows[4].1.push(ms_since(t));
        if v.len() != n {
            return Err(wrong("Vec<u8> process result").into());
        }
        drop(v);

        let t = Instant::now();
        let b = Process::spawn(n, make_buf)?.join()?;
        rows[5].1.push(ms_since(t));
        if b.len() != n {
            return Err(wrong("ByteBuf process result").into());
        }
    }
    pool.close();
    pool.join()?;
    Ok(rows.into_iter().map(|(m, v)| (m, Obs::Raw(v))).collect())
}

/// multiproc's jobs for the idle and bytes rows.
pub fn jobs(cfg: &Config) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (metric, n) in [
        (Metric::IdleSmall, cfg.idle_workers[0]),
        (Metric::IdleLarge, cfg.idle_workers[1]),
    ] {
        let c = cfg.clone();
        jobs.push(Job::one(Who::Multiproc, metric, move || idle(&c, n)));
    }
    let c = cfg.clone();
    jobs.push(Job::many(
        Who::Multiproc,
        Group::Bytes,
        "bytes",
        move || bytes(&c),
    ));
    jobs
}
