//! `connection::Listener` / `Client`: TCP (127.0.0.1 only), Unix paths and abstract names,
//! the authkey handshake and how it fails, bounded frames, stalled clients, fuzzed
//! handshakes, servers that go away, and TLS (`tls` feature).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use common::{join, WAIT};
use multiproc::connection::{
    Address, Client, Listener, HANDSHAKE_TIMEOUT, MAX_PENDING, NET_MAX_MESSAGE,
};
use multiproc::{Connection, ErrorKind, Pipe, Process};

const KEY: &[u8] = b"the listener tests' shared secret";

fn tcp() -> Address {
    "127.0.0.1:0".parse().unwrap()
}

fn tcp_addr(l: &Listener<impl Sized>) -> std::net::SocketAddr {
    match l.local_addr() {
        Address::Tcp(a) => *a,
        other => panic!("not TCP: {other}"),
    }
}

/// A unique Unix socket path in the temporary directory.
fn unix_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mp-listener-{}-{tag}.sock", std::process::id()))
}

/// A raw TCP stream with read/write timeouts, so a test can never hang on it.
fn raw(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads until end of stream (the server closed it); panics on a timeout.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
}

fn echo_client(addr: Address) -> u32 {
    let c = Client::connect_timeout::<u32>(&addr, KEY, WAIT).unwrap();
    let mut sum = 0;
    for i in 0..10 {
        c.send(&i).unwrap();
        sum += c.recv_timeout(WAIT).unwrap();
    }
    sum
}

fn serve_echo(l: &Listener<u32>, clients: usize) {
    for _ in 0..clients {
        let c = l.accept_timeout(WAIT).unwrap();
        while let Ok(v) = c.recv_timeout(WAIT) {
            c.send(&(v * 2)).unwrap();
        }
    }
}

#[test]
fn tcp_round_trip_with_a_client_process_and_nodelay() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    assert_ne!(tcp_addr(&l).port(), 0, "local_addr reports the real port");
    let p = Process::spawn(l.local_addr().clone(), echo_client).unwrap();
    let c = l.accept_timeout(WAIT).unwrap();
    let s = TcpStream::from(c.as_fd().try_clone_to_owned().unwrap());
    assert!(
        s.nodelay().unwrap(),
        "TCP_NODELAY on the accepted connection"
    );
    assert_eq!(c.max_message_size(), NET_MAX_MESSAGE);
    while let Ok(v) = c.recv_timeout(WAIT) {
        c.send(&(v * 2)).unwrap();
    }
    assert_eq!(join(&p).unwrap(), 90);

    let t = std::thread::spawn({
        let a = l.local_addr().clone();
        move || {
            let c = Client::connect::<u32>(&a, KEY).unwrap();
            TcpStream::from(c.as_fd().try_clone_to_owned().unwrap())
                .nodelay()
                .unwrap()
        }
    });
    let _c = l.accept_timeout(WAIT).unwrap();
    assert!(t.join().unwrap(), "TCP_NODELAY on the client's connection");
}

#[test]
fn a_server_that_polls_the_listener_gets_every_client() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || (0..3).map(|_| echo_client(a.clone())).sum::<u32>());
    for _ in 0..3 {
        let c = loop {
            // Ready for a new client, and again for each step of its handshake.
            let ready = multiproc::connection::wait(&[&l], Some(WAIT)).unwrap();
            assert_eq!(ready, vec![0], "the listener never became ready");
            match l.accept_timeout(Duration::ZERO) {
                Ok(c) => break c,
                Err(e) => assert_eq!(e.kind(), ErrorKind::Timeout, "{e}"),
            }
        };
        while let Ok(v) = c.recv_timeout(WAIT) {
            c.send(&(v * 2)).unwrap();
        }
    }
    assert_eq!(t.join().unwrap(), 270);
}

