//! Unit tests of the registry: every creator lists what it makes, every drop unlists and
//! closes, received descriptors are listed, and no code outside `sys`/`fdreg` creates a
//! descriptor behind the registry's back.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use super::*;

/// Whether `fd` is open in this process.
fn is_open(fd: RawFd) -> bool {
    std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists()
}

/// The descriptor numbers of `fds`, checked to be listed and open.
fn listed(fds: &[&RegisteredFd]) -> Vec<RawFd> {
    fds.iter()
        .map(|f| {
            let n = f.as_raw_fd();
            assert!(is_registered(n), "fd {n} is not on the list");
            assert!(is_open(n));
            n
        })
        .collect()
}

/// After the values are gone, their numbers are off the list and closed (other tests run in
/// parallel and may reuse a number at once, so "closed" is checked through the list only
/// where the number could have been reused).
fn gone(numbers: &[RawFd]) {
    for &n in numbers {
        assert!(
            !is_registered(n) || is_open(n),
            "fd {n} is listed although it was closed"
        );
    }
}

#[test]
fn the_set_tracks_numbers() {
    let mut s = Set::new();
    for fd in [0, 3, 63, 64, 200, 3] {
        s.insert(fd);
    }
    assert_eq!(s.len, 5);
    assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 3, 63, 64, 200]);
    assert!(s.remove(64));
    assert!(!s.remove(64));
    assert!(!s.remove(100_000));
    assert!(!s.contains(64) && s.contains(63));
    s.insert(-1);
    assert_eq!(s.len, 4);
}

#[test]
fn creators_list_and_drop_unlists() {
    let (a, b) = socketpair().unwrap();
    let (r, w) = pipe().unwrap();
    let m = memfd("fdreg-test", 4096).unwrap();
    let d = a.try_clone().unwrap();
    let p = pidfd_open(sys::process::getpid()).unwrap();
    let mut all = vec![&a, &b, &r, &w, &m, &d];
    all.extend(p.as_ref());
    let numbers = listed(&all);
    drop((a, b, r, w, m, d, p));
    gone(&numbers);
}

#[test]
fn a_duplicate_of_a_foreign_descriptor_is_listed() {
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let d = duplicate(f.as_fd()).unwrap();
    assert!(!is_registered(f.as_raw_fd()));
    let n = listed(&[&d]);
    drop(d);
    gone(&n);
}

#[test]
fn received_descriptors_are_listed() {
    let (a, b) = socketpair().unwrap();
    let (x, _y) = socketpair().unwrap();
    let header = [1u8, 2, 3];
    sys::socket::send_frame(a.as_fd(), &[&header], &[x.as_fd(), x.as_fd()], false).unwrap();
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    let n = recv(b.as_fd(), &mut buf, &mut got).unwrap();
    assert_eq!(&buf[..n], &header);
    assert_eq!(got.len(), 2);
    let numbers = listed(&got.iter().collect::<Vec<_>>());
    drop(got);
    gone(&numbers);
    // End of stream once the writer is gone: 0 bytes, nothing listed.
    drop(a);
    let mut none = Vec::new();
    assert_eq!(recv(b.as_fd(), &mut buf, &mut none).unwrap(), 0);
    assert!(none.is_empty());
}

#[test]
fn a_receive_that_finds_nothing_waits_with_the_gate_released() {
    let (a, b) = socketpair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4];
        let mut fds = Vec::new();
        recv(b.as_fd(), &mut buf, &mut fds).map(|n| buf[..n].to_vec())
    });
    // While the reader waits, the fork guard can still be taken (a blocking receive under
    // the gate would deadlock here); `lock_for_fork` has no timeout, so a failure shows as a
    // hung test rather than a wrong answer, which the harness reports.
    for _ in 0..100 {
        drop(lock_for_fork());
        std::thread::yield_now();
    }
    sys::socket::send_frame(a.as_fd(), &[b"ok"], &[], false).unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), b"ok");
}

#[test]
fn the_truncation_error_names_its_cause() {
    let r = sys::socket::Received {
        bytes: 8,
        fds: 3,
        truncated: true,
        out_of_fds: true,
    };
    let emfile = sys::socket::truncation_error(r).to_string();
    assert!(emfile.contains("ran out of file descriptors"), "{emfile}");
    assert!(emfile.contains("ulimit -n"), "{emfile}");
    let r = sys::socket::Received {
        out_of_fds: false,
        ..r
    };
    let many = sys::socket::truncation_error(r).to_string();
    assert!(
        many.contains("more file descriptors than one frame"),
        "{many}"
    );
}

/// No code outside `sys` and `fdreg` makes a descriptor with a raw creator: every one goes
/// through this module, so it is listed from its first instant.
#[test]
fn no_descriptor_is_created_behind_the_registry() {
    const RAW: [&str; 9] = [
        "socket::socketpair(",
        "socket::pipe(",
        "shm::create(",
        "process::pidfd_open(",
        "try_clone_to_owned(",
        "rustix::pipe::pipe",
        "rustix::net::socketpair",
        "memfd_create(",
        "recv_with_fds(",
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root.clone()];
    let mut offenders = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if rel != "sys" && rel != "fdreg" {
                    stack.push(path);
                }
                continue;
            }
            // Unit tests may build foreign descriptors on purpose (a memfd that is not a queue).
            if rel.ends_with("tests.rs") || !rel.ends_with(".rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for raw in RAW {
                    if line.contains(raw) {
                        offenders.push(format!("src/{rel}:{}: {}", i + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "descriptors created outside the registry:\n{}",
        offenders.join("\n")
    );
}
