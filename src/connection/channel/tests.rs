//! Descriptor receipt (issue 9.6): each frame gets exactly the descriptors that arrived with
//! it; stray ones are closed; a handle of the wrong kind is refused; truncation is reported
//! for what it is. A raw socket plays the (hostile) peer.
//!
//! Descriptor counts are taken per inode (`/proc/self/fd/*` entries naming one pipe or
//! socket), so tests running in parallel do not disturb them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::*;
use crate::connection::Connection;

/// A channel whose peer is a raw socket (we write its frames by hand).
fn raw_pair() -> (UnixStream, Channel) {
    let (a, b) = UnixStream::pair().unwrap();
    let fd: OwnedFd = b.into();
    (a, Channel::new(fdreg::adopt(fd)))
}

/// `/proc/self/fd` target of `fd` (`pipe:[123]`, `socket:[456]`, a path).
fn target(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// How many descriptors of this process refer to `what` (a `target`).
fn open_refs(what: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy() == what)
        .count()
}

/// Writes one frame of `payload` announcing `announced` descriptors, with `fds` attached.
fn send_raw(peer: &UnixStream, payload: &[u8], announced: usize, fds: &[BorrowedFd<'_>]) {
    let header = frame::encode_header(payload.len(), announced).unwrap();
    socket::send_frame(peer.as_fd(), &[&header, payload], fds, false).unwrap();
}

/// The wire form of a `Connection` whose descriptor is handle `index`.
fn connection_bytes(index: u32) -> Vec<u8> {
    postcard::to_allocvec(&(index, 3u8, Option::<u32>::None)).unwrap()
}

#[test]
fn descriptors_with_a_frame_that_announces_none_are_closed() {
    let (peer, chan) = raw_pair();
    let (r, w) = fdreg::pipe().unwrap();
    let pipe = target(w.as_fd());
    let before = open_refs(&pipe);
    assert_eq!(before, 2);
    let eight = [w.as_fd(); 8];
    for i in 0..200u32 {
        send_raw(&peer, &i.to_le_bytes(), 0, &eight);
        let f = chan.recv_frame(None).unwrap();
        assert_eq!(f.payload, i.to_le_bytes());
        assert!(
            f.fds.is_empty(),
            "frame {i} got descriptors it did not announce"
        );
    }
    assert_eq!(open_refs(&pipe), before, "stray descriptors were kept");
    // And so the pipe's reader sees end-of-stream once our own writer is gone.
    drop(w);
    assert_eq!(open_refs(&pipe), 1);
    drop(r);
}

#[test]
fn a_handle_index_cannot_name_an_earlier_frames_descriptor() {
    let (peer, chan) = raw_pair();
    let (x, _y) = fdreg::socketpair().unwrap();
    let sock = target(x.as_fd());
    let before = open_refs(&sock);
    // Frame 1 smuggles a descriptor it does not announce; frame 2 announces none and names
    // handle 0: it must not get frame 1's descriptor.
    send_raw(&peer, b"first", 0, &[x.as_fd()]);
    send_raw(&peer, &connection_bytes(0), 0, &[]);
    assert_eq!(chan.recv_frame(None).unwrap().payload, b"first");
    let e = chan.recv::<Connection<u32>>(None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert!(
        e.to_string().contains("did not arrive with the message"),
        "{e}"
    );
    assert_eq!(open_refs(&sock), before);
    // Its own descriptor, named twice: refused too, and closed.
    let twice = postcard::to_allocvec(&(0u32, 3u8, Some(0u32))).unwrap();
    send_raw(&peer, &twice, 1, &[x.as_fd()]);
    let e = chan.recv::<Connection<u32>>(None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    assert_eq!(open_refs(&sock), before);
    // The stream is still in step: a well-formed handle works.
    send_raw(&peer, &connection_bytes(0), 1, &[x.as_fd()]);
    let c: Connection<u32> = chan.recv(None).unwrap();
    assert_eq!(open_refs(&sock), before + 1);
    drop(c);
    assert_eq!(open_refs(&sock), before);
}

#[test]
fn an_announced_count_that_does_not_match_is_a_protocol_error() {
    let (peer, chan) = raw_pair();
    let (x, _y) = fdreg::socketpair().unwrap();
    let sock = target(x.as_fd());
    let before = open_refs(&sock);
    send_raw(&peer, b"two?", 2, &[x.as_fd()]);
    let e = chan.recv_frame(None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(
        e.to_string().contains("announced 2 descriptors but 1"),
        "{e}"
    );
    assert_eq!(open_refs(&sock), before);
}

/// Decodes a `Connection<u32>` whose descriptor is `fd` (as if it had arrived with a frame),
/// checking that a refused descriptor is closed.
fn decode_connection(fd: OwnedFd) -> crate::Result<Connection<u32>> {
    let what = target(fd.as_fd());
    let before = open_refs(&what);
    let res = codec::decode::<Connection<u32>>(&connection_bytes(0), vec![fdreg::adopt(fd)]);
    if res.is_err() {
        assert_eq!(open_refs(&what), before - 1, "a refused {what} was kept");
    }
    res
}

fn refused(fd: OwnedFd) -> String {
    let e = decode_connection(fd).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    let m = e.to_string();
    assert!(m.contains("not a multiproc pipe or socket"), "{m}");
    m
}

#[test]
fn foreign_descriptors_are_refused_as_connections() {
    let tcp_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    refused(tcp_listener.into());
    let tcp_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpStream::connect(tcp_addr.local_addr().unwrap()).unwrap();
    refused(tcp.into());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    refused(udp.into());
    let (dgram, _d) = std::os::unix::net::UnixDatagram::pair().unwrap();
    refused(dgram.into());
    let dir = std::env::temp_dir().join(format!("multiproc-fdreg-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let unix_listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
    refused(unix_listener.into());
    std::fs::remove_file(&dir).unwrap();
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    refused(file.into());
    // A pipe without its side socket is not a one-way connection either.
    let (r, _w) = rustix::pipe::pipe().unwrap();
    refused(r);
    // The genuine article passes.
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(decode_connection(a.into()).is_ok());
}

#[test]
fn more_descriptors_than_a_frame_may_carry_is_reported_as_such() {
    use std::mem::MaybeUninit;
    let (peer, chan) = raw_pair();
    let (x, _y) = fdreg::socketpair().unwrap();
    let sock = target(x.as_fd());
    let before = open_refs(&sock);
    // Linux carries at most 253 in one message; the receiver's buffer holds about 64.
    let many = vec![x.as_fd(); 200];
    let header = frame::encode_header(0, 0).unwrap();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(many.len()))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&many)));
    rustix::net::sendmsg(
        peer.as_fd(),
        &[std::io::IoSlice::new(&header)],
        &mut cmsg,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    let e = chan.recv_frame(None).unwrap_err();
    assert!(
        e.to_string()
            .contains("more file descriptors than one frame may carry"),
        "{e}"
    );
    assert_eq!(
        open_refs(&sock),
        before,
        "the descriptors that did arrive were kept"
    );
    // The stream is abandoned, not resynchronised.
    assert_eq!(
        chan.recv_frame(None).unwrap_err().kind(),
        ErrorKind::Protocol
    );
}

#[test]
fn descriptors_of_a_one_way_pipe_frame_come_from_its_side_socket() {
    let (r, w) = Channel::pipe_pair().unwrap();
    let (x, _y) = fdreg::socketpair().unwrap();
    let sock = target(x.as_fd());
    let before = open_refs(&sock);
    w.send_raw(b"none", &[]).unwrap();
    w.send_raw(b"two", &[x.as_fd(), x.as_fd()]).unwrap();
    let f = r.recv_frame(None).unwrap();
    assert!(f.fds.is_empty());
    let f = r.recv_frame(None).unwrap();
    assert_eq!((f.payload.as_slice(), f.fds.len()), (&b"two"[..], 2));
    assert!(f.fds.iter().all(|f| fdreg::is_registered(f.as_raw_fd())));
    assert_eq!(open_refs(&sock), before + 2);
    drop(f);
    assert_eq!(open_refs(&sock), before);
}

#[test]
fn a_one_way_frame_announcing_descriptors_it_never_sent_is_refused_not_awaited() {
    let (r, w) = Channel::pipe_pair().unwrap();
    // Write the frame straight into the pipe, with nothing on the side socket.
    let header = frame::encode_header(3, 1).unwrap();
    socket::write_all(w.fd(), &[&header, b"abc"]).unwrap();
    let e = r
        .recv_frame(Some(
            std::time::Instant::now() + std::time::Duration::from_secs(30),
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(
        e.to_string().contains("announced 1 descriptors but 0"),
        "{e}"
    );
}

#[test]
fn memory_follows_the_bytes_that_arrived_not_the_announced_length() {
    use std::io::Write;
    let (mut peer, chan) = raw_pair();
    let header = frame::encode_header(1 << 30, 0).unwrap();
    peer.write_all(&header).unwrap();
    peer.write_all(&[1u8; 100]).unwrap();
    let soon = || Some(std::time::Instant::now() + std::time::Duration::from_millis(20));
    assert!(chan.recv_frame(soon()).unwrap_err().is_timeout());
    let cap = chan.partial_capacity().unwrap();
    assert!(
        cap <= PAYLOAD_FIRST,
        "{cap} bytes reserved for 100 that arrived"
    );
    // More arrives: the buffer grows with it, at most twice what is there.
    let more = vec![2u8; 3 << 20];
    let writer = std::thread::spawn(move || {
        peer.write_all(&more).unwrap();
        peer
    });
    let mut received = 0;
    while received < (3 << 20) + 100 {
        assert!(chan.recv_frame(soon()).unwrap_err().is_timeout());
        received = chan.partial_len().unwrap();
        let cap = chan.partial_capacity().unwrap();
        assert!(
            cap <= (2 * received).max(PAYLOAD_FIRST),
            "{cap} bytes reserved for {received} that arrived"
        );
    }
    drop(writer.join().unwrap());
    assert!(chan.recv_frame(None).unwrap_err().is_disconnected());
}

/// The pool thread waits on a worker's descriptor unless `has_frame`: the start of a frame
/// (a relay delivers frames in pieces) is buffered bytes but no frame, so it must not make
/// the waiter spin; a whole frame behind it must.
#[test]
fn only_a_whole_buffered_frame_counts_as_a_frame() {
    use std::io::Write;
    let (mut peer, chan) = raw_pair();
    let now = || Some(std::time::Instant::now());
    let frame = |p: &[u8]| {
        let mut f = frame::encode_header(p.len(), 0).unwrap().to_vec();
        f.extend_from_slice(p);
        f
    };
    let (a, b, c) = (frame(b"first"), frame(b"second frame"), frame(b"third"));
    assert!(!chan.has_frame() && !chan.has_buffered());
    // A whole frame, then the header and part of the next one's payload.
    peer.write_all(&a).unwrap();
    peer.write_all(&b[..frame::HEADER_LEN + 3]).unwrap();
    assert_eq!(chan.recv_frame(now()).unwrap().payload, b"first");
    assert!(
        chan.has_buffered(),
        "the part of the second frame was read along"
    );
    assert!(!chan.has_frame(), "part of a frame is no frame");
    // Tried and timed out: the part is held as a partial frame.
    assert!(chan.recv_frame(now()).unwrap_err().is_timeout());
    assert!(!chan.has_frame());
    peer.write_all(&b[frame::HEADER_LEN + 3..]).unwrap();
    peer.write_all(&c).unwrap();
    assert_eq!(chan.recv_frame(now()).unwrap().payload, b"second frame");
    assert!(
        chan.has_frame(),
        "the third frame arrived whole with the second's rest"
    );
    assert_eq!(chan.recv_frame(now()).unwrap().payload, b"third");
    assert!(!chan.has_frame() && !chan.has_buffered());
    peer.write_all(&c[..3]).unwrap();
    assert!(chan.recv_frame(now()).unwrap_err().is_timeout());
    assert!(
        chan.has_buffered() && !chan.has_frame(),
        "three bytes of a header"
    );
}