#[test]
fn defaults_are_the_documented_ones() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    assert_eq!(l.handshake_timeout(), HANDSHAKE_TIMEOUT);
    assert_eq!(HANDSHAKE_TIMEOUT, Duration::from_secs(5));
    assert_eq!(NET_MAX_MESSAGE, 64 << 20);
    assert_eq!(l.max_message_size(), NET_MAX_MESSAGE);
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || {
        Client::connect_timeout::<u32>(&a, KEY, WAIT)
            .unwrap()
            .max_message_size()
    });
    let _c = l.accept_timeout(WAIT).unwrap();
    assert_eq!(t.join().unwrap(), NET_MAX_MESSAGE);
    assert_eq!(
        Client::connect_timeout::<u32>(l.local_addr(), b"", WAIT)
            .unwrap_err()
            .kind(),
        ErrorKind::Unsupported
    );
}

#[test]
fn a_restarted_tcp_server_binds_its_port_again() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    let addr = l.local_addr().clone();
    let a = addr.clone();
    let t = std::thread::spawn(move || echo_client(a));
    serve_echo(&l, 1);
    t.join().unwrap();
    // The server closed first: its side of that connection lingers in TIME_WAIT.
    drop(l);
    let l = Listener::<u32>::bind(&addr, KEY).unwrap();
    let t = std::thread::spawn(move || echo_client(addr));
    serve_echo(&l, 1);
    assert_eq!(t.join().unwrap(), 90);
}

#[test]
fn a_listener_removes_only_its_own_socket_file() {
    let path = unix_path("own");
    let addr = Address::Unix(path.clone());
    let first = Listener::<u8>::bind(&addr, KEY).unwrap();
    std::fs::remove_file(&path).unwrap();
    let second = Listener::<u8>::bind(&addr, KEY).unwrap();
    drop(first);
    assert!(
        path.exists(),
        "the first listener removed the second's file"
    );
    drop(second);
    assert!(!path.exists());
}

#[test]
fn beyond_max_pending_handshakes_the_oldest_is_dropped() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    l.set_handshake_timeout(WAIT);
    let sa = tcp_addr(&l);
    let mut oldest = raw(sa);
    // Taken into the listener's hands one by one, so "oldest" is the first.
    let _ = l.accept_timeout(Duration::from_millis(50));
    let silent: Vec<TcpStream> = (0..MAX_PENDING).map(|_| raw(sa)).collect();
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || echo_client(a));
    serve_echo(&l, 1);
    assert_eq!(t.join().unwrap(), 90);
    assert_eq!(read_to_close(&mut oldest).len(), 40, "the oldest made room");
    drop(silent);
}

#[test]
fn unix_path_listener_carries_handles_and_removes_its_file() {
    let path = unix_path("path");
    let addr = Address::Unix(path.clone());
    let l = Listener::<Connection<String>>::bind(&addr, KEY).unwrap();
    assert!(path.exists());
    let t = std::thread::spawn(move || {
        let c = Client::connect_timeout::<Connection<String>>(&addr, KEY, WAIT).unwrap();
        let (mine, theirs) = Pipe::new::<String>().unwrap();
        c.send(&theirs).unwrap();
        mine.recv_timeout(WAIT).unwrap()
    });
    let c = l.accept_timeout(WAIT).unwrap();
    let end = c.recv_timeout(WAIT).unwrap();
    end.send(&"through a handle".to_string()).unwrap();
    assert_eq!(t.join().unwrap(), "through a handle");
    drop(l);
    assert!(!path.exists(), "the socket file goes with the listener");
}

#[test]
fn a_stale_socket_file_is_replaced_by_a_restarted_server() {
    let path = unix_path("stale");
    // A server that is killed leaves its file behind.
    let p = Process::spawn(path.clone(), |path: std::path::PathBuf| {
        let l = Listener::<u8>::bind(&Address::Unix(path), KEY).unwrap();
        let _ = l.accept();
    })
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never bound"
        );
        std::thread::yield_now();
    }
    p.kill().unwrap();
    let _ = join(&p);
    assert!(path.exists(), "a killed server leaves its socket file");
    let addr = Address::Unix(path.clone());
    let l = Listener::<u8>::bind(&addr, KEY).unwrap();
    let t = std::thread::spawn(move || {
        Client::connect_timeout::<u8>(&addr, KEY, WAIT)
            .unwrap()
            .send(&7)
            .unwrap()
    });
    assert_eq!(
        l.accept_timeout(WAIT).unwrap().recv_timeout(WAIT).unwrap(),
        7
    );
    t.join().unwrap();
    drop(l);
    assert!(!path.exists());
}

