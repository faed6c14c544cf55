//! SIGKILL and SIGSTOP/SIGCONT storms on pool workers (during `map`, `imap_unordered`,
//! `apply_async`), on queue producers and consumers, and on the fork server.
//!
//! Figures: tasks, kills, ok, failed, lost (no outcome at all), duplicated (a result delivered
//! twice), re-executed (a task's side effect seen twice: documented as possible after a kill,
//! so a figure, not a failure) and hung (a bounded wait that ran out: must be 0).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{
    with_worker_state, Connection, ErrorKind, Pipe, Pool, Process, Queue, QueueBuilder, StartMethod,
};
use rustix::process::Signal;

use crate::compat::{get_for, join_for, try_get, Waited};
use crate::util::{
    bounded, check, fail, fork_server, proc_state, row, scale, seed, signal, wait_for, Rng,
};

/// The longest a single result may take in a storm before it counts as hung.
const WAIT: Duration = Duration::from_secs(30);

fn storm_secs() -> Duration {
    Duration::from_secs(scale(4, 300))
}

/// The per-worker side-effect log: every task appends its index (8 bytes, one `write`).
fn open_log(path: String) -> std::fs::File {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("opening the side-effect log")
}

/// A task: logs that it ran, works a little (sometimes a few ms), returns `3i + 1`.
fn logged_task(i: u64) -> u64 {
    with_worker_state(|f: &mut std::fs::File| {
        let _ = f.write_all(&i.to_le_bytes());
    });
    if i % 97 == 0 {
        std::thread::sleep(Duration::from_millis(3));
    } else {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_micros((i % 13) * 8) {
            std::hint::black_box(i);
        }
    }
    i * 3 + 1
}

struct Log {
    path: std::path::PathBuf,
}

