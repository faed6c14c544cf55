//! Raw syscall floors: what the kernel costs with no library at all.
//!
//! After `fork()` the child runs only async-signal-safe functions
//! (`read`, `write`, `close`, `clock_gettime`, `_exit`), because the parent
//! is multi-threaded (rayon, procspawn) and any lock held by another thread
//! at fork time stays locked forever in the child. Nothing after fork in a
//! child allocates, prints or unwinds.
//!
//! Pipes and socketpairs keep their default kernel buffer sizes, i.e. what a
//! plain implementation gets.

use std::hint::black_box;
use std::io;
use std::os::fd::RawFd;
use std::process::Command;
use std::time::Instant;

use crate::config::Config;
use crate::harness::{time, BenchResult, Job, Obs, Who};
use crate::metrics::Metric;

/// Environment variable that makes this binary exit at once (right after
/// `procspawn::init()`): the "exec" floor re-executes itself with it.
pub const EXIT_AT_ONCE_ENV: &str = "MULTIPROC_BENCH_EXIT_AT_ONCE";

/// Registers the floor jobs.
pub fn jobs(cfg: &Config) -> Vec<Job> {
    let c = cfg.clone();
    let reps = c.spawn_reps;
    let mut jobs = vec![
        Job::same_for(
            Who::Floor,
            &[
                Metric::SpawnDefault,
                Metric::SpawnFork,
                Metric::SpawnForkserver,
            ],
            move || repeat_ms(reps, fork_exit_waitpid),
        ),
        Job::one(Who::Floor, Metric::SpawnResult, move || {
            repeat_ms(reps, fork_pipe_result)
        }),
        Job::one(Who::Floor, Metric::SpawnSpawn, move || {
            repeat_ms(reps, exec_self_wait)
        }),
    ];
    let c2 = c.clone();
    jobs.push(Job::same_for(
        Who::Floor,
        &[Metric::PipeRtt, Metric::ApplyAsyncRtt],
        move || ping_pong(Pair::pipes()?, c2.rtt_msgs * c2.batches),
    ));
    let c2 = c.clone();
    jobs.push(Job::one(Who::Floor, Metric::SocketRtt, move || {
        ping_pong(Pair::socketpair()?, c2.rtt_msgs * c2.batches)
    }));
    let c2 = c.clone();
    jobs.push(Job::one(Who::Floor, Metric::BulkPipe, move || {
        bulk(Pair::pipes()?, c2.bulk_bytes, c2.batches)
    }));
    let c2 = c.clone();
    jobs.push(Job::one(Who::Floor, Metric::BulkSocket, move || {
        bulk(Pair::socketpair()?, c2.bulk_bytes, c2.batches)
    }));
    let c2 = c.clone();
    jobs.push(Job::one(Who::Floor, Metric::BulkShm, move || {
        Ok(memcpy(c2.bulk_bytes, c2.batches))
    }));
    let c2 = c.clone();
    jobs.push(Job::one(Who::Floor, Metric::Queue11, move || {
        message_stream(c2.queue_msgs, c2.batches)
    }));
    jobs.push(Job::one(Who::Floor, Metric::QueueLatency, move || {
        one_way_latency(c.latency_msgs)
    }));
    jobs
}

/// Runs `f` (which returns seconds) `reps` times after one warm-up; samples
/// in ms.
fn repeat_ms(reps: usize, f: fn() -> io::Result<f64>) -> BenchResult<Obs> {
    f()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        v.push(f()? * 1e3);
    }
    Ok(Obs::Raw(v))
}

// ---------------------------------------------------------------------------
// Thin syscall wrappers.

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `fork()`; `Ok(0)` in the child.
///
/// # Safety
///
/// The caller must make the child call only async-signal-safe functions and
/// end with `_exit`.
unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: fork has no memory-safety preconditions of its own; the
    // caller upholds the async-signal-safety rule for the child.
    cvt(unsafe { libc::fork() })
}

/// Waits for `pid`, retrying on EINTR; returns the raw wait status.
fn waitpid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn check_exit(status: libc::c_int) -> io::Result<()> {
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!("child wait status {status:#x}")))
    }
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor we own; errors are irrelevant here.
    unsafe { libc::close(fd) };
}

/// `_exit(code)` — the only way a forked child of this module ends.
fn child_exit(code: libc::c_int) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Reads exactly `buf.len()` bytes with raw `read` calls (async-signal-safe:
/// no allocation, errno read directly). Returns false on EOF or error.
fn raw_read_exact(fd: RawFd, buf: &mut [u8]) -> bool {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[off..].as_mut_ptr().cast(), buf.len() - off) };
        if n > 0 {
            off += n as usize;
        } else if n == 0 || !interrupted() {
            return false;
        }
    }
    true
}

