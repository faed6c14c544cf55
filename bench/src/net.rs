//! The network-connection rows: `connection::Client::connect` + authkey handshake over TCP
//! loopback, and u64 round trips over TCP loopback and a Unix socket, against Python's
//! `multiprocessing.connection` (`bench/python/net.py`) and a raw-socket floor (std
//! `TcpStream`/`UnixStream` with `TCP_NODELAY`, 8-byte messages, no framing or auth).
//! Servers run in a thread of the measuring process, for every column alike.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use multiproc::connection::{Address, Client, Listener};

use crate::config::Config;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::{Group, Metric};
use crate::python::Python;

const KEY: &[u8] = b"multiproc-bench authkey, 32 byte";
const WARMUP: usize = 200;

fn connects(cfg: &Config) -> usize {
    if cfg.quick {
        50
    } else {
        300
    }
}

fn msgs(cfg: &Config) -> usize {
    cfg.rtt_msgs
}

fn echo(c: multiproc::Connection<u64>) {
    while let Ok(v) = c.recv() {
        if c.send(&v).is_err() {
            break;
        }
    }
}

fn rtt(c: &multiproc::Connection<u64>, n: usize) -> BenchResult<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..(WARMUP + n) as u64 {
        let t0 = Instant::now();
        c.send(&i)?;
        let _: u64 = c.recv()?;
        if i as usize >= WARMUP {
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(v)
}

fn multiproc_rows(cfg: &Config) -> BenchResult<Vec<(Metric, Obs)>> {
    let (n_conn, n) = (connects(cfg), msgs(cfg));
    let l = Listener::<u64>::bind(&"127.0.0.1:0".parse()?, KEY)?;
    let addr = l.local_addr().clone();
    let server = std::thread::spawn(move || {
        for _ in 0..=n_conn {
            match l.accept() {
                Ok(c) => echo(c),
                Err(_) => break,
            }
        }
    });
    let mut conn_ms = Vec::with_capacity(n_conn);
    for _ in 0..n_conn {
        let t0 = Instant::now();
        let c = Client::connect::<u64>(&addr, KEY)?;
        conn_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(c);
    }
    let c = Client::connect::<u64>(&addr, KEY)?;
    let tcp = rtt(&c, n)?;
    drop(c);
    server.join().map_err(|_| "server thread panicked")?;

    let ua: Address = format!("unix:@multiproc-bench-{}", std::process::id()).parse()?;
    let l = Listener::<u64>::bind(&ua, KEY)?;
    let server = std::thread::spawn(move || {
        if let Ok(c) = l.accept() {
            echo(c)
        }
    });
    let c = Client::connect::<u64>(&ua, KEY)?;
    let unix = rtt(&c, n)?;
    drop(c);
    server.join().map_err(|_| "server thread panicked")?;
    Ok(vec![
        (Metric::NetConnect, Obs::Raw(conn_ms)),
        (Metric::NetTcpRtt, Obs::Raw(tcp)),
        (Metric::NetUnixRtt, Obs::Raw(unix)),
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
    let (n_conn, n) = (connects(cfg), msgs(cfg));
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = l.local_addr()?;
    let server = std::thread::spawn(move || {
        for s in l.incoming().take(n_conn + 1).flatten() {
            let _ = s.set_nodelay(true);
            raw_echo(s);
        }
    });
    let mut conn_ms = Vec::with_capacity(n_conn);
    for _ in 0..n_conn {
        let t0 = Instant::now();
        let s = TcpStream::connect(a)?;
        s.set_nodelay(true)?;
        conn_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mut s = TcpStream::connect(a)?;
    s.set_nodelay(true)?;
    let tcp = raw_rtt(&mut s, n)?;
    drop(s);
    server.join().map_err(|_| "server thread panicked")?;

    let dir = std::env::temp_dir().join(format!("multiproc-bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("s");
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    let server = std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            raw_echo(s)
        }
    });
    let mut s = UnixStream::connect(&path)?;
    let unix = raw_rtt(&mut s, n)?;
    drop(s);
    server.join().map_err(|_| "server thread panicked")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![
        (Metric::NetConnect, Obs::Raw(conn_ms)),
        (Metric::NetTcpRtt, Obs::Raw(tcp)),
        (Metric::NetUnixRtt, Obs::Raw(unix)),
    ])
}

fn python_rows(cfg: &Config, py: &Python) -> BenchResult<Vec<(Metric, Obs)>> {
    let out = py.run(
        &py.script("net.py"),
        &[connects(cfg).to_string(), msgs(cfg).to_string()],
    )?;
    let mut rows = Vec::new();
    for (key, m) in [
        ("connect_ms:", Metric::NetConnect),
        ("tcp_rtt_us:", Metric::NetTcpRtt),
        ("unix_rtt_us:", Metric::NetUnixRtt),
    ] {
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .ok_or_else(|| format!("net.py printed no {key} line"))?;
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|t| t.parse::<f64>())
            .collect::<Result<_, _>>()?;
        rows.push((m, Obs::Raw(v)));
    }
    Ok(rows)
}

/// The jobs of the `net` group (Python's only when a Python was found).
pub fn jobs(cfg: &Config, py: Option<&Python>) -> Vec<Job> {
    let mut jobs = Vec::new();
    let c = cfg.clone();
    jobs.push(Job::many(Who::Multiproc, Group::Net, "net", move || {
        multiproc_rows(&c)
    }));
    let c = cfg.clone();
    jobs.push(Job::many(Who::Floor, Group::Net, "net", move || {
        floor_rows(&c)
    }));
    if let Some(py) = py {
        let c = cfg.clone();
        let py = py.clone();
        jobs.push(Job::many(Who::PythonMp, Group::Net, "net", move || {
            python_rows(&c, &py)
        }));
    }
    jobs
}
