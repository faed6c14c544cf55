//! Received handles: every check `Segment::open` makes, through the codec as a child would
//! receive them, and directly on forged descriptors.

use std::os::fd::AsFd;

use super::segment::{Elem, Kind, Segment, CONTROL};
use super::*;
use crate::codec;
use crate::error::ErrorKind;
use crate::fdreg;

/// Encodes `value` with its descriptors, then decodes it as a `U`.
fn resend<T: serde::Serialize, U: serde::de::DeserializeOwned>(value: &T) -> crate::Result<U> {
    let (mut bytes, mut fds) = (Vec::new(), Vec::new());
    codec::encode(value, &mut bytes, &mut fds)?;
    codec::decode(&bytes, fds)
}

#[test]
fn handles_come_back_as_themselves() {
    let v = Value::new(7u64).unwrap();
    let back: Value<u64> = resend(&v).unwrap();
    *back.lock().unwrap() += 1;
    assert_eq!(v.get().unwrap(), 8);
    let a = Array::new(&[1u16, 2]).unwrap();
    let back: Array<u16> = resend(&a).unwrap();
    assert_eq!(back.to_vec().unwrap(), [1, 2]);
    let l: Lock = resend(&v.get_lock()).unwrap();
    let g = l.acquire().unwrap();
    assert!(v.try_lock().unwrap_err().kind() == ErrorKind::InvalidState);
    drop(g);
    let c = Condition::with_lock(v.get_lock()).unwrap();
    let c2: Condition = resend(&c).unwrap();
    drop(c2.acquire().unwrap());
    let b = Barrier::new(3).unwrap();
    let b2: Barrier = resend(&b).unwrap();
    assert_eq!(b2.parties(), 3);
}

#[test]
fn a_value_of_u64_is_not_received_as_u32_or_as_another_primitive() {
    let v = Value::new(1u64).unwrap();
    let e = resend::<_, Value<u32>>(&v).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode);
    assert!(e.to_string().contains("another type"), "{e}");
    let e = resend::<_, Value<i64>>(&v).unwrap_err();
    assert!(e.to_string().contains("another type"), "{e}");
    let e = resend::<_, Array<u64>>(&v).unwrap_err();
    assert!(e.to_string().contains("it is a Value"), "{e}");
    let e = resend::<_, RawValue<u64>>(&v).unwrap_err();
    assert!(e.to_string().contains("it is a Value"), "{e}");
    let e = resend::<_, Event>(&Lock::new().unwrap()).unwrap_err();
    assert!(e.to_string().contains("it is a Lock"), "{e}");
    let e = resend::<_, BoundedSemaphore>(&Semaphore::new(1).unwrap()).unwrap_err();
    assert!(e.to_string().contains("it is a Semaphore"), "{e}");
    // A Value's lock is a Lock; a Lock is not a Value.
    assert!(resend::<_, Lock>(&v).is_ok());
    assert!(resend::<_, Value<u64>>(&Lock::new().unwrap()).is_err());
}

/// A segment with `header` bytes at offset 0 and `len` bytes in all; sealed or not.
fn forged(len: u64, header: &[u8], sealed: bool) -> fdreg::RegisteredFd {
    if sealed {
        let fd = fdreg::memfd("forged", len).unwrap();
        rustix::io::pwrite(fd.as_fd(), header, 0).unwrap();
        return fd;
    }
    let fd = rustix::fs::memfd_create("forged", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::io::pwrite(&fd, header, 0).unwrap();
    fdreg::adopt(fd)
}

/// The header a real `Value<u64>` segment carries.
fn real_header() -> Vec<u8> {
    let v = Value::new(5u64).unwrap();
    let fd = resend_fd(&v);
    let mut h = vec![0u8; 64];
    crate::sys::shm::read_at(fd.as_fd(), 0, &mut h).unwrap();
    h
}

fn resend_fd<T: serde::Serialize>(value: &T) -> fdreg::RegisteredFd {
    let (mut bytes, mut fds) = (Vec::new(), Vec::new());
    codec::encode(value, &mut bytes, &mut fds).unwrap();
    fds.pop().unwrap()
}

#[test]
fn forged_segments_are_refused_before_mapping() {
    let elem = Elem::of::<u64>();
    let open = |fd| Segment::open(fd, &[Kind::Value], elem).map(drop);
    let good = real_header();
    let len = 2 * CONTROL as u64;
    assert!(
        open(forged(len, &good, true)).is_ok(),
        "the real header opens"
    );
    let cases: Vec<(&str, fdreg::RegisteredFd, &str)> = vec![
        ("unsealed", forged(len, &good, false), "not a sealed"),
        ("too small", forged(100, &good[..56], true), "bytes"),
        ("size", forged(3 * CONTROL as u64, &good, true), "elements"),
        ("magic", forged(len, &patch(&good, 0, 1), true), "header"),
        ("version", forged(len, &patch(&good, 8, 9), true), "version"),
        (
            "lock format",
            forged(len, &patch(&good, 16, 9), true),
            "version",
        ),
        (
            "kind",
            forged(len, &patch(&good, 12, 3), true),
            "it is a RawArray",
        ),
        (
            "unknown kind",
            forged(len, &patch(&good, 12, 99), true),
            "unknown",
        ),
        (
            "elem size",
            forged(len, &patch(&good, 20, 4), true),
            "another type",
        ),
        (
            "elem hash",
            forged(len, &patch(&good, 32, 1), true),
            "another type",
        ),
        ("count", forged(len, &patch(&good, 40, 2), true), "elements"),
    ];
    for (what, fd, says) in cases {
        let e = open(fd).unwrap_err();
        assert!(e.contains(says), "{what}: {e}");
    }
    // Not a memfd at all: a socket.
    let (a, _b) = fdreg::socketpair().unwrap();
    assert!(open(a).unwrap_err().contains("not a sealed"));
}

/// `h` with one byte at `at` changed by `by`.
fn patch(h: &[u8], at: usize, by: u8) -> Vec<u8> {
    let mut h = h.to_vec();
    h[at] = h[at].wrapping_add(by);
    h
}

#[test]
fn a_forged_barrier_party_count_is_refused() {
    let b = Barrier::new(2).unwrap();
    let fd = resend_fd(&b);
    rustix::io::pwrite(fd.as_fd(), &0u64.to_le_bytes(), 48).unwrap();
    let e = resend::<_, Barrier>(&b).unwrap_err();
    assert!(e.to_string().contains("parties"), "{e}");
}
