//! Pool workers under stress from outside: SIGSTOP with a task timeout, SIGKILL during the
//! initializer, SIGINT, oversized messages, and the CPU a sleeping task costs.
//!
//! Every wait is bounded and synchronises on observable state (marker files, pids).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{bounded, is_gone, TempDir};
use multiproc::{ErrorKind, Pool};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `sig` with the `kill` command (the tests stay free of unsafe code).
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn nap((ms, x): (u64, u64)) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (x, std::process::id())
}

#[test]
fn a_sigstopped_worker_times_out_and_the_map_goes_on() {
    bounded(120, || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let mut it = pool.imap(nap, (0..40u64).map(|x| (30, x)));
        let first = it.next().unwrap().unwrap();
        assert_eq!(first.0, 0);
        let victim = pool.pids()[0];
        signal(victim, "-STOP");
        let stopped = Instant::now();
        let mut results = vec![Ok(first)];
        let mut timed_out_after = None;
        for r in it.by_ref() {
            if let Err(e) = &r {
                timed_out_after.get_or_insert(stopped.elapsed());
                assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
            }
            results.push(r);
        }
        assert_eq!(results.len(), 40);
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert!(failed <= 1, "only the frozen worker's task fails: {failed}");
        for (i, r) in results.iter().enumerate() {
            if let Ok((x, _)) = r {
                assert_eq!(*x, i as u64);
            }
        }
        if let Some(t) = timed_out_after {
            // The parent's own clock bounds the task: well before the old 15 s stall.
            assert!(t < Duration::from_secs(10), "timed out after {t:?}");
        }
        wait_until("the frozen worker to be killed", || is_gone(victim));
        assert!(!pool.pids().contains(&victim));
        assert_eq!(pool.map(|x: u64| x + 1, 0..10u64).unwrap()[9], 10);
        // A running task under a frozen worker fails on time too.
        let r = pool.apply_async(nap, (2_000, 1));
        wait_until("the task to start", || pool.pids().len() == 2);
        std::thread::sleep(Duration::from_millis(50));
        for pid in pool.pids() {
            signal(pid, "-STOP");
        }
        let t = Instant::now();
        let e = r.get_timeout(Duration::from_secs(30)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        for pid in pool.pids() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    });
}

