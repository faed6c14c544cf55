//! CPU time of this process and of other processes (pool workers), in seconds, from the
//! kernel's precise per-process CPU clocks (`CLOCK_PROCESS_CPUTIME_ID`,
//! `clock_getcpuclockid`): nanosecond resolution, all threads, unlike the 10 ms ticks of
//! `/proc/<pid>/stat`. The Python scripts read the same clocks (`time.process_time()` and
//! `clock_getcpuclockid` through ctypes).

use std::io;

fn read(clock: libc::clockid_t) -> io::Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// CPU seconds used so far by this process (all its threads).
pub fn own() -> f64 {
    read(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap_or(f64::NAN)
}

/// CPU seconds used so far by process `pid` (all its threads).
pub fn of(pid: u32) -> io::Result<f64> {
    // Above PID_MAX_LIMIT the clock id encoding overflows (2^31 - 1 names our own clock).
    if pid == 0 || pid > 1 << 22 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid, writable clockid_t; the call only writes it.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    read(clock)
}

/// CPU seconds used so far by all of `pids`.
pub fn sum(pids: &[u32]) -> io::Result<f64> {
    pids.iter().map(|&p| of(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_child_clock() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The busy loop shows up in the child's clock; our own clock moves too.
        let mut seen = 0.0;
        while std::time::Instant::now() < deadline {
            seen = of(pid).unwrap();
            if seen > 0.005 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(seen > 0.005, "child clock {seen}");
        assert!(own() > 0.0);
        assert!(of(u32::MAX / 2).is_err());
        assert!(of(0).is_err());
    }
}
