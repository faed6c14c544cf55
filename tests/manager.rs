//! Managers: shared objects in a server process, used from children and over TCP.

mod common;

use std::time::{Duration, Instant};

use common::{is_gone, join, METHODS, WAIT};
use multiproc::manager::{
    Barrier, Condition, Dict, Event, JoinableQueue, Lock, Object, Queue, SharedObject, Value,
};
use multiproc::{ErrorKind, Manager, Process};
use serde::{Deserialize, Serialize};

#[test]
fn dict_list_namespace_value_operations() {
    let m = Manager::start().unwrap();
    let d = m.dict::<String, u64>("d").unwrap();
    assert_eq!(d.insert("a".into(), 1).unwrap(), None);
    assert_eq!(d.insert("a".into(), 2).unwrap(), Some(1));
    assert!(d.contains_key(&"a".into()).unwrap());
    assert!(!d.contains_key(&"b".into()).unwrap());
    assert_eq!(d.get_or_default("b".into(), 9).unwrap(), 9);
    assert_eq!(d.get_or_default("b".into(), 10).unwrap(), 9);
    d.update([("c".to_string(), 3), ("d".to_string(), 4)])
        .unwrap();
    assert_eq!(d.len().unwrap(), 4);
    let mut keys = d.keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "d"]);
    let mut items = d.items().unwrap();
    items.sort();
    assert_eq!(items[0], ("a".to_string(), 2));
    assert_eq!(d.remove(&"a".into()).unwrap(), Some(2));
    assert_eq!(d.get(&"a".into()).unwrap(), None);
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());

    let l = m.list::<i32>("l").unwrap();
    l.extend([1, 2, 3]).unwrap();
    l.insert(0, 0).unwrap();
    assert_eq!(l.set(1, 10).unwrap(), 1);
    assert_eq!(l.remove(3).unwrap(), 3);
    assert_eq!(l.to_vec().unwrap(), [0, 10, 2]);
    assert_eq!(l.get(7).unwrap(), None);
    assert_eq!(l.set(7, 1).unwrap_err().kind(), ErrorKind::Unsupported);

    let ns = m.namespace("ns").unwrap();
    ns.set("x", &5u8).unwrap();
    assert_eq!(ns.get::<u8>("x").unwrap(), Some(5));
    assert!(ns.remove("x").unwrap());
    assert_eq!(ns.get::<u8>("x").unwrap(), None);

    let v = m.value("v", String::from("a")).unwrap();
    assert_eq!(v.swap("b".into()).unwrap(), "a");
    assert_eq!(v.update(|s| s + "c").unwrap(), "bc");
    // The same name again attaches to the same object (the initial value is not reapplied).
    assert_eq!(m.value("v", String::new()).unwrap().get().unwrap(), "bc");
}

#[test]
fn element_types_are_checked_at_attach() {
    let m = Manager::start().unwrap();
    let _d = m.dict::<String, u64>("counts").unwrap();
    let e = m.dict::<u32, String>("counts").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
    let msg = e.to_string();
    assert!(msg.contains("String") && msg.contains("u32"), "{msg}");
    let e = m.list::<u64>("counts").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
}

type ChildArgs = (Dict<u32, u32>, Queue<u32>, Queue<u32>, Value<u64>);

fn child_work((d, out, inp, v): ChildArgs) -> u32 {
    for i in 0..10 {
        d.insert(i, i * i).unwrap();
        v.update(|n| n + 1).unwrap();
    }
    out.put(99).unwrap();
    inp.get_timeout(WAIT).unwrap()
}

#[test]
fn proxies_travel_to_children_under_every_start_method() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>("squares").unwrap();
    let q = m.queue::<u32>("q").unwrap();
    let back = m.queue::<u32>("back").unwrap();
    let v = m.value("n", 0u64).unwrap();
    for method in METHODS {
        let p = Process::builder()
            .start_method(method)
            .spawn((d.clone(), back.clone(), q.clone(), v.clone()), child_work)
            .unwrap();
        assert_eq!(back.get_timeout(WAIT).unwrap(), 99, "{method:?}");
        q.put(7).unwrap();
        assert_eq!(join(&p).unwrap(), 7);
    }
    assert_eq!(d.get(&9).unwrap(), Some(81));
    assert_eq!(v.get().unwrap(), 30);
    assert!(q.try_get().unwrap_err().is_would_block());
}

