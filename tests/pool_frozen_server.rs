//! A frozen (SIGSTOPped) fork server never blocks dispatch to healthy workers.
//!
//! The fork server is shared by everything in a test binary, so this test has a binary of
//! its own. The server's pid is the parent of any fork-server worker.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{Pool, StartMethod};

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn parent_of(pid: u32) -> u32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Resumes the fork server whatever happens to the test.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

#[test]
fn a_frozen_fork_server_does_not_stall_the_pool() {
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::ForkServer)
        .build()
        .unwrap();
    assert_eq!(pool.map(|x: u64| x + 1, 0..100u64).unwrap()[99], 100);
    let pids = pool.pids();
    let server = parent_of(pids[0]);
    assert_ne!(
        server,
        std::process::id(),
        "workers are the fork server's children"
    );
    signal(server, "-STOP");
    let resume = Resume(server);
    // One worker dies; its replacement must come from the frozen server.
    signal(pids[0], "-9");
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            // The healthy worker takes all the work meanwhile.
            let v = pool.map_chunked(|x: u64| x * 2, 0..2000u64, 10);
            let _ = tx.send(v);
        });
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the map finished while the fork server was frozen")
            .unwrap();
        assert_eq!(v[1999], 3998);
        // pids() answers with what it has (it never waits on the frozen start).
        let t = Instant::now();
        let now = pool.pids();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(now.contains(&pids[1]), "{now:?}");
        assert!(!now.contains(&pids[0]), "{now:?}");
    });
    assert!(t0.elapsed() < Duration::from_secs(30));
    drop(resume);
    // Resumed, the server starts the replacement.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.pids().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no replacement after the server resumed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.map(|x: u64| x + 3, 0..100u64).unwrap()[99], 102);
    pool.close();
    pool.join().unwrap();
}
