//! The sync rows (issue 11.7): `Lock` uncontended and handed between two processes, an
//! `Event` ping-pong, `Value` += 1 by two contending processes, a `Barrier` round, side by
//! side with `bench/python/sync.py` (the same workloads on `multiprocessing`) and with two
//! floors: an atomic compare-exchange + store pair (the lock's least work) and a raw futex
//! ping-pong between two forked processes (the event's).

use std::sync::atomic::{AtomicU32, Ordering::*};
use std::time::Instant;

use multiproc::sync::{Barrier, Event, Lock};
use multiproc::{Process, RawValue, StartMethod, Value};

use crate::config::Config;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::{Better, Cmp, Goal, Group, Metric, Show, Spec, Target};
use crate::python::Python;

/// Name, unit, direction and goal of a sync row.
pub fn spec(m: Metric) -> Spec {
    let abs = |cmp, factor| Target {
        peer: None,
        cmp,
        factor,
    };
    let (name, unit, better, goal) = match m {
        Metric::SyncLock => (
            "Lock acquire+release, uncontended",
            "ns",
            Better::Lower,
            Some(Goal {
                text: "≤ 30 ns",
                targets: vec![abs(Cmp::AtMost, 30.0)],
            }),
        ),
        Metric::SyncLockHandoff => (
            "Lock hand-off between 2 processes (strict turns)",
            "µs",
            Better::Lower,
            None,
        ),
        Metric::SyncEventPingPong => (
            "Event ping-pong between 2 processes (round trip)",
            "µs",
            Better::Lower,
            Some(Goal {
                text: "≤ 15 µs",
                targets: vec![abs(Cmp::AtMost, 15.0)],
            }),
        ),
        Metric::SyncValueAdd => (
            "Value += 1 under its lock, 2 processes contending",
            "ops/s",
            Better::Higher,
            Some(Goal {
                text: "≥ 5× python mp",
                targets: vec![Target {
                    peer: Some(Who::PythonMp),
                    cmp: Cmp::AtLeast,
                    factor: 5.0,
                }],
            }),
        ),
        _ => ("Barrier(2) round, 2 processes", "µs", Better::Lower, None),
    };
    Spec {
        name: name.into(),
        unit,
        better,
        show: Show::BestMedian,
        goal,
    }
}

fn fork<A, F, R>(args: A, f: F) -> BenchResult<Process<R>>
where
    A: multiproc::TaskArg,
    R: multiproc::TaskResult,
    F: FnOnce(A) -> R + Copy + Send + 'static,
{
    Ok(Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(args, f)?)
}

fn lock_uncontended(n: usize) -> BenchResult<f64> {
    let lock = Lock::new()?;
    drop(lock.acquire()?);
    let t = Instant::now();
    for _ in 0..n {
        drop(std::hint::black_box(lock.acquire()?));
    }
    Ok(t.elapsed().as_secs_f64() / n as f64 * 1e9)
}

/// Takes `n` turns: under the lock, if it is `me`'s turn, hand it to the other.
fn turns((lock, turn, me, n): (Lock, RawValue<u64>, u64, usize)) {
    let mut done = 0;
    while done < n {
        let _g = lock.acquire().unwrap();
        if turn.get() == me {
            turn.set(1 - me);
            done += 1;
        }
    }
}

fn lock_handoff(n: usize) -> BenchResult<f64> {
    let (lock, turn) = (Lock::new()?, RawValue::new(0u64)?);
    let p = fork((lock.clone(), turn.clone(), 1, n), turns)?;
    let t = Instant::now();
    turns((lock, turn, 0, n));
    p.join()?;
    Ok(t.elapsed().as_secs_f64() / (2 * n) as f64 * 1e6)
}

fn pong((a, b, n): (Event, Event, usize)) {
    for _ in 0..n {
        a.wait();
        a.clear();
        b.set();
    }
}

fn event_ping_pong(n: usize) -> BenchResult<f64> {
    let (a, b) = (Event::new()?, Event::new()?);
    let p = fork((a.clone(), b.clone(), n), pong)?;
    let t = Instant::now();
    for _ in 0..n {
        a.set();
        b.wait();
        b.clear();
    }
    let dt = t.elapsed();
    p.join()?;
    Ok(dt.as_secs_f64() / n as f64 * 1e6)
}

fn adder((v, n, go): (Value<u64>, usize, Event)) {
    go.wait();
    for _ in 0..n {
        *v.lock().unwrap() += 1;
    }
}

fn value_add(n: usize) -> BenchResult<f64> {
    let (v, go) = (Value::new(0u64)?, Event::new()?);
    let ps = (0..2)
        .map(|_| fork((v.clone(), n, go.clone()), adder))
        .collect::<BenchResult<Vec<_>>>()?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = Instant::now();
    go.set();
    for p in &ps {
        p.join()?;
    }
    let dt = t.elapsed();
    let got = v.get()?;
    if got != 2 * n as u64 {
        return Err(format!("Value += 1: {got} increments counted, not {}", 2 * n).into());
    }
    Ok(2.0 * n as f64 / dt.as_secs_f64())
}

fn rounds((b, n): (Barrier, usize)) {
    for _ in 0..n {
        b.wait().unwrap();
    }
}

