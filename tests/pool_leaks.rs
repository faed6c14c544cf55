//! Pools and recycled workers keep no descriptors and leave no processes.
//!
//! Descriptor counts are per process, so this binary's tests take one lock and run one at
//! a time.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{is_gone, METHODS};
use multiproc::Pool;

static SERIAL: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The descriptor count once background reaping has settled (bounded wait).
fn settled_fds(at_most: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = multiproc::active_children();
        let n = open_fds();
        if n <= at_most || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pids: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &pid in pids {
        while !is_gone(pid) {
            assert!(Instant::now() < deadline, "worker {pid} still exists");
            std::thread::sleep(Duration::from_millis(10));
            let _ = multiproc::active_children();
        }
    }
}

#[test]
fn pools_created_and_dropped_keep_no_descriptors() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for m in METHODS {
        // Warm up: the fork server and other one-time descriptors exist from here on.
        let p = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        assert_eq!(p.apply(|x: u32| x + 1, 1).unwrap(), 2);
        drop(p);
        let before = settled_fds(0);
        let mut pids = BTreeSet::new();
        for i in 0..70u32 {
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .build()
                .unwrap();
            assert_eq!(pool.apply(|x: u32| x * 2, i).unwrap(), i * 2);
            pids.extend(pool.pids());
            if i % 2 == 0 {
                pool.close();
                pool.join().unwrap();
            }
        }
        wait_gone(&pids);
        let after = settled_fds(before);
        assert!(
            after <= before,
            "{m:?}: {before} descriptors before 70 pools, {after} after"
        );
    }
}

#[test]
fn recycled_workers_keep_no_descriptors() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    assert_eq!(pool.map(|x: u64| x, 0..20u64).unwrap().len(), 20);
    let before = settled_fds(0);
    let mut pids = BTreeSet::new();
    for round in 0..20u64 {
        let v = pool
            .map_chunked(|x: u64| (x, std::process::id()), 0..100u64, 1)
            .unwrap();
        assert_eq!(v.len(), 100, "round {round}");
        assert!(v.iter().enumerate().all(|(i, r)| r.0 == i as u64));
        pids.extend(v.iter().map(|r| r.1));
    }
    assert!(pids.len() >= 1900, "one worker per task: {}", pids.len());
    let now = open_fds();
    // Two live workers (and the replacements being started) may hold a few.
    assert!(
        now <= before + 16,
        "{before} descriptors before 2000 recycled workers, {now} after"
    );
    pool.close();
    pool.join().unwrap();
    wait_gone(&pids);
    let after = settled_fds(before);
    assert!(
        after <= before,
        "{before} before, {after} after the pool ended"
    );
}
