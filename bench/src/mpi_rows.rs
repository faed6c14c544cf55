//! The MPI rows (feature `mpi`): the local pool beside the MPI pool over shared memory and
//! over TCP, on the same work, in the same run; `mpi4py.futures` beside them when it is
//! importable; CPU-bound scaling over ranks.
//!
//! Each MPI measurement is one `mpirun` job on this binary: rank 0 sees
//! [`MEASURE_ENV`], measures with `Pool::builder().mpi()` and prints one `MPIROW` line; the
//! other ranks are multiproc's node agents. Printed as a table of its own after the main
//! one (best / median over the rounds).

use std::process::{Command, Stdio};
use std::time::Instant;

use crate::config::Config;

/// Set on the `mpirun` jobs: rank 0 measures instead of running the benchmark.
pub const MEASURE_ENV: &str = "MULTIPROC_BENCH_MPI";

/// Sizes for one measurement.
#[derive(Clone, Copy)]
struct Sizes {
    chunk1: u64,
    auto: u64,
    rtt: usize,
    heavy_items: u64,
    heavy_iters: u64,
    /// How long the idle-CPU measurement lets the pool sit idle (ms).
    idle_ms: u64,
}

fn sizes(cfg: &Config) -> Sizes {
    if cfg.quick {
        Sizes {
            chunk1: 20_000,
            auto: 500_000,
            rtt: 300,
            heavy_items: 8,
            heavy_iters: 0,
            idle_ms: 500,
        }
    } else {
        Sizes {
            chunk1: 100_000,
            auto: 4_000_000,
            rtt: 3_000,
            heavy_items: 16,
            heavy_iters: 0,
            idle_ms: 2000,
        }
    }
}

fn inc(x: u64) -> u64 {
    crate::work::double(x)
}

fn heavy(a: (u64, u64)) -> u64 {
    crate::work::heavy(a.0, a.1)
}

/// The pid of the node agent a remote worker runs under (0 outside an MPI pool).
fn agent_pid(_: u32) -> u32 {
    std::env::var("MULTIPROC_MPI_AGENT_PID")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system, every thread) process `pid` has used, from `/proc` (the
/// agents run on this host in these jobs).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks / hz)
}

/// CPU of an idle pool, in % of one core over `idle`: (this process, the others: the
/// workers and, for an MPI pool, the node agents). The agents are found by asking the
/// workers for their agent's pid; worker pids are on this host in these jobs.
fn idle_cpu(pool: &multiproc::Pool, idle: std::time::Duration) -> multiproc::Result<(f64, f64)> {
    let mut agents = pool.map(agent_pid, 0..(4 * pool.processes() as u32))?;
    agents.extend(pool.pids());
    agents.sort_unstable();
    agents.dedup();
    agents.retain(|p| *p != 0);
    let me = std::process::id();
    let total = |pids: &[u32]| pids.iter().filter_map(|p| cpu_secs(*p)).sum::<f64>();
    // Let the relay's spinning after that map end first: the idle state is what is measured.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (r0, ag) = (total(&[me]), total(&agents));
    std::thread::sleep(idle);
    let pct = |d: f64| d / idle.as_secs_f64() * 100.0;
    Ok((pct(total(&[me]) - r0), pct(total(&agents) - ag)))
}

