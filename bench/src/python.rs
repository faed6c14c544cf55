//! Python peers: the anchor scripts of `shared/anchors/python` (bench_a..f)
//! and our own `bench/python/extra.py`, run with the machine's `python3`
//! once per round and parsed from their output lines.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::{Group, Metric};

/// Where the Python peers live and how to run them.
#[derive(Clone, Debug)]
pub struct Python {
    pub exe: String,
    /// `shared/anchors/python`.
    pub anchors: PathBuf,
    /// `bench/python/extra.py`.
    pub extra: PathBuf,
    /// `bench/python`: our own scripts.
    pub ours: PathBuf,
    /// `python3 --version`, for the header.
    pub version: String,
    timeout: Duration,
}

impl Python {
    /// Finds the interpreter and the scripts; `Err` says why the Python
    /// rows are skipped.
    pub fn locate(cfg: &Config) -> Result<Python, String> {
        let exe = match &cfg.python {
            Some(e) if e.is_empty() => return Err("--no-python given".into()),
            Some(e) => e.clone(),
            None => std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into()),
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let explicit = cfg
            .python_dir
            .clone()
            .or_else(|| std::env::var_os("MULTIPROC_BENCH_PYTHON_DIR").map(PathBuf::from));
        let candidates: Vec<PathBuf> = match explicit {
            Some(dir) => vec![dir],
            // <repo>/bench -> <repo>/../shared/anchors/python, or relative
            // to the current directory (the repository root).
            // (A git worktree under <workspace>/wt/<name> sits one level deeper.)
            None => vec![
                manifest.join("../../shared/anchors/python"),
                PathBuf::from("../shared/anchors/python"),
                manifest.join("../../../shared/anchors/python"),
            ],
        };
        let anchors = candidates
            .iter()
            .find(|d| d.join("bench_a_process_start.py").is_file())
            .ok_or_else(|| {
                format!(
                    "anchor scripts not found (looked in {})",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let anchors = anchors.canonicalize().unwrap_or_else(|_| anchors.clone());
        let out = Command::new(&exe)
            .arg("--version")
            .output()
            .map_err(|e| format!("`{exe}` not runnable: {e}"))?;
        if !out.status.success() {
            return Err(format!("`{exe} --version` failed"));
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Python {
            exe,
            anchors,
            extra: manifest.join("python/extra.py"),
            ours: manifest.join("python"),
            version,
            timeout: Duration::from_secs(if cfg.quick { 120 } else { 400 }),
        })
    }

    /// Runs a script with arguments; returns its stdout. The script runs in
    /// its own process group, killed as a whole on timeout.
    pub fn run(&self, script: &Path, args: &[String]) -> BenchResult<String> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&self.exe)
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            stdout.read_to_string(&mut s).map(|_| s)
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child's process group.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("timed out after {:?}", self.timeout).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = out_t.join().map_err(|_| "reader panicked")??;
        let err = err_t.join().unwrap_or_default();
        if !status.success() {
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            return Err(format!("{status}: {}", tail.join(" / ")).into());
        }
        Ok(out)
    }

    fn anchor(&self, name: &str) -> PathBuf {
        self.anchors.join(name)
    }

    /// One of our scripts in `bench/python`.
    pub fn script(&self, name: &str) -> PathBuf {
        self.ours.join(name)
    }
}

// ---------------------------------------------------------------------------
// Output parsing. Lines look like
//   "  fork       start+join : min    1.234 ms  median    1.500 ms  p90 ..."
//   "  map chunksize=1   min 2.1 s  median 2.3 s  -> 47000 tasks/s (best)  43000 tasks/s (median)"

/// The first line that, without leading blanks, starts with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> BenchResult<&'a str> {
    out.lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .ok_or_else(|| format!("no line starting with {prefix:?}").into())
}

fn num(tok: &str) -> BenchResult<f64> {
    tok.trim_end_matches('x')
        .parse()
        .map_err(|_| format!("not a number: {tok:?}").into())
}

