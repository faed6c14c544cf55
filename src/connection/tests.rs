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
    assert_eq!(a.try_recv().unwrap_err().kind(), ErrorKind::WouldBlock);
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

// ---------------------------------------------------------------------------------------------
// Timeouts that hold (issue 9.8) and timed sends (issue 10.5): every timed call returns in
// time whatever the peer sends, and what timed out can be continued.
// ---------------------------------------------------------------------------------------------

/// Runs `f` on a thread; fails the test if it has not returned within 10 s (a hang).
fn within<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the call did not return within 10 s")
}

const SHORT: Duration = Duration::from_millis(200);

/// `recv_timeout(SHORT)` on `conn` from another thread: it must time out (and not hang).
fn times_out<T: DeserializeOwned + Send + 'static>(conn: Connection<T>) -> (Connection<T>, Error) {
    within(move || {
        let t0 = Instant::now();
        let e = match conn.recv_timeout(SHORT) {
            Ok(_) => panic!("received a value from an incomplete frame"),
            Err(e) => e,
        };
        assert!(t0.elapsed() >= SHORT, "returned before its deadline");
        (conn, e)
    })
}

#[test]
fn a_header_then_silence_times_out_and_the_frame_continues() {
    let (mut raw, conn) = raw_pair();
    let mut payload = Vec::new();
    crate::codec::encode(&vec![1u64, 2, 3], &mut payload, &mut Vec::new()).unwrap();
    let header = crate::codec::frame::encode_header(payload.len(), 0).unwrap();
    raw.write_all(&header[..5]).unwrap(); // not even the whole header
    let (conn, e) = times_out(conn);
    assert!(e.is_timeout(), "{e}");
    raw.write_all(&header[5..]).unwrap();
    let (conn, e) = times_out(conn);
    assert!(e.is_timeout(), "{e}");
    assert_eq!(
        conn.try_recv().unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "a partial frame is not a message yet"
    );
    raw.write_all(&payload).unwrap();
    assert_eq!(
        conn.recv_timeout(Duration::from_secs(10)).unwrap(),
        vec![1, 2, 3]
    );
}

#[test]
fn half_a_large_payload_then_silence_times_out_and_nothing_is_lost() {
    // Large enough for the direct read path; the rest arrives after two timeouts.
    let (mut raw, conn) = raw_pair();
    let value: Vec<u64> = (0..100_000).collect();
    let mut payload = Vec::new();
    crate::codec::encode(&value, &mut payload, &mut Vec::new()).unwrap();
    let header = crate::codec::frame::encode_header(payload.len(), 0).unwrap();
    raw.write_all(&header).unwrap();
    let half = payload.len() / 2;
    let first = std::thread::scope(|s| {
        // The socket buffer may not hold half the payload: write it while we receive.
        let w = s.spawn(|| raw.write_all(&payload[..half]).unwrap());
        let mut timeouts = 0;
        while !w.is_finished() || timeouts == 0 {
            let e = conn.recv_timeout(SHORT).unwrap_err();
            assert!(e.is_timeout(), "{e}");
            timeouts += 1;
            assert!(timeouts < 1000, "the writer never finished");
        }
        timeouts
    });
    assert!(first >= 1);
    let (conn, e) = times_out(conn);
    assert!(e.is_timeout(), "{e}");
    let rest = payload[half..].to_vec();
    let w = std::thread::spawn(move || raw.write_all(&rest).unwrap());
    assert_eq!(conn.recv_timeout(Duration::from_secs(10)).unwrap(), value);
    w.join().unwrap();
}

#[test]
fn descriptors_announced_but_not_sent_never_hold_a_timed_receive() {
    // A duplex peer: the frame is complete, the descriptor never came.
    let (mut raw, conn) = raw_pair();
    raw.write_all(&crate::codec::frame::encode_header(1, 1).unwrap())
        .unwrap();
    raw.write_all(&[0]).unwrap();
    let e = within(move || conn.recv_timeout(SHORT).unwrap_err());
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    // A one-way pipe: the writer announces a descriptor on the side socket it never sends
    // (the case of issue 9.8), and keeps the pipe open.
    let (r, w) = Pipe::simplex::<Vec<u64>>().unwrap();
    let header = crate::codec::frame::encode_header(1, 1).unwrap();
    socket::write_all(w.as_fd(), &[&header, &[0]]).unwrap();
    let e = within(move || r.recv_timeout(SHORT).unwrap_err());
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    drop(w);
}

