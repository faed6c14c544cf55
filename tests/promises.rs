//! Promises of the README, ARCHITECTURE.md and the docs that no other test checked
//! (issue 9 point 15). `tests/PROMISES.md` maps every promise to the test that keeps it; the
//! ones that had none are here, one `#[test]` per promise, each quoting its sentence.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{join, METHODS, WAIT};
use multiproc::{Connection, ErrorKind, Pipe, Process, Queue, SharedMemory, StartMethod};

/// The descriptors open in this process now.
fn open_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Where descriptor `fd` of this process points (`socket:[123]`, `/dev/null`, ...).
fn fd_target(fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The `flags:` of descriptor `fd` (octal in `/proc/self/fdinfo`), if it is still open.
fn fd_flags(fd: i32) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let line = info.lines().find(|l| l.starts_with("flags:"))?;
    u32::from_str_radix(line["flags:".len()..].trim(), 8).ok()
}

/// "Pipes are anonymous socket pairs: nothing is created in the file system."
/// (`src/lib.rs`, "Resources")
#[test]
fn pipes_are_anonymous_socket_pairs() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    let (r, w) = Pipe::simplex::<u8>().unwrap();
    for (what, fd) in [
        ("duplex end a", a.as_fd()),
        ("duplex end b", b.as_fd()),
        ("simplex reader", r.as_fd()),
        ("simplex writer", w.as_fd()),
    ] {
        use std::os::fd::AsRawFd;
        let target = fd_target(fd.as_raw_fd()).expect("an open end has a /proc entry");
        assert!(
            target.starts_with("socket:[") || target.starts_with("pipe:["),
            "{what} is {target:?}, not an anonymous socket or pipe"
        );
    }
    for (what, fd) in [("duplex end a", a.as_fd()), ("duplex end b", b.as_fd())] {
        use std::os::fd::AsRawFd;
        let target = fd_target(fd.as_raw_fd()).unwrap();
        assert!(target.starts_with("socket:["), "{what} is {target:?}");
    }
}

/// "**Every descriptor is close-on-exec** unless passed on purpose (`inherit_fds` clears the
/// flag in the exec'd child only)." (`ARCHITECTURE.md`, "Invariants")
#[test]
fn every_descriptor_multiproc_creates_is_close_on_exec() {
    const O_CLOEXEC: u32 = 0o2000000;
    let before = open_fds();
    let (a, b) = Pipe::new::<u64>().unwrap();
    let (r, w) = Pipe::simplex::<u64>().unwrap();
    let q: Queue<u64> = Queue::new().unwrap();
    let shm = SharedMemory::new(4096).unwrap();
    // A child under each start method: the fork server's sockets, status sockets, pidfds.
    let kids: Vec<Process<u64>> = METHODS
        .iter()
        .map(|&m| {
            Process::builder()
                .start_method(m)
                .spawn(3u64, |x: u64| x + 1)
                .unwrap()
        })
        .collect();
    // A descriptor received with a frame.
    let (x, y) = Pipe::new::<Connection<u8>>().unwrap();
    let (inner, _inner_peer) = Pipe::new::<u8>().unwrap();
    x.send(&inner).unwrap();
    let received = y.recv_timeout(WAIT).unwrap();
    let mut checked = 0;
    for fd in open_fds() {
        if before.contains(&fd) {
            continue;
        }
        // Other tests of this binary run at the same time; what they open is multiproc's or
        // std's, and both promise close-on-exec, so every new descriptor must have it.
        if let Some(flags) = fd_flags(fd) {
            checked += 1;
            assert_ne!(
                flags & O_CLOEXEC,
                0,
                "descriptor {fd} ({:?}) is not close-on-exec",
                fd_target(fd)
            );
        }
    }
    assert!(checked >= 8, "only {checked} new descriptors were seen");
    for p in &kids {
        assert_eq!(join(p).unwrap(), 4);
    }
    drop((a, b, r, w, q, shm, received, inner, x, y));
}

