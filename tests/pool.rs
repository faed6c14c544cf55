//! Pool: the seed's program, map/imap/starmap, crashes, timeouts, recycling, state, futures.
//!
//! Every wait is bounded: a test that would hang fails instead (see `bounded`).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{bounded, is_gone, METHODS};
use multiproc::{with_worker_state, AsyncResult, ErrorKind, Pool, StartMethod};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn double(x: u64) -> u64 {
    x * 2
}

/// Sleeps, and says who ran it and when: (pid, start µs, end µs).
fn long_time_task(ms: u64) -> (u32, u64, u64) {
    let start = now_us();
    std::thread::sleep(Duration::from_millis(ms));
    (std::process::id(), start, now_us())
}

#[test]
fn seed_program_four_at_once_fifth_waits() {
    bounded(60, || {
        let pool = Pool::new(4).unwrap();
        let results: Vec<AsyncResult<(u32, u64, u64)>> = (0..5)
            .map(|_| pool.apply_async(long_time_task, 300))
            .collect();
        pool.close();
        pool.join().unwrap();
        let mut runs: Vec<(u32, u64, u64)> =
            results.into_iter().map(|r| r.get().unwrap()).collect();
        runs.sort_by_key(|r| r.1);
        let (first4, fifth) = (&runs[..4], runs[4]);
        // The first four ran at the same time, in four different workers...
        let pids: BTreeSet<u32> = first4.iter().map(|r| r.0).collect();
        assert_eq!(pids.len(), 4, "{runs:?}");
        let latest_start = first4.iter().map(|r| r.1).max().unwrap();
        let earliest_end = first4.iter().map(|r| r.2).min().unwrap();
        assert!(
            latest_start < earliest_end,
            "the first four overlap: {runs:?}"
        );
        // ...and the fifth waited for a free worker.
        assert!(
            fifth.1 >= earliest_end,
            "the fifth started after one ended: {runs:?}"
        );
        assert!(
            pids.contains(&fifth.0),
            "it ran in one of the same workers: {runs:?}"
        );
    });
}

#[test]
fn map_200k_ordered_and_complete() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let v = pool.map(double, 0..200_000u64).unwrap();
        assert_eq!(v.len(), 200_000);
        assert!(v.iter().enumerate().all(|(i, &x)| x == 2 * i as u64));
        // An input of unknown length is collected first.
        let odd = pool
            .map(double, (0..1000u64).filter(|x| x % 2 == 1))
            .unwrap();
        assert_eq!(odd.len(), 500);
        assert_eq!(odd[0], 2);
        assert!(pool.map(double, Vec::<u64>::new()).unwrap().is_empty());
    });
}

#[test]
fn map_under_every_start_method() {
    bounded(120, || {
        for m in METHODS {
            let pool = Pool::builder()
                .processes(2)
                .start_method(m)
                .build()
                .unwrap();
            assert_eq!(pool.start_method(), m);
            let v = pool.map_chunked(double, 0..20_000u64, 100).unwrap();
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == 2 * i as u64),
                "{m:?}"
            );
            let s: Vec<String> = pool
                .map(
                    |(s, n): (String, usize)| s.repeat(n),
                    vec![("ab".to_string(), 2); 10],
                )
                .unwrap();
            assert_eq!(s[9], "abab", "{m:?}");
            let pids = pool.pids();
            drop(pool);
            wait_gone(&pids);
        }
    });
}

#[test]
fn imap_unordered_is_complete() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let mut v: Vec<u64> = pool
            .imap_unordered(double, 0..50_000u64)
            .collect::<Result<_, _>>()
            .unwrap();
        v.sort_unstable();
        assert_eq!(v, (0..50_000u64).map(double).collect::<Vec<_>>());
        let chunked: u64 = pool
            .imap_unordered(double, 0..10_000u64)
            .chunksize(64)
            .map(Result::unwrap)
            .sum();
        assert_eq!(chunked, 10_000 * 9_999);
    });
}

