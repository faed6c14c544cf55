//! Unit tests of shared memory: handles that are not what they claim to be are refused before
//! anything is mapped.

use std::os::fd::{AsFd, OwnedFd};

use super::segment::{self, Elem, Header, Kind};
use super::{SharedMemory, SharedVec};
use crate::codec;
use crate::error::ErrorKind;
use crate::sys::shm;

/// Decodes a `T` whose descriptor is `fd` (as if it had arrived with a message).
fn decode_as<T: serde::de::DeserializeOwned>(fd: OwnedFd, prefix: &[u8]) -> crate::Result<T> {
    let mut bytes = prefix.to_vec();
    postcard::to_io(&0u32, &mut bytes).unwrap(); // handle index 0
    codec::decode::<T>(&bytes, vec![crate::fdreg::adopt(fd)])
}

fn as_vec_u64(fd: OwnedFd) -> crate::Result<SharedVec<u64>> {
    decode_as(fd, &[])
}

/// `SharedMemory`'s wire format is an enum: variant 0 (anonymous) then the handle index.
fn as_shm(fd: OwnedFd) -> crate::Result<SharedMemory> {
    decode_as(fd, &[0])
}

/// The error message, after checking that it is a decode error and that no new memfd of
/// the test's name got mapped while failing.
fn refused<T: std::fmt::Debug>(f: impl FnOnce() -> crate::Result<T>) -> String {
    let before = mapped_test_segments();
    let e = f().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert_eq!(
        mapped_test_segments(),
        before,
        "a refused handle was mapped"
    );
    e.to_string()
}

/// How many mappings of memfds named `shm-test` this process has.
fn mapped_test_segments() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:shm-test"))
        .count()
}

fn sealed(len: u64) -> OwnedFd {
    shm::create("shm-test", len).unwrap()
}

fn header(kind: Kind, elem: Elem, elements: u64) -> Header {
    Header {
        kind,
        data_len: elements * u64::from(elem.size),
        elements,
        elem,
    }
}

/// A sealed segment of the right size for `h`, with `h` written and then `patch` applied.
fn segment_with(h: Header, patch: impl FnOnce(&mut [u8])) -> OwnedFd {
    let fd = sealed(4096 + h.data_len.div_ceil(4096) * 4096);
    let real = segment::create(h, "test").unwrap();
    let mut b = [0u8; 52];
    shm::read_at(real.as_fd(), 0, &mut b).unwrap();
    patch(&mut b);
    shm::write_at(fd.as_fd(), 0, &b).unwrap();
    fd
}

