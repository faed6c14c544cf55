//! What machine and toolchain the run is on, and how much CPU other
//! processes took meanwhile (this machine is shared and noisy).

use std::fs;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;

/// Header lines printed before the table.
pub fn header(cfg: &Config, python: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc unknown".into());
    let load = fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!(
        "# multiproc-bench ({mode} run, {rounds} interleaved rounds)\n\n\
         - date: {date}\n\
         - machine: {cpus} CPUs, {model}; load average at start {load}\n\
         - {rustc}; {python}; profile: {profile}\n",
        mode = cfg.mode(),
        rounds = cfg.rounds,
        date = utc_now(),
        profile = if cfg!(debug_assertions) {
            "debug (numbers meaningless: use --release)"
        } else {
            "release"
        },
    )
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Machine-wide busy CPU seconds (from /proc/stat).
fn busy_seconds() -> f64 {
    let hz = 100.0; // USER_HZ is 100 on Linux
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let v: Vec<f64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 8).then(|| (v.iter().sum::<f64>() - v[3] - v[4]) / hz)
        })
        .unwrap_or(0.0)
}

/// CPU seconds used by this process and its reaped children.
fn own_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage.
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            for t in [ru.ru_utime, ru.ru_stime] {
                total += t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            }
        }
    }
    total
}

/// Measures how much CPU *other* processes used during the run.
pub struct Contention {
    t0: Instant,
    busy0: f64,
    own0: f64,
}

impl Contention {
    pub fn start() -> Contention {
        Contention {
            t0: Instant::now(),
            busy0: busy_seconds(),
            own0: own_seconds(),
        }
    }

    /// One line: wall time, own CPU, other processes' CPU.
    pub fn report(&self) -> String {
        let wall = self.t0.elapsed().as_secs_f64();
        let own = own_seconds() - self.own0;
        let other = (busy_seconds() - self.busy0 - own).max(0.0);
        let peak = crate::rss::read(std::process::id()).map_or(0, |m| m.hwm_kib);
        format!(
            "- bench process peak RSS {:.0} MiB; wall {wall:.1} s; own CPU {own:.1} s (incl. Python and children); \
             other processes {other:.1} CPU s = {:.2} cores on average \
             (if this is high, compare ratios only)",
            peak as f64 / 1024.0,
            other / wall
        )
    }
}
