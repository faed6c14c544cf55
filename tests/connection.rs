//! Connections between real processes: passing ends to children, big messages, peers dying.

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{join, METHODS, WAIT};
use multiproc::{Connection, ErrorKind, Pipe, Process, StartMethod};

fn echo_upper(conn: Connection<String>) -> usize {
    let mut n = 0;
    while let Ok(s) = conn.recv() {
        conn.send(&s.to_uppercase()).unwrap();
        n += 1;
    }
    n
}

#[test]
fn connection_passed_to_child_under_every_method() {
    for m in METHODS {
        let (here, there) = Pipe::new::<String>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(there, echo_upper)
            .unwrap();
        for word in ["alpha", "beta", "gamma"] {
            here.send(&word.to_string()).unwrap();
            assert_eq!(
                here.recv_timeout(WAIT).unwrap(),
                word.to_uppercase(),
                "{m:?}"
            );
        }
        drop(here); // end of stream lets the child leave its loop
        assert_eq!(join(&p).unwrap(), 3, "{m:?}");
    }
}

#[test]
fn connection_inside_a_message_to_a_child() {
    for m in METHODS {
        let (ctl_here, ctl_there) = Pipe::new::<Connection<String>>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(ctl_there, |ctl: Connection<Connection<String>>| {
                let data = ctl.recv().unwrap();
                data.send(&"through a handle sent in a message".to_string())
                    .unwrap();
            })
            .unwrap();
        let (a, b) = Pipe::new::<String>().unwrap();
        ctl_here.send(&b).unwrap();
        drop(b);
        assert_eq!(
            a.recv_timeout(WAIT).unwrap(),
            "through a handle sent in a message"
        );
        join(&p).unwrap();
    }
}

const BIG: usize = 64 << 20;

#[test]
fn sixty_four_mib_both_ways() {
    for m in [StartMethod::ForkServer, StartMethod::Fork] {
        let (here, there) = Pipe::new::<()>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(there, |c: Connection<()>| {
                let v = c.recv_bytes().unwrap();
                let sum: u64 = v.iter().map(|&b| b as u64).sum();
                // Send it back reversed so the parent checks real content.
                let back: Vec<u8> = v.iter().rev().copied().collect();
                c.send_bytes(&back).unwrap();
                (v.len(), sum)
            })
            .unwrap();
        let data: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
        here.send_bytes(&data).unwrap();
        let back = here.recv_bytes().unwrap();
        assert_eq!(back.len(), BIG);
        assert!(back.iter().rev().eq(data.iter()));
        let want: u64 = data.iter().map(|&b| b as u64).sum();
        assert_eq!(join(&p).unwrap(), (BIG, want));
    }
}

#[test]
fn typed_big_message_and_big_args() {
    // A 16 MiB argument and a 16 MiB typed return value under the default method.
    let arg = vec![7u64; 2 << 20];
    let p = Process::spawn(arg, |v: Vec<u64>| {
        v.iter().map(|x| x + 1).collect::<Vec<u64>>()
    })
    .unwrap();
    let r = join(&p).unwrap();
    assert_eq!(r.len(), 2 << 20);
    assert!(r.iter().all(|&x| x == 8));
}

#[test]
fn child_killed_in_the_middle_of_sending() {
    for m in METHODS {
        let (here, there) = Pipe::new::<()>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(there, |c: Connection<()>| {
                // A 256 MiB message: the parent reads slowly, so we die mid-frame.
                let v = vec![1u8; 256 << 20];
                c.send_bytes(&v).unwrap();
            })
            .unwrap();
        // Wait until the frame has started arriving, then kill the sender.
        assert!(here.poll(WAIT).unwrap());
        p.kill().unwrap();
        let _ = join(&p);
        let e = here.recv_bytes().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Disconnected, "{m:?}: {e}");
        // And the end stays usable for error reporting: no hang, same answer.
        assert!(here.recv_bytes().is_err());
    }
}

