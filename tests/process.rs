//! Process: start methods, return values, panics, exit codes, signals, identity.

mod common;

use std::time::{Duration, Instant};

use common::{join, METHODS, WAIT};
use multiproc::{ErrorKind, Process, StartMethod};

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

#[test]
fn returns_value_under_every_method() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((40u64, 2u64), add)
            .unwrap();
        assert_eq!(p.start_method(), m);
        assert_eq!(join(&p).unwrap(), 42, "{m:?}");
        assert_eq!(p.exitcode(), Some(0), "{m:?}");
        assert!(!p.is_alive());
    }
}

#[test]
fn closure_and_strings_cross() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(("abc".to_string(), vec![1u8, 2, 3]), |(s, v)| {
                format!("{s}{}", v.len())
            })
            .unwrap();
        assert_eq!(join(&p).unwrap(), "abc3");
    }
}

#[test]
fn panic_message_comes_back() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(7u32, |x| -> u32 { panic!("bad input {x}") })
            .unwrap();
        let e = join(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panicked, "{m:?}: {e}");
        assert_eq!(e.panic_message(), Some("bad input 7"));
        assert!(
            e.panic_location().unwrap().contains("tests/process.rs"),
            "{:?}",
            e.panic_location()
        );
        assert_eq!(p.exitcode(), Some(1));
        assert!(e.to_string().contains("bad input 7"));
    }
}

#[test]
fn exit_code_without_result() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((), |()| -> u32 { std::process::exit(3) })
            .unwrap();
        let e = join(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exited, "{m:?}: {e}");
        assert_eq!(e.exit_code(), Some(3));
        assert_eq!(p.exitcode(), Some(3));
    }
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn terminate_and_kill_give_negative_exit_codes() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(60_000u64, sleep_ms)
            .unwrap();
        assert!(p.is_alive());
        assert_eq!(p.exitcode(), None);
        p.terminate().unwrap();
        let e = join(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Killed, "{m:?}: {e}");
        assert_eq!(e.signal(), Some(15));
        assert_eq!(p.exitcode(), Some(-15));
        p.terminate().unwrap(); // no-op after exit

        let p = Process::builder()
            .start_method(m)
            .spawn(60_000u64, sleep_ms)
            .unwrap();
        p.kill().unwrap();
        assert_eq!(join(&p).unwrap_err().signal(), Some(9));
        assert_eq!(p.exitcode(), Some(-9));
    }
}

#[test]
fn join_timeout_on_running_child() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(400u64, sleep_ms)
            .unwrap();
        let t = Instant::now();
        let e = p.join_timeout(Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{m:?}: {e}");
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(p.is_alive());
        assert_eq!(p.try_join().unwrap_err().kind(), ErrorKind::WouldBlock);
        assert_eq!(p.join_timeout(WAIT).unwrap(), ());
        assert_eq!(p.exitcode(), Some(0));
    }
}

#[test]
fn join_timeout_returns_in_time_while_another_thread_joins() {
    // One thread blocks in `join`; `join_timeout` from another must still time out instead of
    // waiting behind it for the child.
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(60_000u64, sleep_ms)
            .unwrap();
        std::thread::scope(|s| {
            let joiner = s.spawn(|| p.join());
            for _ in 0..20 {
                let e = p.join_timeout(Duration::from_millis(5)).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Timeout, "{m:?}: {e}");
            }
            p.kill().unwrap();
            let e = joiner.join().unwrap().unwrap_err();
            assert_eq!(e.signal(), Some(9), "{m:?}: {e}");
        });
    }
}

#[test]
fn join_timeout_max_waits() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(30u64, sleep_ms)
            .unwrap();
        p.join_timeout(Duration::MAX).unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(3u8, |x| x * 2)
            .unwrap();
        assert_eq!(p.join_deadline(Instant::now() + WAIT).unwrap(), 6, "{m:?}");
    }
}

#[test]
fn second_join_returns_again() {
    // As in Python, a re-join returns again, with the same value (or the same error).
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(1u8, |x| x + 1)
            .unwrap();
        assert_eq!(join(&p).unwrap(), 2);
        assert_eq!(p.join().unwrap(), 2, "{m:?}");
        assert_eq!(p.try_join().unwrap(), 2, "{m:?}");
        let q = Process::builder()
            .start_method(m)
            .spawn((), |()| -> u8 { panic!("once") })
            .unwrap();
        assert_eq!(join(&q).unwrap_err().panic_message(), Some("once"));
        assert_eq!(q.join().unwrap_err().panic_message(), Some("once"), "{m:?}");
    }
    // A returned handle is duplicated for each join: both copies work.
    let (mine, theirs) = multiproc::Pipe::new::<u8>().unwrap();
    let p = Process::spawn(theirs, |c: multiproc::Connection<u8>| c).unwrap();
    let first = join(&p).unwrap();
    let second = p.join().unwrap();
    mine.send(&7).unwrap();
    assert_eq!(first.recv_timeout(WAIT).unwrap(), 7);
    mine.send(&8).unwrap();
    assert_eq!(second.recv_timeout(WAIT).unwrap(), 8);
}

