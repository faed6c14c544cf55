//! Pool API a Python user reaches for: dropped `AsyncResult`s still run, `cancel`,
//! callbacks, `map_async`/`starmap_async`, `AsCompleted`, the timeout shapes.
//!
//! Tasks leave files in a per-test directory so the tests observe what ran; every wait is
//! bounded (see `bounded`) and synchronises on those files, never on sleeps.

mod common;

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, TempDir};
use multiproc::{as_completed, AsCompleted, ErrorKind, Pool};

/// Waits (bounded) until `path` exists.
fn wait_for_file(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new(path).exists() {
        assert!(Instant::now() < deadline, "{path} never appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn touch(path: &str) {
    std::fs::write(path, b"").unwrap();
}

/// The tutorial's task: takes a while, then leaves `dir/i` behind.
fn long_time_task((dir, i): (String, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(format!("{dir}/{i}"), b"ran").unwrap();
    i
}

/// Marks `started`, waits for `go` to exist, returns `v`.
fn gated((started, go, v): (String, String, u64)) -> u64 {
    touch(&started);
    wait_for_file(&go);
    v
}

fn run_dropped(workers: usize, tasks: u64) {
    let dir = TempDir::new("dropped");
    let pool = Pool::new(workers).unwrap();
    for i in 0..tasks {
        pool.apply_async(long_time_task, (dir.s(), i)); // handle dropped, as in Python
    }
    pool.close();
    pool.join().unwrap();
    let mut ran: Vec<u64> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, (0..tasks).collect::<Vec<_>>(), "every task ran");
}

#[test]
fn dropped_async_results_still_run() {
    bounded(120, || {
        run_dropped(4, 5); // the program, verbatim
        run_dropped(2, 10);
    });
}

#[test]
fn cancel_only_while_pending() {
    bounded(60, || {
        let dir = TempDir::new("cancel");
        let pool = Pool::new(1).unwrap();
        let busy = pool.apply_async(gated, (dir.path("a-started"), dir.path("a-go"), 1));
        wait_for_file(&dir.path("a-started"));
        // The only worker is busy: this one is queued, and cancelling it works.
        let queued = pool.apply_async(long_time_task, (dir.s(), 99));
        assert!(!queued.ready());
        assert!(queued.cancel());
        assert!(queued.ready());
        assert!(!queued.cancel(), "only once");
        assert_eq!(queued.successful(), Some(false));
        assert_eq!(queued.get().unwrap_err().kind(), ErrorKind::Cancelled);
        // A running task cannot be cancelled.
        assert!(!busy.cancel());
        touch(&dir.path("a-go"));
        assert_eq!(busy.get().unwrap(), 1);
        // Nor a finished one.
        let done = pool.apply_async(|x: u64| x + 1, 1);
        assert!(done.wait_timeout(Duration::from_secs(30)));
        assert!(!done.cancel());
        assert_eq!(done.get().unwrap(), 2);
        pool.close();
        pool.join().unwrap();
        assert!(
            !Path::new(&dir.path("99")).exists(),
            "the cancelled task never ran"
        );
    });
}

/// Sleeps 20 ms, then leaves `dir/i`.
fn mark((dir, i): (String, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    touch(&format!("{dir}/{i}"));
    i
}

#[test]
fn dropping_an_imap_stops_feeding_it() {
    bounded(60, || {
        let dir = TempDir::new("imap-drop");
        let pool = Pool::new(2).unwrap();
        let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p2 = pulled.clone();
        let d = dir.s();
        let input = (0u64..).map(move |i| {
            p2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (d.clone(), i)
        });
        let mut it = pool.imap(mark, input).buffer(50);
        for k in 0..3 {
            assert_eq!(it.next().unwrap().unwrap(), k);
        }
        drop(it);
        pool.close();
        pool.join().unwrap();
        let n = pulled.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n <= 53, "pulled {n}: no input is pulled after the drop");
        // The three consumed ran, the pulled ones that had not started did not: at most the
        // ones running or in a worker's window at the drop ran on.
        let ran = dir.count();
        assert!((3..20).contains(&ran), "{ran} of {n} pulled items ran");
    });
}

/// What a callback saw, and on which thread.
type Seen = (Result<u64, ErrorKind>, String);

#[test]
fn callbacks_run_on_the_callback_thread_and_join_waits_for_them() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let me = std::thread::current().id();
        for i in 0..10u64 {
            let (s1, s2) = (seen.clone(), seen.clone());
            pool.apply_async_with(
                |x: u64| {
                    if x == 7 {
                        panic!("seven")
                    }
                    x * 10
                },
                i,
                move |v| {
                    assert_ne!(std::thread::current().id(), me);
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    s1.lock().unwrap().push((Ok(v), name));
                },
                move |e| {
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    s2.lock().unwrap().push((Err(e.kind()), name));
                },
            );
        }
        // `then` on a map_async, too.
        let (tx, rx) = mpsc::channel();
        pool.map_async(|x: u64| x + 1, 0..100u64)
            .then(move |v| tx.send(v.iter().sum::<u64>()).unwrap(), |_| {});
        pool.close();
        pool.join().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 10, "join returned after every callback ran");
        for (r, thread) in seen.iter() {
            assert_eq!(thread, "multiproc-pool-callbacks");
            match r {
                Ok(v) => assert_ne!(*v, 70),
                Err(k) => assert_eq!(*k, ErrorKind::Panicked),
            }
        }
        assert_eq!(seen.iter().filter(|(r, _)| r.is_err()).count(), 1);
        assert_eq!(rx.try_recv().unwrap(), 5050);
        // A closed pool: the error callback still runs on the callback thread.
        let (tx, rx) = mpsc::channel();
        pool.apply_async_with(
            |x: u64| x,
            1,
            |_| {},
            move |e| {
                let name = std::thread::current().name().map(str::to_string);
                tx.send((e.kind(), name)).unwrap();
            },
        );
        let (kind, name) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(kind, ErrorKind::Closed);
        assert_eq!(name.as_deref(), Some("multiproc-pool-callbacks"));
    });
}