#[test]
fn a_timed_receive_behind_another_threads_blocking_receive_returns_in_time() {
    let (a, b) = Pipe::new::<u32>().unwrap();
    let b = std::sync::Arc::new(b);
    let blocked = {
        let b = b.clone();
        std::thread::spawn(move || b.recv())
    };
    // Wait until the blocking receive holds the end.
    let t0 = Instant::now();
    while !b.chan.is_receiving() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the receive never started"
        );
        std::thread::yield_now();
    }
    let b2 = b.clone();
    let e = within(move || b2.recv_timeout(SHORT).unwrap_err());
    assert!(e.is_timeout(), "{e}");
    let b3 = b.clone();
    assert!(!within(move || b3.poll(SHORT).unwrap()));
    // Sending on the same end is not held up by the receive (ARCHITECTURE.md, "Locks").
    let b4 = b.clone();
    within(move || b4.send_timeout(&4, SHORT).unwrap());
    assert_eq!(a.recv_timeout(Duration::from_secs(10)).unwrap(), 4);
    a.send(&9).unwrap();
    assert_eq!(blocked.join().unwrap().unwrap(), 9);
}

#[test]
fn try_recv_and_timeouts_have_the_one_result_shape() {
    let (a, b) = Pipe::new::<u8>().unwrap();
    assert_eq!(b.try_recv().unwrap_err().kind(), ErrorKind::WouldBlock);
    assert!(b.recv_timeout(Duration::ZERO).unwrap_err().is_timeout());
    assert!(b
        .recv_deadline(Instant::now() + Duration::from_millis(5))
        .unwrap_err()
        .is_timeout());
    a.send(&1).unwrap();
    // Duration::MAX means no deadline: the value that is there is received.
    assert_eq!(b.recv_timeout(Duration::MAX).unwrap(), 1);
    a.send(&2).unwrap();
    assert!(b.poll(Duration::MAX).unwrap());
    assert_eq!(b.try_recv().unwrap(), 2);
    drop(a);
    assert!(b.try_recv().unwrap_err().is_disconnected());
}

/// Sends small messages on `a` until a send times out (nobody reads the peer); returns how
/// many went through.
fn fill_until_timeout(a: &Connection<Vec<u8>>) -> usize {
    let mut n = 0;
    loop {
        match a.send_timeout(&vec![n as u8; 1000], Duration::from_millis(20)) {
            Ok(()) => n += 1,
            Err(e) => {
                assert!(e.is_timeout(), "{e}");
                assert!(e.to_string().contains("nothing of it was sent"), "{e}");
                return n;
            }
        }
        assert!(n < 100_000, "the buffer never filled");
    }
}

#[test]
fn send_timeout_on_a_full_buffer_sends_nothing_and_the_stream_stays_intact() {
    for (a, b) in [
        Pipe::new::<Vec<u8>>().unwrap(),
        Pipe::simplex().map(|(r, w)| (w, r)).unwrap(),
    ] {
        let (a, sent) = within(move || {
            let n = fill_until_timeout(&a);
            (a, n)
        });
        assert!(sent > 0);
        // Everything that was sent arrives whole and in order; then the end sends again.
        for i in 0..sent {
            assert_eq!(
                b.recv_timeout(Duration::from_secs(10)).unwrap(),
                vec![i as u8; 1000]
            );
        }
        a.send_timeout(&vec![7; 3], Duration::from_secs(10))
            .unwrap();
        assert_eq!(b.recv_timeout(Duration::from_secs(10)).unwrap(), vec![7; 3]);
    }
}