/// Polls `p` the given way until the child has exited (bounded), without taking its value.
fn poll_until_exited<R: serde::de::DeserializeOwned>(p: &Process<R>, how: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let exited = match how {
            "exitcode" => p.exitcode().is_some(),
            "is_alive" => !p.is_alive(),
            "join_timeout(0)" => match p.join_timeout(Duration::ZERO) {
                Err(e) if e.is_timeout() => false,
                _ => {
                    // The poll joined: the child is gone; leave the value for the real join.
                    true
                }
            },
            _ => unreachable!(),
        };
        if exited {
            return;
        }
        assert!(Instant::now() < deadline, "{how}: the child never exited");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn polling_a_child_never_loses_its_value() {
    for m in METHODS {
        for how in ["exitcode", "is_alive", "join_timeout(0)"] {
            let p = Process::builder()
                .start_method(m)
                .spawn((), |()| 11u32)
                .unwrap();
            poll_until_exited(&p, how);
            // Poll once more after the exit is known, then join.
            let _ = p.exitcode();
            let _ = p.is_alive();
            assert_eq!(join(&p).unwrap(), 11, "{m:?} after {how}");
            assert_eq!(p.exitcode(), Some(0), "{m:?} after {how}");

            let q = Process::builder()
                .start_method(m)
                .spawn((), |()| -> u32 { panic!("kept message") })
                .unwrap();
            poll_until_exited(&q, how);
            let _ = q.exitcode();
            let e = join(&q).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Panicked, "{m:?} after {how}: {e}");
            assert_eq!(e.panic_message(), Some("kept message"), "{m:?} after {how}");
            assert_eq!(q.exitcode(), Some(1), "{m:?} after {how}");
        }
    }
}

#[test]
fn many_threads_spawning_at_once() {
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                let ps: Vec<_> = (0..5u64)
                    .map(|i| Process::spawn((t, i), add).unwrap())
                    .collect();
                ps.iter()
                    .enumerate()
                    .map(|(i, p)| (join(p).unwrap(), t + i as u64))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        for (got, want) in t.join().unwrap() {
            assert_eq!(got, want);
        }
    }
}

#[test]
fn identity_in_child() {
    for m in METHODS {
        let me = std::process::id();
        let p = Process::builder()
            .name("worker-x")
            .start_method(m)
            .spawn((), |()| {
                let c = multiproc::current_process();
                let parent = multiproc::parent_process().map(|p| (p.pid, p.name));
                (c.pid, c.name, parent)
            })
            .unwrap();
        let (pid, name, parent) = join(&p).unwrap();
        assert_eq!(pid, p.pid());
        assert_eq!(name, "worker-x");
        assert_eq!(parent, Some((me, "MainProcess".to_string())), "{m:?}");
    }
}

#[test]
fn default_names_count_up() {
    let a = Process::spawn((), |()| ()).unwrap();
    let b = Process::spawn((), |()| ()).unwrap();
    assert!(a.name().starts_with("Process-") && b.name().starts_with("Process-"));
    assert_ne!(a.name(), b.name());
    join(&a).unwrap();
    join(&b).unwrap();
}

#[test]
fn active_children_lists_running_ones() {
    let p = Process::spawn(60_000u64, sleep_ms).unwrap();
    assert!(multiproc::active_children()
        .iter()
        .any(|c| c.pid == p.pid()));
    p.kill().unwrap();
    let _ = join(&p);
    assert!(!multiproc::active_children()
        .iter()
        .any(|c| c.pid == p.pid()));
}

#[test]
fn dropped_handle_is_reaped() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(10u64, sleep_ms)
            .unwrap();
        let pid = p.pid();
        drop(p);
        let deadline = Instant::now() + WAIT;
        while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
            assert!(Instant::now() < deadline, "{m:?}: child {pid} never reaped");
            std::thread::sleep(Duration::from_millis(10));
            let _ = multiproc::active_children();
        }
    }
}

#[test]
fn returned_handle_crosses_back() {
    // A child can create a pipe and send one end back as its return value.
    for m in [StartMethod::ForkServer, StartMethod::Spawn] {
        let p = Process::builder()
            .start_method(m)
            .spawn((), |()| {
                let (a, b) = multiproc::Pipe::new::<String>().unwrap();
                a.send(&"from the child".to_string()).unwrap();
                b
            })
            .unwrap();
        let conn = join(&p).unwrap();
        assert_eq!(conn.recv_timeout(WAIT).unwrap(), "from the child");
    }
}

