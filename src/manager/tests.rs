use super::protocol::decode_request;

/// Random bytes never crash, hang or over-allocate the request decoder (seeded, so a failure
/// reproduces).
#[test]
fn request_decoder_survives_random_bytes() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cases: usize = std::env::var("MULTIPROC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut ok = 0usize;
    for _ in 0..cases {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if decode_request(&bytes).is_ok() {
            ok += 1;
        }
    }
    assert!(ok < cases, "random bytes should mostly be refused");
}

use std::time::{Duration, Instant};

use super::link::{roundtrip, Endpoint};
use super::protocol::{encode, Request, Response, VERSION};
use std::os::fd::AsFd;

use super::transport::Wire;
use super::Manager;

const WAIT: Duration = Duration::from_secs(30);

fn endpoint(m: &Manager) -> Endpoint {
    m.endpoint.clone()
}

/// An authenticated connection that said hello, as a client would have it.
fn raw(m: &Manager) -> Wire {
    endpoint(m).open().unwrap()
}

/// Whether the server closed `chan` (end of stream within the test's wait).
fn closed(chan: &Wire) -> bool {
    let deadline = Instant::now() + WAIT;
    matches!(chan.recv_bytes_deadline(deadline), Err(e) if e.kind() != crate::ErrorKind::Timeout)
}

#[test]
fn garbage_truncated_and_oversized_requests_close_only_that_connection() {
    let m = Manager::builder()
        .max_message_size(1 << 16)
        .start()
        .unwrap();
    let d = m.dict::<u32, u32>("d").unwrap();
    d.insert(1, 1).unwrap();

    // Garbage that is a well-framed message but no request.
    let g = raw(&m);
    g.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0x07]).unwrap();
    assert!(closed(&g));

    // A frame header announcing more than the limit.
    let big = raw(&m);
    big.send_bytes(&vec![0u8; 1 << 17]).unwrap_or(());
    assert!(closed(&big));

    // Garbage before the frame layer: a bad header.
    let bad = raw(&m);
    crate::sys::socket::write_all(bad.as_fd(), &[b"not a frame header at all"]).unwrap();
    assert!(closed(&bad));

    // A truncated frame, then the client leaves: its thread ends, nothing else changes.
    let t = raw(&m);
    let req = encode(&Request::List).unwrap();
    let mut header = Vec::new();
    crate::codec::frame::encode_header(req.len() + 10, 0)
        .map(|h| header.extend_from_slice(&h))
        .unwrap();
    crate::sys::socket::write_all(t.as_fd(), &[&header, &req]).unwrap();
    drop(t);

    // Everyone else is served as before.
    assert_eq!(d.get(&1).unwrap(), Some(1));
    let fresh = raw(&m);
    assert!(matches!(
        roundtrip(&fresh, &Request::List, Some(Instant::now() + WAIT)).unwrap(),
        Response::Names(_)
    ));
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>("d").unwrap();
    // One client connects and never authenticates; another sends half a request and stops.
    let crate::connection::Address::Abstract(name) = &m.endpoint.address else {
        panic!("a local manager listens on an abstract socket")
    };
    let silent = {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        std::os::unix::net::UnixStream::connect_addr(&a).unwrap()
    };
    let half = raw(&m);
    let req = encode(&Request::Hello { version: VERSION }).unwrap();
    let header = crate::codec::frame::encode_header(req.len(), 0).unwrap();
    crate::sys::socket::write_all(half.as_fd(), &[&header[..4]]).unwrap();
    // A third holds a lock and does nothing more.
    let lock = m.lock("l").unwrap();
    let _ = lock.acquire().unwrap();
    for i in 0..100 {
        d.insert(i, i).unwrap();
    }
    assert_eq!(d.len().unwrap(), 100);
    drop((silent, half));
}

#[test]
fn random_requests_on_a_live_connection_never_break_the_server() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>("d").unwrap();
    d.insert(7, 7).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cases: usize = std::env::var("MULTIPROC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(300, |n| n / 50);
    // A connection with a dict attached as id 0, so random calls reach the operations.
    let attached = || {
        let c = raw(&m);
        let req = Request::Attach {
            kind: super::protocol::Kind::Dict,
            name: "fuzz".into(),
            signature: "u32, u32".into(),
            init: super::protocol::Init::Empty,
        };
        let r = roundtrip(&c, &req, Some(Instant::now() + WAIT)).unwrap();
        assert!(matches!(r, Response::Attached(0)), "{r:?}");
        c
    };
    let mut chan = attached();
    let (mut answered, mut closed_by_server) = (0, 0);
    for _ in 0..cases {
        let len = (next() % 48) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half the cases start like a real call, so the decoder gets past the tag.
        if next() % 4 != 0 && bytes.len() >= 2 {
            bytes[0] = 2; // Call
            bytes[1] = 0; // id 0
        }
        if chan.send_bytes(&bytes).is_err() {
            chan = attached();
            continue;
        }
        match chan.recv_bytes_deadline(Instant::now() + WAIT) {
            Ok(_) => answered += 1,
            Err(e) => {
                assert_ne!(e.kind(), crate::ErrorKind::Timeout, "the server hung");
                closed_by_server += 1;
                chan = attached();
            }
        }
    }
    assert!(
        answered > 0 && closed_by_server > 0,
        "{answered} {closed_by_server}"
    );
    assert_eq!(d.get(&7).unwrap(), Some(7));
}

#[test]
fn a_request_before_hello_or_for_an_unknown_object_closes_the_connection() {
    let m = Manager::start().unwrap();
    let ep = endpoint(&m);
    let c = super::transport::connect(&ep.address, &ep.authkey, None).unwrap();
    c.send_bytes(&encode(&Request::List).unwrap()).unwrap();
    assert!(closed(&c));

    let c = raw(&m);
    let call = Request::Call {
        id: 3,
        op: super::protocol::Op::Len,
    };
    c.send_bytes(&encode(&call).unwrap()).unwrap();
    assert!(closed(&c));
    // The server goes on.
    assert!(matches!(
        roundtrip(&raw(&m), &Request::List, Some(Instant::now() + WAIT)).unwrap(),
        Response::Names(_)
    ));
}