#[test]
fn send_timeout_in_the_middle_of_a_message_poisons_the_sender_not_the_stream() {
    for duplex in [true, false] {
        let (a, b) = if duplex {
            Pipe::new::<Vec<u8>>().unwrap()
        } else {
            let (r, w) = Pipe::simplex::<Vec<u8>>().unwrap();
            (w, r)
        };
        a.send(&vec![1; 10]).unwrap();
        // 4 MiB is far more than the kernel buffers; nobody reads until the deadline.
        let (a, e) = within(move || {
            let e = a
                .send_timeout(&vec![2; 4 << 20], Duration::from_millis(100))
                .unwrap_err();
            (a, e)
        });
        assert!(e.is_timeout(), "{e}");
        assert!(e.to_string().contains("can no longer send"), "{e}");
        let later = a.send(&vec![3; 10]).unwrap_err();
        assert_eq!(later.kind(), ErrorKind::Closed, "{later}");
        assert!(
            later.to_string().contains("make a new connection"),
            "{later}"
        );
        // The peer gets the whole message sent before, then a clear end, never garbage.
        assert_eq!(
            b.recv_timeout(Duration::from_secs(10)).unwrap(),
            vec![1; 10]
        );
        // A duplex end's socket is shut down for sending: the peer sees the end while `a`
        // is still open. A pipe's writer cannot be shut down, only closed.
        let keep = if duplex {
            Some(a)
        } else {
            drop(a);
            None
        };
        let e = b.recv_timeout(Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Disconnected, "duplex {duplex}: {e}");
        assert!(e.to_string().contains("middle of a frame"), "{e}");
        drop(keep);
    }
}

#[test]
fn an_errors_debug_reads_like_its_display() {
    let (mut raw, conn) = raw_pair();
    raw.write_all(b"not a frame at all").unwrap();
    let e = conn.recv().unwrap_err();
    let debug = format!("{e:?}");
    assert!(debug.contains("Protocol"), "{debug}");
    assert!(debug.contains(&e.to_string()), "{debug} / {e}");
    assert!(!debug.contains("Message("), "{debug}");
}

#[test]
fn a_timed_send_behind_another_threads_blocking_send_returns_in_time() {
    let (a, b) = Pipe::new::<Vec<u8>>().unwrap();
    let a = std::sync::Arc::new(a);
    // A message far larger than the socket buffer: the blocking send waits for the reader.
    let big = {
        let a = a.clone();
        std::thread::spawn(move || a.send(&vec![4u8; 4 << 20]))
    };
    let t0 = Instant::now();
    while !a.chan.is_sending() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the send never started"
        );
        std::thread::yield_now();
    }
    let a2 = a.clone();
    let e = within(move || a2.send_timeout(&vec![5u8; 3], SHORT).unwrap_err());
    assert!(e.is_timeout(), "{e}");
    assert!(e.to_string().contains("another thread"), "{e}");
    // Nothing of the timed send went out: the big message arrives whole, then the stream
    // carries on.
    assert_eq!(
        b.recv_timeout(Duration::from_secs(10)).unwrap().len(),
        4 << 20
    );
    big.join().unwrap().unwrap();
    a.send(&vec![6u8; 2]).unwrap();
    assert_eq!(
        b.recv_timeout(Duration::from_secs(10)).unwrap(),
        vec![6u8; 2]
    );
}

#[test]
fn byte_messages_have_the_same_timed_family() {
    let (a, b) = Pipe::new::<()>().unwrap();
    assert_eq!(
        b.try_recv_bytes().unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    assert!(b
        .recv_bytes_timeout(Duration::from_millis(5))
        .unwrap_err()
        .is_timeout());
    a.send_bytes_timeout(b"one", Duration::from_secs(10))
        .unwrap();
    a.send_bytes_deadline(b"two", Instant::now() + Duration::from_secs(10))
        .unwrap();
    assert_eq!(b.recv_bytes_timeout(Duration::MAX).unwrap(), b"one");
    assert_eq!(
        b.recv_bytes_deadline(Instant::now() + Duration::from_secs(10))
            .unwrap(),
        b"two"
    );
    // A full buffer: the timed byte send gives up with nothing sent, and what went before
    // arrives intact.
    let (a, sent) = within(move || {
        let mut n = 0usize;
        loop {
            match a.send_bytes_timeout(&[n as u8; 1000], Duration::from_millis(20)) {
                Ok(()) => n += 1,
                Err(e) => {
                    assert!(e.is_timeout(), "{e}");
                    break (a, n);
                }
            }
        }
    });
    for i in 0..sent {
        assert_eq!(b.try_recv_bytes().unwrap(), vec![i as u8; 1000]);
    }
    drop(a);
    assert!(b.try_recv_bytes().unwrap_err().is_disconnected());
}