/// "Every message is `header ‖ payload`: magic `0xA7`, version `1`, descriptor count (u16),
/// payload length (u32)." (`ARCHITECTURE.md`, "Wire format")
#[test]
fn a_message_on_the_wire_is_the_eight_byte_header_then_the_payload() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    let mut raw_b = UnixStream::from(b.as_fd().try_clone_to_owned().unwrap());
    raw_b.set_read_timeout(Some(WAIT)).unwrap();
    a.send_bytes(b"hello").unwrap();
    let mut got = [0u8; 13];
    raw_b.read_exact(&mut got).unwrap();
    assert_eq!(got[0], 0xA7, "magic");
    assert_eq!(got[1], 1, "version");
    assert_eq!(u16::from_le_bytes([got[2], got[3]]), 0, "descriptor count");
    assert_eq!(
        u32::from_le_bytes([got[4], got[5], got[6], got[7]]),
        5,
        "payload length"
    );
    assert_eq!(&got[8..], b"hello");
    // The other way: a frame written by hand is one message.
    let mut frame = vec![0xA7, 1, 0, 0];
    frame.extend_from_slice(&3u32.to_le_bytes());
    frame.extend_from_slice(b"abc");
    raw_b.write_all(&frame).unwrap();
    assert_eq!(a.recv_bytes_timeout(WAIT).unwrap(), b"abc");
    // A wrong magic is refused, not read as a message.
    raw_b.write_all(&[0x42, 1, 0, 0, 1, 0, 0, 0, b'x']).unwrap();
    let e = a.recv_bytes_timeout(WAIT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

/// "The largest message this end accepts (default 1 GiB)." (`src/connection/mod.rs`,
/// `Connection::max_message_size`), and "The receiver checks ... the length against its
/// maximum message size (default 1 GiB)" (`ARCHITECTURE.md`, "Wire format").
#[test]
fn the_default_maximum_message_size_is_one_gib() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    assert_eq!(a.max_message_size(), 1 << 30);
    assert_eq!(b.max_message_size(), 1 << 30);
    // A header announcing one byte more is refused before anything is allocated.
    let mut raw = UnixStream::from(a.as_fd().try_clone_to_owned().unwrap());
    let mut header = vec![0xA7, 1, 0, 0];
    header.extend_from_slice(&((1u32 << 30) + 1).to_le_bytes());
    raw.write_all(&header).unwrap();
    let e = b.recv_bytes_timeout(WAIT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
}

/// "Waits up to `timeout` for a message (or end of stream); `Duration::ZERO` just checks."
/// (`src/connection/mod.rs`, `Connection::poll`)
#[test]
fn poll_with_zero_just_checks_and_consumes_nothing() {
    let (a, b) = Pipe::new::<u32>().unwrap();
    assert!(!b.poll(Duration::ZERO).unwrap());
    a.send(&9).unwrap();
    assert!(b.poll(WAIT).unwrap());
    assert!(b.poll(Duration::ZERO).unwrap(), "poll consumed the message");
    assert_eq!(b.try_recv().unwrap(), 9);
    drop(a);
    assert!(b.poll(WAIT).unwrap(), "end of stream counts as ready");
}

/// The pid of the process in which this binary's constructor last ran (0: never).
static CTOR_PID: AtomicU32 = AtomicU32::new(0);

#[ctor::ctor(unsafe)]
fn record_constructor_pid() {
    CTOR_PID.store(std::process::id(), Ordering::SeqCst);
}

fn ctor_pid_and_pid(_: ()) -> (u32, u32) {
    (CTOR_PID.load(Ordering::SeqCst), std::process::id())
}

/// "a re-executed child (`Spawn`, and the fork server) runs the program's static constructors
/// again ... A `Fork` child runs nothing twice: it continues from the fork with a copy of the
/// parent's memory." (`src/lib.rs`, "Start methods"; `ARCHITECTURE.md`, "What runs twice")
#[test]
fn constructors_run_again_only_in_re_executed_processes() {
    let me = std::process::id();
    assert_eq!(CTOR_PID.load(Ordering::SeqCst), me);
    let run = |m: StartMethod| {
        let p = Process::builder()
            .start_method(m)
            .spawn((), ctor_pid_and_pid)
            .unwrap();
        join(&p).unwrap()
    };
    let (ctor, child) = run(StartMethod::Spawn);
    assert_eq!(ctor, child, "a Spawn child runs the constructors itself");
    let (ctor, _) = run(StartMethod::Fork);
    assert_eq!(ctor, me, "a Fork child ran a constructor again");
    let (ctor, child) = run(StartMethod::ForkServer);
    assert_ne!(ctor, me, "the fork server did not re-execute");
    assert_ne!(ctor, child, "a fork-server child re-ran a constructor");
    if let Some(server) = multiproc::__chaos::fork_server_pid() {
        assert_eq!(ctor, server, "the constructors ran in the fork server");
    }
}

fn send_when_told(c: Connection<u32>) {
    // Waits for the parent's word (sent after it dropped the handle), then answers.
    if let Ok(x) = c.recv_timeout(WAIT) {
        let _ = c.send(&(x + 1));
    }
}

/// "Dropping a `Process` that was not joined does not kill the child: it runs on, its return
/// value is discarded, and multiproc reaps it in the background (no zombie)."
/// (`src/process/mod.rs`, `Process`, "Dropping")
#[test]
fn a_dropped_process_runs_on() {
    for m in METHODS {
        let (here, there) = Pipe::new::<u32>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(there, send_when_told)
            .unwrap();
        let pid = p.pid();
        drop(p);
        here.send(&41).unwrap();
        assert_eq!(
            here.recv_timeout(WAIT).unwrap(),
            42,
            "{m:?}: the dropped child did not run on"
        );
        let deadline = std::time::Instant::now() + WAIT;
        while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{m:?}: {pid} never reaped"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn nap_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn nap_then_touch((ms, path): (u64, String)) {
    nap_ms(ms);
    std::fs::write(path, b"done").unwrap();
}

/// The program run by [`at_normal_exit_daemons_are_terminated_and_the_others_waited_for`]
/// (this test binary again, with `PROMISES_EXIT_DIR` set): starts a daemon child that would
/// sleep for a minute and a non-daemon child that finishes a moment later, drops both handles
/// and returns, so the program exits normally.
#[test]
#[ignore = "a role, run by at_normal_exit_daemons_are_terminated_and_the_others_waited_for"]
fn role_exit_with_children() {
    let Ok(dir) = std::env::var("PROMISES_EXIT_DIR") else {
        return;
    };
    let mut pids = String::new();
    for m in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        let daemon = Process::builder()
            .start_method(m)
            .daemon(true)
            .spawn(60_000u64, nap_ms)
            .unwrap();
        let marker = format!("{dir}/{m:?}");
        let other = Process::builder()
            .start_method(m)
            .spawn((300u64, marker), nap_then_touch)
            .unwrap();
        pids.push_str(&format!("{} {}\n", daemon.pid(), other.pid()));
    }
    std::fs::write(format!("{dir}/pids"), pids).unwrap();
}

/// "At normal exit, daemon children are terminated and the others waited for, as in Python."
/// (`src/lib.rs`, "Resources"; `ARCHITECTURE.md`, "No zombies"; `src/process/mod.rs`,
/// "Dropping")
#[test]
fn at_normal_exit_daemons_are_terminated_and_the_others_waited_for() {
    let dir = std::env::temp_dir().join(format!("multiproc-promises-exit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let mut program = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "role_exit_with_children",
            "--ignored",
            "--test-threads=1",
        ])
        .env("PROMISES_EXIT_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = program.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = program.kill();
            let _ = program.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("the program did not exit within {WAIT:?}: were its daemons waited for?");
        }
        nap_ms(10);
    };
    let pids = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
    let waited: Vec<bool> = METHODS
        .iter()
        .map(|m| dir.join(format!("{m:?}")).exists())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "the program failed: {status}");
    assert_eq!(pids.lines().count(), 3, "{pids:?}");
    assert_eq!(
        waited, [true; 3],
        "non-daemon children were not waited for at exit (ForkServer, Spawn, Fork)"
    );
    for line in pids.lines() {
        let daemon: u32 = line.split_whitespace().next().unwrap().parse().unwrap();
        let until = std::time::Instant::now() + WAIT;
        while !common::is_gone(daemon) {
            assert!(
                std::time::Instant::now() < until,
                "daemon {daemon} outlived the program"
            );
            nap_ms(10);
        }
    }
}