#[test]
fn a_socket_file_or_unsealed_memfd_is_refused() {
    let (a, _b) = crate::sys::socket::socketpair().unwrap();
    let m = refused(|| as_vec_u64(a));
    assert!(m.contains("not a size-sealed shared-memory segment"), "{m}");
    assert!(m.contains("another program"), "{m}");
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let m = refused(|| as_shm(f.into()));
    assert!(m.contains("not a size-sealed"), "{m}");
    let fd = rustix::fs::memfd_create("shm-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 8192).unwrap();
    let m = refused(|| as_vec_u64(fd));
    assert!(m.contains("not a size-sealed"), "{m}");
}

#[test]
fn wrong_size_magic_or_version_is_refused() {
    let m = refused(|| as_vec_u64(sealed(100)));
    assert!(m.contains("a segment of 100 bytes"), "{m}");
    let m = refused(|| as_vec_u64(sealed(8192)));
    assert!(m.contains("no shared-memory header"), "{m}");
    let h = header(Kind::Vec, Elem::of::<u64>(), 512);
    let m = refused(|| as_vec_u64(segment_with(h, |b| b[8] = 7)));
    assert!(m.contains("header version 7"), "{m}");
    // A header that claims more data than the segment holds (which a mapping would turn
    // into SIGBUS).
    let m = refused(|| {
        as_vec_u64(segment_with(h, |b| {
            b[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes());
            b[24..32].copy_from_slice(&(1u64 << 27).to_le_bytes());
        }))
    });
    assert!(m.contains("inconsistent header"), "{m}");
    // An element count that does not match the size.
    let m = refused(|| as_vec_u64(segment_with(h, |b| b[24] = 3)));
    assert!(m.contains("element count"), "{m}");
    // A huge sealed segment (address space only) is refused by its size alone.
    let m = refused(|| as_vec_u64(sealed(1 << 41)));
    assert!(m.contains("a segment of 2199023255552 bytes"), "{m}");
    let m = refused(|| as_vec_u64(segment_with(h, |b| b[12] = 9)));
    assert!(m.contains("unknown segment kind 9"), "{m}");
}

#[test]
fn another_element_type_or_kind_is_refused() {
    let v = SharedVec::<u32>::zeroed(1024).unwrap();
    let m = refused(|| as_vec_u64(v.fd().as_fd().try_clone_to_owned().unwrap()));
    assert!(m.contains("another type"), "{m}");
    // Same size and alignment, another type: the name is part of the check.
    let v = SharedVec::<i64>::zeroed(512).unwrap();
    let m = refused(|| as_vec_u64(v.fd().as_fd().try_clone_to_owned().unwrap()));
    assert!(m.contains("another type"), "{m}");
    let s = SharedMemory::new(4096).unwrap();
    let m = refused(|| as_vec_u64(s.fd.as_fd().try_clone_to_owned().unwrap()));
    assert!(m.contains("it is a SharedMemory"), "{m}");
    let v = SharedVec::<u64>::zeroed(512).unwrap();
    let m = refused(|| as_shm(v.fd().as_fd().try_clone_to_owned().unwrap()));
    assert!(m.contains("it is a SharedVec"), "{m}");
    // And the right one is accepted, and maps the same memory.
    let mut v = v;
    v[7] = 77;
    let again = as_vec_u64(v.fd().as_fd().try_clone_to_owned().unwrap()).unwrap();
    assert_eq!(again.len(), 512);
    assert_eq!(again[7], 77);
}

#[test]
fn a_forged_handle_index_is_refused() {
    let mut bytes = Vec::new();
    postcard::to_io(&3u32, &mut bytes).unwrap();
    let e = codec::decode::<SharedVec<u8>>(&bytes, Vec::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert!(e.to_string().contains("did not arrive"), "{e}");
}

#[test]
fn serialising_outside_multiproc_is_an_error() {
    let v = SharedVec::<u8>::zeroed(10).unwrap();
    assert!(postcard::to_io(&v, &mut Vec::new()).is_err());
    let s = SharedMemory::new(10).unwrap();
    assert!(postcard::to_io(&s, &mut Vec::new()).is_err());
}

#[test]
fn typed_views_check_size_and_the_atomics_share_memory() {
    let mut s = SharedMemory::new(24).unwrap();
    assert_eq!(s.as_slice_of::<u64>().unwrap().len(), 3);
    let e = s.as_slice_of::<[u64; 2]>().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert!(e.to_string().contains("24 bytes cannot be viewed"), "{e}");
    s.as_mut_slice_of::<u32>().unwrap()[1] = 5;
    let other = s.try_clone().unwrap();
    other.as_atomic_u64().unwrap()[0].fetch_add(1 << 32, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(s.as_slice_of::<u32>().unwrap()[1], 6);
    assert!(SharedMemory::new(6).unwrap().as_atomic_u64().is_err());
    assert_eq!(
        SharedMemory::new(6)
            .unwrap()
            .as_atomic_u32()
            .unwrap_err()
            .kind(),
        ErrorKind::Decode
    );
}

#[test]
fn sizes_and_names_are_checked() {
    assert_eq!(SharedMemory::new(0).unwrap_err().kind(), ErrorKind::Io);
    assert!(SharedVec::<()>::zeroed(3).is_err());
    assert!(SharedVec::<u64>::zeroed(usize::MAX / 4).is_err());
    assert_eq!(SharedVec::<u64>::zeroed(0).unwrap().len(), 0);
    for bad in ["", "/", "a/b", "..", ".", "x\0y", &"n".repeat(256)] {
        let e = SharedMemory::create_named(bad, 10).unwrap_err();
        assert!(
            e.to_string().contains("not a shared-memory name"),
            "{bad:?}: {e}"
        );
    }
}