/// Writes all of `buf` with raw `write` calls (async-signal-safe).
fn raw_write_all(fd: RawFd, buf: &[u8]) -> bool {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the unwritten tail of `buf`.
        let n = unsafe { libc::write(fd, buf[off..].as_ptr().cast(), buf.len() - off) };
        if n > 0 {
            off += n as usize;
        } else if n == 0 || !interrupted() {
            return false;
        }
    }
    true
}

fn interrupted() -> bool {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() == libc::EINTR }
}

/// CLOCK_MONOTONIC in ns (async-signal-safe; same clock in every process).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn read_exact(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    if raw_read_exact(fd, buf) {
        Ok(())
    } else {
        Err(io::Error::other("short read (child died?)"))
    }
}

fn write_all(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    if raw_write_all(fd, buf) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// Process start.

/// fork + `_exit(0)` in the child + waitpid; seconds.
fn fork_exit_waitpid() -> io::Result<f64> {
    let t0 = Instant::now();
    // SAFETY: the child only calls _exit.
    let pid = unsafe { fork()? };
    if pid == 0 {
        child_exit(0);
    }
    check_exit(waitpid(pid)?)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// pipe + fork + the child writes a u64 result + parent reads it + waitpid.
fn fork_pipe_result() -> io::Result<f64> {
    let t0 = Instant::now();
    let (r, w) = pipe()?;
    // SAFETY: the child only calls write and _exit.
    let pid = unsafe { fork()? };
    if pid == 0 {
        let ok = raw_write_all(w, &42u64.to_ne_bytes());
        child_exit(if ok { 0 } else { 1 });
    }
    close(w);
    let mut buf = [0u8; 8];
    let got = read_exact(r, &mut buf);
    close(r);
    check_exit(waitpid(pid)?)?;
    got?;
    if u64::from_ne_bytes(buf) != 42 {
        return Err(io::Error::other("bad result"));
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// fork+exec of this very binary, which exits right after
/// `procspawn::init()`, + wait: the floor of the "spawn" start method.
fn exec_self_wait() -> io::Result<f64> {
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    let st = Command::new(exe).env(EXIT_AT_ONCE_ENV, "1").status()?;
    let dt = t0.elapsed().as_secs_f64();
    if !st.success() {
        return Err(io::Error::other(format!("exec self: {st}")));
    }
    Ok(dt)
}

// ---------------------------------------------------------------------------
// Two-way channels between a parent and a forked child.

fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// Descriptors of a parent↔child channel. Each side reads from its `rx`
/// and writes to its `tx`; `close_in_child` / `close_in_parent` are the
/// other side's ends.
struct Pair {
    parent_rx: RawFd,
    parent_tx: RawFd,
    child_rx: RawFd,
    child_tx: RawFd,
}

impl Pair {
    /// Two pipes, one per direction.
    fn pipes() -> io::Result<Pair> {
        let (child_rx, parent_tx) = pipe()?;
        let (parent_rx, child_tx) = pipe()?;
        Ok(Pair {
            parent_rx,
            parent_tx,
            child_rx,
            child_tx,
        })
    }

    /// One AF_UNIX stream socketpair.
    fn socketpair() -> io::Result<Pair> {
        let mut sv = [0; 2];
        // SAFETY: `sv` has room for the two descriptors.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        })?;
        Ok(Pair {
            parent_rx: sv[0],
            parent_tx: sv[0],
            child_rx: sv[1],
            child_tx: sv[1],
        })
    }

    /// Forks a child that runs `body(rx, tx)` and `_exit`s; the parent
    /// keeps its ends. `body` must be async-signal-safe.
    fn spawn(&self, body: impl FnOnce(RawFd, RawFd) -> bool) -> io::Result<Child> {
        // SAFETY: the child closes descriptors, runs `body` (only raw
        // read/write/clock_gettime, per this module's rule) and _exits.
        let pid = unsafe { fork()? };
        if pid == 0 {
            close(self.parent_rx);
            if self.parent_tx != self.parent_rx {
                close(self.parent_tx);
            }
            let ok = body(self.child_rx, self.child_tx);
            child_exit(if ok { 0 } else { 1 });
        }
        close(self.child_rx);
        if self.child_tx != self.child_rx {
            close(self.child_tx);
        }
        Ok(Child {
            pid,
            rx: self.parent_rx,
            tx: self.parent_tx,
        })
    }
}

/// The parent's view of a forked child.
struct Child {
    pid: libc::pid_t,
    rx: RawFd,
    tx: RawFd,
}

impl Child {
    /// Closes the parent's ends (the child sees EOF and exits) and reaps it.
    fn finish(self) -> io::Result<()> {
        close(self.tx);
        if self.rx != self.tx {
            close(self.rx);
        }
        check_exit(waitpid(self.pid)?)
    }
}

/// Ping-pong of 8-byte messages; every round trip timed on its own (as the
/// Python scripts do); samples in µs.
fn ping_pong(pair: Pair, msgs: usize) -> BenchResult<Obs> {
    let child = pair.spawn(|rx, tx| {
        let mut buf = [0u8; 8];
        while raw_read_exact(rx, &mut buf) {
            if !raw_write_all(tx, &buf) {
                return false;
            }
        }
        true
    })?;
    let mut buf = [0u8; 8];
    let mut v = Vec::with_capacity(msgs);
    let r = (|| -> io::Result<()> {
        for i in 0..(200 + msgs) as u64 {
            let t0 = Instant::now();
            write_all(child.tx, &i.to_ne_bytes())?;
            read_exact(child.rx, &mut buf)?;
            if i >= 200 {
                v.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(())
    })();
    child.finish()?;
    r?;
    Ok(Obs::Raw(v))
}

/// One-way latency: the parent writes a CLOCK_MONOTONIC stamp, the child
/// reads it, takes the difference to its own clock and sends it back as
/// the acknowledgement (the next message waits for it). Samples in µs.
fn one_way_latency(msgs: usize) -> BenchResult<Obs> {
    let pair = Pair::pipes()?;
    let child = pair.spawn(|rx, tx| {
        let mut buf = [0u8; 8];
        while raw_read_exact(rx, &mut buf) {
            let d = mono_ns().wrapping_sub(u64::from_ne_bytes(buf));
            if !raw_write_all(tx, &d.to_ne_bytes()) {
                return false;
            }
        }
        true
    })?;
    let mut buf = [0u8; 8];
    let mut v = Vec::with_capacity(msgs);
    let r = (|| -> io::Result<()> {
        for i in 0..200 + msgs {
            write_all(child.tx, &mono_ns().to_ne_bytes())?;
            read_exact(child.rx, &mut buf)?;
            if i >= 200 {
                v.push(u64::from_ne_bytes(buf) as f64 / 1e3);
            }
        }
        Ok(())
    })();
    child.finish()?;
    r?;
    Ok(Obs::Raw(v))
}

/// The child writes `msgs` u64s, one `write` each; the parent reads them
/// one `read` each. Samples in msgs/s, one per batch.
fn message_stream(msgs: usize, batches: usize) -> BenchResult<Obs> {
    let pair = Pair::pipes()?;
    let child = pair.spawn(|rx, tx| {
        let mut go = [0u8; 1];
        while raw_read_exact(rx, &mut go) {
            for i in 0..msgs as u64 {
                if !raw_write_all(tx, &i.to_ne_bytes()) {
                    return false;
                }
            }
        }
        true
    })?;
    let mut v = Vec::with_capacity(batches);
    let r = (|| -> io::Result<()> {
        let mut buf = [0u8; 8];
        for b in 0..=batches {
            let t0 = Instant::now();
            write_all(child.tx, &[1])?;
            for i in 0..msgs as u64 {
                read_exact(child.rx, &mut buf)?;
                debug_assert_eq!(u64::from_ne_bytes(buf), i);
            }
            if b > 0 {
                v.push(msgs as f64 / t0.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })();
    child.finish()?;
    r?;
    Ok(Obs::Raw(v))
}

/// The child writes `size` bytes from a buffer filled before fork; the
/// parent reads them into a preallocated, pre-faulted buffer. GB/s (1e9
/// bytes) per batch, after one warm-up transfer.
fn bulk(pair: Pair, size: usize, batches: usize) -> BenchResult<Obs> {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![1u8; size];
    let child = pair.spawn(|rx, tx| {
        let mut go = [0u8; 1];
        while raw_read_exact(rx, &mut go) {
            if !raw_write_all(tx, &src) {
                return false;
            }
        }
        true
    })?;
    let mut v = Vec::with_capacity(batches);
    let r = (|| -> io::Result<()> {
        for b in 0..=batches {
            let t0 = Instant::now();
            write_all(child.tx, &[1])?;
            read_exact(child.rx, &mut dst)?;
            if b > 0 {
                v.push(size as f64 / t0.elapsed().as_secs_f64() / 1e9);
            }
        }
        Ok(())
    })();
    child.finish()?;
    r?;
    if dst[size - 1] != (size - 1) as u8 {
        return Err("bulk: wrong data".into());
    }
    Ok(Obs::Raw(v))
}

/// In-process memcpy of `size` bytes between two pre-faulted buffers; GB/s.
fn memcpy(size: usize, batches: usize) -> Obs {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![1u8; size];
    let mut v = Vec::with_capacity(batches);
    for b in 0..=batches {
        let (dt, ()) = time(|| dst.copy_from_slice(black_box(&src)));
        black_box(&mut dst);
        if b > 0 {
            v.push(size as f64 / dt / 1e9);
        }
    }
    Obs::Raw(v)
}