/// Measures one pool: chunksize-1 tasks/s, auto-chunked items/s, apply round trip p50 (µs),
/// milliseconds for the heavy items.
fn measure(pool: &multiproc::Pool, s: Sizes) -> multiproc::Result<[f64; 4]> {
    let _ = pool.map(inc, 0..10_000u64)?;
    let t = Instant::now();
    let _ = pool.map_chunked(inc, 0..s.chunk1, 1)?;
    let c1 = s.chunk1 as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _ = pool.map(inc, 0..s.auto)?;
    let auto = s.auto as f64 / t.elapsed().as_secs_f64();
    let mut rtt: Vec<f64> = Vec::with_capacity(s.rtt);
    for i in 0..s.rtt {
        let t = Instant::now();
        pool.apply(inc, i as u64)?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtt.sort_by(|a, b| a.total_cmp(b));
    let t = Instant::now();
    let _ = pool.map_chunked(heavy, (0..s.heavy_items).map(|i| (s.heavy_iters, i)), 1)?;
    let cpu = t.elapsed().as_secs_f64() * 1e3;
    Ok([c1, auto, rtt[rtt.len() / 2], cpu])
}

/// Rank 0 of a measuring job (called from `main` when [`MEASURE_ENV`] is set): prints
/// `MPIROW c1 auto rtt cpu` and exits.
pub fn measure_as_rank0() -> ! {
    let arg = std::env::var(MEASURE_ENV).unwrap_or_default();
    let mut it = arg.split(',').map(|v| v.parse::<u64>().unwrap_or(0));
    let s = Sizes {
        chunk1: it.next().unwrap_or(20_000),
        auto: it.next().unwrap_or(500_000),
        rtt: it.next().unwrap_or(300) as usize,
        heavy_items: it.next().unwrap_or(8),
        heavy_iters: it.next().unwrap_or(1),
        idle_ms: it.next().unwrap_or(2000),
    };
    let idle = std::time::Duration::from_millis(s.idle_ms);
    let r = multiproc::Pool::builder()
        .mpi()
        .processes(1)
        .build()
        .and_then(|p| Ok((measure(&p, s)?, idle_cpu(&p, idle)?)));
    match r {
        Ok((v, (i0, ia))) => println!("MPIROW {} {} {} {} {i0} {ia}", v[0], v[1], v[2], v[3]),
        Err(e) => println!("MPIERR {e}"),
    }
    std::process::exit(0)
}

/// One `mpirun` job of `ranks` ranks; `tcp` forces the TCP transport.
fn job(s: Sizes, ranks: u32, tcp: bool) -> Result<[f64; 6], String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env(
            MEASURE_ENV,
            format!(
                "{},{},{},{},{},{}",
                s.chunk1, s.auto, s.rtt, s.heavy_items, s.heavy_iters, s.idle_ms
            ),
        )
        .args([
            "--oversubscribe",
            "--bind-to",
            "none",
            "--mca",
            "mpi_yield_when_idle",
            "1",
        ]);
    if tcp {
        cmd.args(["--mca", "btl", "tcp,self"]);
    }
    let out = cmd
        .args(["-n", &ranks.to_string()])
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mpirun cannot be started ({e}): apt-get install -y libopenmpi-dev openmpi-bin libclang-dev pkg-config"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("MPIROW ") {
            let v: Vec<f64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            if v.len() == 6 {
                return Ok([v[0], v[1], v[2], v[3], v[4], v[5]]);
            }
        }
        if let Some(e) = line.strip_prefix("MPIERR ") {
            return Err(e.to_string());
        }
    }
    Err(format!(
        "mpirun gave no result (status {}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")
    ))
}

