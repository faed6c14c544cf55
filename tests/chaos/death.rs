//! The parent's death by every signal whose default action ends a process, by SIGKILL and by
//! a panic in `main`: the whole tree (children of every start method, children started from
//! a thread that has ended, a grandchild, pool workers, the fork server) is gone within a bound.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use multiproc::{Pool, Process, StartMethod};
use rustix::process::Signal;

use crate::util::{descendants, fail, row, signal, start_role, wait_gone};

/// How long the tree may take to disappear after the parent died.
const BOUND: Duration = Duration::from_secs(2);

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn parent_with_grandchild(ms: u64) {
    let g = Process::builder()
        .start_method(StartMethod::Fork)
        .spawn(ms, sleep_ms)
        .expect("grandchild");
    println!("{}", g.pid());
    sleep_ms(ms);
}

/// Victim: starts a tree, says `READY`, then waits for a signal, or for `panic` on stdin.
pub fn victim_tree() {
    // No core files from the signals that dump core.
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let daemon = std::env::var("CHAOS_DAEMON").is_ok();
    let mut keep = Vec::new();
    for m in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        keep.push(
            Process::builder()
                .start_method(m)
                .daemon(daemon)
                .spawn(120_000u64, sleep_ms)
                .expect("child"),
        );
    }
    for m in [StartMethod::Spawn, StartMethod::Fork] {
        let p = std::thread::spawn(move || {
            Process::builder()
                .start_method(m)
                .daemon(daemon)
                .spawn(120_000u64, sleep_ms)
                .expect("child from a thread")
        })
        .join()
        .expect("thread");
        keep.push(p);
    }
    let nested = Process::builder()
        .daemon(daemon)
        .spawn(120_000u64, parent_with_grandchild)
        .expect("nested");
    let pool = Pool::new(2).expect("pool");
    let busy = pool.apply_async(sleep_ms, 120_000u64);
    // Everything is up: each child is alive, and the grandchild exists.
    std::thread::sleep(Duration::from_millis(300));
    println!("READY");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if line.trim() == "panic" {
        panic!("chaos: the parent panics in main");
    }
    drop((keep, nested, busy, pool));
}

fn one(mode: &str, sig: Option<Signal>) -> Result<(usize, Duration), String> {
    let envs: Vec<(&str, String)> = if sig.is_none() {
        // Python waits for non-daemon children at exit, even after an exception: a panicking
        // parent's tree goes when its children are daemons (and its pool is dropped).
        vec![("CHAOS_DAEMON", "1".to_string())]
    } else {
        Vec::new()
    };
    let mut v = start_role("victim_tree", &envs);
    let out = v.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let t_ready = Instant::now();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(60).saturating_sub(t_ready.elapsed())) {
            Ok(l) if l.trim() == "READY" => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    let tree = descendants(v.id());
    if !ready {
        signal(v.id(), Signal::KILL);
        let _ = v.wait();
        return Err(format!("{mode}: the victim never got ready"));
    }
    let t0 = Instant::now();
    match sig {
        Some(s) => signal(v.id(), s),
        None => {
            if let Some(mut stdin) = v.stdin.take() {
                let _ = stdin.write_all(b"panic\n");
            }
        }
    }
    // The victim itself must end (a signal that does not end it is not in our list).
    let t_exit = Instant::now();
    let mut resent = false;
    let status = loop {
        if let Ok(Some(s)) = v.try_wait() {
            break Some(s);
        }
        // The Rust runtime's stack-overflow handler takes the first SIGSEGV/SIGBUS that is
        // not a fault, restores the default action and returns: the second one ends it.
        if let (Some(s), false) = (sig, resent) {
            if t_exit.elapsed() > Duration::from_millis(500) {
                signal(v.id(), s);
                resent = true;
            }
        }
        if t_exit.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.is_none() {
        signal(v.id(), Signal::KILL);
        let _ = v.wait();
        return Err(format!("{mode}: the victim did not die within 10 s"));
    }
    match wait_gone(&tree, BOUND + t0.elapsed()) {
        Ok(_) => Ok((tree.len(), t0.elapsed())),
        Err(alive) => {
            for &p in &tree {
                signal(p, Signal::KILL);
            }
            Err(format!(
                "{mode}: {} of {} descendants still alive {:?} after the parent died: {alive:?}",
                alive.len(),
                tree.len(),
                t0.elapsed()
            ))
        }
    }
}

/// Kills the parent every way and checks that its tree is gone.
pub fn parent_death() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    // Every signal whose default action terminates (SIGPIPE is left out: the Rust runtime
    // ignores it, so it does not end a Rust program).
    let sigs: Vec<(&str, Signal)> = vec![
        ("SIGHUP", Signal::HUP),
        ("SIGINT", Signal::INT),
        ("SIGQUIT", Signal::QUIT),
        ("SIGILL", Signal::ILL),
        ("SIGTRAP", Signal::TRAP),
        ("SIGABRT", Signal::ABORT),
        ("SIGBUS", Signal::BUS),
        ("SIGFPE", Signal::FPE),
        ("SIGUSR1", Signal::USR1),
        ("SIGSEGV", Signal::SEGV),
        ("SIGUSR2", Signal::USR2),
        ("SIGALRM", Signal::ALARM),
        ("SIGTERM", Signal::TERM),
        ("SIGSTKFLT", Signal::STKFLT),
        ("SIGXCPU", Signal::XCPU),
        ("SIGXFSZ", Signal::XFSZ),
        ("SIGVTALRM", Signal::VTALARM),
        ("SIGPROF", Signal::PROF),
        ("SIGIO", Signal::IO),
        ("SIGPWR", Signal::POWER),
        ("SIGSYS", Signal::SYS),
        ("SIGKILL", Signal::KILL),
    ];
    let mut modes: Vec<(&str, Option<Signal>)> =
        sigs.into_iter().map(|(n, s)| (n, Some(s))).collect();
    modes.push(("panic in main", None));
    for (name, sig) in modes {
        match one(name, sig) {
            Ok((n, t)) => row(
                "Parent death",
                &[
                    ("death by", name.to_string()),
                    ("descendants", n.to_string()),
                    ("all gone after ms", format!("{:.1}", t.as_secs_f64() * 1e3)),
                    ("left", "0".into()),
                ],
            ),
            Err(e) => {
                row(
                    "Parent death",
                    &[
                        ("death by", name.to_string()),
                        ("descendants", "?".into()),
                        ("all gone after ms", "-".into()),
                        ("left", "yes".into()),
                    ],
                );
                fail(e);
            }
        }
        crate::util::reap_zombies();
    }
}