/// Dies by SIGKILL in the initializer while `dir/armed` exists, once per `dir/kill-{i}`
/// marker it manages to create (six times in all).
fn init_killed(dir: String) {
    if !Path::new(&format!("{dir}/armed")).exists() {
        return;
    }
    for i in 0..6 {
        let marker = format!("{dir}/kill-{i}");
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

#[test]
fn workers_killed_in_their_initializer_are_replaced() {
    bounded(120, || {
        let dir = TempDir::new("init-kill");
        let pool = Pool::builder()
            .processes(2)
            .initializer(init_killed, dir.s())
            .build()
            .unwrap();
        std::fs::write(dir.path("armed"), b"").unwrap();
        let first = pool.pids();
        signal(first[0], "-9");
        // Six replacements in a row die in their initializer; the pool keeps replacing
        // (backing off) and keeps serving with the other worker meanwhile.
        let v = pool.map(|x: u64| x * 2, 0..200u64).unwrap();
        assert_eq!(v[199], 398);
        wait_until("six deaths in the initializer", || {
            (0..6).all(|i| Path::new(&dir.path(&format!("kill-{i}"))).exists())
        });
        wait_until("two live workers again", || {
            let p = pool.pids();
            p.len() == 2 && !p.contains(&first[0])
        });
        assert_eq!(pool.map(|x: u64| x + 1, 0..100u64).unwrap()[99], 100);
        pool.close();
        pool.join().unwrap();
    });
}

/// Panics in the initializer once `dir/refuse` exists.
fn init_refuses(dir: String) {
    if Path::new(&format!("{dir}/refuse")).exists() {
        panic!("init refused");
    }
}

#[test]
fn an_initializer_that_panics_in_a_replacement_breaks_the_pool() {
    bounded(60, || {
        let dir = TempDir::new("init-panic");
        let pool = Pool::builder()
            .processes(2)
            .initializer(init_refuses, dir.s())
            .build()
            .unwrap();
        std::fs::write(dir.path("refuse"), b"").unwrap();
        signal(pool.pids()[0], "-9");
        // A deterministic failure is reported, not retried.
        wait_until("the pool to break", || {
            pool.apply(|x: u64| x, 1)
                .is_err_and(|e| e.kind() == ErrorKind::Panicked)
        });
        let e = pool.apply(|x: u64| x, 1).unwrap_err();
        assert!(e.to_string().contains("init refused"), "{e}");
        let e = pool.join().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    });
}

/// Marks `started`, sleeps `ms`, returns its pid.
fn marked_nap((started, ms): (String, u64)) -> u32 {
    std::fs::write(started, b"").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

#[test]
fn workers_can_ignore_sigint_and_finish_their_task() {
    bounded(60, || {
        let dir = TempDir::new("sigint");
        let pool = Pool::builder()
            .processes(1)
            .ignore_sigint(true)
            .build()
            .unwrap();
        let pid = pool.pids()[0];
        let r = pool.apply_async(marked_nap, (dir.path("a"), 300));
        wait_until("the task to start", || Path::new(&dir.path("a")).exists());
        signal(pid, "-INT");
        assert_eq!(
            r.get().unwrap(),
            pid,
            "the task finished in the same worker"
        );
        assert_eq!(pool.pids(), vec![pid]);
        // Without it, SIGINT kills the worker (the default disposition) and the task is lost.
        let pool = Pool::new(1).unwrap();
        let pid = pool.pids()[0];
        let r = pool.apply_async(marked_nap, (dir.path("b"), 5_000));
        wait_until("the task to start", || Path::new(&dir.path("b")).exists());
        signal(pid, "-INT");
        let e = r.get().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WorkerLost, "{e}");
        assert_eq!(e.signal(), Some(2), "{e}");
    });
}

#[test]
fn messages_over_max_message_size_fail_alone() {
    bounded(60, || {
        let pool = Pool::builder()
            .processes(2)
            .max_message_size(64 * 1024)
            .build()
            .unwrap();
        // An argument over the limit.
        let e = pool
            .apply(|v: Vec<u8>| v.len(), vec![1u8; 100_000])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
        assert!(e.to_string().contains("max_message_size"), "{e}");
        // A result over the limit.
        let e = pool.apply(|n: usize| vec![7u8; n], 100_000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
        assert!(e.to_string().contains("max_message_size"), "{e}");
        // In a chunk, only the oversized items fail.
        let r: Vec<_> = pool
            .imap(
                |v: Vec<u8>| v.len(),
                [10, 100_000, 20, 30].map(|n| vec![0u8; n]),
            )
            .chunksize(4)
            .collect();
        assert_eq!(r[1].as_ref().unwrap_err().kind(), ErrorKind::TooLarge);
        assert_eq!(
            [&r[0], &r[2], &r[3]].map(|r| *r.as_ref().unwrap()),
            [10, 20, 30]
        );
        let r: Vec<_> = pool
            .imap(|n: usize| vec![1u8; n], [10usize, 100_000, 20])
            .collect();
        assert_eq!(r[1].as_ref().unwrap_err().kind(), ErrorKind::TooLarge);
        assert_eq!(r[2].as_ref().unwrap().len(), 20);
        // Many results just under the limit each still flow (frames stay under it).
        let lens = pool
            .map(|n: usize| vec![2u8; n].len(), vec![60_000usize; 8])
            .unwrap();
        assert_eq!(lens, vec![60_000; 8]);
        let big = pool
            .map_chunked(|n: usize| vec![3u8; n], vec![30_000usize; 6], 1)
            .unwrap();
        assert!(big.iter().all(|v| v.len() == 30_000));
        // Raised, the same values pass.
        let pool = Pool::builder()
            .processes(1)
            .max_message_size(4 << 20)
            .build()
            .unwrap();
        assert_eq!(
            pool.apply(|v: Vec<u8>| v.len(), vec![1u8; 2_000_000])
                .unwrap(),
            2_000_000
        );
    });
}

/// CPU time (ns, from `schedstat`) and context switches of every thread of `pid`.
///
/// `utime`/`stime` in `/proc/<pid>/stat` are sampled at the scheduler tick and miss short
/// wake-ups entirely; `schedstat` is exact, and the switch count is the number of wake-ups.
fn cpu_and_wakeups(pid: u32) -> (u64, u64) {
    let mut ns = 0;
    let mut switches = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        if let Ok(s) = std::fs::read_to_string(t.join("schedstat")) {
            ns += s.split(' ').next().unwrap().parse::<u64>().unwrap();
        }
        if let Ok(s) = std::fs::read_to_string(t.join("status")) {
            for line in s.lines() {
                if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                    switches += v.trim().parse::<u64>().unwrap();
                }
            }
        }
    }
    (ns, switches)
}

fn total(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .map(|&p| cpu_and_wakeups(p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[test]
fn workers_sleeping_in_tasks_cost_no_cpu() {
    bounded(120, || {
        let n = 12;
        let dir = TempDir::new("cpu");
        let pool = Pool::new(n).unwrap();
        let pids = pool.pids();
        let results: Vec<_> = (0..n)
            .map(|i| pool.apply_async(marked_nap, (dir.path(&format!("s{i}")), 3_000)))
            .collect();
        wait_until("every task to start", || {
            (0..n).all(|i| Path::new(&dir.path(&format!("s{i}"))).exists())
        });
        // Let each watchdog report its long element and settle.
        std::thread::sleep(Duration::from_millis(100));
        let before = total(&pids);
        std::thread::sleep(Duration::from_millis(1500));
        let after = total(&pids);
        for r in results {
            r.get().unwrap();
        }
        let (cpu, wakeups) = (after.0 - before.0, after.1 - before.1);
        // 12 workers × 1.5 s: a 1 ms watchdog tick is ~18,000 wake-ups; parked (at most
        // 4 wake-ups a second during a long element), about 70.
        assert!(
            wakeups <= 12 * 10,
            "{n} sleeping workers woke {wakeups} times in 1.5 s ({cpu} ns of CPU)"
        );
        assert!(
            cpu <= 50_000_000,
            "{n} sleeping workers used {cpu} ns of CPU in 1.5 s ({wakeups} wake-ups)"
        );
    });
}