/// "Methods take `&self`: one thread may send while another receives. Two threads receiving at
/// once are serialised (each gets whole messages)." (`src/connection/mod.rs`, `Connection`)
#[test]
fn two_threads_receiving_on_one_end_each_get_whole_messages() {
    const N: u64 = 2000;
    let (a, b) = Pipe::new::<Vec<u64>>().unwrap();
    let b = std::sync::Arc::new(b);
    let receivers: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                // Both receivers stop at the end marker (sent twice) or at a bounded wait.
                while let Ok(v) = b.recv_timeout(WAIT) {
                    if v.is_empty() {
                        break;
                    }
                    got.push(v);
                }
                got
            })
        })
        .collect();
    // Meanwhile this thread sends on the other end and also receives on `a`: one thread may
    // send while another receives.
    let (echo_a, echo_b) = (&a, b.clone());
    echo_b.send(&vec![7]).unwrap();
    for i in 0..N {
        // Messages of varying length, each a pattern a torn or merged read would break.
        let len = 1 + (i * 7919 % 3000) as usize;
        echo_a.send(&vec![i; len]).unwrap();
    }
    assert_eq!(echo_a.recv_timeout(WAIT).unwrap(), vec![7]);
    echo_a.send(&Vec::new()).unwrap();
    echo_a.send(&Vec::new()).unwrap();
    let mut seen = vec![false; N as usize];
    for r in receivers {
        for v in r.join().unwrap() {
            let i = v[0];
            assert!(v.iter().all(|&x| x == i), "a message was torn: {}", i);
            assert_eq!(v.len(), 1 + (i * 7919 % 3000) as usize, "message {i} cut");
            assert!(!seen[i as usize], "message {i} arrived twice");
            seen[i as usize] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "messages were lost");
}

