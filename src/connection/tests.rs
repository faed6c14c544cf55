use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::*;

fn raw_pair() -> (std::os::unix::net::UnixStream, Connection<Vec<u64>>) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd: OwnedFd = b.into();
    (
        a,
        Connection::from_channel(Channel::new(crate::fdreg::adopt(fd)), true, true),
    )
}

#[test]
fn typed_roundtrip_and_bytes() {
    let (a, b) = Pipe::new::<Vec<u64>>().unwrap();
    a.send(&vec![1, 2, 3]).unwrap();
    assert_eq!(b.recv().unwrap(), vec![1, 2, 3]);
    b.send_bytes(b"raw").unwrap();
    assert_eq!(a.recv_bytes().unwrap(), b"raw");
    assert!(a.try_recv().unwrap().is_none());
    assert!(!a.poll(Duration::ZERO).unwrap());
}

#[test]
fn garbage_is_a_protocol_error_not_a_panic() {
    let (mut raw, conn) = raw_pair();
    raw.write_all(b"this is not a multiproc frame at all")
        .unwrap();
    let e = conn.recv().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    // The stream stays refused afterwards rather than resynchronising on garbage.
    assert_eq!(conn.recv().unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn four_gib_length_prefix_is_refused_before_allocating() {
    let (mut raw, conn) = raw_pair();
    raw.write_all(&[0xA7, 1, 0, 0, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let e = conn.recv().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
}

#[test]
fn configured_limit_applies() {
    let (a, b) = Pipe::new::<Vec<u64>>().unwrap();
    b.set_max_message_size(64);
    a.send(&vec![7u64; 100]).unwrap();
    assert_eq!(b.recv().unwrap_err().kind(), ErrorKind::TooLarge);
}

#[test]
fn truncated_frame_then_eof_is_disconnected() {
    let (mut raw, conn) = raw_pair();
    raw.write_all(&[0xA7, 1, 0, 0, 100, 0, 0, 0, 1, 2, 3])
        .unwrap();
    drop(raw);
    let e = conn.recv().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    assert!(e.to_string().contains("middle of a frame"), "{e}");
}

#[test]
fn wrong_type_is_a_decode_error() {
    let (a, b) = Pipe::new::<String>().unwrap();
    a.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(b.recv().unwrap_err().kind(), ErrorKind::Decode);
}

#[test]
fn eof_after_peer_drop() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    a.send(&1).unwrap();
    drop(a);
    assert_eq!(b.recv().unwrap(), 1);
    assert!(b.recv().unwrap_err().is_disconnected());
    assert!(
        b.poll(Duration::ZERO).unwrap(),
        "end of stream counts as ready"
    );
}

#[test]
fn send_to_closed_peer_is_disconnected() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    drop(b);
    assert!(a.send(&1).unwrap_err().is_disconnected());
}

#[test]
fn timeout_keeps_partial_frame() {
    let (mut raw, conn) = raw_pair();
    // Header and half the payload of a Vec<u64> [5] (postcard: len 1, value 5).
    raw.write_all(&[0xA7, 1, 0, 0, 2, 0, 0, 0, 1]).unwrap();
    assert!(conn
        .recv_timeout(Duration::from_millis(20))
        .unwrap_err()
        .is_timeout());
    raw.write_all(&[5]).unwrap();
    assert_eq!(conn.recv_timeout(Duration::from_secs(5)).unwrap(), vec![5]);
}

#[test]
fn recv_bytes_into_leaves_long_message_queued() {
    let (a, b) = Pipe::new::<()>().unwrap();
    a.send_bytes(&[9u8; 100]).unwrap();
    let mut small = [0u8; 10];
    assert_eq!(
        b.recv_bytes_into(&mut small).unwrap_err().kind(),
        ErrorKind::BufferTooShort
    );
    let mut big = [0u8; 200];
    assert_eq!(b.recv_bytes_into(&mut big).unwrap(), 100);
    assert_eq!(&big[..100], &[9u8; 100][..]);
}

#[test]
fn connection_inside_a_message_in_process() {
    let (a, b) = Pipe::new::<Connection<String>>().unwrap();
    let (x, y) = Pipe::new::<String>().unwrap();
    a.send(&x).unwrap();
    drop(x);
    let x2 = b.recv().unwrap();
    x2.send(&"via a passed handle".to_string()).unwrap();
    assert_eq!(y.recv().unwrap(), "via a passed handle");
}

#[test]
fn forged_handle_index_is_rejected() {
    // A Connection deserialised from bytes that reference a descriptor that never arrived.
    let (a, b) = Pipe::new::<Connection<u8>>().unwrap();
    a.send_bytes(&[0, 3]).unwrap(); // index 0, flags 3, but no descriptor attached
    let e = b.recv().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert!(e.to_string().contains("did not arrive"), "{e}");
}

#[test]
fn handle_serialised_elsewhere_fails_cleanly() {
    let (a, _b) = Pipe::new::<u8>().unwrap();
    let err = postcard::to_allocvec(&a).unwrap_err();
    assert!(err.to_string().len() < 200);
}

#[test]
fn simplex_directions() {
    let (r, w) = Pipe::simplex::<u8>().unwrap();
    assert!(r.readable() && !r.writable() && w.writable() && !w.readable());
    assert_eq!(w.recv().unwrap_err().kind(), ErrorKind::Unsupported);
    w.send(&3).unwrap();
    assert_eq!(r.recv().unwrap(), 3);
}

#[test]
fn wait_reports_ready_ends() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    let (c, d) = Pipe::new::<u8>().unwrap();
    assert!(wait(&[&a, &c], Some(Duration::from_millis(10)))
        .unwrap()
        .is_empty());
    d.send(&1).unwrap();
    assert_eq!(
        wait(&[&a, &c], Some(Duration::from_secs(5))).unwrap(),
        vec![1]
    );
    let _ = (b.as_fd(), c.recv().unwrap());
}

/// A small xorshift generator: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_never_panic_or_hang() {
    // Random frames, half of them with a valid header, into a receiver with a small limit:
    // every outcome is a value or a typed error, and nothing waits past the deadline.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..500 {
        let (mut raw, conn) = raw_pair();
        conn.set_max_message_size(1 << 16);
        let len = (rng.next() % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 2 == 0 && bytes.len() >= 8 {
            bytes[0] = 0xA7;
            bytes[1] = 1;
            bytes[2] = 0;
            bytes[3] = 0;
        }
        raw.write_all(&bytes).unwrap();
        drop(raw);
        for _ in 0..4 {
            match conn.recv_timeout(Duration::from_secs(5)) {
                Ok(_) => {}
                Err(e) => {
                    assert_ne!(
                        e.kind(),
                        ErrorKind::Timeout,
                        "a closed peer must not look like a timeout"
                    );
                    if e.kind() != ErrorKind::Decode {
                        break;
                    }
                }
            }
        }
    }
}

#[test]
fn a_stream_of_small_messages_arrives_in_order() {
    // Enough queued messages to make the read buffer grow from its small first size.
    let (a, b) = Pipe::new::<u64>().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..20_000u64 {
            a.send(&i).unwrap();
        }
    });
    for i in 0..20_000u64 {
        assert_eq!(b.recv_timeout(Duration::from_secs(10)).unwrap(), i);
    }
    writer.join().unwrap();
}
