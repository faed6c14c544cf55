//! Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier, Value, Array,
//! RawValue, RawArray across real processes: handles under every start method, mutual
//! exclusion, and processes SIGKILLed inside critical sections, while waiting and after being
//! notified, many times at random points (hangs, lost wake-ups and owner-died reports are
//! counted and printed), and descriptor counts after hundreds of primitives.

mod common;

use std::time::{Duration, Instant};

use common::{join, METHODS, WAIT};
use multiproc::sync::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore};
use multiproc::{Array, ErrorKind, Process, RawArray, RawValue, StartMethod, Value};

/// A cheap pseudo-random sequence (xorshift), seeded from the clock.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Spawns `f(args)` under the fork start method (the fastest: the kill loops start many).
fn fork<A, F, R>(args: A, f: F) -> Process<R>
where
    A: multiproc::TaskArg,
    R: multiproc::TaskResult,
    F: FnOnce(A) -> R + Copy + Send + 'static,
{
    Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(args, f)
        .unwrap()
}

/// Polls `cond` until it holds, failing the test after `WAIT`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn kill(p: &Process<impl serde::de::DeserializeOwned>) {
    p.kill().unwrap();
    let _ = p.join_timeout(WAIT);
}

#[test]
fn locks_in_one_process() {
    let lock = Lock::new().unwrap();
    let g = lock.acquire().unwrap();
    assert!(!g.owner_died());
    assert_eq!(
        lock.try_acquire().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    let l2 = lock.clone();
    std::thread::spawn(move || {
        assert!(l2.try_acquire().unwrap_err().is_would_block());
        let t = Instant::now();
        let e = l2.acquire_timeout(Duration::from_millis(30)).unwrap_err();
        assert!(e.is_timeout() && t.elapsed() >= Duration::from_millis(30));
    })
    .join()
    .unwrap();
    drop(g);
    drop(lock.acquire_timeout(Duration::MAX).unwrap());

    let r = RLock::new().unwrap();
    let a = r.acquire().unwrap();
    let b = r.try_acquire().unwrap();
    let r2 = r.clone();
    let other = move || r2.try_acquire().map(drop).unwrap_err().is_would_block();
    let o = other.clone();
    assert!(std::thread::spawn(o).join().unwrap(), "held twice");
    drop(b);
    let o = other.clone();
    assert!(std::thread::spawn(o).join().unwrap(), "still held once");
    drop(a);
    let r3 = r.clone();
    std::thread::spawn(move || drop(r3.try_acquire().unwrap()))
        .join()
        .unwrap();
}

#[test]
fn semaphores_events_and_raw_values_in_one_process() {
    let s = Semaphore::new(1).unwrap();
    let g = s.acquire().unwrap();
    assert!(s.try_acquire().unwrap_err().is_would_block());
    assert!(s
        .acquire_timeout(Duration::from_millis(20))
        .unwrap_err()
        .is_timeout());
    drop(g);
    s.acquire().unwrap().forget();
    assert_eq!(s.get_value(), 0);
    s.release().unwrap();
    s.release().unwrap();
    assert_eq!(s.get_value(), 2, "a plain semaphore may grow");
    let b = BoundedSemaphore::new(2).unwrap();
    assert_eq!(b.release().unwrap_err().kind(), ErrorKind::InvalidState);
    b.acquire().unwrap().forget();
    b.release().unwrap();
    assert_eq!(b.get_value(), 2);

    let e = Event::new().unwrap();
    assert!(!e.is_set() && !e.wait_timeout(Duration::from_millis(10)));
    e.set();
    assert!(e.wait_timeout(Duration::ZERO) && e.wait_timeout(Duration::MAX));
    e.clear();
    assert!(!e.wait_deadline(Instant::now()));

    let v = RawValue::new([1u8, 2, 3]).unwrap();
    v.set([4, 5, 6]);
    assert_eq!(v.get(), [4, 5, 6]);
    let a = RawArray::new(&[1.0f32, 2.0]).unwrap();
    a.write(0, &[3.0, 4.0]);
    assert_eq!((a.len(), a.get(1)), (2, 4.0));
    assert!(
        std::panic::catch_unwind(|| a.get(2)).is_err(),
        "out of range"
    );
    let empty = Array::<u64>::new(&[]).unwrap();
    assert!(empty.is_empty() && empty.lock().unwrap().is_empty());
    let big = Array::<u64>::zeroed(1000).unwrap();
    assert!(big.lock().unwrap().iter().all(|x| *x == 0));
}

/// Every primitive, in one argument.
type All = (
    Lock,
    RLock,
    Semaphore,
    BoundedSemaphore,
    Event,
    Condition,
    Barrier,
    Value<u64>,
    Array<u32>,
    RawValue<i16>,
    RawArray<u8>,
);

fn use_all((l, r, s, bs, e, c, b, v, a, rv, ra): All) -> usize {
    drop(l.acquire().unwrap());
    drop(r.acquire().unwrap());
    s.release().unwrap();
    bs.acquire().unwrap().forget();
    *v.lock().unwrap() += 1;
    a.lock().unwrap()[2] = 30;
    rv.set(-5);
    ra.set(1, 9);
    let idx = b.wait_timeout(WAIT).unwrap();
    {
        let mut g = c.acquire().unwrap();
        e.set();
        g.wait_timeout(WAIT).unwrap();
    }
    idx
}

#[test]
fn handles_pass_under_every_start_method() {
    for m in METHODS {
        let all: All = (
            Lock::new().unwrap(),
            RLock::new().unwrap(),
            Semaphore::new(0).unwrap(),
            BoundedSemaphore::new(1).unwrap(),
            Event::new().unwrap(),
            Condition::new().unwrap(),
            Barrier::new(2).unwrap(),
            Value::new(41).unwrap(),
            Array::new(&[1, 2, 3]).unwrap(),
            RawValue::new(0).unwrap(),
            RawArray::new(&[0, 0]).unwrap(),
        );
        let p = Process::builder()
            .start_method(m)
            .spawn(all.clone(), use_all)
            .unwrap();
        let (_, _, s, bs, e, c, b, v, a, rv, ra) = all;
        let idx = b.wait_timeout(WAIT).unwrap();
        s.acquire_timeout(WAIT).unwrap().forget();
        assert!(e.wait_timeout(WAIT), "{m:?}");
        // The child set the event holding the condition's lock, then waits on it.
        c.acquire_timeout(WAIT).unwrap().notify_all();
        assert_eq!(join(&p).unwrap() + idx, 1, "{m:?}: indices 0 and 1");
        assert_eq!(bs.get_value(), 0);
        assert_eq!(v.get().unwrap(), 42);
        assert_eq!(a.to_vec().unwrap(), [1, 2, 30]);
        assert_eq!((rv.get(), ra.to_vec()), (-5, vec![0, 9]));
    }
}

fn add_many((v, raw, lock, n): (Value<u64>, RawValue<u64>, Lock, u64)) {
    for _ in 0..n {
        *v.lock().unwrap() += 1;
        let g = lock.acquire().unwrap();
        raw.set(raw.get() + 1);
        drop(g);
    }
}

#[test]
fn mutual_exclusion_across_processes() {
    const N: u64 = 3000;
    let v = Value::new(0u64).unwrap();
    let raw = RawValue::new(0u64).unwrap();
    let lock = Lock::new().unwrap();
    let ps: Vec<_> = (0..3)
        .map(|_| fork((v.clone(), raw.clone(), lock.clone(), N), add_many))
        .collect();
    add_many((v.clone(), raw.clone(), lock.clone(), N));
    for p in &ps {
        join(p).unwrap();
    }
    assert_eq!(v.get().unwrap(), 4 * N);
    assert_eq!(raw.get(), 4 * N);
}

/// In a loop: lock, mark "inside" (`a[0] = 1`), count, unmark, unlock.
fn critical_loop(a: Array<u64>) {
    loop {
        let mut g = a.lock().unwrap();
        if g.owner_died() {
            g[0] = 0;
        }
        g[0] = 1;
        for _ in 0..200 {
            g[1] += 1;
            std::hint::black_box(&mut *g);
        }
        g[0] = 0;
        drop(g);
    }
}

/// Kill holders at random points, many times: nobody hangs, and the next acquirer is told
/// exactly when the holder died inside the critical section.
#[test]
fn killed_lock_holders_are_reported_and_never_hang() {
    const ROUNDS: u32 = 100;
    let mut rng = Rng::new();
    let (mut hangs, mut died_inside, mut reported, mut wrong) = (0, 0, 0, 0);
    for _ in 0..ROUNDS {
        let a = Array::<u64>::zeroed(2).unwrap();
        let p = fork(a.clone(), critical_loop);
        wait_for("the child to loop", || a.lock().unwrap()[1] > 0);
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        kill(&p);
        match a.lock_timeout(WAIT) {
            Err(e) if e.is_timeout() => hangs += 1,
            Err(e) => panic!("{e}"),
            Ok(mut g) => {
                let inside = g[0] == 1;
                died_inside += u32::from(inside);
                reported += u32::from(g.owner_died());
                // Inside implies reported; not reported implies not inside. (Reported but
                // not inside: killed between lock and mark, or between unmark and unlock.)
                if inside && !g.owner_died() {
                    wrong += 1;
                }
                g[0] = 0;
            }
        }
        let g = a.try_lock().unwrap();
        assert!(!g.owner_died(), "owner_died is reported once");
    }
    println!(
        "Lock: {ROUNDS} holders killed at random points: hangs {hangs}, died inside {died_inside}, \
         owner-died reports {reported}, inside without a report {wrong}"
    );
    assert_eq!((hangs, wrong), (0, 0));
}

fn hold_rlock_twice((r, e): (RLock, Event)) {
    let _a = r.acquire().unwrap();
    let _b = r.acquire().unwrap();
    e.set();
    loop {
        std::thread::park();
    }
}

#[test]
fn a_killed_rlock_holder_forgets_its_recursion() {
    let (r, e) = (RLock::new().unwrap(), Event::new().unwrap());
    let p = fork((r.clone(), e.clone()), hold_rlock_twice);
    assert!(e.wait_timeout(WAIT));
    assert!(r.try_acquire().unwrap_err().is_would_block());
    kill(&p);
    let g = r.acquire_timeout(WAIT).unwrap();
    assert!(g.owner_died());
    drop(g);
    let r2 = r.clone();
    std::thread::spawn(move || {
        let g = r2.try_acquire().unwrap();
        assert!(!g.owner_died());
    })
    .join()
    .unwrap();
}

fn take_unit_and_hang((s, e): (Semaphore, Event)) {
    let _g = s.acquire().unwrap();
    e.set();
    loop {
        std::thread::park();
    }
}

fn wait_for_unit(s: Semaphore) {
    s.acquire_timeout(WAIT).unwrap().forget();
}

/// What the docs say: a dead holder's units are not given back; a dead waiter takes none.
#[test]
fn a_dead_process_keeps_its_semaphore_units() {
    let (s, e) = (Semaphore::new(2).unwrap(), Event::new().unwrap());
    let p = fork((s.clone(), e.clone()), take_unit_and_hang);
    assert!(e.wait_timeout(WAIT));
    kill(&p);
    assert_eq!(s.get_value(), 1, "the dead holder's unit is not given back");
    s.acquire().unwrap().forget();
    let w = fork(s.clone(), wait_for_unit);
    std::thread::sleep(Duration::from_millis(20));
    kill(&w);
    let w = fork(s.clone(), wait_for_unit);
    s.release().unwrap();
    join(&w).unwrap();
    assert_eq!(s.get_value(), 0);
}

fn ping((a, b, n): (Event, Event, u32)) {
    for _ in 0..n {
        assert!(a.wait_timeout(WAIT));
        a.clear();
        b.set();
    }
}

#[test]
fn events_ping_pong_between_processes() {
    let (a, b) = (Event::new().unwrap(), Event::new().unwrap());
    let p = fork((a.clone(), b.clone(), 200), ping);
    for _ in 0..200 {
        a.set();
        assert!(b.wait_timeout(WAIT));
        b.clear();
    }
    join(&p).unwrap();
}

fn wait_event(e: Event) -> bool {
    e.wait_timeout(WAIT)
}

/// `set` wakes every waiter, in every process (not just one).
#[test]
fn an_event_wakes_all_its_waiters() {
    let e = Event::new().unwrap();
    let ps: Vec<_> = (0..4).map(|_| fork(e.clone(), wait_event)).collect();
    // Give them time to sleep; whether they do or not, all must see the flag.
    std::thread::sleep(Duration::from_millis(50));
    e.set();
    for p in &ps {
        assert!(join(p).unwrap(), "a waiter was not woken");
    }
}

/// A waiter: count itself in (`st[0]`), wait, count itself out (`st[1]`).
fn cond_waiter((c, st): (Condition, RawArray<u64>)) {
    let mut g = c.acquire().unwrap();
    st.set(0, st.get(0) + 1);
    g.wait_timeout(WAIT).unwrap();
    st.set(1, st.get(1) + 1);
}

/// Notify some of the waiters, and kill waiters (notified or not) before they get the lock
/// back: every notification reaches a live waiter.
#[test]
fn condition_notifications_survive_dead_waiters() {
    const ROUNDS: u32 = 10;
    const W: u64 = 6;
    const NOTIFY: u64 = 3;
    const KILL: usize = 2;
    let mut rng = Rng::new();
    let (mut lost, mut woken) = (0, 0);
    for _ in 0..ROUNDS {
        let c = Condition::with_lock(Lock::new().unwrap()).unwrap();
        let st = RawArray::<u64>::zeroed(2).unwrap();
        let mut ws: Vec<_> = (0..W)
            .map(|_| fork((c.clone(), st.clone()), cond_waiter))
            .collect();
        wait_for("the waiters to wait", || {
            let _g = c.acquire().unwrap();
            st.get(0) == W
        });
        {
            let g = c.acquire().unwrap();
            g.notify(NOTIFY as usize);
            // Still under the lock: the notified cannot have returned yet.
            for _ in 0..KILL {
                let p = ws.remove(rng.below(ws.len() as u64) as usize);
                kill(&p);
            }
        }
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            let _g = c.acquire().unwrap();
            if st.get(1) >= NOTIFY {
                break;
            }
        }
        let out = st.get(1);
        lost += NOTIFY.saturating_sub(out);
        woken += out;
        c.acquire().unwrap().notify_all();
        for p in &ws {
            join(p).unwrap();
        }
    }
    println!(
        "Condition: {ROUNDS} rounds of {W} waiters, notify({NOTIFY}) then {KILL} killed: \
         {woken} woken, {lost} notifications lost"
    );
    assert_eq!(lost, 0);
}