#[test]
fn peer_exit_gives_disconnected_not_a_hang() {
    for m in METHODS {
        let (here, there) = Pipe::new::<u32>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(there, |c: Connection<u32>| drop(c))
            .unwrap();
        join(&p).unwrap();
        let e = here.recv_timeout(WAIT).unwrap_err();
        assert!(e.is_disconnected(), "{m:?}: {e}");
    }
}

#[test]
fn wait_on_processes_and_connections() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    let p = Process::spawn(30u64, |ms| std::thread::sleep(Duration::from_millis(ms))).unwrap();
    let ready = multiproc::connection::wait(
        &[&p as &dyn multiproc::connection::Waitable, &a],
        Some(WAIT),
    )
    .unwrap();
    assert_eq!(ready, vec![0], "the process exits first");
    b.send(&1).unwrap();
    let ready =
        multiproc::connection::wait(&[&a as &dyn multiproc::connection::Waitable], Some(WAIT))
            .unwrap();
    assert_eq!(ready, vec![0]);
    join(&p).unwrap();
}

/// Open descriptors of this process, read through `dir` (opened on `/proc/self/fd` in
/// advance, so counting needs no new descriptor).
fn open_fds(dir: &mut rustix::fs::Dir) -> usize {
    dir.rewind();
    let mut n = 0;
    while let Some(e) = dir.read() {
        let name = e.unwrap().file_name().to_bytes().to_vec();
        n += usize::from(name != b"." && name != b"..");
    }
    n
}

/// Runs in a child (a process of its own, so the descriptor limit and the counts are its
/// alone): receives a message carrying a connection after the process has used up its
/// descriptors. Returns the error and the descriptor counts before and after the receive.
fn receive_without_descriptors_left(_: ()) -> (String, bool, usize, usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let (a, b) = Pipe::new::<Connection<u8>>().unwrap();
    let (x, _y) = Pipe::new::<u8>().unwrap();
    a.send(&x).unwrap(); // its descriptor is now in flight, in the socket
    drop(x);
    let proc_fd = rustix::fs::open(
        "/proc/self/fd",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut dir = rustix::fs::Dir::new(proc_fd).unwrap();
    // Lower the limit to the highest descriptor in use, then fill every hole below it.
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(highest + 1);
    setrlimit(Resource::Nofile, limit).unwrap();
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    let before = open_fds(&mut dir);
    let e = b.recv().unwrap_err();
    let after = open_fds(&mut dir);
    drop(fillers);
    (e.to_string(), e.kind() == ErrorKind::Io, before, after)
}

#[test]
fn running_out_of_descriptors_while_receiving_is_reported_as_that() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((), receive_without_descriptors_left)
            .unwrap();
        let (msg, is_io, before, after) = join(&p).unwrap();
        assert!(is_io, "{m:?}: {msg}");
        assert!(msg.contains("ran out of file descriptors"), "{m:?}: {msg}");
        assert!(msg.contains("ulimit -n"), "{m:?}: {msg}");
        assert!(
            !msg.contains("more file descriptors than one frame"),
            "{m:?}: {msg}"
        );
        // The receive installed nothing that stayed.
        assert_eq!(
            after, before,
            "{m:?}: {before} descriptors before, {after} after"
        );
    }
}

/// Runs in a child: the address space is limited to what the process uses plus 256 MiB, and
/// a peer announces a 1 GiB message, sends 100 bytes of it and closes. The receive must fail
/// with an error, not abort on an allocation of the announced size (issue 9.11).
fn lying_length_under_rlimit_as(_: ()) -> (String, bool) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let (a, b) = Pipe::new::<()>().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let mut limit = getrlimit(Resource::As);
    limit.current = Some(vm_kib * 1024 + (256 << 20));
    setrlimit(Resource::As, limit).unwrap();
    // Proof that the limit bites: the announced size cannot be reserved.
    assert!(Vec::<u8>::new().try_reserve_exact(1 << 30).is_err());
    let len = (1u32 << 30).to_le_bytes();
    let header = [0xA7, 1, 0, 0, len[0], len[1], len[2], len[3]];
    rustix::io::write(a.as_fd(), &header).unwrap();
    rustix::io::write(a.as_fd(), &[1u8; 100]).unwrap();
    drop(a);
    let e = b.recv_bytes().unwrap_err();
    (e.to_string(), e.kind() == ErrorKind::Disconnected)
}