#[test]
fn a_panicking_callback_does_not_stop_the_others() {
    bounded(60, || {
        let pool = Pool::new(1).unwrap();
        pool.apply_async(|x: u64| x, 1)
            .then(|_| panic!("callback boom"), |_| {});
        let (tx, rx) = mpsc::channel();
        pool.apply_async(|x: u64| x + 1, 1)
            .then(move |v| tx.send(v).unwrap(), |_| {});
        pool.close();
        pool.join().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 2);
    });
}

/// Item 0 panics at once; the others wait for `go`.
fn first_fails((go, x): (String, u32)) -> u32 {
    if x == 0 {
        panic!("first")
    }
    wait_for_file(&go);
    x
}

#[test]
fn map_async_is_ready_at_its_first_failure() {
    bounded(60, || {
        let dir = TempDir::new("map-fail");
        let pool = Pool::new(2).unwrap();
        let go = dir.path("go");
        let r = pool.map_async(first_fails, (0..2u32).map(|x| (go.clone(), x)));
        // Item 1 is still blocked: the result is the failure already.
        let e = r.get_timeout(Duration::from_secs(30)).unwrap_err();
        assert_eq!(e.panic_message(), Some("first"), "{e}");
        touch(&go);
        pool.close();
        pool.join().unwrap();
    });
}

#[test]
fn map_async_and_starmap_async() {
    bounded(60, || {
        let pool = Pool::new(2).unwrap();
        let r = pool.map_async(|x: u64| x * 2, 0..10_000u64);
        let sums = pool.starmap_async(|(a, b): (u32, u32)| a + b, vec![(1, 2), (3, 4)]);
        let v = r.get().unwrap();
        assert_eq!(v.len(), 10_000);
        assert!(v.iter().enumerate().all(|(i, &x)| x == 2 * i as u64));
        assert_eq!(sums.get().unwrap(), vec![3, 7]);
        assert!(pool
            .map_async(|x: u64| x, Vec::<u64>::new())
            .get()
            .unwrap()
            .is_empty());
        // A failure is the result (the first by input position).
        let e = pool
            .map_async(
                |x: u32| {
                    if x % 100 == 42 {
                        panic!("bad {x}")
                    }
                    x
                },
                0..1000u32,
            )
            .get()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panicked);
        assert!(e.panic_message().unwrap().starts_with("bad "), "{e}");
        // And it is a Future like any AsyncResult.
        let r = pool.map_async(|x: u8| x, [1u8, 2, 3]);
        assert!(r.wait_timeout(Duration::from_secs(30)));
        assert_eq!(r.successful(), Some(true));
        assert_eq!(r.get_timeout(Duration::ZERO).unwrap(), vec![1, 2, 3]);
    });
}