/// The number `offset` tokens after (positive) or before (negative) the
/// token equal to `key`.
fn near(line: &str, key: &str, offset: isize) -> BenchResult<f64> {
    let toks: Vec<&str> = line.split_whitespace().collect();
    let i = toks
        .iter()
        .position(|t| *t == key)
        .ok_or_else(|| format!("no {key:?} in {line:?}"))?;
    let j = i as isize + offset;
    let tok = toks
        .get(usize::try_from(j).map_err(|_| "out of range")?)
        .ok_or("out of range")?;
    num(tok)
}

/// `min X unit  median Y unit` → best = X, median = Y (lower is better).
fn min_median(out: &str, prefix: &str) -> BenchResult<Obs> {
    let l = line(out, prefix)?;
    Ok(Obs::Summary {
        best: near(l, "min", 1)?,
        median: near(l, "median", 1)?,
    })
}

/// `-> X tasks/s (best)  Y tasks/s (median)` → best = X, median = Y.
fn rate(out: &str, prefix: &str) -> BenchResult<Obs> {
    let l = line(out, prefix)?;
    Ok(Obs::Summary {
        best: near(l, "(best)", -2)?,
        median: near(l, "(median)", -2)?,
    })
}

fn p50_p99(out: &str, prefix: &str) -> BenchResult<Obs> {
    let l = line(out, prefix)?;
    Ok(Obs::Percentiles {
        p50: near(l, "p50", 1)?,
        p99: near(l, "p99", 1)?,
    })
}

fn speedup(out: &str, prefix: &str) -> BenchResult<Obs> {
    let l = line(out, prefix)?;
    Ok(Obs::Summary {
        best: near(l, "(min/min)", -1)?,
        median: near(l, "(median/median)", -1)?,
    })
}

fn value(out: &str, prefix: &str) -> BenchResult<Obs> {
    let l = line(out, prefix)?;
    Ok(Obs::Raw(vec![near(l, "value", 1)?]))
}