#[test]
fn a_frame_announcing_a_gigabyte_allocates_what_arrives() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((), lying_length_under_rlimit_as)
            .unwrap();
        let (msg, disconnected) = join(&p).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        assert!(disconnected, "{m:?}: {msg}");
        assert!(msg.contains("100 of 1073741824 bytes"), "{m:?}: {msg}");
    }
}

/// Sends `SIGSTOP` or `SIGCONT` to process `pid`.
fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn a_sender_frozen_in_the_middle_of_a_message_does_not_hold_a_timed_receive() {
    // Issue 9.8: a peer stopped (SIGSTOP) mid-frame; the receiver's timeouts still hold, and
    // once the peer goes on the message arrives whole.
    use rustix::process::Signal;
    const LEN: usize = 16 << 20;
    let (here, there) = Pipe::new::<Vec<u8>>().unwrap();
    let p = Process::spawn(there, |c: Connection<Vec<u8>>| {
        c.send(&vec![5u8; LEN]).unwrap();
    })
    .unwrap();
    // The message has started; it is far larger than the socket buffer, so the child is
    // still writing it when it is stopped.
    assert!(here.poll(WAIT).unwrap());
    signal(p.pid(), Signal::STOP);
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        // Drain what is buffered; each call returns at its deadline.
        let mut results = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let r = here.recv_timeout(Duration::from_millis(200));
            results.push((r.map(|v| v.len()), t0.elapsed()));
        }
        tx.send(results).unwrap();
        here
    });
    let results = rx.recv_timeout(Duration::from_secs(10));
    signal(p.pid(), Signal::CONT);
    let results = results.expect("a timed receive hung behind the frozen sender");
    for (r, took) in &results {
        let e = r.as_ref().unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(*took >= Duration::from_millis(200), "{took:?}");
    }
    let here = receiver.join().unwrap();
    let v = here.recv_timeout(WAIT).unwrap();
    assert_eq!(v.len(), LEN);
    assert!(v.iter().all(|&b| b == 5));
    join(&p).unwrap();
}

/// A value whose own `Serialize` fails with its own words (issue 9.4); any other value of it
/// goes through.
#[derive(Debug, serde::Deserialize)]
struct Refuses(u32);

impl serde::Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("refuses: 13 is unlucky"));
        }
        s.serialize_u32(self.0)
    }
}

fn unlucky_result(n: u32) -> Vec<Refuses> {
    vec![Refuses(1), Refuses(n)]
}

#[test]
fn a_users_serialize_message_survives_send_argument_and_return() {
    // send
    let (a, b) = Pipe::new::<Refuses>().unwrap();
    let e = a.send(&Refuses(13)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Encode);
    assert!(e.to_string().contains("refuses: 13 is unlucky"), "{e}");
    a.send(&Refuses(12)).unwrap(); // nothing of the failed one was sent
    assert_eq!(b.recv_timeout(WAIT).unwrap().0, 12);
    for m in METHODS {
        // a Process argument
        let e = Process::builder()
            .start_method(m)
            .spawn(Refuses(13), |r: Refuses| r.0)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode, "{m:?}: {e}");
        assert!(
            e.to_string().contains("refuses: 13 is unlucky"),
            "{m:?}: {e}"
        );
        // a return value, encoded in the child
        let p = Process::builder()
            .start_method(m)
            .spawn(13u32, unlucky_result)
            .unwrap();
        let e = join(&p).unwrap_err();
        assert!(
            e.to_string().contains("refuses: 13 is unlucky"),
            "{m:?}: {e}"
        );
    }
}