fn barrier_round(n: usize) -> BenchResult<f64> {
    let b = Barrier::new(2)?;
    let p = fork((b.clone(), n), rounds)?;
    b.wait()?;
    let t = Instant::now();
    rounds((b, n - 1));
    let dt = t.elapsed();
    p.join()?;
    Ok(dt.as_secs_f64() / (n - 1) as f64 * 1e6)
}

/// The lock's least work: a compare-exchange that takes a word and a store that frees it.
fn atomic_floor(n: usize) -> f64 {
    let w = AtomicU32::new(0);
    let t = Instant::now();
    for _ in 0..n {
        let w = std::hint::black_box(&w);
        while w.compare_exchange(0, 1, Acquire, Relaxed).is_err() {}
        w.store(0, Release);
    }
    t.elapsed().as_secs_f64() / n as f64 * 1e9
}

fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: FUTEX_WAIT/FUTEX_WAKE on a valid, aligned word of a live shared mapping, with
    // no timeout and no second word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Waits until `word` holds `want`, then stores `next` and wakes the other side.
fn futex_turn(word: &AtomicU32, want: u32, next: u32) {
    loop {
        let v = word.load(Acquire);
        if v == want {
            break;
        }
        futex(word, libc::FUTEX_WAIT, v);
    }
    word.store(next, Release);
    futex(word, libc::FUTEX_WAKE, 1);
}

/// A raw futex ping-pong between two forked processes over a shared anonymous word: µs per
/// round trip.
fn futex_floor(n: usize) -> BenchResult<f64> {
    // SAFETY: a fresh shared anonymous mapping of one page; checked for failure below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the page is mapped, zeroed, 4096-aligned, and only accessed atomically.
    let word = unsafe { AtomicU32::from_ptr(p.cast()) };
    // SAFETY: the child only runs futex calls and atomics on the shared page, then _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        for _ in 0..n {
            futex_turn(word, 1, 2);
        }
        // SAFETY: leaves the forked child at once, running nothing of the parent's.
        unsafe { libc::_exit(0) };
    }
    let t = Instant::now();
    for _ in 0..n {
        word.store(1, Release);
        futex(word, libc::FUTEX_WAKE, 1);
        futex_turn(word, 2, 0);
    }
    let dt = t.elapsed();
    let mut status = 0;
    // SAFETY: reaps our own child; `p` is unmapped after the child is gone.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::munmap(p, 4096);
    }
    Ok(dt.as_secs_f64() / n as f64 * 1e6)
}

/// The number after `label:` in the Python script's output.
fn parse(out: &str, label: &str) -> BenchResult<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("sync.py printed no `{label}` line").into())
}

/// The sync rows: multiproc, the floors, and Python when it runs.
pub fn jobs(cfg: &Config, py: Option<&Python>) -> Vec<Job> {
    let c = cfg.clone();
    let mut jobs = vec![Job::many(Who::Multiproc, Group::Sync, "sync", move || {
        Ok(vec![
            (
                Metric::SyncLock,
                Obs::Raw(vec![lock_uncontended(c.sync_lock_ops)?]),
            ),
            (
                Metric::SyncLockHandoff,
                Obs::Raw(vec![lock_handoff(c.sync_ipc_rounds)?]),
            ),
            (
                Metric::SyncEventPingPong,
                Obs::Raw(vec![event_ping_pong(c.sync_ipc_rounds)?]),
            ),
            (
                Metric::SyncValueAdd,
                Obs::Raw(vec![value_add(c.sync_add_ops)?]),
            ),
            (
                Metric::SyncBarrier,
                Obs::Raw(vec![barrier_round(c.sync_ipc_rounds)?]),
            ),
        ])
    })];
    let c = cfg.clone();
    jobs.push(Job::many(
        Who::Floor,
        Group::Sync,
        "sync floors",
        move || {
            Ok(vec![
                (
                    Metric::SyncLock,
                    Obs::Raw(vec![atomic_floor(c.sync_lock_ops)]),
                ),
                (
                    Metric::SyncEventPingPong,
                    Obs::Raw(vec![futex_floor(c.sync_ipc_rounds)?]),
                ),
            ])
        },
    ));
    if let Some(py) = py {
        let (p, c) = (py.clone(), cfg.clone());
        jobs.push(Job::many(
            Who::PythonMp,
            Group::Sync,
            "sync.py",
            move || {
                let args = [
                    "--n-lock".to_string(),
                    c.sync_lock_ops.to_string(),
                    "--n-ipc".into(),
                    c.sync_ipc_rounds.to_string(),
                    "--n-add".into(),
                    c.sync_add_ops.to_string(),
                ];
                let out = p.run(&p.script("sync.py"), &args)?;
                let raw = |label| parse(&out, label).map(|v| Obs::Raw(vec![v]));
                Ok(vec![
                    (Metric::SyncLock, raw("lock uncontended")?),
                    (Metric::SyncLockHandoff, raw("lock hand-off")?),
                    (Metric::SyncEventPingPong, raw("event ping-pong")?),
                    (Metric::SyncValueAdd, raw("value add")?),
                    (Metric::SyncBarrier, raw("barrier round")?),
                ])
            },
        ));
    }
    jobs
}
