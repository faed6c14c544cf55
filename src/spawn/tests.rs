use std::time::{Duration, Instant};

use super::protocol::{FromChild, Ident, TaskSpec};
use super::*;

fn entry_for<F: FnOnce(()) + Copy + 'static>(_: F) -> task::EntryFn {
    task::entry_of::<F, (), ()>()
}

fn spec(fingerprint: Vec<u8>) -> TaskSpec {
    fn noop(_: ()) {}
    let entry = task::to_offset(entry_for(noop));
    TaskSpec {
        fingerprint,
        entry,
        seal: task::seal(entry),
        setup: LaunchOpts {
            method: StartMethod::Spawn,
            name: None,
            daemon: false,
            ignore_sigint: false,
            max_message: crate::codec::frame::DEFAULT_MAX_MESSAGE,
        }
        .setup("probe", None),
        daemon: false,
        parent: Ident {
            pid: sys::process::getpid(),
            name: "test".into(),
        },
    }
}

fn exec_child() -> Launched {
    let lifeline = global().lifeline_read().unwrap();
    exec::launch(lifeline).unwrap()
}

fn wait_exit(pid: i32) -> sys::process::Exit {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = sys::process::wait_child(pid, false).unwrap() {
            return e;
        }
        assert!(Instant::now() < deadline, "child {pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn child_refuses_a_foreign_fingerprint() {
    let child = exec_child();
    child
        .chan
        .send(&spec(b"build-id:not-this-program".to_vec()))
        .unwrap();
    let mut frame = child
        .chan
        .recv_frame(Some(Instant::now() + Duration::from_secs(30)))
        .unwrap();
    let reply = protocol::split_control(&mut frame).unwrap();
    assert!(matches!(reply, FromChild::Mismatch), "{reply:?}");
    assert_eq!(wait_exit(child.pid), sys::process::Exit::Code(70));
}

#[test]
fn child_survives_garbage_on_its_control_socket() {
    let child = exec_child();
    let fd = child.chan.fd();
    sys::socket::send_frame(fd, &[b"garbage!", b"more garbage"], &[], false).unwrap();
    // The child refuses to start: a clean exit code, no crash, no hang.
    assert_eq!(wait_exit(child.pid), sys::process::Exit::Code(70));
}

#[test]
fn child_with_matching_fingerprint_runs() {
    let child = exec_child();
    child
        .chan
        .send(&spec(fingerprint().unwrap().to_vec()))
        .unwrap();
    let mut payload = Vec::new();
    codec::encode(&(), &mut payload, &mut Vec::new()).unwrap();
    child.chan.send_raw(&payload, &[]).unwrap();
    let mut frame = child
        .chan
        .recv_frame(Some(Instant::now() + Duration::from_secs(30)))
        .unwrap();
    let reply = protocol::split_control(&mut frame).unwrap();
    assert!(
        matches!(reply, FromChild::Done(task::Outcome::Ok)),
        "{reply:?}"
    );
    assert_eq!(wait_exit(child.pid), sys::process::Exit::Code(0));
}

#[test]
fn child_refuses_a_forged_entry_offset() {
    // The right build-id but an offset (and seal) nobody with the key made: the child must
    // refuse with a clear report instead of jumping there.
    for (entry, seal) in [
        (0x1234_5678u64, 0u64),
        (u64::MAX - 7, 42),
        // A real entry with a seal for another offset.
        {
            let good = spec(Vec::new());
            (good.entry, task::seal(good.entry.wrapping_add(16)))
        },
    ] {
        let child = exec_child();
        let mut forged = spec(fingerprint().unwrap().to_vec());
        forged.entry = entry;
        forged.seal = seal;
        child.chan.send(&forged).unwrap();
        let mut frame = child
            .chan
            .recv_frame(Some(Instant::now() + Duration::from_secs(30)))
            .unwrap();
        let reply = protocol::split_control(&mut frame).unwrap();
        assert!(matches!(reply, FromChild::BadEntry), "{reply:?}");
        assert_eq!(wait_exit(child.pid), sys::process::Exit::Code(70));
    }
}

#[test]
fn fingerprint_is_the_build_id() {
    let fp = fingerprint().unwrap();
    assert!(fp.starts_with(b"build-id:") || fp.starts_with(b"hash:"));
    assert!(fp.len() > 12);
}

#[test]
fn a_request_the_fork_server_refused_reports_its_reason_at_spawn() {
    // The server refused the child and closed its stream before the task was sent (it ran
    // out of descriptors first): the send hangs up, and the reason left on the stream is
    // what `spawn` reports.
    let (ours, theirs) = crate::fdreg::socketpair().unwrap();
    let server_side = Channel::new(theirs);
    let why = "the fork server is out of file descriptors (its limit is 64)";
    server_side
        .try_send_raw(&protocol::control_tail(&FromChild::SpawnFailed(why.into())))
        .unwrap();
    drop(server_side);
    let chan = Channel::new(ours);
    let hung_up = || {
        let e = chan.send(&spec(Vec::new())).unwrap_err();
        assert!(e.is_disconnected(), "{e}");
        e
    };
    let e = explain_hang_up(&chan, true, hung_up());
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains(why), "{e}");
    // Read once; with nothing left (or no fork server), a hang-up stays a hang-up.
    assert!(explain_hang_up(&chan, true, hung_up()).is_disconnected());
    assert!(explain_hang_up(&chan, false, hung_up()).is_disconnected());
}