/// The mpi4py.futures peer: `mpirun -n 3 python3 -m mpi4py.futures` on the same work.
fn mpi4py(s: Sizes) -> Result<[f64; 6], String> {
    let check = Command::new("python3")
        .args(["-c", "import mpi4py.futures"])
        .output()
        .map_err(|e| format!("python3 cannot be started ({e})"))?;
    if !check.status.success() {
        return Err("mpi4py is not installed (pip install mpi4py, against the same MPI)".into());
    }
    let script = format!(
        r#"
import time
from mpi4py.futures import MPIPoolExecutor
def inc(x): return x * 2
if __name__ == "__main__":
    with MPIPoolExecutor() as ex:
        list(ex.map(inc, range(1000)))
        t = time.perf_counter(); list(ex.map(inc, range({c1}), chunksize=1)); c1 = {c1} / (time.perf_counter() - t)
        t = time.perf_counter(); list(ex.map(inc, range({auto}), chunksize=max(1, {auto} // 64))); auto = {auto} / (time.perf_counter() - t)
        r = []
        for i in range({rtt}):
            t = time.perf_counter(); ex.submit(inc, i).result(); r.append((time.perf_counter() - t) * 1e6)
        r.sort()
        print("MPIROW", c1, auto, r[len(r) // 2], 0)
"#,
        c1 = s.chunk1 / 10,
        auto = s.auto / 4,
        rtt = s.rtt,
    );
    let path =
        std::env::temp_dir().join(format!("multiproc-bench-mpi4py-{}.py", std::process::id()));
    std::fs::write(&path, script).map_err(|e| e.to_string())?;
    let out = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args([
            "--oversubscribe",
            "--bind-to",
            "none",
            "--mca",
            "mpi_yield_when_idle",
            "1",
            "-n",
            "3",
        ])
        .args(["python3", "-m", "mpi4py.futures"])
        .arg(&path)
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("MPIROW "))
        .and_then(|rest| {
            let v: Vec<f64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            // Its idle CPU is not measured (-1: left out of the row).
            (v.len() == 4).then(|| [v[0], v[1], v[2], v[3], -1.0, 0.0])
        })
        .ok_or_else(|| format!("mpi4py gave no result (status {})", out.status))
}

fn best_median(v: &[f64], higher: bool) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let best = if higher { s[s.len() - 1] } else { s[0] };
    let med = crate::harness::median(&s);
    let f = |x: f64| {
        if x >= 1e6 {
            format!("{:.2} M", x / 1e6)
        } else if x >= 1e3 {
            format!("{:.1} k", x / 1e3)
        } else {
            format!("{x:.1}")
        }
    };
    format!("{} / {}", f(best), f(med))
}

/// Runs the MPI rows and returns their table (Markdown), or why they were not measured.
pub fn run(cfg: &Config) -> String {
    let mut s = sizes(cfg);
    s.heavy_iters = if cfg.cpu_iters > 0 {
        cfg.cpu_iters
    } else {
        crate::work::calibrate(cfg.cpu_item_ms)
    };
    let rounds = if cfg.quick { 1 } else { cfg.rounds.min(5) };
    let columns = [
        "local pool (2 workers)",
        "MPI pool, shared memory (2 ranks × 1)",
        "MPI pool, TCP (2 ranks × 1)",
        "mpi4py.futures (2 workers)",
    ];
    let mut cells: Vec<Vec<[f64; 6]>> = vec![Vec::new(); 4];
    let mut one_rank: Vec<f64> = Vec::new();
    let mut notes = Vec::new();
    for _ in 0..rounds {
        let idle = std::time::Duration::from_millis(s.idle_ms);
        let local =
            multiproc::Pool::new(2).and_then(|p| Ok((measure(&p, s)?, idle_cpu(&p, idle)?)));
        match local {
            Ok((v, (i0, iw))) => cells[0].push([v[0], v[1], v[2], v[3], i0, iw]),
            Err(e) => notes.push(format!("local pool: {e}")),
        }
        for (k, tcp) in [(1, false), (2, true)] {
            match job(s, 3, tcp) {
                Ok(v) => cells[k].push(v),
                Err(e) => notes.push(format!("{}: {e}", columns[k])),
            }
        }
        match job(s, 2, false) {
            Ok(v) => one_rank.push(v[3]),
            Err(e) => notes.push(format!("MPI pool, 1 agent rank: {e}")),
        }
        match mpi4py(s) {
            Ok(v) => cells[3].push(v),
            Err(e) => {
                notes.push(format!("mpi4py.futures not measured: {e}"));
                break;
            }
        }
    }
    notes.dedup();
    // The idle row sums this process and the others (workers, agents).
    for c in cells.iter_mut() {
        for x in c.iter_mut() {
            x[4] += x[5];
        }
    }
    let rows = [
        ("tasks/s, chunksize 1", 0, true),
        ("items/s, auto-chunked map", 1, true),
        ("apply_async round trip p50 (µs)", 2, false),
        ("CPU-bound items (ms for all)", 3, false),
        ("idle pool, CPU % of one core (all its processes)", 4, false),
    ];
    let mut t =
        String::from("\n### MPI (mpirun -n 3 --oversubscribe: rank 0 + 2 agent ranks)\n\n| row | ");
    t.push_str(&columns.join(" | "));
    t.push_str(" |\n|---|---|---|---|---|\n");
    for (name, i, higher) in rows {
        t.push_str(&format!("| {name} |"));
        for c in &cells {
            let least = if i == 4 { 0.0 } else { f64::MIN_POSITIVE };
            let v: Vec<f64> = c.iter().map(|x| x[i]).filter(|x| *x >= least).collect();
            t.push_str(&format!(" {} |", best_median(&v, higher)));
        }
        t.push('\n');
    }
    let two: Vec<f64> = cells[1].iter().map(|x| x[3]).collect();
    if !two.is_empty() && !one_rank.is_empty() {
        let sp = crate::harness::median(&one_rank) / crate::harness::median(&two);
        t.push_str(&format!(
            "\nCPU-bound scaling over ranks ({} items of ≈{} ms): 1 agent rank {:.0} ms, 2 agent ranks {:.0} ms: {sp:.2}× (on this machine's cores)\n",
            s.heavy_items, cfg.cpu_item_ms, crate::harness::median(&one_rank), crate::harness::median(&two)
        ));
    }
    t.push_str(&format!(
        "\n(Idle row: the CPU of the pool's processes (this one, the workers, the node agents; \
         from /proc) over {} ms without work, from 200 ms after the last call.)\n",
        s.idle_ms
    ));
    t.push_str("\n(mpi4py.futures runs smaller inputs: ÷10 at chunksize 1, ÷4 auto-chunked (chunksize n/64); no CPU-bound row, Python's own speed would dominate it.)\n");
    for n in notes {
        t.push_str(&format!("\nnote: {n}"));
    }
    t.push('\n');
    t
}