impl Log {
    fn new(tag: &str) -> Log {
        let path =
            std::env::temp_dir().join(format!("multiproc-chaos-{tag}-{}.log", std::process::id()));
        std::fs::write(&path, b"").expect("creating the side-effect log");
        Log { path }
    }
    fn path(&self) -> String {
        self.path.display().to_string()
    }
    /// How many indices were logged more than once.
    fn reexecuted(&self) -> u64 {
        let b = std::fs::read(&self.path).unwrap_or_default();
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for c in b.chunks_exact(8) {
            *seen
                .entry(u64::from_le_bytes(c.try_into().unwrap()))
                .or_default() += 1;
        }
        seen.values().filter(|&&n| n > 1).count() as u64
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn logged_pool(log: &Log, n: usize, method: StartMethod) -> Pool {
    Pool::builder()
        .processes(n)
        .start_method(method)
        .initializer(open_log, log.path())
        .build()
        .expect("building the storm pool")
}

/// Kills (or freezes and thaws) random workers of `pool` until `stop`.
fn storm_thread(pool: &Pool, stop: &AtomicBool, kills: &AtomicU64, freeze: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5 + rng.below(40)));
        let pids = pool.pids();
        if pids.is_empty() {
            continue;
        }
        let pid = *rng.pick(&pids);
        if freeze {
            signal(pid, Signal::STOP);
            std::thread::sleep(Duration::from_millis(10 + rng.below(200)));
            signal(pid, Signal::CONT);
        } else {
            signal(pid, Signal::KILL);
        }
        kills.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Figures {
    tasks: u64,
    ok: u64,
    failed: u64,
    lost: u64,
    duplicated: u64,
    wrong: u64,
    hung: u64,
    kinds: HashMap<String, u64>,
}

impl Figures {
    fn failure(&mut self, kind: ErrorKind) {
        self.failed += 1;
        *self.kinds.entry(format!("{kind:?}")).or_default() += 1;
    }
}

fn report(mode: &str, what: &str, f: &Figures, kills: u64, reexec: u64, secs: f64, freeze: bool) {
    let mut kinds: Vec<_> = f.kinds.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    kinds.sort();
    row(
        "Pool storms",
        &[
            ("mode", mode.to_string()),
            ("signal", what.to_string()),
            ("seconds", format!("{secs:.1}")),
            ("tasks", f.tasks.to_string()),
            ("kills", kills.to_string()),
            ("ok", f.ok.to_string()),
            ("failed", f.failed.to_string()),
            ("lost", f.lost.to_string()),
            ("duplicated", f.duplicated.to_string()),
            ("wrong", f.wrong.to_string()),
            ("re-executed", reexec.to_string()),
            ("hung", f.hung.to_string()),
            ("failure kinds", kinds.join(" ")),
        ],
    );
    check(f.lost == 0, || format!("{mode}: {} tasks lost", f.lost));
    check(f.duplicated == 0, || {
        format!("{mode}: {} results delivered twice", f.duplicated)
    });
    check(f.wrong == 0, || {
        format!("{mode}: {} wrong results", f.wrong)
    });
    check(f.hung == 0, || {
        format!("{mode}: {} waits hung past {WAIT:?}", f.hung)
    });
    if freeze {
        check(f.failed == 0, || {
            format!(
                "{mode}: {} tasks failed although no worker died (only SIGSTOP/SIGCONT): {kinds:?}",
                f.failed
            )
        });
    } else {
        check(f.failed <= kills, || {
            format!("{mode}: {} failures from {kills} kills", f.failed)
        });
        for k in f.kinds.keys() {
            check(k == "WorkerLost" || k == "Killed", || {
                format!("{mode}: a killed worker's task failed with {k}, not WorkerLost")
            });
        }
    }
}

/// After a storm the pool still serves, within a bound. (A kill sent just before the storm
/// stopped may still fail the next task, whose worker the pool has not seen die yet: one
/// retry.)
fn still_serves(pool: &Pool, mode: &str) {
    let mut last = None;
    for _ in 0..2 {
        match pool.apply_async(|x: u64| x + 1, 41u64).get_timeout(WAIT) {
            Ok(42) => return,
            other => last = Some(other),
        }
    }
    fail(format!(
        "{mode}: the pool does not serve after the storm: {last:?}"
    ));
}

fn dispose(pool: Pool, mode: &str) {
    if bounded(Duration::from_secs(20), move || drop(pool)).is_none() {
        fail(format!("{mode}: dropping the pool hung"));
    }
}

/// SIGKILL storm during `map`.
pub fn pool_kill_map() {
    let log = Log::new("map");
    let pool = logged_pool(&log, 3, StartMethod::ForkServer);
    let stop = AtomicBool::new(false);
    let kills = AtomicU64::new(0);
    let mut f = Figures::default();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| storm_thread(&pool, &stop, &kills, false, seed()));
        let mut base = 0u64;
        while t0.elapsed() < storm_secs() {
            let n = 500u64;
            f.tasks += n;
            match pool.map(logged_task, base..base + n) {
                Ok(v) => {
                    if v.len() as u64 != n {
                        f.lost += n.saturating_sub(v.len() as u64);
                    }
                    for (j, r) in v.iter().enumerate() {
                        if *r != (base + j as u64) * 3 + 1 {
                            f.wrong += 1;
                        }
                    }
                    f.ok += v.len() as u64;
                }
                // The rest of a failed map is cancelled by design: one failure per map.
                Err(e) => f.failure(e.kind()),
            }
            base += n;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let secs = t0.elapsed().as_secs_f64();
    still_serves(&pool, "map");
    report(
        "map",
        "SIGKILL",
        &f,
        kills.load(Ordering::Relaxed),
        log.reexecuted(),
        secs,
        false,
    );
    dispose(pool, "map");
}

fn imap_storm(freeze: bool, mode: &str) {
    let log = Log::new(mode);
    let pool = logged_pool(&log, 3, StartMethod::ForkServer);
    let stop = AtomicBool::new(false);
    let kills = AtomicU64::new(0);
    let mut f = Figures::default();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| storm_thread(&pool, &stop, &kills, freeze, seed() ^ 1));
        let mut base = 0u64;
        while t0.elapsed() < storm_secs() {
            let n = 5000u64;
            f.tasks += n;
            let mut seen = vec![0u8; n as usize];
            let mut it = pool.imap_unordered(logged_task, base..base + n);
            let mut batch_failed = 0u64;
            loop {
                match it.next_timeout(WAIT) {
                    None => break,
                    Some(Ok(v)) => {
                        let i = (v.wrapping_sub(1)) / 3;
                        if v % 3 != 1 || i < base || i >= base + n {
                            f.wrong += 1;
                            continue;
                        }
                        let k = (i - base) as usize;
                        seen[k] += 1;
                        if seen[k] > 1 {
                            f.duplicated += 1;
                        } else {
                            f.ok += 1;
                        }
                    }
                    Some(Err(e)) if e.is_timeout() => {
                        f.hung += 1;
                        break;
                    }
                    Some(Err(e)) => {
                        batch_failed += 1;
                        f.failure(e.kind());
                    }
                }
            }
            let distinct = seen.iter().filter(|&&c| c > 0).count() as u64;
            // Items with neither a result nor a failure.
            f.lost += n.saturating_sub(distinct + batch_failed);
            base += n;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let secs = t0.elapsed().as_secs_f64();
    still_serves(&pool, mode);
    report(
        mode,
        if freeze { "SIGSTOP/SIGCONT" } else { "SIGKILL" },
        &f,
        kills.load(Ordering::Relaxed),
        log.reexecuted(),
        secs,
        freeze,
    );
    dispose(pool, mode);
}

/// SIGKILL storm during `imap_unordered`.
pub fn pool_kill_imap() {
    imap_storm(false, "imap_unordered");
}

fn apply_storm(freeze: bool, mode: &str) {
    let log = Log::new(mode);
    let pool = logged_pool(&log, 3, StartMethod::ForkServer);
    let stop = AtomicBool::new(false);
    let kills = AtomicU64::new(0);
    let mut f = Figures::default();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| storm_thread(&pool, &stop, &kills, freeze, seed() ^ 2));
        let mut next = 0u64;
        let mut window = std::collections::VecDeque::new();
        while t0.elapsed() < storm_secs() || !window.is_empty() {
            while window.len() < 256 && t0.elapsed() < storm_secs() {
                window.push_back((next, pool.apply_async(logged_task, next)));
                next += 1;
                f.tasks += 1;
            }
            let Some((i, r)) = window.pop_front() else {
                break;
            };
            match r.get_timeout(WAIT) {
                Ok(v) if v == i * 3 + 1 => f.ok += 1,
                Ok(_) => f.wrong += 1,
                Err(e) if e.is_timeout() => f.hung += 1,
                Err(e) => f.failure(e.kind()),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let secs = t0.elapsed().as_secs_f64();
    still_serves(&pool, mode);
    report(
        mode,
        if freeze { "SIGSTOP/SIGCONT" } else { "SIGKILL" },
        &f,
        kills.load(Ordering::Relaxed),
        log.reexecuted(),
        secs,
        freeze,
    );
    dispose(pool, mode);
}

/// SIGKILL storm during `apply_async`.
pub fn pool_kill_apply() {
    apply_storm(false, "apply_async");
}

/// SIGSTOP/SIGCONT storm during `apply_async` and `imap_unordered`: nobody dies, so nothing
/// may fail, be lost or hang.
pub fn pool_stop_storm() {
    apply_storm(true, "apply_async (frozen)");
    imap_storm(true, "imap_unordered (frozen)");
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A worker frozen for good with `task_timeout(500 ms)`: it is treated as over time, so a
/// running `map` and pending `apply_async` calls end within the timeout plus a bound
/// (issue 9 point 9).
pub fn pool_frozen_worker() {
    let bound = Duration::from_secs(5);
    for mode in ["apply_async", "map", "map (frozen while idle)"] {
        let pool = std::sync::Arc::new(
            Pool::builder()
                .processes(2)
                .task_timeout(Duration::from_millis(500))
                .build()
                .expect("pool"),
        );
        // Both workers up and warm.
        let _ = pool.map(sleep_ms, [1u64, 1, 1, 1]);
        // 40 tasks of 50 ms on 2 workers is 1 s of work; the frozen one costs the timeout.
        let limit = Duration::from_millis(1000 + 500) + bound;
        let t0 = Instant::now();
        let victim = pool.pids()[0];
        let idle = mode.contains("idle");
        if idle {
            signal(victim, Signal::STOP);
            wait_for(Duration::from_secs(2), || proc_state(victim) == Some('T'));
        }
        let (tx, rx) = mpsc::channel();
        let p2 = pool.clone();
        let apply = mode == "apply_async";
        std::thread::spawn(move || {
            let mut ok = 0u64;
            let mut failed = 0u64;
            if apply {
                let rs: Vec<_> = (0..40).map(|_| p2.apply_async(sleep_ms, 50u64)).collect();
                for r in rs {
                    match r.get() {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
            } else {
                match p2.map(sleep_ms, vec![50u64; 40]) {
                    Ok(v) => ok += v.len() as u64,
                    Err(_) => failed += 1,
                }
            }
            let _ = tx.send((ok, failed, t0.elapsed()));
        });
        if !idle {
            std::thread::sleep(Duration::from_millis(100));
            signal(victim, Signal::STOP);
        }
        let first = rx.recv_timeout(limit + Duration::from_secs(10));
        signal(victim, Signal::CONT);
        let hung = first.is_err();
        let (ok, failed, end) = first
            .or_else(|_| rx.recv_timeout(Duration::from_secs(30)))
            .unwrap_or((0, 0, t0.elapsed()));
        row(
            "Frozen worker, task_timeout(500 ms)",
            &[
                ("call", mode.to_string()),
                ("tasks", "40".into()),
                ("ok", ok.to_string()),
                ("failed", failed.to_string()),
                (
                    "returned after ms",
                    if hung {
                        format!("{} (only after SIGCONT)", end.as_millis())
                    } else {
                        end.as_millis().to_string()
                    },
                ),
                ("bound ms", limit.as_millis().to_string()),
            ],
        );
        check(!hung && end <= limit, || {
            format!(
                "{mode}: a worker frozen by SIGSTOP stalled the pool for {end:?} (task_timeout 500 ms, bound {limit:?}){}; issue 9 point 9",
                if hung { ", until it was thawed" } else { "" }
            )
        });
        wait_for(Duration::from_secs(5), || {
            std::sync::Arc::strong_count(&pool) == 1
        });
        match std::sync::Arc::try_unwrap(pool) {
            Ok(pool) => dispose(pool, mode),
            Err(_) => fail(format!(
                "{mode}: the pool is still in use after the call returned"
            )),
        }
    }
}

/// A frozen fork server must not stall a pool: the healthy worker goes on receiving tasks
/// while the replacement for a killed worker cannot start, and `pids()` answers within the
/// second it documents.
pub fn pool_frozen_server() {
    let pool = Pool::builder().processes(2).build().expect("pool");
    let _ = pool.map(|x: u64| x, 0..100u64);
    let Some(server) = fork_server() else {
        fail("no fork server found among our children");
        return;
    };
    let pids = pool.pids();
    signal(server, Signal::STOP);
    wait_for(Duration::from_secs(2), || proc_state(server) == Some('T'));
    signal(pids[0], Signal::KILL);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let mut ok = 0;
    let mut stuck = 0;
    for i in 0..20u64 {
        match pool
            .apply_async(|x: u64| x * 2, i)
            .get_timeout(Duration::from_secs(5))
        {
            Ok(v) if v == i * 2 => ok += 1,
            _ => {
                stuck += 1;
                break;
            }
        }
    }
    let tasks_elapsed = t0.elapsed();
    let p0 = Instant::now();
    let pids_answer = std::thread::scope(|s| {
        let h = s.spawn(|| pool.pids());
        wait_for(Duration::from_secs(3), || h.is_finished());
        let fin = h.is_finished();
        signal(server, Signal::CONT);
        let _ = h.join();
        fin
    });
    let pids_elapsed = p0.elapsed();
    signal(server, Signal::CONT);
    let recovered = pool
        .apply_async(|x: u64| x + 1, 1u64)
        .get_timeout(WAIT)
        .ok()
        == Some(2);
    row(
        "Frozen fork server",
        &[
            ("tasks while frozen", "20".into()),
            ("ok", ok.to_string()),
            ("stuck", stuck.to_string()),
            ("tasks ms", tasks_elapsed.as_millis().to_string()),
            ("pids() returned", pids_answer.to_string()),
            ("pids() ms", pids_elapsed.as_millis().to_string()),
            ("recovered after SIGCONT", recovered.to_string()),
        ],
    );
    check(stuck == 0, || {
        format!(
            "with the fork server frozen, the healthy worker stopped receiving tasks ({ok} of 20 ran); issue 9 point 9"
        )
    });
    // `Pool::pids` documents that it waits up to a second for replacements under way.
    check(
        pids_answer && pids_elapsed < Duration::from_millis(1500),
        || {
            format!(
            "Pool::pids() blocked {pids_elapsed:?} behind a frozen fork server; issue 9 point 9"
        )
        },
    );
    check(recovered, || {
        "the pool did not recover after SIGCONT".into()
    });
    dispose(pool, "frozen fork server");
}

/// SIGKILL storm on the fork server while processes are spawned and a pool runs: every
/// spawn and task ends (a value or a clean error), old children get a final exit code, and
/// everything works once the storm is over.
pub fn server_kill_storm() {
    server_storm(false);
}

/// SIGSTOP/SIGCONT storm on the fork server: nobody dies, so every spawn and every task
/// succeeds and nothing hangs.
pub fn server_stop_storm() {
    server_storm(true);
}

fn server_storm(freeze: bool) {
    let stop = AtomicBool::new(false);
    let kills = AtomicU64::new(0);
    let spawned = AtomicU64::new(0);
    let spawn_ok = AtomicU64::new(0);
    let spawn_err = AtomicU64::new(0);
    let hung = AtomicU64::new(0);
    let stuck_exitcode = AtomicU64::new(0);
    let witnesses = AtomicU64::new(0);
    let witness_list: std::sync::Mutex<Vec<Process<u64>>> = std::sync::Mutex::new(Vec::new());
    let pool = Pool::new(2).expect("pool");
    let mut f = Figures::default();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        // Processes, spawned and joined in a loop.
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                spawned.fetch_add(1, Ordering::Relaxed);
                match Process::builder()
                    .start_method(StartMethod::ForkServer)
                    .spawn(i, |x: u64| x + 1)
                {
                    Ok(p) => match join_for(&p, WAIT) {
                        Waited::Got(v) if v == i + 1 => {
                            spawn_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Waited::TimedOut => {
                            hung.fetch_add(1, Ordering::Relaxed);
                            let _ = p.kill();
                        }
                        _ => {
                            spawn_err.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Err(_) => {
                        spawn_err.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
        // The killer, with a witness child alive at each kill (checked at the end).
        s.spawn(|| {
            let mut rng = Rng::new(seed() ^ 3);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(150 + rng.below(350)));
                if freeze {
                    if let Some(srv) = fork_server() {
                        signal(srv, Signal::STOP);
                        std::thread::sleep(Duration::from_millis(10 + rng.below(300)));
                        signal(srv, Signal::CONT);
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let witness = Process::builder()
                    .start_method(StartMethod::ForkServer)
                    .spawn(60_000u64, sleep_ms)
                    .ok();
                if let Some(srv) = fork_server() {
                    signal(srv, Signal::KILL);
                    kills.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(w) = witness {
                    witnesses.fetch_add(1, Ordering::Relaxed);
                    crate::util::lock(&witness_list).push(w);
                }
            }
        });
        let mut next = 0u64;
        while t0.elapsed() < storm_secs() {
            let rs: Vec<_> = (0..64)
                .map(|k| (next + k, pool.apply_async(|x: u64| x * 3 + 1, next + k)))
                .collect();
            next += 64;
            for (i, r) in rs {
                f.tasks += 1;
                match r.get_timeout(WAIT) {
                    Ok(v) if v == i * 3 + 1 => f.ok += 1,
                    Ok(_) => f.wrong += 1,
                    Err(e) if e.is_timeout() => f.hung += 1,
                    Err(e) => {
                        if !f.kinds.contains_key(&format!("{:?}", e.kind())) {
                            println!("NOTE server storm, first pool failure of its kind: {e}");
                        }
                        f.failure(e.kind())
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // A witness dies with its server; some final state must be set (Python: 255).
    let list = std::mem::take(&mut *crate::util::lock(&witness_list));
    let t_w = Instant::now();
    for w in &list {
        let left = Duration::from_secs(5).saturating_sub(t_w.elapsed());
        if !wait_for(left, || w.exitcode().is_some()) {
            stuck_exitcode.fetch_add(1, Ordering::Relaxed);
        }
        let _ = w.kill();
    }
    drop(list);
    let after_spawn = Process::spawn(5u64, |x: u64| x * 2)
        .ok()
        .map(|p| join_for(&p, WAIT));
    let spawn_after = matches!(after_spawn, Some(Waited::Got(10)));
    let pool_after = pool
        .apply_async(|x: u64| x + 1, 1u64)
        .get_timeout(WAIT)
        .ok()
        == Some(2);
    let h = hung.load(Ordering::Relaxed) + f.hung;
    let stuck = stuck_exitcode.load(Ordering::Relaxed);
    row(
        "Fork server storms",
        &[
            (
                "signal",
                if freeze { "SIGSTOP/SIGCONT" } else { "SIGKILL" }.to_string(),
            ),
            ("seconds", format!("{:.1}", t0.elapsed().as_secs_f64())),
            (
                "server kills/freezes",
                kills.load(Ordering::Relaxed).to_string(),
            ),
            ("spawns", spawned.load(Ordering::Relaxed).to_string()),
            ("spawn ok", spawn_ok.load(Ordering::Relaxed).to_string()),
            (
                "spawn failed",
                spawn_err.load(Ordering::Relaxed).to_string(),
            ),
            ("pool tasks", f.tasks.to_string()),
            ("pool ok", f.ok.to_string()),
            ("pool failed", f.failed.to_string()),
            ("failure kinds", {
                let mut k: Vec<_> = f.kinds.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                k.sort();
                k.join(" ")
            }),
            ("wrong", f.wrong.to_string()),
            ("hung", h.to_string()),
            ("witnesses", witnesses.load(Ordering::Relaxed).to_string()),
            ("exitcode stuck None", stuck.to_string()),
            ("spawn works after", spawn_after.to_string()),
            ("pool works after", pool_after.to_string()),
        ],
    );
    check(h == 0, || {
        format!("{h} waits hung during the fork-server storm")
    });
    if freeze {
        let se = spawn_err.load(Ordering::Relaxed);
        check(se == 0 && f.failed == 0, || {
            format!(
                "{se} spawns and {} pool tasks failed although the fork server was only frozen",
                f.failed
            )
        });
    }
    check(f.wrong == 0, || format!("{} wrong results", f.wrong));
    check(stuck == 0, || {
        format!("{stuck} of {} children of a killed fork server kept exitcode() == None for 5 s; issue 9 point 2", witnesses.load(Ordering::Relaxed))
    });
    check(spawn_after, || {
        format!("Process::spawn fails after the fork-server storm: {after_spawn:?}")
    });
    check(pool_after, || {
        "the pool does not serve after the fork-server storm".into()
    });
    dispose(pool, "fork server storm");
}

// ------------------------------------------------------------------------------------------
// Queues
// ------------------------------------------------------------------------------------------

type Item = (u64, Vec<u8>);

fn payload_for(key: u64, len: usize) -> Vec<u8> {
    vec![key as u8 ^ 0x5A; len]
}

fn producer((q, id, n, seed): (Queue<Item>, u64, u64, u64)) {
    let mut rng = Rng::new(seed);
    for s in 0..n {
        let key = (id << 32) | s;
        let len = if rng.chance(0.02) {
            300 << 10 // chunked: larger than a quarter of the 1 MiB ring
        } else {
            rng.below(64) as usize
        };
        q.put((key, payload_for(key, len))).expect("put");
        if rng.chance(0.05) {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
}

/// Forwards every item's key to the parent, one at a time (so a kill loses at most one).
fn consumer((q, c): (Queue<Item>, Connection<u64>)) {
    loop {
        match q.get() {
            Ok((u64::MAX, _)) => return,
            Ok((key, payload)) => {
                let good = payload.iter().all(|&b| b == key as u8 ^ 0x5A);
                if c.send(&if good { key } else { u64::MAX - 1 }).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

struct Consumers {
    procs: Vec<Process<()>>,
    tx: mpsc::Sender<u64>,
}

impl Consumers {
    fn start(&mut self, q: &Queue<Item>) {
        let (here, there) = Pipe::new::<u64>().expect("pipe");
        let p = Process::spawn((q.clone(), there), consumer).expect("consumer");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            while let Ok(k) = here.recv() {
                if tx.send(k).is_err() {
                    break;
                }
            }
        });
        self.procs.push(p);
    }
}

fn queue_storm(freeze: bool) {
    let name = if freeze { "SIGSTOP/SIGCONT" } else { "SIGKILL" };
    let q: Queue<Item> = QueueBuilder::new()
        .capacity_bytes(1 << 20)
        .build()
        .expect("queue");
    let producers_n = 4u64;
    let items = scale(3000, 200_000);
    let mut producers: Vec<Process<()>> = (0..producers_n)
        .map(|id| Process::spawn((q.clone(), id, items, seed() ^ id), producer).expect("producer"))
        .collect();
    let (tx, rx) = mpsc::channel();
    let mut cons = Consumers {
        procs: Vec::new(),
        tx,
    };
    cons.start(&q);
    cons.start(&q);
    let mut rng = Rng::new(seed() ^ 4);
    let mut kills = 0u64;
    let max_kills = scale(24, 2000);
    let mut killed_producers = vec![false; producers_n as usize];
    let t0 = Instant::now();
    let mut hung = 0u64;
    while producers.iter().any(|p| p.is_alive()) {
        if t0.elapsed() > Duration::from_secs(scale(60, 1500)) {
            hung += 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        if kills >= max_kills {
            continue;
        }
        let target_consumer = rng.chance(0.5);
        if target_consumer {
            let k = rng.below(cons.procs.len() as u64) as usize;
            let pid = cons.procs[k].pid();
            if freeze {
                signal(pid, Signal::STOP);
                std::thread::sleep(Duration::from_millis(5 + rng.below(100)));
                signal(pid, Signal::CONT);
            } else {
                signal(pid, Signal::KILL);
                cons.procs.remove(k);
                cons.start(&q);
            }
        } else {
            let k = rng.below(producers_n) as usize;
            if !producers[k].is_alive() {
                continue;
            }
            let pid = producers[k].pid();
            if freeze {
                signal(pid, Signal::STOP);
                std::thread::sleep(Duration::from_millis(5 + rng.below(100)));
                signal(pid, Signal::CONT);
            } else {
                signal(pid, Signal::KILL);
                killed_producers[k] = true;
            }
        }
        kills += 1;
    }
    for p in producers.drain(..) {
        let _ = join_for(&p, WAIT);
    }
    // One stop item per consumer; then whatever is left is drained here.
    for _ in 0..cons.procs.len() {
        let _ = q.put((u64::MAX, Vec::new()));
    }
    for p in cons.procs.drain(..) {
        if matches!(join_for(&p, WAIT), Waited::TimedOut) {
            hung += 1;
            let _ = p.kill();
        }
    }
    drop(cons.tx);
    let mut keys: Vec<u64> = rx.iter().collect();
    loop {
        match try_get(&q) {
            Waited::Got((u64::MAX, _)) => {}
            Waited::Got((k, _)) => keys.push(k),
            _ => break,
        }
    }
    let corrupt = keys.iter().filter(|&&k| k == u64::MAX - 1).count() as u64;
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for &k in keys.iter().filter(|&&k| k != u64::MAX - 1) {
        *seen.entry(k).or_default() += 1;
    }
    let duplicated = seen.values().filter(|&&c| c > 1).count() as u64;
    let mut lost = 0u64;
    for id in 0..producers_n {
        let max_seen = (0..items)
            .rev()
            .find(|s| seen.contains_key(&((id << 32) | s)));
        let upto = if killed_producers[id as usize] {
            max_seen.map_or(0, |m| m + 1)
        } else {
            items
        };
        lost += (0..upto)
            .filter(|s| !seen.contains_key(&((id << 32) | s)))
            .count() as u64;
    }
    row(
        "Queue storms",
        &[
            ("signal", name.to_string()),
            ("producers", producers_n.to_string()),
            ("items put (max)", (producers_n * items).to_string()),
            ("received", seen.len().to_string()),
            ("kills/freezes", kills.to_string()),
            ("lost", lost.to_string()),
            ("duplicated", duplicated.to_string()),
            ("corrupt", corrupt.to_string()),
            ("hung", hung.to_string()),
        ],
    );
    if freeze {
        check(lost == 0, || {
            format!("{lost} items lost with only SIGSTOP/SIGCONT")
        });
    } else {
        check(lost <= kills, || {
            format!("{lost} items lost from {kills} kills")
        });
    }
    check(duplicated == 0, || {
        format!("{duplicated} items delivered twice")
    });
    check(corrupt == 0, || {
        format!("{corrupt} items arrived corrupted")
    });
    check(hung == 0, || format!("{hung} waits hung"));
}

/// SIGKILL storm on queue producers and consumers: at most one item lost per kill.
pub fn queue_kill_storm() {
    queue_storm(false);
}

/// SIGSTOP/SIGCONT storm on queue producers and consumers: nothing lost.
pub fn queue_stop_storm() {
    queue_storm(true);
}

fn big_producer(q: Queue<Vec<u8>>) {
    q.put(vec![7u8; 4 << 20]).expect("put");
}

/// A producer frozen in the middle of a 4 MiB item: the consumer's `get_timeout` returns at
/// its deadline, and the item is not lost once the producer is thawed (issue 9 point 8).
pub fn queue_frozen_producer() {
    let q: Queue<Vec<u8>> = QueueBuilder::new()
        .capacity_bytes(64 << 10)
        .build()
        .expect("queue");
    let seg = crate::hostile::segment_of(&q).expect("the queue's segment");
    let p = Process::spawn(q.clone(), big_producer).expect("producer");
    // The ring fills up and the producer waits for room inside its item: its tail word
    // carries the OPEN bit (a chunk of an unfinished item is published).
    let mid_item = wait_for(Duration::from_secs(20), || {
        crate::hostile::read_tail(&seg) & 1 == 1
    });
    check(mid_item, || {
        "the producer never started its 4 MiB item".into()
    });
    std::thread::sleep(Duration::from_millis(50));
    signal(p.pid(), Signal::STOP);
    wait_for(Duration::from_secs(2), || proc_state(p.pid()) == Some('T'));
    let q2 = q.clone();
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let first = get_for(&q2, Duration::from_millis(200));
        let first_ms = t0.elapsed();
        let again = match &first {
            Waited::Got(_) => None,
            _ => Some(get_for(&q2, Duration::from_secs(20))),
        };
        let _ = tx.send((first, first_ms, again));
    });
    let early = rx.recv_timeout(Duration::from_secs(5));
    signal(p.pid(), Signal::CONT);
    let got = early.or_else(|_| rx.recv_timeout(Duration::from_secs(30)));
    let elapsed = match &got {
        Ok((_, ms, _)) => *ms,
        Err(_) => t0.elapsed(),
    };
    let (first, item_after) = match got {
        Ok((Waited::Got(v), _, _)) => (format!("item of {} bytes", v.len()), Some(v.len())),
        Ok((w, _, again)) => (
            format!("{w:?}").chars().take(80).collect(),
            match again {
                Some(Waited::Got(v)) => Some(v.len()),
                _ => None,
            },
        ),
        Err(_) => ("no return, even after SIGCONT".into(), None),
    };
    let _ = join_for(&p, WAIT);
    row(
        "Producer frozen mid-item",
        &[
            ("item", "4 MiB".into()),
            ("get_timeout", "200 ms".into()),
            ("returned after ms", elapsed.as_millis().to_string()),
            ("first call", first),
            ("item after SIGCONT", format!("{item_after:?}")),
        ],
    );
    check(elapsed < Duration::from_millis(1200), || {
        format!("get_timeout(200 ms) returned after {elapsed:?} with the producer frozen mid-item (it returns only once the producer is thawed after 5 s); issue 9 point 8")
    });
    check(item_after == Some(4 << 20), || {
        format!("the 4 MiB item was not delivered after the producer was thawed: {item_after:?}")
    });
}
