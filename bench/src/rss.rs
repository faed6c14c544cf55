//! Peak memory (RSS) of a process tree, from `/proc/<pid>/status`.
//!
//! For the imap row: start a [`PeakSampler`] on the parent before the imap,
//! stop it after; it polls the parent and all its descendants and keeps the
//! highest `VmHWM` (kernel-tracked peak RSS) seen for each pid, so workers
//! that exit before the end are still counted.

// Most of this serves the multiproc imap job, which does not exist yet.
#![allow(dead_code)]

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

/// Resets the kernel's peak-RSS counter (`VmHWM`) of `pid` to its current
/// RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux ≥ 4.0), so that a peak
/// measured afterwards is not the peak of something earlier in the run.
pub fn reset_peak(pid: u32) -> io::Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

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
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    pub parent_kib: u64,
    /// Sum over descendants of each one's peak.
    pub workers_kib: u64,
    /// How many distinct descendants were seen.
    pub workers: usize,
}

impl Peak {
    pub fn parent_mib(&self) -> f64 {
        self.parent_kib as f64 / 1024.0
    }

    pub fn workers_mib(&self) -> f64 {
        self.workers_kib as f64 / 1024.0
    }
}

/// Polls a process tree in a background thread; see the module docs.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<u32, u64>>,
    root: u32,
}

impl PeakSampler {
    /// Resets the peak of `root` (e.g. `std::process::id()`), then polls
    /// it and its descendants every `every`.
    pub fn start(root: u32, every: Duration) -> PeakSampler {
        let _ = reset_peak(root);
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
        let big = vec![1u8; 64 << 20];
        drop(std::hint::black_box(big));
        assert!(read(std::process::id()).unwrap().hwm_kib >= 64 << 10);
        reset_peak(std::process::id()).unwrap();
        assert!(read(std::process::id()).unwrap().hwm_kib < 64 << 10);
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