/// Producer side of a predicate wait: set `st[0]` to 1..=n under the lock, notifying each.
fn produce((c, st, n): (Condition, RawArray<u64>, u64)) {
    for i in 1..=n {
        let g = c.acquire().unwrap();
        st.set(0, i);
        g.notify_all();
    }
}

/// `wait_for` with a predicate over state guarded by the condition's (reentrant) lock, held
/// twice: the wait releases both levels (or the producer could never get in) and restores them.
#[test]
fn condition_wait_for_over_a_reentrant_lock() {
    let r = RLock::new().unwrap();
    let c = Condition::with_rlock(r.clone()).unwrap();
    let st = RawArray::<u64>::zeroed(1).unwrap();
    let mut g = c.acquire().unwrap();
    let inner = r.acquire().unwrap();
    let p = fork((c.clone(), st.clone(), 50), produce);
    g.wait_for_timeout(|| st.get(0) == 50, WAIT).unwrap();
    assert!(!g.owner_died());
    // Both levels are held again: another thread cannot take the lock.
    let r2 = r.clone();
    assert!(
        std::thread::spawn(move || r2.try_acquire().map(drop).unwrap_err().is_would_block())
            .join()
            .unwrap()
    );
    drop(inner);
    drop(g);
    join(&p).unwrap();
    let e = c
        .acquire()
        .unwrap()
        .wait_for_timeout(|| false, Duration::from_millis(20))
        .unwrap_err();
    assert!(e.is_timeout());
}

