//! `StartMethod::Fork` in a threaded program.
//!
//! 1. The descriptor registry: while threads create connections, queues and pools, another
//!    thread forks children that stay alive until the end. A multiproc descriptor that a
//!    child copied without neutralising it (one that existed outside the registry at the
//!    instant of a fork) keeps a stream open, and its reader then never sees end-of-stream:
//!    every reader here must see it once its writers are gone.
//! 2. Locks held at the fork (issue 9.7): busy threads print and panic while children are
//!    forked; every child must finish (multiproc's own code takes no lock between `fork` and
//!    the task that another thread could hold, and flushes without blocking). This one runs
//!    in a re-executed copy of this test binary with its output going to /dev/null, so the
//!    threads write through std's real stdout/stderr locks (not the harness's capture).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{join, WAIT};
use multiproc::{Connection, ErrorKind, Pipe, Pool, Process, Queue, StartMethod};

/// How long a reader may wait for end-of-stream after its writers are gone. End of stream is
/// immediate once the last copy closes; this only turns a leak (a copy kept by a child that
/// lives until the test ends) into a failure instead of a hang.
const EOF_WAIT: Duration = Duration::from_secs(10);

/// Forked children, each kept alive (blocked on its release pipe) until the creators stop.
const CHILDREN: usize = 100;

/// Rounds each creator thread runs at least (they go on until the forks are done).
const MIN_ROUNDS: usize = 50;

fn held_until_released(release: Connection<()>) -> u32 {
    // Returns when the parent drops its end: end-of-stream (or anything else) ends the wait.
    let _ = release.recv();
    7
}

/// Expects end-of-stream (not a timeout) on `r`.
fn expect_eof<T: serde::de::DeserializeOwned + std::fmt::Debug>(r: &Connection<T>, what: &str) {
    match r.recv_timeout(EOF_WAIT) {
        Err(e) if e.kind() == ErrorKind::Disconnected => {}
        other => panic!(
            "{what}: expected end-of-stream once the writer was gone, got {other:?} \
             (a forked child kept a copy of the writer)"
        ),
    }
}

fn double(x: u32) -> u32 {
    x * 2
}

/// One round of every creator: duplex and one-way pipes, a connection sent inside a message
/// (its descriptor is duplicated into the message and received again), a queue, and every
/// `pool_every` rounds a small pool.
fn create_round(round: usize, pool_every: usize) {
    let (a, b) = Pipe::new::<u32>().unwrap();
    a.send(&1).unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap(), 1);
    drop(a);
    expect_eof(&b, "Pipe::new");

    let (r, w) = Pipe::simplex::<u32>().unwrap();
    w.send(&2).unwrap();
    assert_eq!(r.recv_timeout(WAIT).unwrap(), 2);
    drop(w);
    expect_eof(&r, "Pipe::simplex");

    let (c, d) = Pipe::new::<Connection<u32>>().unwrap();
    let (inner_w, inner_r) = Pipe::new::<u32>().unwrap();
    c.send(&inner_w).unwrap();
    drop(inner_w);
    let received = d.recv_timeout(WAIT).unwrap();
    received.send(&3).unwrap();
    assert_eq!(inner_r.recv_timeout(WAIT).unwrap(), 3);
    drop(received);
    expect_eof(&inner_r, "a connection sent inside a message");

    let q = Queue::<u32>::new().unwrap();
    q.put(4).unwrap();
    assert_eq!(q.get_timeout(WAIT).unwrap(), 4);
    drop(q);

    if round % pool_every == 0 {
        let method = if round % (2 * pool_every) == 0 {
            StartMethod::Fork
        } else {
            StartMethod::ForkServer
        };
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .build()
            .unwrap();
        assert_eq!(pool.map(double, [1u32, 2, 3]).unwrap(), vec![2, 4, 6]);
        drop(pool);
    }
}