#[test]
fn a_live_listener_path_is_not_taken_over() {
    let path = unix_path("live");
    let addr = Address::Unix(path.clone());
    let _l = Listener::<u8>::bind(&addr, KEY).unwrap();
    let e = Listener::<u8>::bind(&addr, KEY).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
}

#[test]
fn abstract_namespace_round_trip() {
    let addr: Address = format!("unix:@mp-listener-{}", std::process::id())
        .parse()
        .unwrap();
    assert!(matches!(addr, Address::Abstract(_)));
    let l = Listener::<u32>::bind(&addr, KEY).unwrap();
    let t = std::thread::spawn(move || echo_client(addr));
    serve_echo(&l, 1);
    assert_eq!(t.join().unwrap(), 90);
}

#[test]
fn addresses_parse_and_display() {
    for s in [
        "127.0.0.1:5000",
        "[::1]:0",
        "unix:/tmp/x.sock",
        "unix:@name",
    ] {
        let a: Address = s.parse().unwrap();
        assert_eq!(a.to_string(), s);
    }
    let a: Address = "localhost:5000".parse().unwrap();
    assert!(matches!(a, Address::Tcp(t) if t.port() == 5000));
    for bad in ["", "unix:", "no-port", "1.2.3.4:99999"] {
        assert_eq!(
            bad.parse::<Address>().unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }
    let from: Address = std::net::SocketAddr::from(([127, 0, 0, 1], 9)).into();
    assert_eq!(from.to_string(), "127.0.0.1:9");
}

#[test]
fn a_handle_cannot_travel_over_tcp() {
    let l = Listener::<Connection<u8>>::bind(&tcp(), KEY).unwrap();
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || {
        let c = Client::connect_timeout::<Connection<u8>>(&a, KEY, WAIT).unwrap();
        let (_x, y) = Pipe::new::<u8>().unwrap();
        let e = c.send(&y).unwrap_err();
        c.send_bytes(b"still usable").unwrap();
        e
    });
    let c = l.accept_timeout(WAIT).unwrap();
    let e = t.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.to_string().contains("unix:"),
        "the error says what to do: {e}"
    );
    // Nothing of the refused message was written: the next frame is the next message.
    assert_eq!(c.recv_bytes_timeout(WAIT).unwrap(), b"still usable");
}

#[test]
fn an_empty_key_is_refused() {
    assert_eq!(
        Listener::<u8>::bind(&tcp(), b"").unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

#[test]
fn a_wrong_key_is_refused_and_the_listener_goes_on() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || {
        let e = Client::connect_timeout::<u32>(&a, b"not the key", WAIT).unwrap_err();
        (e, echo_client(a))
    });
    // The refused client never reaches `accept`; the good one after it does.
    serve_echo(&l, 1);
    let (e, sum) = t.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
    assert_eq!(sum, 90);
}

/// A server that does not know the key: it speaks the handshake's framing but cannot prove
/// the key. The client must refuse it and send nothing more.
#[test]
fn a_client_refuses_a_server_that_cannot_prove_the_key() {
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: Address = fake.local_addr().unwrap().into();
    let t = std::thread::spawn(move || Client::connect_timeout::<u32>(&addr, KEY, WAIT));
    let (mut s, _) = fake.accept().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut hello = b"mpauth\x01S".to_vec();
    hello.extend_from_slice(&[7u8; 32]);
    s.write_all(&hello).unwrap();
    let mut answer = [0u8; 72];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[..8], b"mpauth\x01C");
    assert!(
        !answer.windows(8).any(|w| KEY.windows(8).any(|k| k == w)),
        "the key crossed the wire"
    );
    // "Accepted", with a made-up proof.
    let mut verdict = vec![1u8];
    verdict.extend_from_slice(&[9u8; 32]);
    s.write_all(&verdict).unwrap();
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
    assert!(
        read_to_close(&mut s).is_empty(),
        "the client sent nothing after"
    );
}