// ---------------------------------------------------------------------------
// Jobs.

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Registers the Python jobs (none, with a note, if Python is missing).
pub fn jobs(cfg: &Config, py: &Python) -> Vec<Job> {
    let mut jobs = Vec::new();
    let runs = cfg.py_runs;

    // (a) Process start+join per start method.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many(
        Who::PythonMp,
        Group::Start,
        "bench_a",
        move || {
            let warm = if c.quick { 1 } else { 3 };
            let args = [
                s("--runs"),
                s(c.py_spawn_runs),
                s("--warmup"),
                s(warm),
                s("--methods"),
                s("fork,spawn,forkserver"),
            ];
            let out = p.run(&p.anchor("bench_a_process_start.py"), &args)?;
            let default = line(&out, "python")?
                .rsplit("default start method=")
                .next()
                .unwrap_or("fork")
                .trim()
                .to_string();
            let mut v = Vec::new();
            for (m, metric) in [
                ("fork", Metric::SpawnFork),
                ("spawn", Metric::SpawnSpawn),
                ("forkserver", Metric::SpawnForkserver),
            ] {
                let l = out
                    .lines()
                    .find(|l| {
                        l.trim_start().starts_with(&format!("{m} ")) && l.contains("start+join")
                    })
                    .ok_or_else(|| format!("bench_a: no {m} start+join line"))?;
                let o = min_median(l, m)?;
                if m == default {
                    v.push((Metric::SpawnDefault, o.clone()));
                }
                v.push((metric, o));
            }
            Ok(v)
        },
    ));

    // (b) Pool: create, map default chunks, chunksize=1, imap_unordered, apply_async.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many(
        Who::PythonMp,
        Group::Pool,
        "bench_b",
        move || {
            let args = [
                s("--n"),
                s(c.map_items),
                s("--runs"),
                s(runs),
                s("--lat-runs"),
                s(c.apply_reps),
            ];
            let out = p.run(&p.anchor("bench_b_pool_map.py"), &args)?;
            Ok(vec![
                (Metric::PoolCreate, min_median(&out, "Pool(2) create")?),
                (Metric::PoolMapAuto, rate(&out, "map default chunksize")?),
                (Metric::PoolChunk1, rate(&out, "map chunksize=1 ")?),
                (
                    Metric::PoolImapChunk1,
                    rate(&out, "imap_unordered chunksize=1 ")?,
                ),
                (Metric::ApplyAsyncRtt, min_median(&out, "apply_async(")?),
            ])
        },
    ));

    // (c) ProcessPoolExecutor: map chunksize=1 and items/8, submit round trip.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many(
        Who::PythonCf,
        Group::Pool,
        "bench_c",
        move || {
            let big = (c.ppe_items / 8).max(1);
            let args = [
                s("--n"),
                s(c.ppe_items),
                s("--runs"),
                s(runs),
                s("--lat-runs"),
                s(c.apply_reps),
                s("--chunksizes"),
                format!("1,{big}"),
            ];
            let out = p.run(&p.anchor("bench_c_ppe_map.py"), &args)?;
            Ok(vec![
                (
                    Metric::PoolChunk1,
                    rate(&out, "ProcessPoolExecutor.map chunksize=1 ")?,
                ),
                (
                    Metric::PoolMapAuto,
                    rate(&out, &format!("ProcessPoolExecutor.map chunksize={big} "))?,
                ),
                (Metric::ApplyAsyncRtt, min_median(&out, "submit(")?),
            ])
        },
    ));

    // (d) Queue 1→1.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::one(Who::PythonMp, Metric::Queue11, move || {
        let args = [
            s("--n"),
            s(c.queue_msgs),
            s("--runs"),
            s(runs),
            s("--kinds"),
            s("Queue"),
        ];
        let out = p.run(&p.anchor("bench_d_queue_pipe.py"), &args)?;
        rate(&out, "Queue ")
    }));

    // (e) bulk bandwidth.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many(
        Who::PythonMp,
        Group::Bandwidth,
        "bench_e",
        move || {
            let args = [s("--mib"), s(c.bulk_mib()), s("--runs"), s(runs + 1)];
            let out = p.run(&p.anchor("bench_e_bandwidth.py"), &args)?;
            // Parse "-> X GB/s (best)  Y GB/s (median)".
            Ok(vec![
                (
                    Metric::BulkPipe,
                    rate(&out, "Pipe(duplex=False) send_bytes->recv_bytes ")?,
                ),
                (
                    Metric::BulkSocket,
                    rate(&out, "Pipe(duplex=True) send_bytes->recv_bytes ")?,
                ),
                (Metric::BulkShm, rate(&out, "SharedMemory 1 copy")?),
            ])
        },
    ));

    // (f) CPU scaling: Pool(2).map default chunks and ProcessPoolExecutor(2).map.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many_who(
        Who::PythonMp,
        Group::Cpu,
        "bench_f",
        move || {
            let args = [
                s("--items"),
                s(c.cpu_items),
                s("--work"),
                s(c.py_cpu_work),
                s("--runs"),
                s(c.cpu_reps),
            ];
            let out = p.run(&p.anchor("bench_f_cpu_scaling.py"), &args)?;
            Ok(vec![
                (
                    Metric::CpuScaling,
                    Who::PythonMp,
                    speedup(&out, "Pool(2).map chunksize=default")?,
                ),
                (
                    Metric::CpuScaling,
                    Who::PythonCf,
                    speedup(&out, "ProcessPoolExecutor(2).map")?,
                ),
            ])
        },
    ));

    // Our own script: pipe round trips, Queue latency, Queue 2→2, imap RSS.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many(
        Who::PythonMp,
        Group::Pipe,
        "extra pipe_rtt",
        move || {
            let args = [s("pipe_rtt"), s("--n"), s(c.rtt_msgs)];
            let out = p.run(&p.extra, &args)?;
            Ok(vec![
                (
                    Metric::PipeRtt,
                    min_median(&out, "Pipe(duplex=False) x2 ping-pong")?,
                ),
                (
                    Metric::SocketRtt,
                    min_median(&out, "Pipe() duplex ping-pong")?,
                ),
            ])
        },
    ));
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::one(Who::PythonMp, Metric::QueueLatency, move || {
        let args = [s("queue_latency"), s("--n"), s(c.latency_msgs)];
        p50_p99(&p.run(&p.extra, &args)?, "Queue put->get latency")
    }));
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::one(Who::PythonMp, Metric::Queue22, move || {
        let args = [
            s("queue22"),
            s("--n"),
            s(c.queue_msgs),
            s("--runs"),
            s(runs),
        ];
        rate(&p.run(&p.extra, &args)?, "Queue 2->2")
    }));
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many(
        Who::PythonMp,
        Group::Memory,
        "extra imap_rss",
        move || {
            let args = [
                s("imap_rss"),
                s("--n"),
                s(c.imap_items),
                s("--chunksize"),
                s(c.imap_chunksize),
            ];
            let out = p.run(&p.extra, &args)?;
            Ok(vec![
                (Metric::ImapRssParent, value(&out, "imap peak RSS parent")?),
                (
                    Metric::ImapRssWorkers,
                    value(&out, "imap peak RSS workers")?,
                ),
            ])
        },
    ));
    // CPU of workers whose tasks sleep, one job per pool size.
    for (metric, n) in [
        (Metric::IdleSmall, cfg.idle_workers[0]),
        (Metric::IdleLarge, cfg.idle_workers[1]),
    ] {
        let (p, c) = (py.clone(), cfg.clone());
        jobs.push(Job::one(Who::PythonMp, metric, move || {
            let args = [s("idle"), s("--n"), s(n), s("--secs"), s(c.idle_secs)];
            value(&p.run(&p.extra, &args)?, "idle ")
        }));
    }
    // Byte buffers: Python's `bytes` is the peer of both `Vec<u8>` and `ByteBuf`.
    let (p, c) = (py.clone(), cfg.clone());
    jobs.push(Job::many(
        Who::PythonMp,
        Group::Bytes,
        "extra bytes",
        move || {
            let args = [
                s("bytes"),
                s("--mb"),
                s(c.bytes_mb),
                s("--runs"),
                s(c.bytes_reps),
            ];
            let out = p.run(&p.extra, &args)?;
            let result = min_median(&out, "bytes result")?;
            let argument = min_median(&out, "bytes argument")?;
            Ok(vec![
                (Metric::BytesVecResult, result.clone()),
                (Metric::BytesBufResult, result),
                (Metric::BytesVecArg, argument.clone()),
                (Metric::BytesBufArg, argument),
            ])
        },
    ));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_anchor_lines() {
        let out = "python 3.11.7 on Linux, cpu_count=2, default start method=fork\n\
  fork       start      : min    0.400 ms  median    0.500 ms  p90    0.900 ms\n\
  fork       start+join : min    1.540 ms  median    1.650 ms  p90    2.000 ms   (cold first: 3.1 ms)\n\
  map chunksize=1                            min    2.030 s  median    2.100 s  ->      49258 tasks/s (best)       47000 tasks/s (median)\n\
  Pool(2).map chunksize=default      min   0.330 s  median   0.340 s  speedup vs serial:  1.95x (min/min)   1.90x (median/median)\n";
        let l = out
            .lines()
            .find(|l| l.trim_start().starts_with("fork ") && l.contains("start+join"))
            .unwrap();
        match min_median(l, "fork").unwrap() {
            Obs::Summary { best, median } => assert_eq!((best, median), (1.54, 1.65)),
            o => panic!("{o:?}"),
        }
        match rate(out, "map chunksize=1 ").unwrap() {
            Obs::Summary { best, median } => assert_eq!((best, median), (49258.0, 47000.0)),
            o => panic!("{o:?}"),
        }
        match speedup(out, "Pool(2).map").unwrap() {
            Obs::Summary { best, median } => assert_eq!((best, median), (1.95, 1.90)),
            o => panic!("{o:?}"),
        }
        assert!(rate(out, "nothing").is_err());
    }
}