fn bump((v, n): (Value<u64>, u32)) {
    for _ in 0..n {
        v.update(|x| x + 1).unwrap();
    }
}

#[test]
fn value_update_loses_nothing_under_contention() {
    let m = Manager::start().unwrap();
    let v = m.value("counter", 0u64).unwrap();
    let ps: Vec<_> = (0..4)
        .map(|_| Process::spawn((v.clone(), 50u32), bump).unwrap())
        .collect();
    bump((v.clone(), 50));
    for p in &ps {
        join(p).unwrap();
    }
    assert_eq!(v.get().unwrap(), 250);
}

#[test]
fn queue_timeouts_and_joinable_queue() {
    let m = Manager::start().unwrap();
    let q = m.bounded_queue::<u8>("bq", 1).unwrap();
    q.put(1).unwrap();
    let e = q.try_put(2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    assert_eq!(e.into_inner(), 2);
    let e = q.put_timeout(3, Duration::from_millis(20)).unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(q.get().unwrap(), 1);
    assert!(q.try_get().unwrap_err().is_would_block());
    assert!(q
        .get_timeout(Duration::from_millis(20))
        .unwrap_err()
        .is_timeout());

    let jq = m.joinable_queue::<u32>("jobs").unwrap();
    for i in 0..5 {
        jq.put(i).unwrap();
    }
    assert!(jq
        .join_timeout(Duration::from_millis(20))
        .unwrap_err()
        .is_timeout());
    let p = Process::spawn(jq.clone(), |jq: JoinableQueue<u32>| {
        for _ in 0..5 {
            jq.get_timeout(WAIT).unwrap();
            jq.task_done().unwrap();
        }
    })
    .unwrap();
    jq.join_timeout(WAIT).unwrap();
    join(&p).unwrap();
    assert_eq!(jq.task_done().unwrap_err().kind(), ErrorKind::Unsupported);
}

#[test]
fn locks_semaphores_events() {
    let m = Manager::start().unwrap();
    let r = m.rlock("r").unwrap();
    let _ = r.acquire().unwrap();
    let _ = r.acquire().unwrap();
    r.release().unwrap();
    r.release().unwrap();
    assert_eq!(r.release().unwrap_err().kind(), ErrorKind::Unsupported);

    // Another process cannot take an RLock this thread holds.
    let _ = r.acquire().unwrap();
    let p = Process::spawn(r.clone(), |r: multiproc::manager::RLock| {
        r.try_acquire().unwrap_err().kind() == ErrorKind::WouldBlock
    })
    .unwrap();
    assert!(join(&p).unwrap());
    r.release().unwrap();

    let s = m.bounded_semaphore("s", 2).unwrap();
    let _ = s.acquire().unwrap();
    let _ = s.acquire().unwrap();
    assert!(s.try_acquire().unwrap_err().is_would_block());
    assert!(s
        .acquire_timeout(Duration::from_millis(20))
        .unwrap_err()
        .is_timeout());
    s.release().unwrap();
    s.release().unwrap();
    assert_eq!(s.release().unwrap_err().kind(), ErrorKind::Unsupported);

    let ev = m.event("go").unwrap();
    assert!(!ev.wait_timeout(Duration::from_millis(10)).unwrap());
    let p = Process::spawn(ev.clone(), |e: Event| e.wait_timeout(WAIT).unwrap()).unwrap();
    ev.set().unwrap();
    assert!(join(&p).unwrap());
    assert!(ev.is_set().unwrap());
    ev.clear().unwrap();
    assert!(!ev.is_set().unwrap());
}

#[test]
fn condition_and_barrier_across_processes() {
    let m = Manager::start().unwrap();
    let c = m.condition("c").unwrap();
    let ready = m.value("ready", false).unwrap();
    let p = Process::spawn(
        (c.clone(), ready.clone()),
        |(c, ready): (Condition, Value<bool>)| {
            let _ = c.acquire().unwrap();
            let deadline = Instant::now() + WAIT;
            while !ready.get().unwrap() && Instant::now() < deadline {
                c.wait_timeout(Duration::from_secs(1)).unwrap();
            }
            c.release().unwrap();
            ready.get().unwrap()
        },
    )
    .unwrap();
    let _ = c.acquire().unwrap();
    ready.set(true).unwrap();
    c.notify_all().unwrap();
    c.release().unwrap();
    assert!(join(&p).unwrap());

    let b = m.barrier("b", 3).unwrap();
    let ps: Vec<_> = (0..2)
        .map(|_| Process::spawn(b.clone(), |b: Barrier| b.wait_timeout(WAIT).unwrap()).unwrap())
        .collect();
    let mine = b.wait_timeout(WAIT).unwrap();
    let mut all: Vec<usize> = ps.iter().map(|p| join(p).unwrap()).collect();
    all.push(mine);
    all.sort();
    assert_eq!(all, [0, 1, 2]);
    // A wait that times out breaks the barrier for the next waiter, until reset.
    assert!(b
        .wait_timeout(Duration::from_millis(20))
        .unwrap_err()
        .is_timeout());
    assert_eq!(b.wait_timeout(WAIT).unwrap_err().kind(), ErrorKind::Closed);
    b.reset().unwrap();
    assert_eq!(b.parties().unwrap(), 3);
}

#[derive(Default)]
struct Tally {
    total: i64,
    seen: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum TallyOp {
    Add(String, i64),
    Total,
    Seen,
    Panic,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
enum TallyReply {
    Total(i64),
    Seen(Vec<String>),
}

impl SharedObject for Tally {
    type Request = TallyOp;
    type Response = TallyReply;
    fn handle(&mut self, op: TallyOp) -> TallyReply {
        match op {
            TallyOp::Add(who, n) => {
                self.total += n;
                self.seen.push(who);
                TallyReply::Total(self.total)
            }
            TallyOp::Total => TallyReply::Total(self.total),
            TallyOp::Seen => TallyReply::Seen(self.seen.clone()),
            TallyOp::Panic => {
                self.total += 100;
                panic!("tally refuses")
            }
        }
    }
}

#[derive(Default)]
struct Unregistered;

impl SharedObject for Unregistered {
    type Request = ();
    type Response = ();
    fn handle(&mut self, (): ()) {}
}

#[test]
fn custom_objects_are_typed_and_registered() {
    let m = Manager::builder().register::<Tally>().start().unwrap();
    let t = m.object::<Tally>("tally").unwrap();
    let p = Process::spawn(t.clone(), |t: Object<Tally>| {
        t.call(&TallyOp::Add("child".into(), 5)).unwrap()
    })
    .unwrap();
    assert_eq!(join(&p).unwrap(), TallyReply::Total(5));
    t.call(&TallyOp::Add("parent".into(), -2)).unwrap();
    assert_eq!(t.call(&TallyOp::Total).unwrap(), TallyReply::Total(3));
    assert_eq!(
        t.call(&TallyOp::Seen).unwrap(),
        TallyReply::Seen(vec!["child".into(), "parent".into()])
    );
    // A panic fails that request; the object keeps the state the panic left.
    let e = t.call(&TallyOp::Panic).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("tally refuses"), "{e}");
    assert_eq!(t.call(&TallyOp::Total).unwrap(), TallyReply::Total(103));
    let e = m.object::<Unregistered>("u").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("register"), "{e}");
}

#[test]
fn semaphore_permits_of_a_killed_holder_come_back() {
    let m = Manager::start().unwrap();
    let s = m.semaphore("s", 2).unwrap();
    let held = m.event("held").unwrap();
    let p = Process::spawn(
        (s.clone(), held.clone()),
        |(s, e): (multiproc::manager::Semaphore, Event)| {
            let _ = s.acquire().unwrap();
            let _ = s.acquire().unwrap();
            e.set().unwrap();
            std::thread::sleep(WAIT * 4); // killed before this ends
        },
    )
    .unwrap();
    assert!(held.wait_timeout(WAIT).unwrap());
    assert!(s.try_acquire().unwrap_err().is_would_block());
    p.kill().unwrap();
    let _ = p.join_timeout(WAIT);
    assert!(s.acquire_timeout(WAIT).unwrap().previous_owner_died());
    let _ = s.acquire_timeout(WAIT).unwrap();
}

#[test]
fn a_lock_may_be_released_by_another_process() {
    let m = Manager::start().unwrap();
    let lock = m.lock("l").unwrap();
    let _ = lock.acquire().unwrap();
    let p = Process::spawn(lock.clone(), |l: Lock| l.release().unwrap()).unwrap();
    join(&p).unwrap();
    let _ = lock.try_acquire().unwrap();
}

#[test]
fn a_holder_killed_holding_a_lock_releases_it_with_owner_died() {
    let m = Manager::start().unwrap();
    let lock = m.lock("l").unwrap();
    let held = m.event("held").unwrap();
    let p = Process::spawn((lock.clone(), held.clone()), |(l, e): (Lock, Event)| {
        let _ = l.acquire().unwrap();
        e.set().unwrap();
        std::thread::sleep(WAIT * 4); // killed before this ends
    })
    .unwrap();
    assert!(held.wait_timeout(WAIT).unwrap());
    assert!(lock.try_acquire().unwrap_err().is_would_block());
    p.kill().unwrap();
    let _ = p.join_timeout(WAIT);
    let a = lock.acquire_timeout(WAIT).unwrap();
    assert!(a.previous_owner_died());
    lock.release().unwrap();
    let again = lock.acquire_timeout(WAIT).unwrap();
    assert!(!again.previous_owner_died());
    lock.release().unwrap();
}

#[test]
fn a_client_killed_in_a_blocking_get_takes_no_item() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u32>("q").unwrap();
    let started = m.event("started").unwrap();
    let p = Process::spawn(
        (q.clone(), started.clone()),
        |(q, s): (Queue<u32>, Event)| {
            s.set().unwrap();
            q.get().unwrap() // blocks in the server until killed
        },
    )
    .unwrap();
    assert!(started.wait_timeout(WAIT).unwrap());
    p.kill().unwrap();
    let _ = p.join_timeout(WAIT);
    // The server notices the client is gone; whatever is put now stays in the queue.
    q.put(5).unwrap();
    assert_eq!(q.get_timeout(WAIT).unwrap(), 5);
    q.put(6).unwrap();
    assert_eq!(q.len().unwrap(), 1);
}