#[test]
fn garbage_truncated_and_oversized_handshakes_close_only_that_connection() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    let sa = tcp_addr(&l);
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || {
        let mut garbage = raw(sa);
        garbage.write_all(&[0x5a; 72]).unwrap();
        let mut truncated = raw(sa);
        truncated.write_all(b"mpauth\x01C1234").unwrap();
        truncated.shutdown(Shutdown::Write).unwrap();
        let mut oversized = raw(sa);
        // More than any handshake message, all at once; a write error once the server
        // closes is fine.
        let _ = oversized.write_all(&vec![0xff; 1 << 20]);
        for s in [&mut garbage, &mut truncated, &mut oversized] {
            let got = read_to_close(s);
            assert!(
                got.len() <= 40 + 33,
                "only the hello and a verdict: {}",
                got.len()
            );
        }
        echo_client(a)
    });
    serve_echo(&l, 1);
    assert_eq!(t.join().unwrap(), 90);
}

#[test]
fn garbage_and_oversized_frames_after_authentication_close_only_that_connection() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    l.set_max_message_size(1024);
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || {
        let big = Client::connect_timeout::<u32>(&a, KEY, WAIT).unwrap();
        big.send_bytes(&[0u8; 4096]).unwrap();
        let bad = Client::connect_timeout::<u32>(&a, KEY, WAIT).unwrap();
        let mut s = TcpStream::from(bad.as_fd().try_clone_to_owned().unwrap());
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let wrong_type = Client::connect_timeout::<u32>(&a, KEY, WAIT).unwrap();
        wrong_type.send_bytes(&[0xff; 9]).unwrap();
        (big, bad, wrong_type, echo_client(a))
    });
    let big = l.accept_timeout(WAIT).unwrap();
    let bad = l.accept_timeout(WAIT).unwrap();
    let wrong_type = l.accept_timeout(WAIT).unwrap();
    assert_eq!(
        big.recv_timeout(WAIT).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    assert_eq!(
        bad.recv_timeout(WAIT).unwrap_err().kind(),
        ErrorKind::Protocol
    );
    assert_eq!(
        wrong_type.recv_timeout(WAIT).unwrap_err().kind(),
        ErrorKind::Decode
    );
    serve_echo(&l, 1);
    assert_eq!(t.join().unwrap().3, 90);
}

#[test]
fn a_stalled_client_does_not_block_accept_and_is_dropped_at_its_deadline() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    l.set_handshake_timeout(Duration::from_millis(300));
    let sa = tcp_addr(&l);
    let mut silent = raw(sa);
    let mut half = raw(sa);
    half.write_all(b"mpauth\x01C").unwrap();
    let a = l.local_addr().clone();
    let t = std::thread::spawn(move || echo_client(a));
    // Both stalled clients are connected and in the listener's hands before the good one.
    serve_echo(&l, 1);
    assert_eq!(t.join().unwrap(), 90);
    // `accept` drops them at their deadline (it runs their handshakes while it waits); a
    // good client then ends the wait.
    let addr = l.local_addr().clone();
    let watcher = std::thread::spawn(move || {
        let n = (
            read_to_close(&mut silent).len(),
            read_to_close(&mut half).len(),
        );
        (n, Client::connect_timeout::<u32>(&addr, KEY, WAIT).unwrap())
    });
    let _good = l.accept_timeout(WAIT).unwrap();
    let (n, _c) = watcher.join().unwrap();
    assert_eq!(n, (40, 40), "each got the hello, then was closed");
}

