//! Peak memory (RSS) of a process tree, from `/proc/<pid>/status`.
//!
//! For the imap row: start a [`PeakSampler`] on the parent before the imap,
//! stop it after; it polls the parent and all its descendants and keeps the
//! highest `VmHWM` (kernel-tracked peak RSS) seen for each pid, so workers
//! that exit before the end are still counted.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Memory figures of one process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mem {
    /// Current resident set size (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size so far (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn read(pid: u32) -> io::Result<Mem> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    })
}

#[allow(dead_code)]
/// Direct children of `pid` (all threads' `children` lists; falls back to
/// scanning `/proc/*/stat` when the kernel lacks that file).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let tasks = match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(t) => t,
        Err(_) => return out,
    };
    let mut have_children_file = false;
    for t in tasks.flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("children")) {
            have_children_file = true;
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    if !have_children_file {
        out = scan_children(pid);
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[allow(dead_code)]
fn scan_children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// `pid` and all its descendants.
#[allow(dead_code)]
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

/// Peak RSS of a parent and of its descendants, in KiB.
#[allow(dead_code)] // for the multiproc imap job, which does not exist yet
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    pub parent_kib: u64,
    /// Sum over descendants of each one's peak.
    pub workers_kib: u64,
    /// How many distinct descendants were seen.
    pub workers: usize,
}

#[allow(dead_code)]
impl Peak {
    pub fn parent_mib(&self) -> f64 {
        self.parent_kib as f64 / 1024.0
    }

    pub fn workers_mib(&self) -> f64 {
        self.workers_kib as f64 / 1024.0
    }
}

/// Polls a process tree in a background thread; see the module docs.
#[allow(dead_code)]
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<u32, u64>>,
    root: u32,
}

#[allow(dead_code)]
impl PeakSampler {
    /// Starts polling `root` (e.g. `std::process::id()`) and its
    /// descendants every `every`.
    pub fn start(root: u32, every: Duration) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks: BTreeMap<u32, u64> = BTreeMap::new();
            loop {
                let last = flag.load(Ordering::Relaxed);
                for pid in tree(root) {
                    if let Ok(m) = read(pid) {
                        let e = peaks.entry(pid).or_default();
                        *e = (*e).max(m.hwm_kib);
                    }
                }
                if last {
                    return peaks;
                }
                std::thread::sleep(every);
            }
        });
        PeakSampler { stop, thread, root }
    }

    /// Takes a last sample and returns the peaks.
    pub fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        let peaks = self.thread.join().unwrap_or_default();
        let parent_kib = peaks.get(&self.root).copied().unwrap_or(0);
        let workers: Vec<u64> = peaks
            .iter()
            .filter(|(p, _)| **p != self.root)
            .map(|(_, k)| *k)
            .collect();
        Peak {
            parent_kib,
            workers_kib: workers.iter().sum(),
            workers: workers.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_status_and_children() {
        let me = read(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let sampler = PeakSampler::start(std::process::id(), Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(100));
        assert!(children(std::process::id()).contains(&child.id()));
        let peak = sampler.stop();
        child.wait().unwrap();
        assert!(peak.parent_kib > 0);
        assert!(peak.workers >= 1 && peak.workers_kib > 0);
    }
}