#[test]
fn the_server_going_away_is_a_clear_error_and_a_restart_is_reachable() {
    let key = b"restart-key";
    let m = Manager::serve(&"127.0.0.1:0".parse().unwrap(), key).unwrap();
    let addr = m.address().clone();
    let client = Manager::connect(&addr, key).unwrap();
    let d = client.dict::<u8, u8>("d").unwrap();
    d.insert(1, 1).unwrap();
    // A call blocked in the server when it goes away returns too (and one that had not
    // reached the server yet finds nobody listening): `Disconnected` either way.
    let q = client.queue::<u8>("q").unwrap();
    let blocked = std::thread::spawn(move || q.get());
    m.shutdown().unwrap();
    let e = blocked.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    let t0 = Instant::now();
    let e = d.get(&1).unwrap_err();
    assert!(t0.elapsed() < WAIT);
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");

    // A new server on the same address: the same proxy reaches it (a fresh, empty object).
    let m2 = Manager::serve(&addr, key).unwrap();
    let deadline = Instant::now() + WAIT;
    let _d2 = m2.dict::<u8, u8>("d").unwrap();
    loop {
        match d.get(&1) {
            Ok(v) => {
                assert_eq!(v, None);
                break;
            }
            Err(e) if Instant::now() < deadline => assert_eq!(e.kind(), ErrorKind::Disconnected),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_wrong_key_is_refused_and_nothing_listening_is_disconnected() {
    let m = Manager::serve(&"127.0.0.1:0".parse().unwrap(), b"right").unwrap();
    let e = Manager::connect(m.address(), b"wrong").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
    assert!(Manager::connect(m.address(), b"right").is_ok());
    let addr = m.address().clone();
    drop(m);
    let e = Manager::connect(&addr, b"right").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
}

#[test]
fn dropping_a_manager_stops_its_server_but_a_connected_one_does_not() {
    let m = Manager::serve(&"127.0.0.1:0".parse().unwrap(), b"k").unwrap();
    let c = Manager::connect(m.address(), b"k").unwrap();
    c.list::<u8>("a").unwrap().push(1).unwrap();
    m.event("b").unwrap();
    drop(c);
    assert_eq!(
        m.names().unwrap(),
        [
            ("a".to_string(), "List".to_string()),
            ("b".to_string(), "Event".to_string())
        ]
    );
    let pid = m.server().unwrap().pid();
    drop(m);
    assert!(is_gone(pid));
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let m = Manager::builder().max_connections(1).start().unwrap();
    let d = m.dict::<u8, u8>("d").unwrap(); // keeps its connection open
    let e = m.dict::<u8, u8>("e").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    d.insert(1, 1).unwrap();
}

/// The classic distributed program: a master serves a task queue and a result queue on
/// 127.0.0.1; worker processes connect with the key, take tasks and put results.
fn remote_worker((addr, key): (String, Vec<u8>)) -> usize {
    let m = Manager::connect(&addr.parse().unwrap(), &key).unwrap();
    let tasks = m.queue::<Option<u64>>("tasks").unwrap();
    let results = m.queue::<(u64, u64)>("results").unwrap();
    let mut done = 0;
    while let Some(n) = tasks.get_timeout(WAIT).unwrap() {
        results.put((n, n * n)).unwrap();
        done += 1;
    }
    done
}

#[test]
fn master_and_workers_over_tcp() {
    let key = b"distributed".to_vec();
    let master = Manager::serve(&"127.0.0.1:0".parse().unwrap(), &key).unwrap();
    let tasks = master.queue::<Option<u64>>("tasks").unwrap();
    let results = master.queue::<(u64, u64)>("results").unwrap();
    let addr = master.address().to_string();
    let workers: Vec<_> = (0..3)
        .map(|_| Process::spawn((addr.clone(), key.clone()), remote_worker).unwrap())
        .collect();
    for n in 0..200 {
        tasks.put(Some(n)).unwrap();
    }
    for _ in &workers {
        tasks.put(None).unwrap();
    }
    let mut got: Vec<(u64, u64)> = (0..200)
        .map(|_| results.get_timeout(WAIT).unwrap())
        .collect();
    got.sort();
    assert_eq!(got, (0..200).map(|n| (n, n * n)).collect::<Vec<_>>());
    let total: usize = workers.iter().map(|w| join(w).unwrap()).sum();
    assert_eq!(total, 200);
}

#[test]
fn concurrent_threads_share_one_proxy() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>("d").unwrap();
    let lock = m.lock("l").unwrap();
    // One thread holds the lock; another uses the same proxies meanwhile (no head-of-line
    // blocking behind a blocked call on a shared connection).
    let _ = lock.acquire().unwrap();
    std::thread::scope(|s| {
        let l2 = lock.clone();
        let waiter = s.spawn(move || l2.acquire_timeout(WAIT).map(|_| ()));
        for i in 0..50 {
            d.insert(i, i).unwrap();
        }
        lock.release().unwrap();
        waiter.join().unwrap().unwrap();
    });
    assert_eq!(d.len().unwrap(), 50);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Manager>();
    check::<Dict<String, u64>>();
    check::<Queue<Vec<u8>>>();
    check::<JoinableQueue<u8>>();
    check::<Lock>();
    check::<Condition>();
    check::<Barrier>();
    check::<Value<u8>>();
    check::<Object<Tally>>();
}