#[test]
fn nested_fork_launch_inside_a_fork_server_child() {
    // A fork-server child that itself forks (regression: a stale descriptor registration made
    // the grandchild's setup fail).
    let p = Process::spawn(5u8, |x| {
        let inner = Process::builder()
            .start_method(StartMethod::Fork)
            .spawn(x, |y: u8| y * 2)
            .unwrap();
        inner.join_timeout(Duration::from_secs(30)).unwrap()
    })
    .unwrap();
    assert_eq!(join(&p).unwrap(), 10);
}

#[test]
fn killed_while_sending_a_large_result_still_reports_the_signal() {
    // The child blocks writing an 8 MiB result nobody reads yet; we kill it mid-frame. Its
    // exit status must still arrive (it travels beside the torn stream, not on it).
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((), |()| vec![7u8; 8 << 20])
            .unwrap();
        assert!(p
            .join_timeout(Duration::from_millis(50))
            .unwrap_err()
            .is_timeout());
        p.kill().unwrap();
        let e = join(&p).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Killed | ErrorKind::Disconnected),
            "{m:?}: {e}"
        );
        let deadline = Instant::now() + WAIT;
        while p.exitcode().is_none() {
            assert!(Instant::now() < deadline, "{m:?}: exit code never known");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(p.exitcode(), Some(-9), "{m:?}");
    }
}

#[test]
fn child_reports_the_start_method_it_was_started_with() {
    // As in Python, a child's default start method is the one that made it, so its own
    // children (started with the default) use the same one.
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((), |()| {
                let grandchild =
                    Process::spawn((), |()| multiproc::get_start_method().name().to_string())
                        .unwrap();
                let seen = grandchild.join_timeout(Duration::from_secs(30)).unwrap();
                (
                    multiproc::get_start_method().name().to_string(),
                    grandchild.start_method().name().to_string(),
                    seen,
                )
            })
            .unwrap();
        let n = m.name().to_string();
        assert_eq!(join(&p).unwrap(), (n.clone(), n.clone(), n), "{m:?}");
    }
}

#[test]
fn child_main_thread_is_named_after_the_process() {
    for m in METHODS {
        for name in [None, Some("a-much-longer-process-name")] {
            let mut b = Process::builder().start_method(m);
            if let Some(n) = name {
                b = b.name(n);
            }
            let p = b
                .spawn((), |()| {
                    std::fs::read_to_string("/proc/thread-self/comm")
                        .unwrap()
                        .trim_end()
                        .to_string()
                })
                .unwrap();
            let comm = join(&p).unwrap();
            let want: String = p.name().chars().take(15).collect();
            assert_eq!(comm, want, "{m:?}");
        }
    }
}

#[test]
fn too_large_argument_or_result_is_one_error_kind() {
    for m in METHODS {
        // The result over the limit: TooLarge from join, with advice that names the setting.
        let p = Process::builder()
            .start_method(m)
            .max_message_size(64 << 10)
            .spawn(128usize << 10, |n| vec![1u8; n])
            .unwrap();
        let e = join(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{m:?}: {e}");
        assert!(e.to_string().contains("max_message_size"), "{e}");
        // The argument over the limit: refused at spawn.
        let e = Process::builder()
            .start_method(m)
            .max_message_size(64 << 10)
            .spawn(vec![1u8; 128 << 10], |v: Vec<u8>| v.len())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge, "{m:?}: {e}");
        // Following the advice works.
        let p = Process::builder()
            .start_method(m)
            .max_message_size(1 << 20)
            .spawn(vec![1u8; 128 << 10], |v: Vec<u8>| v)
            .unwrap();
        assert_eq!(join(&p).unwrap().len(), 128 << 10, "{m:?}");
    }
}

#[test]
fn abort_build_still_reports_the_panic() {
    // tests/fixtures/abort_child is a program built with `panic = "abort"` (nothing unwinds,
    // so the hook must send the message before the abort). Build it, run it, read its report.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/abort_child");
    let target = concat!(env!("CARGO_TARGET_TMPDIR"), "/abort-fixture");
    let build = |offline: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--manifest-path"])
            .arg(format!("{fixture}/Cargo.toml"))
            .arg("--target-dir")
            .arg(target)
            .env_remove("RUSTFLAGS");
        if offline {
            cmd.arg("--offline");
        }
        cmd.status().map(|s| s.success()).unwrap_or(false)
    };
    assert!(
        build(true) || build(false),
        "building the panic=abort fixture failed"
    );
    let out = std::process::Command::new(format!("{target}/debug/multiproc-abort-child"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in lines {
        assert!(
            line.contains("Killed Some(6) Some(\"abort-build panic 7\") Some(\"src/main.rs:"),
            "{line}"
        );
    }
}