fn hold_condition((c, e): (Condition, Event)) {
    let _g = c.acquire().unwrap();
    e.set();
    loop {
        std::thread::park();
    }
}

/// A process killed holding a condition's lock: the next guard says so, and waits go on.
#[test]
fn a_killed_condition_lock_holder_is_reported() {
    let c = Condition::new().unwrap();
    let e = Event::new().unwrap();
    let p = fork((c.clone(), e.clone()), hold_condition);
    assert!(e.wait_timeout(WAIT));
    kill(&p);
    let mut g = c.acquire_timeout(WAIT).unwrap();
    assert!(g.owner_died());
    assert!(g
        .wait_timeout(Duration::from_millis(5))
        .unwrap_err()
        .is_timeout());
    assert!(!g.owner_died(), "reported once");
}

fn barrier_rounds((b, n): (Barrier, u32)) -> Vec<usize> {
    (0..n).map(|_| b.wait_timeout(WAIT).unwrap()).collect()
}

#[test]
fn barrier_rounds_across_processes() {
    const N: u32 = 30;
    let b = Barrier::new(3).unwrap();
    let ps: Vec<_> = (0..2)
        .map(|_| fork((b.clone(), N), barrier_rounds))
        .collect();
    let mine = barrier_rounds((b.clone(), N));
    let theirs: Vec<_> = ps.iter().map(|p| join(p).unwrap()).collect();
    for i in 0..N as usize {
        let mut idx = [mine[i], theirs[0][i], theirs[1][i]];
        idx.sort();
        assert_eq!(idx, [0, 1, 2], "round {i}");
    }
    assert!(!b.broken() && b.n_waiting() == 0);
}