/// "the fork server is
/// single-threaded by construction (it never starts a thread), so its
/// `fork` has no lock hazard." (`src/spawn/README.md`; `ARCHITECTURE.md`, "Start method":
/// "(single-threaded, small)")
#[test]
fn the_fork_server_has_one_thread() {
    let p = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(1u64, |x: u64| x + 1)
        .unwrap();
    assert_eq!(join(&p).unwrap(), 2);
    let server = multiproc::__chaos::fork_server_pid().expect("a fork server runs");
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|t| t.trim().to_string());
    assert_eq!(
        threads.as_deref(),
        Some("1"),
        "fork server {server}: {status}"
    );
}

fn print_partial(marker: String) {
    print!("{marker}"); // no newline: it stays in std's line buffer until flushed
}

/// The program run by [`a_child_flushes_its_standard_output_before_it_exits`] (with
/// `--nocapture`, so the output goes to the real standard output).
#[test]
#[ignore = "a role, run by a_child_flushes_its_standard_output_before_it_exits"]
fn role_children_print_partial_lines() {
    if std::env::var("PROMISES_PRINT_ROLE").is_err() {
        return;
    }
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(format!("<partial-{m:?}>"), print_partial)
            .unwrap();
        join(&p).unwrap();
    }
}

/// "A child flushes its standard output before it exits." (`src/lib.rs`, "Output from several
/// processes"); "Children inherit the parent's standard output and error" (same section).
#[test]
fn a_child_flushes_its_standard_output_before_it_exits() {
    use std::process::{Command, Stdio};
    let mut program = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "role_children_print_partial_lines",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROMISES_PRINT_ROLE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = program.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let text = match rx.recv_timeout(WAIT) {
        Ok(s) => s,
        Err(_) => {
            let _ = program.kill();
            let _ = program.wait();
            panic!("the program's standard output stayed open for {WAIT:?}");
        }
    };
    let status = program.wait().unwrap();
    assert!(status.success(), "the program failed: {status}\n{text}");
    for m in METHODS {
        let marker = format!("<partial-{m:?}>");
        assert_eq!(
            text.matches(&marker).count(),
            1,
            "{m:?}: the child's unflushed output was lost or doubled:\n{text}"
        );
    }
}

/// "A pool that no longer accepts work yields one [`ErrorKind::Closed`] error."
/// (`src/pool/mod.rs`, `Pool::imap`)
#[test]
fn imap_on_a_closed_pool_yields_one_closed_error_then_ends() {
    let pool = multiproc::Pool::new(1).unwrap();
    pool.close();
    let mut it = pool.imap(|x: u64| x + 1, 0..);
    let first = it.next().expect("one item");
    assert_eq!(first.unwrap_err().kind(), ErrorKind::Closed);
    assert!(it.next().is_none(), "more than one item from a closed pool");
    drop(it);
    pool.join_timeout(WAIT).unwrap();
}

/// "Every queue also has a byte ring, 1 GiB by default ([`QueueBuilder::capacity_bytes`]):
/// `put` blocks while the queued items fill it. An item takes its encoded size rounded up to
/// 8, plus 8 bytes." (`src/queue/queue.rs`, `Queue`, "Capacity and memory")
#[test]
fn a_queue_item_takes_its_encoded_size_rounded_up_to_8_plus_8_bytes() {
    const RING: usize = 64 << 10;
    // A `Vec<u8>` of 1015 bytes encodes as a 2-byte length and its bytes: 1017, rounded up to
    // 1024, plus 8: 1032 bytes of ring per item, so 63 fit in 64 KiB (65,016 bytes) and a 64th
    // does not.
    let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(RING).build().unwrap();
    let per_item = (2 + 1015usize).div_ceil(8) * 8 + 8;
    let fit = RING / per_item;
    for i in 0..fit {
        q.try_put(vec![i as u8; 1015])
            .unwrap_or_else(|e| panic!("item {i} of {fit} did not fit: {}", e.error()));
    }
    let e = q.try_put(vec![0; 1015]).unwrap_err();
    assert!(e.error().is_would_block(), "{}", e.error());
    let e = q
        .put_timeout(vec![0; 1015], Duration::from_millis(20))
        .unwrap_err();
    assert!(
        e.error().is_timeout(),
        "a full ring did not block put: {}",
        e.error()
    );
    // One item out makes room for one item in.
    assert_eq!(q.get_timeout(WAIT).unwrap(), vec![0u8; 1015]);
    q.try_put(vec![1; 1015]).unwrap();
    assert_eq!(q.len(), fit);
}