/// A small, seeded generator (xorshift64*): the fuzz cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn fuzz_cases() -> usize {
    std::env::var("MULTIPROC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn fuzz_the_listener_side_of_the_handshake() {
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    let sa = tcp_addr(&l);
    let a = l.local_addr().clone();
    let cases = fuzz_cases();
    let t = std::thread::spawn(move || {
        let mut rng = Rng(0x5eed_0001);
        for case in 0..cases {
            let mut s = raw(sa);
            let len = (rng.next() % 160) as usize;
            let mut msg = rng.bytes(len);
            if case % 3 == 0 && len >= 8 {
                // Past the magic, into the nonce and proof.
                msg[..8].copy_from_slice(b"mpauth\x01C");
            }
            let _ = s.write_all(&msg);
            let _ = s.shutdown(Shutdown::Write);
            let got = read_to_close(&mut s);
            assert!(
                got.len() <= 40 + 33,
                "case {case}: {} bytes back",
                got.len()
            );
            if got.len() > 40 {
                assert_eq!(got[40], 0, "case {case}: random bytes were accepted");
            }
        }
        echo_client(a)
    });
    serve_echo(&l, 1);
    assert_eq!(t.join().unwrap(), 90);
}

#[test]
fn fuzz_the_client_side_of_the_handshake() {
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: Address = fake.local_addr().unwrap().into();
    let cases = fuzz_cases() / 4;
    let t = std::thread::spawn(move || {
        let mut rng = Rng(0x5eed_0002);
        for case in 0..cases {
            let (mut s, _) = fake.accept().unwrap();
            let len = (rng.next() % 120) as usize;
            let mut msg = rng.bytes(len);
            if case % 2 == 0 && len >= 8 {
                msg[..8].copy_from_slice(b"mpauth\x01S");
            }
            if case % 4 == 0 && len > 40 {
                msg[40] = 1; // "accepted", with a random proof
            }
            let _ = s.write_all(&msg);
            let _ = s.shutdown(Shutdown::Write);
            s.set_read_timeout(Some(WAIT)).unwrap();
            let _ = read_to_close(&mut s);
        }
    });
    for case in 0..cases {
        let e = Client::connect_timeout::<u32>(&addr, KEY, WAIT).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                ErrorKind::Protocol | ErrorKind::AuthenticationFailed | ErrorKind::Disconnected
            ),
            "case {case}: {e}"
        );
    }
    t.join().unwrap();
}