/// Waits once: the error's kind (`"Ok"` if the barrier released it).
fn barrier_party(b: Barrier) -> String {
    b.wait()
        .map_or_else(|e| format!("{:?}", e.kind()), |_| "Ok".into())
}

/// A party killed while the others wait breaks the barrier for them, at random points.
#[test]
fn a_dead_barrier_party_breaks_it_for_the_others() {
    const ROUNDS: u32 = 20;
    let mut rng = Rng::new();
    let mut hangs = 0;
    for _ in 0..ROUNDS {
        let b = Barrier::new(3).unwrap();
        // The victim arrives first (a party that dies before it arrives is not known to be
        // one); the survivor arrives before or after the kill.
        let victim = fork(b.clone(), barrier_party);
        wait_for("the victim to wait", || b.n_waiting() == 1);
        let survivor = fork(b.clone(), barrier_party);
        if rng.below(2) == 0 {
            wait_for("both parties to wait", || b.n_waiting() == 2 || b.broken());
        }
        std::thread::sleep(Duration::from_micros(rng.below(2000)));
        kill(&victim);
        match survivor.join_timeout(WAIT) {
            Ok(kind) => assert_eq!(kind, "BrokenBarrier"),
            Err(e) if e.is_timeout() => {
                hangs += 1;
                survivor.kill().unwrap();
            }
            Err(e) => panic!("{e}"),
        }
        assert!(b.broken());
    }
    println!("Barrier: {ROUNDS} parties killed: hangs {hangs}");
    assert_eq!(hangs, 0);
}

