//! The manager rows: one dict operation (alternately `insert` and `get` of a `u64`) through
//! a `multiproc::Manager` over its Unix socket and over TCP loopback, and the operations per
//! second of 8 concurrent clients; against Python's `SyncManager` (`bench/python/manager.py`)
//! and a raw-socket round-trip floor (8-byte echo, no framing or auth, server in a thread).
//! Both managers run their server in a child process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use multiproc::Manager;

use crate::config::Config;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::{Group, Metric};
use crate::python::Python;

const KEY: &[u8] = b"multiproc-bench manager authkey!";
const WARMUP: usize = 200;
/// Concurrent clients of the throughput row.
pub const CLIENTS: usize = 8;

fn ops(cfg: &Config) -> usize {
    if cfg.quick {
        1_000
    } else {
        cfg.rtt_msgs
    }
}

/// Per-op latencies (µs) of alternating `insert`/`get` on one dict.
fn dict_ops(m: &Manager, n: usize) -> BenchResult<Vec<f64>> {
    let d = m.dict::<String, u64>("bench")?;
    let key = "k".to_string();
    let mut v = Vec::with_capacity(n);
    for i in 0..(WARMUP + n) as u64 {
        let t0 = Instant::now();
        if i % 2 == 0 {
            d.insert(key.clone(), i)?;
        } else {
            std::hint::black_box(d.get(&key)?);
        }
        if i as usize >= WARMUP {
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(v)
}

/// Operations per second of `CLIENTS` threads, each with its own proxy (own connection).
fn concurrent(m: &Manager, n: usize) -> BenchResult<f64> {
    let per = (n / CLIENTS).max(100);
    let proxies = (0..CLIENTS)
        .map(|i| m.dict::<u64, u64>(&format!("c{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = proxies
            .iter()
            .map(|d| {
                s.spawn(move || -> multiproc::Result<()> {
                    for i in 0..per as u64 {
                        if i % 2 == 0 {
                            d.insert(1, i)?;
                        } else {
                            std::hint::black_box(d.get(&1)?);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| "client thread panicked")??;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
    .map_err(|e| e.to_string())?;
    Ok((per * CLIENTS) as f64 / t0.elapsed().as_secs_f64())
}

fn multiproc_rows(cfg: &Config) -> BenchResult<Vec<(Metric, Obs)>> {
    let n = ops(cfg);
    let local = Manager::start()?;
    let unix = dict_ops(&local, n)?;
    let rate = concurrent(&local, n * 2)?;
    local.shutdown()?;
    let net = Manager::serve(&"127.0.0.1:0".parse()?, KEY)?;
    let client = Manager::connect(net.address(), KEY)?;
    let tcp = dict_ops(&client, n)?;
    drop(client);
    net.shutdown()?;
    Ok(vec![
        (Metric::MgrUnixOp, Obs::Raw(unix)),
        (Metric::MgrTcpOp, Obs::Raw(tcp)),
        (Metric::MgrConcurrent, Obs::Raw(vec![rate])),
    ])
}

fn raw_rtt<S: Read + Write>(s: &mut S, n: usize) -> BenchResult<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    let mut b = [0u8; 8];
    for i in 0..(WARMUP + n) as u64 {
        let t0 = Instant::now();
        s.write_all(&i.to_le_bytes())?;
        s.read_exact(&mut b)?;
        if i as usize >= WARMUP {
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(v)
}

fn raw_echo<S: Read + Write>(mut s: S) {
    let mut b = [0u8; 8];
    while s.read_exact(&mut b).is_ok() {
        if s.write_all(&b).is_err() {
            break;
        }
    }
}

fn floor_rows(cfg: &Config) -> BenchResult<Vec<(Metric, Obs)>> {
    let n = ops(cfg);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = l.local_addr()?;
    let server = std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            let _ = s.set_nodelay(true);
            raw_echo(s);
        }
    });
    let mut s = TcpStream::connect(a)?;
    s.set_nodelay(true)?;
    let tcp = raw_rtt(&mut s, n)?;
    drop(s);
    server.join().map_err(|_| "server thread panicked")?;

    let (a, b) = UnixStream::pair()?;
    let server = std::thread::spawn(move || raw_echo(b));
    let mut a = a;
    let unix = raw_rtt(&mut a, n)?;
    drop(a);
    server.join().map_err(|_| "server thread panicked")?;
    Ok(vec![
        (Metric::MgrUnixOp, Obs::Raw(unix)),
        (Metric::MgrTcpOp, Obs::Raw(tcp)),
    ])
}

fn python_rows(cfg: &Config, py: &Python) -> BenchResult<Vec<(Metric, Obs)>> {
    let n = ops(cfg);
    let out = py.run(
        &py.script("manager.py"),
        &[n.to_string(), CLIENTS.to_string()],
    )?;
    let mut rows = Vec::new();
    for (key, m) in [
        ("unix_op_us:", Metric::MgrUnixOp),
        ("tcp_op_us:", Metric::MgrTcpOp),
        ("concurrent_ops_s:", Metric::MgrConcurrent),
    ] {
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .ok_or_else(|| format!("manager.py printed no {key} line"))?;
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|t| t.parse::<f64>())
            .collect::<Result<_, _>>()?;
        rows.push((m, Obs::Raw(v)));
    }
    Ok(rows)
}

/// The jobs of the `manager` group (Python's only when a Python was found).
pub fn jobs(cfg: &Config, py: Option<&Python>) -> Vec<Job> {
    let mut jobs = Vec::new();
    let c = cfg.clone();
    jobs.push(Job::many(
        Who::Multiproc,
        Group::Manager,
        "manager",
        move || multiproc_rows(&c),
    ));
    let c = cfg.clone();
    jobs.push(Job::many(
        Who::Floor,
        Group::Manager,
        "manager",
        move || floor_rows(&c),
    ));
    if let Some(py) = py {
        let c = cfg.clone();
        let py = py.clone();
        jobs.push(Job::many(
            Who::PythonMp,
            Group::Manager,
            "manager",
            move || python_rows(&c, &py),
        ));
    }
    jobs
}