#[test]
fn a_server_that_accepts_but_never_answers_times_out_the_client() {
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: Address = fake.local_addr().unwrap().into();
    let e = Client::connect_timeout::<u32>(&addr, KEY, Duration::from_millis(200)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

#[test]
fn the_server_going_away_gives_clients_a_clear_error() {
    // A server process that accepts one client and exits.
    let l = Listener::<u32>::bind(&tcp(), KEY).unwrap();
    let addr = l.local_addr().clone();
    drop(l);
    let e = Client::connect_timeout::<u32>(&addr, KEY, WAIT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "nobody listens: {e}");

    let path = unix_path("gone");
    let p = Process::spawn(path.clone(), |path: std::path::PathBuf| {
        let l = Listener::<u32>::bind(&Address::Unix(path), KEY).unwrap();
        let c = l.accept().unwrap();
        c.send(&1).unwrap();
        // Exits: the connection and the listener close.
    })
    .unwrap();
    let addr = Address::Unix(path.clone());
    let deadline = std::time::Instant::now() + WAIT;
    let c = loop {
        match Client::connect_timeout::<u32>(&addr, KEY, WAIT) {
            Ok(c) => break c,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "never bound: {e}");
                std::thread::yield_now();
            }
        }
    };
    assert_eq!(c.recv_timeout(WAIT).unwrap(), 1);
    join(&p).unwrap();
    assert_eq!(
        c.recv_timeout(WAIT).unwrap_err().kind(),
        ErrorKind::Disconnected
    );
    assert!(!path.exists(), "the server's listener removed its file");
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use std::sync::Arc;

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    fn name() -> rustls::pki_types::ServerName<'static> {
        rustls::pki_types::ServerName::try_from("localhost").unwrap()
    }

    #[test]
    fn tls_round_trip_large_messages_and_concurrent_send_recv() {
        let (sc, cc) = configs();
        let l = Listener::<Vec<u8>>::bind_tls(&tcp(), KEY, sc).unwrap();
        let a = l.local_addr().clone();
        let t = std::thread::spawn(move || {
            let c = Client::connect_tls::<Vec<u8>>(&a, KEY, cc, name(), WAIT).unwrap();
            let mut back = Vec::new();
            for i in 0..5u8 {
                let msg = vec![i; 1 << 20];
                c.send(&msg).unwrap();
                back.push(c.recv_timeout(WAIT).unwrap() == msg);
            }
            back
        });
        let c = l.accept_timeout(WAIT).unwrap();
        while let Ok(m) = c.recv_timeout(WAIT) {
            c.send(&m).unwrap();
        }
        assert_eq!(t.join().unwrap(), vec![true; 5]);
    }

    #[test]
    fn tls_still_checks_the_authkey() {
        let (sc, cc) = configs();
        let l = Listener::<u8>::bind_tls(&tcp(), KEY, sc).unwrap();
        let a = l.local_addr().clone();
        let t = std::thread::spawn(move || {
            let e = Client::connect_tls::<u8>(&a, b"wrong", cc.clone(), name(), WAIT).unwrap_err();
            let ok = Client::connect_tls::<u8>(&a, KEY, cc, name(), WAIT).unwrap();
            ok.send(&3).unwrap();
            (e, ok)
        });
        let c = l.accept_timeout(WAIT).unwrap();
        assert_eq!(c.recv_timeout(WAIT).unwrap(), 3);
        let (e, _ok) = t.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
    }

    #[test]
    fn plain_and_tls_peers_refuse_each_other_without_hanging() {
        let (sc, cc) = configs();
        let tls_l = Listener::<u8>::bind_tls(&tcp(), KEY, sc).unwrap();
        let plain_l = Listener::<u8>::bind(&tcp(), KEY).unwrap();
        // Neither side speaks first to a plain client of a TLS listener: the handshake's
        // deadline ends it.
        tls_l.set_handshake_timeout(Duration::from_millis(200));
        let (ta, pa) = (tls_l.local_addr().clone(), plain_l.local_addr().clone());
        let t = std::thread::spawn(move || {
            let a = Client::connect_timeout::<u8>(&ta, KEY, WAIT).unwrap_err();
            let b = Client::connect_tls::<u8>(&pa, KEY, cc, name(), WAIT).unwrap_err();
            (a, b)
        });
        let e1 = tls_l
            .accept_timeout(Duration::from_millis(1500))
            .unwrap_err();
        let e2 = plain_l
            .accept_timeout(Duration::from_millis(1500))
            .unwrap_err();
        assert_eq!(
            (e1.kind(), e2.kind()),
            (ErrorKind::Timeout, ErrorKind::Timeout)
        );
        let (a, b) = t.join().unwrap();
        assert_ne!(a.kind(), ErrorKind::Timeout, "{a}");
        assert_ne!(b.kind(), ErrorKind::Timeout, "{b}");
    }

    #[test]
    fn a_tls_connection_cannot_be_sent_to_another_process() {
        let (sc, cc) = configs();
        let l = Listener::<u8>::bind_tls(&tcp(), KEY, sc).unwrap();
        let a = l.local_addr().clone();
        let t = std::thread::spawn(move || Client::connect_tls::<u8>(&a, KEY, cc, name(), WAIT));
        let c = l.accept_timeout(WAIT).unwrap();
        let _client = t.join().unwrap().unwrap();
        let (x, _y) = Pipe::new::<Connection<u8>>().unwrap();
        let e = x.send(&c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Encode, "{e}");
        assert!(
            e.to_string().contains("cannot be sent to another process"),
            "{e}"
        );
    }
}