#[test]
fn barrier_timeout_abort_and_reset() {
    let b = Barrier::new(2).unwrap();
    let e = b.wait_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(e.is_timeout());
    assert!(b.broken());
    assert_eq!(b.wait().unwrap_err().kind(), ErrorKind::BrokenBarrier);
    b.reset();
    assert!(!b.broken());
    let waiter = fork(b.clone(), barrier_party);
    wait_for("the party to wait", || b.n_waiting() == 1);
    b.abort();
    assert_eq!(join(&waiter).unwrap(), "BrokenBarrier");
    b.reset();
    let waiter = fork(b.clone(), barrier_party);
    wait_for("the party to wait", || b.n_waiting() == 1);
    b.reset();
    assert_eq!(join(&waiter).unwrap(), "BrokenBarrier");
    assert!(Barrier::new(0).is_err() && Barrier::new(61).is_err());
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn count_handles((locks, values): (Vec<Lock>, Vec<Value<u32>>)) -> u32 {
    drop(locks[0].acquire().unwrap());
    values.iter().map(|v| v.get().unwrap()).sum()
}

/// Hundreds of primitives created, passed to children and dropped: descriptor counts flat.
#[test]
fn no_descriptor_leaks() {
    let warm = Lock::new().unwrap();
    drop(fork((vec![warm.clone()], vec![]), count_handles).join_timeout(WAIT));
    let before = open_fds();
    for round in 0..4 {
        let locks: Vec<Lock> = (0..30).map(|_| Lock::new().unwrap()).collect();
        let values: Vec<Value<u32>> = (0..30).map(|i| Value::new(i).unwrap()).collect();
        let others = (
            (0..20).map(|_| Event::new().unwrap()).collect::<Vec<_>>(),
            (0..20)
                .map(|_| Condition::new().unwrap())
                .collect::<Vec<_>>(),
            (0..20)
                .map(|_| Barrier::new(2).unwrap())
                .collect::<Vec<_>>(),
        );
        let p = fork((locks.clone(), values.clone()), count_handles);
        assert_eq!(join(&p).unwrap(), (0..30).sum::<u32>(), "round {round}");
        drop((locks, values, others));
    }
    assert_eq!(
        open_fds(),
        before,
        "descriptors after 480 primitives (240 passed to children)"
    );
}