#[test]
fn readers_see_end_of_stream_while_another_thread_forks() {
    let forks_done = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let creators: Vec<_> = (0..3)
        .map(|t| {
            let done = Arc::clone(&forks_done);
            let rounds = Arc::clone(&rounds);
            std::thread::spawn(move || {
                let mut round = 0;
                while round < MIN_ROUNDS || !done.load(Ordering::Relaxed) {
                    create_round(round + t, 16);
                    round += 1;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let forker = std::thread::spawn(|| {
        let mut kids = Vec::new();
        for _ in 0..CHILDREN {
            let (release_r, release_w) = Pipe::simplex::<()>().unwrap();
            let p = Process::builder()
                .start_method(StartMethod::Fork)
                .spawn(release_r, held_until_released)
                .unwrap();
            kids.push((p, release_w));
            std::thread::yield_now();
        }
        kids
    });
    let kids = forker.join().unwrap();
    forks_done.store(true, Ordering::Relaxed);
    for c in creators {
        c.join().unwrap();
    }
    // Releasing a child is dropping its writer: it sees end-of-stream only if no sibling
    // kept a copy of that writer either.
    for (p, release_w) in kids {
        drop(release_w);
        assert_eq!(join(&p).unwrap(), 7);
    }
    assert!(rounds.load(Ordering::Relaxed) >= 3 * MIN_ROUNDS);
}

// ---- issue 9.7: locks held by other threads at the fork ----

/// Busy threads print through std's stdout/stderr locks and panic (through the panic hook)
/// while this thread forks children; each child must finish. Run by the test below in a
/// copy of this binary whose output is /dev/null.
#[test]
#[ignore = "run by children_finish_while_other_threads_print_and_panic in a re-executed copy"]
fn busy_printers_and_panickers_while_forking() {
    const FORKS: usize = 150;
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..8)
        .map(|t| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    println!("busy thread {t} line {i}");
                    eprintln!("busy thread {t} line {i}");
                    {
                        let mut out = std::io::stdout().lock();
                        let _ = write!(out, "partial line from {t} ");
                    }
                    if i % 4 == 0 {
                        let _ = std::panic::catch_unwind(|| panic!("busy thread {t} panics"));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    for i in 0..FORKS {
        let p = Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(i as u32, |i: u32| {
                if i % 5 == 0 {
                    // Reporting a panic in the child must not take an inherited lock either.
                    panic!("child {i} panics on purpose");
                }
                // std's stdio is free in the child, for the task and for its threads.
                println!("child {i} prints");
                eprintln!("child {i} prints");
                let t = std::thread::spawn(move || println!("a thread of child {i} prints"));
                t.join().unwrap();
                i + 1
            })
            .unwrap();
        match join(&p) {
            Ok(v) => assert_eq!(v, i as u32 + 1),
            Err(e) => {
                assert_eq!(i % 5, 0, "child {i}: {e}");
                assert_eq!(e.kind(), ErrorKind::Panicked, "child {i}: {e}");
                assert!(
                    e.panic_message().is_some_and(|m| m.contains("on purpose")),
                    "child {i}: {e}"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
    // Shown by the outer test when this one fails.
    eprintln!("{FORKS} forks in {:?}", started.elapsed());
}

/// Runs ignored test `name` of this binary in a new process (output not captured by the
/// harness), with stdout and stderr going to `out` and `err`; waits at most five minutes.
fn rerun(name: &str, out: std::process::Stdio, err: std::process::Stdio) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    std::process::Command::new(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

fn wait_bounded(mut child: std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung: a child blocked on a lock inherited from a busy thread");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn children_finish_while_other_threads_print_and_panic() {
    use std::process::Stdio;
    // The output is a flood from the busy threads: /dev/null.
    let child = rerun(
        "busy_printers_and_panickers_while_forking",
        Stdio::null(),
        Stdio::null(),
    );
    // Every fork is joined with its own bound inside; this bounds the whole run.
    let status = wait_bounded(child, "the forking test");
    assert!(
        status.success(),
        "the forking test failed ({status}); run it alone to see why: \
         cargo test --test fork_safety -- --ignored --nocapture busy_printers"
    );
}

/// Bytes the parent has buffered on stdout are flushed before the fork (the child does not
/// print them again), and a forked child's panic message reaches stderr.
#[test]
#[ignore = "run by buffered_output_is_printed_once_and_child_panics_are_reported"]
fn print_partial_line_then_fork() {
    // A reported panic is printed only on request (MULTIPROC_CHILD_PANIC_OUTPUT): ask, so the
    // forked child's lock-free printing is exercised. This test runs alone in its process.
    std::env::set_var("MULTIPROC_CHILD_PANIC_OUTPUT", "1");
    print!("<parent-partial-line>");
    let p = Process::builder()
        .start_method(StartMethod::Fork)
        .spawn((), |()| -> u32 { panic!("<child-panic-message>") })
        .unwrap();
    let e = join(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    println!();
}

#[test]
fn buffered_output_is_printed_once_and_child_panics_are_reported() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = rerun(
        "print_partial_line_then_fork",
        Stdio::piped(),
        Stdio::piped(),
    );
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    let _ = out_pipe.read_to_string(&mut out);
    let status = wait_bounded(child, "the partial-line test");
    let err = err_reader.join().unwrap();
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        out.matches("<parent-partial-line>").count(),
        1,
        "stdout:\n{out}"
    );
    assert!(
        err.contains("panicked at") && err.contains("<child-panic-message>"),
        "stderr:\n{err}"
    );
}