#[test]
fn as_completed_yields_in_completion_order() {
    bounded(60, || {
        let dir = TempDir::new("order");
        let pool = Pool::new(3).unwrap();
        let task = |name: &str, v: u64| {
            pool.apply_async(
                gated,
                (
                    dir.path(&format!("{name}-s")),
                    dir.path(&format!("{name}-go")),
                    v,
                ),
            )
        };
        let mut set = as_completed([task("a", 1), task("b", 2), task("c", 3)]);
        assert_eq!(set.len(), 3);
        for n in ["a", "b", "c"] {
            wait_for_file(&dir.path(&format!("{n}-s")));
        }
        // Nothing finished yet: a timeout, and the set is still whole.
        let e = set
            .next_timeout(Duration::from_millis(20))
            .unwrap()
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(set.len(), 3);
        for (go, want) in [("b", 2), ("c", 3), ("a", 1)] {
            touch(&dir.path(&format!("{go}-go")));
            assert_eq!(set.next().unwrap().unwrap(), want);
        }
        assert!(set.is_empty());
        assert!(set.next().is_none());
        assert!(set.next_timeout(Duration::ZERO).is_none());
    });
}

/// Node `n` of a tree of `limit` nodes: its children.
fn children((n, limit): (u64, u64)) -> Vec<u64> {
    [2 * n + 1, 2 * n + 2]
        .into_iter()
        .filter(|&c| c < limit)
        .collect()
}

#[test]
fn a_frontier_grows_while_draining() {
    bounded(120, || {
        let pool = Pool::new(2).unwrap();
        let limit = 2000;
        let mut frontier = AsCompleted::new();
        frontier.push(pool.apply_async(children, (0u64, limit)));
        let mut seen = vec![0u64];
        while let Some(r) = frontier.next() {
            for c in r.unwrap() {
                seen.push(c);
                frontier.push(pool.apply_async(children, (c, limit)));
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..limit).collect::<Vec<_>>());
        // Members of two pools in one set; a finished result pushed late comes out too.
        let other = Pool::new(1).unwrap();
        let early = other.apply_async(|x: u64| x, 5);
        assert!(early.wait_timeout(Duration::from_secs(30)));
        let mut set = AsCompleted::new();
        set.push(pool.apply_async(|x: u64| x, 4));
        set.push(early);
        let mut got: Vec<u64> = set.map(Result::unwrap).collect();
        got.sort_unstable();
        assert_eq!(got, vec![4, 5]);
    });
}

#[test]
fn as_completed_drains_ten_thousand_results() {
    bounded(180, || {
        let pool = Pool::new(2).unwrap();
        let set = as_completed((0..10_000u64).map(|i| pool.apply_async(|x: u64| x * 3, i)));
        let mut n = 0;
        let mut sum = 0;
        for r in set {
            sum += r.unwrap();
            n += 1;
        }
        assert_eq!(n, 10_000);
        assert_eq!(sum, 3 * 9_999 * 10_000 / 2);
    });
}

#[test]
fn timeouts_take_the_one_shape() {
    bounded(60, || {
        let dir = TempDir::new("timeouts");
        let pool = Pool::new(1).unwrap();
        let r = pool.apply_async(gated, (dir.path("s"), dir.path("go"), 8));
        let e = r.get_timeout(Duration::from_millis(5)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        let e = r
            .get_deadline(Instant::now() + Duration::from_millis(5))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(!r.wait_timeout(Duration::ZERO));
        // join_timeout: Err(Timeout) while work runs; the pool closes and keeps going.
        let e = pool.join_timeout(Duration::from_millis(5)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        let e = pool
            .join_deadline(Instant::now() + Duration::from_millis(5))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        touch(&dir.path("go"));
        assert_eq!(
            r.get_timeout(Duration::MAX).unwrap(),
            8,
            "MAX means no deadline"
        );
        pool.join_timeout(Duration::MAX).unwrap();
        // task_timeout(Duration::MAX) is no timeout at all.
        let pool = Pool::builder()
            .processes(1)
            .task_timeout(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(pool.apply(|x: u64| x + 1, 1).unwrap(), 2);
        let r = pool.apply_async(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 50);
        r.get_timeout(Duration::from_secs(30)).unwrap();
    });
}