#[test]
fn imap_over_an_endless_input() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p2 = pulled.clone();
        let input = (0u64..).inspect(move |_| {
            p2.fetch_add(1, Ordering::Relaxed);
        });
        let mut it = pool.imap(double, input).buffer(100);
        let first: Vec<u64> = it.by_ref().take(1000).map(Result::unwrap).collect();
        assert_eq!(first, (0..1000u64).map(double).collect::<Vec<_>>());
        // Input is pulled only as results are consumed: at most the buffer ahead.
        let n = pulled.load(Ordering::Relaxed);
        assert!((1000..=1100).contains(&n), "pulled {n}");
        drop(it);
        // The pool is fine after an abandoned imap.
        assert_eq!(pool.map(double, 0..10u64).unwrap()[9], 18);
    });
}

#[test]
fn starmap_and_apply() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let pairs: Vec<(u32, u32)> = (0..100).map(|i| (i, i + 1)).collect();
        let sums = pool.starmap(|(a, b): (u32, u32)| a + b, pairs).unwrap();
        assert_eq!(sums[10], 21);
        assert_eq!(
            pool.apply(|s: String| s.len(), "four".to_string()).unwrap(),
            4
        );
    });
}

fn abort_on_7_mod_20(x: u64) -> u64 {
    if x % 20 == 7 {
        std::process::abort();
    }
    x * 2
}

fn check_aborts(pool: &Pool, chunk: usize, n: u64) {
    let results: Vec<_> = pool
        .imap(abort_on_7_mod_20, 0..n)
        .chunksize(chunk)
        .collect();
    assert_eq!(results.len() as u64, n);
    for (i, r) in results.iter().enumerate() {
        if i % 20 == 7 {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::WorkerLost, "item {i}: {e}");
            assert_eq!(e.signal(), Some(6), "item {i}: {e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), 2 * i as u64, "item {i}");
        }
    }
}

#[test]
fn aborting_tasks_fail_alone_and_the_pool_goes_on() {
    bounded(120, || {
        let pool = Pool::new(2).unwrap();
        check_aborts(&pool, 1, 200);
        // In chunks, too: only the aborting items fail.
        check_aborts(&pool, 8, 160);
        let e = pool.apply(abort_on_7_mod_20, 7).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WorkerLost);
        assert!(e.to_string().contains("SIGABRT"), "{e}");
        assert_eq!(pool.map(double, 0..1000u64).unwrap()[999], 1998);
        assert_eq!(pool.pids().len(), 2);
    });
}

#[test]
fn sigkill_random_workers_during_a_100k_map() {
    bounded(180, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let (p2, d2) = (pool.clone(), done.clone());
        let killer = std::thread::spawn(move || {
            let mut kills = 0;
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            while !d2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(40));
                let pids = p2.pids();
                if pids.is_empty() {
                    continue;
                }
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pid = pids[(seed % pids.len() as u64) as usize];
                unsafe_kill(pid);
                kills += 1;
            }
            kills
        });
        let results: Vec<_> = pool
            .imap(
                |x: u64| {
                    std::hint::black_box((0..200).sum::<u64>());
                    x * 2
                },
                0..100_000u64,
            )
            .collect();
        done.store(true, Ordering::Relaxed);
        let kills = killer.join().unwrap();
        assert_eq!(results.len(), 100_000);
        let mut lost = 0;
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, 2 * i as u64),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::WorkerLost, "{e}");
                    assert_eq!(e.signal(), Some(9));
                    lost += 1;
                }
            }
        }
        assert!(kills > 0);
        assert!(lost <= kills, "{lost} lost items for {kills} kills");
        // Still serving.
        assert_eq!(pool.map(double, 0..100u64).unwrap()[99], 198);
    });
}

