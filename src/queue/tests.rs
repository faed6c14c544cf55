//! Unit tests of the queue core: handles that are not what they claim to be.

use std::os::fd::{AsFd, OwnedFd};

use super::ring::{Kind, Ring};
use super::{type_hash, JoinableQueue, Queue};
use crate::codec;
use crate::error::ErrorKind;

/// Decodes a `Queue<u64>` whose descriptor is `fd` (as if it had arrived with a message).
fn decode_as_queue(fd: OwnedFd) -> crate::Result<Queue<u64>> {
    let mut bytes = Vec::new();
    postcard::to_io(&0u32, &mut bytes).unwrap(); // handle index 0
    codec::decode::<Queue<u64>>(&bytes, vec![crate::fdreg::adopt(fd)])
}

fn message(r: crate::Result<Queue<u64>>) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    e.to_string()
}

#[test]
fn a_socket_is_not_a_queue() {
    let (a, _b) = crate::sys::socket::socketpair().unwrap();
    let m = message(decode_as_queue(a));
    assert!(m.contains("not a sealed shared-memory segment"), "{m}");
    assert!(m.contains("another program"), "{m}");
}

#[test]
fn a_regular_file_is_not_a_queue() {
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let m = message(decode_as_queue(f.into()));
    assert!(m.contains("not a sealed"), "{m}");
}

#[test]
fn an_unsealed_memfd_is_not_a_queue() {
    let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4096 + (1 << 16)).unwrap();
    let m = message(decode_as_queue(fd));
    assert!(m.contains("not a sealed"), "{m}");
}

#[test]
fn a_sealed_segment_of_the_wrong_size_or_content_is_refused() {
    // Right kind of object, absurd size: refused before anything is mapped.
    let fd = crate::sys::shm::create("x", 12345).unwrap();
    let m = message(decode_as_queue(fd));
    assert!(m.contains("12345 bytes"), "{m}");
    // Plausible size, no header (zeros): refused after looking at the magic only.
    let fd = crate::sys::shm::create("x", 4096 + (1 << 16)).unwrap();
    let m = message(decode_as_queue(fd));
    assert!(m.contains("no queue header"), "{m}");
    // A real queue header with a bumped version.
    let ring = Ring::create(Kind::Queue, type_hash::<u64>(), 1 << 16, u64::MAX).unwrap();
    let fd = ring.fd().try_clone_to_owned().unwrap();
    drop(ring);
    // Mapping the same segment again lets us scribble on its header.
    let map = crate::sys::shm::Mapping::map(fd.as_fd(), 4096 + (1 << 16), 4096).unwrap();
    let version = map.atomic_u32(8).load(std::sync::atomic::Ordering::Relaxed);
    map.atomic_u32(8)
        .store(99, std::sync::atomic::Ordering::Relaxed);
    let m = message(decode_as_queue(fd.try_clone().unwrap()));
    assert!(m.contains("version 99"), "{m}");
    map.atomic_u32(8)
        .store(version, std::sync::atomic::Ordering::Relaxed); // this build's again
    map.atomic_u64(16)
        .store(1 << 20, std::sync::atomic::Ordering::Relaxed); // capacity
    let m = message(decode_as_queue(fd));
    assert!(m.contains("inconsistent"), "{m}");
}

#[test]
fn another_flavour_or_item_type_is_refused() {
    let jq: JoinableQueue<u64> = JoinableQueue::new().unwrap();
    let m = message(decode_as_queue(
        jq.h.ring().fd().try_clone_to_owned().unwrap(),
    ));
    assert!(m.contains("it is a JoinableQueue"), "{m}");
    let q: Queue<u32> = Queue::new().unwrap();
    let m = message(decode_as_queue(
        q.h.ring().fd().try_clone_to_owned().unwrap(),
    ));
    assert!(m.contains("another type"), "{m}");
    let q: Queue<u64> = Queue::new().unwrap();
    let q2 = decode_as_queue(q.h.ring().fd().try_clone_to_owned().unwrap()).unwrap();
    q2.put(9).unwrap();
    assert_eq!(q.get().unwrap(), 9);
}

#[test]
fn serialising_outside_multiproc_is_an_error() {
    let q: Queue<u64> = Queue::new().unwrap();
    let mut out = Vec::new();
    assert!(postcard::to_io(&q, &mut out).is_err());
}

#[test]
fn a_handle_received_again_shares_the_mapping() {
    let q: Queue<u64> = Queue::new().unwrap();
    let again = decode_as_queue(q.h.ring().fd().try_clone_to_owned().unwrap()).unwrap();
    assert!(std::sync::Arc::ptr_eq(&q.h.ring, &again.h.ring));
    drop(q);
    drop(again);
    // Once every handle is gone, a new queue gets a new segment.
    let fresh: Queue<u64> = Queue::new().unwrap();
    assert_eq!(fresh.len(), 0);
}