/// SIGKILL through the `kill` command (the tests stay free of unsafe code).
fn unsafe_kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn task_timeout_kills_the_worker_and_the_pool_goes_on() {
    bounded(60, || {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let t = Instant::now();
        let e = pool.apply(sleep_ms, 20_000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        // Per item inside a chunk: only the slow one fails.
        let r: Vec<_> = pool
            .imap(sleep_ms, vec![1, 2, 20_000, 3])
            .chunksize(4)
            .collect();
        assert_eq!(*r[0].as_ref().unwrap(), 1);
        assert_eq!(*r[1].as_ref().unwrap(), 2);
        assert_eq!(r[2].as_ref().unwrap_err().kind(), ErrorKind::Timeout);
        assert_eq!(*r[3].as_ref().unwrap(), 3);
        assert_eq!(pool.map(double, 0..100u64).unwrap()[99], 198);
        assert_eq!(pool.apply(sleep_ms, 100).unwrap(), 100);
    });
}

/// "`max_tasks_per_child(0)` means \"never replace\"" (README, differences on purpose).
#[test]
fn max_tasks_per_child_zero_never_replaces() {
    bounded(60, || {
        let pool = Pool::builder()
            .processes(1)
            .max_tasks_per_child(0)
            .build()
            .unwrap();
        let pids: BTreeSet<u32> = (0..50)
            .map(|_| pool.apply(|()| std::process::id(), ()).unwrap())
            .collect();
        assert_eq!(pids.len(), 1, "one worker ran every task: {pids:?}");
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn max_tasks_per_child_recycles_workers() {
    bounded(60, || {
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(2)
            .initializer(|()| std::process::id(), ())
            .build()
            .unwrap();
        let before = pool.pids();
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            let (pid, init_pid) = pool
                .apply(
                    |()| {
                        (
                            std::process::id(),
                            with_worker_state(|p: &mut u32| *p).unwrap(),
                        )
                    },
                    (),
                )
                .unwrap();
            assert_eq!(pid, init_pid, "the initializer ran in the replacement");
            seen.insert(pid);
        }
        assert!(seen.len() >= 5, "{seen:?}");
        // The last worker to reach its quota is being replaced right now.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let after = pool.pids();
            if after.len() == 2 && before.iter().all(|p| !after.contains(p)) {
                break;
            }
            assert!(Instant::now() < deadline, "{before:?} {after:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_gone(&before);
    });
}

#[test]
fn initializer_state_is_visible_to_tasks() {
    bounded(60, || {
        let pool = Pool::builder()
            .processes(2)
            .initializer(
                |(name, start): (String, u64)| (name, start),
                ("db".to_string(), 1000),
            )
            .build()
            .unwrap();
        let seen: Vec<(u32, String, u64)> = pool
            .map_chunked(
                |_: u32| {
                    with_worker_state(|s: &mut (String, u64)| {
                        s.1 += 1;
                        (std::process::id(), s.0.clone(), s.1)
                    })
                    .expect("state")
                },
                0..200u32,
                10,
            )
            .unwrap();
        let mut per_pid: HashMap<u32, Vec<u64>> = HashMap::new();
        for (pid, name, n) in seen {
            assert_eq!(name, "db");
            per_pid.entry(pid).or_default().push(n);
        }
        for counts in per_pid.values() {
            let mut c = counts.clone();
            c.sort_unstable();
            assert_eq!(c, (1001..=1000 + c.len() as u64).collect::<Vec<_>>());
        }
        // Wrong type, or no pool: None.
        assert_eq!(
            pool.apply(|()| with_worker_state(|_: &mut u8| ()), ())
                .unwrap(),
            None
        );
        assert_eq!(with_worker_state(|_: &mut (String, u64)| ()), None);
    });
}

#[test]
fn initializer_panic_fails_build() {
    bounded(60, || {
        let e = Pool::builder()
            .processes(2)
            .initializer(|()| -> u32 { panic!("no database") }, ())
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
        assert!(e.to_string().contains("no database"), "{e}");
    });
}

#[test]
fn terminate_during_a_map_returns_promptly() {
    bounded(60, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let pids = pool.pids();
        let p2 = pool.clone();
        let mapper = std::thread::spawn(move || p2.map_chunked(sleep_ms, vec![50u64; 1000], 1));
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        pool.terminate();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let e = mapper.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
        wait_gone(&pids);
        assert_eq!(pool.apply(double, 1).unwrap_err().kind(), ErrorKind::Closed);
    });
}

#[test]
fn panics_come_back_with_their_message() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let e = pool
            .apply(|x: u32| -> u32 { panic!("bad input {x}") }, 7)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panicked);
        assert_eq!(e.panic_message(), Some("bad input 7"));
        assert!(e.panic_location().unwrap().contains("tests/pool.rs"));
        // In a chunk only that item fails; map reports it.
        let f = |x: u32| {
            if x == 33 {
                panic!("thirty-three")
            }
            x
        };
        let r: Vec<_> = pool.imap(f, 0..64u32).chunksize(16).collect();
        assert!(r.iter().enumerate().all(|(i, r)| (i == 33) == r.is_err()));
        let e = pool.map(f, 0..64u32).unwrap_err();
        assert_eq!(e.panic_message(), Some("thirty-three"));
        assert_eq!(pool.map(f, 0..10u32).unwrap().len(), 10);
    });
}

/// Serialises fine except for the value 13.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
struct Picky(u32);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 is unlucky"));
        }
        s.serialize_u32(self.0)
    }
}

#[test]
fn serialisation_failures_are_per_item() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        // Arguments that cannot be encoded (in the parent).
        let r: Vec<_> = pool
            .imap(|p: Picky| p.0, (10..16).map(Picky))
            .chunksize(3)
            .collect();
        for (i, r) in r.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, 10 + i as u32),
                Err(e) => {
                    assert_eq!(i, 3);
                    assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
                }
            }
        }
        // Results that cannot be encoded (in the worker).
        let r: Vec<_> = pool.imap(Picky, 10..16u32).chunksize(3).collect();
        assert!(r.iter().enumerate().all(|(i, r)| (i == 3) == r.is_err()));
        let e = r[3].as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
        assert_eq!(pool.apply(Picky, 12).unwrap(), Picky(12));
    });
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: poll, park until woken.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn async_result_is_a_future() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let a = pool.apply_async(sleep_ms, 100);
        let b = pool.apply_async(double, 21);
        let (x, y) = block_on(async { (a.await, b.await) });
        assert_eq!(x.unwrap(), 100);
        assert_eq!(y.unwrap(), 42);
        let e = block_on(pool.apply_async(|()| -> u8 { panic!("async boom") }, ()));
        assert_eq!(e.unwrap_err().panic_message(), Some("async boom"));
    });
}

#[test]
fn async_result_timeouts_and_states() {
    bounded(60, || {
        let pool = Pool::new(1).unwrap();
        let r = pool.apply_async(sleep_ms, 300);
        assert!(!r.ready());
        assert_eq!(r.successful(), None);
        assert_eq!(
            r.get_timeout(Duration::from_millis(10)).unwrap_err().kind(),
            ErrorKind::Timeout
        );
        assert!(r.wait_timeout(Duration::from_secs(20)));
        assert!(r.ready());
        assert_eq!(r.successful(), Some(true));
        assert_eq!(r.get_timeout(Duration::ZERO).unwrap(), 300);
        assert_eq!(r.get().unwrap_err().kind(), ErrorKind::AlreadyJoined);
        // Dropped without waiting: the pool is unaffected.
        drop(pool.apply_async(sleep_ms, 50));
        assert_eq!(pool.apply(double, 2).unwrap(), 4);
    });
}

#[test]
fn closed_pool_refuses_work_and_join_waits() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let r = pool.apply_async(sleep_ms, 200);
        pool.close();
        assert_eq!(pool.apply(double, 1).unwrap_err().kind(), ErrorKind::Closed);
        assert_eq!(
            pool.map(double, 0..3u64).unwrap_err().kind(),
            ErrorKind::Closed
        );
        let first = pool.imap(double, 0..3u64).next().unwrap();
        assert_eq!(first.unwrap_err().kind(), ErrorKind::Closed);
        pool.join().unwrap();
        assert_eq!(
            r.get().unwrap(),
            200,
            "queued work finished before join returned"
        );
        assert!(pool.pids().is_empty());
    });
}

fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for &pid in pids {
        while !is_gone(pid) {
            assert!(Instant::now() < deadline, "worker {pid} still exists");
            std::thread::sleep(Duration::from_millis(10));
            let _ = multiproc::active_children();
        }
    }
}

#[test]
fn dropping_a_pool_leaves_no_processes() {
    bounded(60, || {
        let pool = Pool::new(3).unwrap();
        let r = pool.apply_async(sleep_ms, 60_000);
        let pids = pool.pids();
        assert_eq!(pids.len(), 3);
        let t = Instant::now();
        drop(pool);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(r.get().unwrap_err().kind(), ErrorKind::Cancelled);
        wait_gone(&pids);
    });
}

#[test]
fn fork_start_method_survives_crashes() {
    bounded(60, || {
        let pool = Pool::builder()
            .processes(2)
            .start_method(StartMethod::Fork)
            .build()
            .unwrap();
        check_aborts(&pool, 1, 60);
        let pids = pool.pids();
        drop(pool);
        wait_gone(&pids);
    });
}

#[test]
fn worker_names_and_threads() {
    bounded(60, || {
        let pool = Pool::builder().processes(2).name("hasher").build().unwrap();
        let name = pool
            .apply(|()| multiproc::current_process().name, ())
            .unwrap();
        assert!(name.starts_with("hasher-"), "{name}");
        let counts = pool.map(|x: u64| x, 0..10u64).unwrap();
        assert_eq!(counts.len(), 10);
    });
}

#[test]
fn handles_cross_as_task_arguments() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let (a, b) = multiproc::Pipe::new::<String>().unwrap();
        let r = pool.apply_async(
            |conn: multiproc::Connection<String>| {
                conn.send(&"from a worker".to_string()).unwrap();
                1u8
            },
            b,
        );
        assert_eq!(r.get().unwrap(), 1);
        assert_eq!(
            a.recv_timeout(Duration::from_secs(10)).unwrap(),
            "from a worker"
        );
    });
}

#[test]
fn pool_and_results_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    assert_send_sync::<AsyncResult<String>>();
    fn assert_send<T: Send>() {}
    assert_send::<multiproc::IMap<'static, std::ops::Range<u64>, u64>>();
}

#[cfg(feature = "progress")]
#[test]
fn progress_bar_does_not_disturb_results() {
    bounded(60, || {
        let pool = Pool::builder().processes(2).progress(true).build().unwrap();
        assert_eq!(pool.map(double, 0..1000u64).unwrap()[999], 1998);
        let n = pool.imap(double, (0..100u64).filter(|_| true)).count();
        assert_eq!(n, 100);
    });
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Blob(#[serde(with = "serde_bytes_like")] Vec<u8>);

/// Bytes as one byte string (not element by element).
mod serde_bytes_like {
    pub(crate) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

#[test]
fn big_arguments_and_results_flow_both_ways() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        // 1 MiB each way per task: far above the per-worker byte budget and socket buffers.
        let blobs = (0..24u8).map(|i| Blob(vec![i; 1 << 20]));
        let out: Vec<Blob> = pool
            .imap(
                |Blob(mut v): Blob| {
                    v.reverse();
                    v.push(7);
                    Blob(v)
                },
                blobs,
            )
            .collect::<Result<_, _>>()
            .unwrap();
        for (i, Blob(v)) in out.iter().enumerate() {
            assert_eq!(v.len(), (1 << 20) + 1);
            assert_eq!(v[0], i as u8);
        }
        let lens = pool
            .map(
                |Blob(v): Blob| v.len(),
                (0..8u8).map(|i| Blob(vec![i; 300_000])),
            )
            .unwrap();
        assert_eq!(lens, vec![300_000; 8]);
    });
}
