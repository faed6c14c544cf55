//! Stream sockets that carry frames and file descriptors.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The most file descriptors one frame may carry (Linux allows 253 per message).
pub(crate) const MAX_FDS_PER_FRAME: usize = 64;

/// A connected pair of close-on-exec Unix stream sockets.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A close-on-exec pipe `(read, write)` (default capacity: measured here, a larger pipe
/// buffer did not move large transfers faster, and keeps less data in flight).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((r, w))
}

/// Writes `parts` completely to a pipe (or any stream), retrying short writes.
pub(crate) fn write_all(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        match rustix::io::writev(fd, &remaining(parts, done)) {
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bytes a pipe write may carry and still complete at once whenever `poll` reports the pipe
/// writable (one free page; POSIX `PIPE_BUF`).
const PIPE_CHUNK: usize = 4096;

/// Like [`write_all`] but gives up at `deadline`: returns how many bytes were written (all of
/// them, or fewer when the deadline passed first). Writes at most one page after each
/// readiness check, so the call never blocks past the deadline on a pipe whose reader
/// stalls (a blocking pipe write of more would wait for room for all of it).
pub(crate) fn write_all_until(
    fd: BorrowedFd<'_>,
    parts: &[&[u8]],
    deadline: Instant,
) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        if !wait_fd(fd, true, Some(deadline))? {
            break;
        }
        match rustix::io::writev(fd, &remaining_upto(parts, done, PIPE_CHUNK)) {
            Ok(n) => done += n,
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Whether `fd` is a pipe (used to validate a one-way connection received as a handle).
pub(crate) fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    })
}

/// Which half of a socket to shut down.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Half {
    /// No more reads.
    Read,
    /// No more writes.
    Write,
}

/// Shuts down one direction of a socket (used for one-way pipes).
pub(crate) fn shutdown(fd: BorrowedFd<'_>, half: Half) -> io::Result<()> {
    let how = match half {
        Half::Read => rustix::net::Shutdown::Read,
        Half::Write => rustix::net::Shutdown::Write,
    };
    Ok(rustix::net::shutdown(fd, how)?)
}

/// The unsent tail of `parts` after `done` bytes, as I/O slices.
fn remaining<'a>(parts: &[&'a [u8]], done: usize) -> Vec<io::IoSlice<'a>> {
    remaining_upto(parts, done, usize::MAX)
}

/// At most `max` bytes of the unsent tail of `parts` after `done` bytes, as I/O slices.
fn remaining_upto<'a>(parts: &[&'a [u8]], mut done: usize, mut max: usize) -> Vec<io::IoSlice<'a>> {
    let mut v = Vec::with_capacity(parts.len());
    for p in parts {
        if max == 0 {
            break;
        }
        if done >= p.len() {
            done -= p.len();
        } else {
            let end = p.len().min(done.saturating_add(max));
            v.push(io::IoSlice::new(&p[done..end]));
            max -= end - done;
            done = 0;
        }
    }
    v
}

/// Writes `parts` (a frame: header, payload pieces) completely, attaching `fds` to the first
/// byte.
///
/// Never raises SIGPIPE: a closed peer gives `EPIPE`/`ECONNRESET`. `dontwait` makes the call
/// fail with `WouldBlock` instead of blocking when nothing at all could be written.
pub(crate) fn send_frame(
    fd: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    dontwait: bool,
) -> io::Result<()> {
    let pace = if dontwait {
        Pace::FailIfFull
    } else {
        Pace::Block
    };
    send_parts(fd, parts, fds, pace).map(drop)
}

/// Like [`send_frame`] but gives up at `deadline`: returns how many bytes were written (all
/// of them, or fewer, possibly none, when the deadline passed first). The descriptors ride
/// with the first byte, so they were sent exactly when the result is not 0.
pub(crate) fn send_frame_until(
    fd: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> io::Result<usize> {
    send_parts(fd, parts, fds, Pace::Until(deadline))
}

/// How [`send_parts`] waits for room in the socket's buffer.
#[derive(Clone, Copy)]
enum Pace {
    /// Blocks until everything is written.
    Block,
    /// `WouldBlock` when not one byte could be written; once the frame started, blocks.
    FailIfFull,
    /// Waits for room until the deadline, then returns what was written.
    Until(Instant),
}

/// The one `sendmsg` loop behind [`send_frame`] and [`send_frame_until`]: returns how many
/// bytes were written (all of them unless `Pace::Until`'s deadline passed).
fn send_parts(
    fd: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    pace: Pace,
) -> io::Result<usize> {
    debug_assert!(fds.len() <= MAX_FDS_PER_FRAME);
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0usize;
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_FRAME))];
    while sent < total {
        let iov = remaining(parts, sent);
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many file descriptors",
            ));
        }
        // Only a frame that has not started may give up without blocking.
        let flags = match pace {
            Pace::Block => SendFlags::NOSIGNAL,
            Pace::FailIfFull if sent == 0 => SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            Pace::FailIfFull => SendFlags::NOSIGNAL,
            Pace::Until(_) => SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        };
        match rustix::net::sendmsg(fd, &iov, &mut cmsg, flags) {
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => match pace {
                Pace::Until(deadline) => {
                    if !wait_fd(fd, true, Some(deadline))? {
                        break;
                    }
                }
                _ => return Err(Errno::AGAIN.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}

/// What one [`recv_with_fds`] call received.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    /// Bytes read (0: end of stream).
    pub(crate) bytes: usize,
    /// Descriptors installed in this process.
    pub(crate) fds: usize,
    /// The kernel dropped descriptors (`MSG_CTRUNC`): see [`truncation_error`].
    pub(crate) truncated: bool,
    /// With `truncated`: because this process is out of descriptors (`EMFILE`/`ENFILE`), not
    /// because the peer sent more than the buffer holds.
    pub(crate) out_of_fds: bool,
}

/// One `recvmsg` that never blocks (`MSG_DONTWAIT`: `WouldBlock` when nothing is there),
/// into `buf`; descriptors that arrive with the bytes are appended to `fds`, close-on-exec.
///
/// Used by the descriptor registry only, which registers `fds` before anyone can fork.
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Received> {
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_FRAME))];
    loop {
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [io::IoSliceMut::new(buf)];
        match rustix::net::recvmsg(
            fd,
            &mut iov,
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(r) => {
                let before = fds.len();
                for msg in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = msg {
                        fds.extend(received);
                    }
                }
                let truncated = r.flags.contains(ReturnFlags::CTRUNC);
                // Which cause: can this process make one more descriptor right now?
                let out_of_fds = truncated
                    && matches!(
                        rustix::io::fcntl_dupfd_cloexec(fd, 0),
                        Err(Errno::MFILE | Errno::NFILE)
                    );
                return Ok(Received {
                    bytes: r.bytes,
                    fds: fds.len() - before,
                    truncated,
                    out_of_fds,
                });
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The error for a receive whose descriptors the kernel truncated (see [`Received`]), after
/// `installed` of them arrived.
pub(crate) fn truncation_error(r: Received) -> io::Error {
    let installed = r.fds;
    if r.out_of_fds {
        let limit = super::process::descriptor_limit();
        io::Error::other(format!(
            "this process ran out of file descriptors while receiving a message's \
                 descriptors (only {installed} could be installed; the limit is {limit}); \
                 raise the limit (`ulimit -n`, RLIMIT_NOFILE) or close descriptors no longer \
                 needed; the stream's descriptors are lost, so it was abandoned"
        ))
    } else {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the peer sent more file descriptors than one frame may carry \
                 ({MAX_FDS_PER_FRAME}); the stream was abandoned"
            ),
        )
    }
}

/// Reads at most `max` bytes straight into the spare capacity of `vec` (no zeroing): the
/// caller decides how much to reserve (at least one byte, so that 0 means end of stream).
///
/// Returns the number of bytes appended; 0 means end of stream.
pub(crate) fn read_into_vec(
    fd: BorrowedFd<'_>,
    vec: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    if vec.capacity() == vec.len() {
        vec.reserve(1);
    }
    let spare = vec.spare_capacity_mut();
    let n = max.min(spare.len());
    let spare = &mut spare[..n];
    loop {
        match rustix::io::read(fd, &mut *spare) {
            Ok((filled, _)) => {
                let n = filled.len();
                let len = vec.len();
                // SAFETY: the kernel initialised exactly `n` bytes of the spare capacity that
                // starts at `len`, and `len + n <= capacity` because `spare` is a sub-slice of it.
                #[allow(unsafe_code)]
                unsafe {
                    vec.set_len(len + n)
                };
                return Ok(n);
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads what is available (at least one byte, blocking) into `buf`; 0 at end of stream.
pub(crate) fn read_into(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `fd` is readable (`write == false`) or writable, or `deadline` passes.
///
/// Returns `Ok(false)` on timeout. A hang-up or error condition counts as ready: the next
/// read or write reports it.
pub(crate) fn wait_fd(
    fd: BorrowedFd<'_>,
    write: bool,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let events = if write {
        PollFlags::OUT
    } else {
        PollFlags::IN | PollFlags::RDHUP
    };
    Ok(wait_any(&[fd], events, deadline)?.is_some())
}

/// Waits until one of `fds` has `events` (or a hang-up/error), or `deadline` passes.
///
/// Returns the index of the first ready descriptor, `None` on timeout.
pub(crate) fn wait_any(
    fds: &[BorrowedFd<'_>],
    events: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<Option<usize>> {
    let ready = poll_many(fds, events, deadline)?;
    Ok(ready.first().copied())
}

/// Like [`wait_any`] but returns every ready index (empty on timeout).
pub(crate) fn poll_many(
    fds: &[BorrowedFd<'_>],
    events: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<Vec<usize>> {
    let set: Vec<(BorrowedFd<'_>, PollFlags)> = fds.iter().map(|fd| (*fd, events)).collect();
    poll_each(&set, deadline)
}

/// Polls each descriptor for its own events; returns the ready indices (empty on timeout).
pub(crate) fn poll_each(
    set: &[(BorrowedFd<'_>, PollFlags)],
    deadline: Option<Instant>,
) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<PollFd<'_>> = set
        .iter()
        .map(|(fd, ev)| PollFd::from_borrowed_fd(fd.as_fd(), *ev))
        .collect();
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(Timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                })
            }
        };
        match rustix::event::poll(&mut pfds, timeout.as_ref()) {
            Ok(0) => return Ok(Vec::new()),
            Ok(_) => {
                return Ok(pfds
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.revents().is_empty())
                    .map(|(i, _)| i)
                    .collect())
            }
            Err(Errno::INTR) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Vec::new());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Poll flags re-exported for callers of [`wait_any`].
pub(crate) use rustix::event::PollFlags as Events;

/// Whether `fd` is a connected-or-connectable Unix stream socket, the only kind multiproc
/// creates (used to reject foreign descriptors posing as handles: a TCP socket, a listening
/// socket, a datagram socket, a file all fail).
pub(crate) fn is_unix_stream_socket(fd: BorrowedFd<'_>) -> bool {
    use rustix::net::sockopt;
    matches!(sockopt::socket_type(fd), Ok(SocketType::STREAM))
        && matches!(sockopt::socket_domain(fd), Ok(AddressFamily::UNIX))
        && matches!(sockopt::socket_acceptconn(fd), Ok(false))
}

/// Asks the kernel to back a large receive buffer with transparent huge pages, so filling it
/// costs one page fault per 2 MiB instead of per 4 KiB. Advisory: errors are ignored.
pub(crate) fn advise_huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let end = start + buf.capacity();
    let aligned = (start + HUGE - 1) & !(HUGE - 1);
    if end <= aligned + HUGE {
        return;
    }
    let len = (end - aligned) & !(HUGE - 1);
    // SAFETY: [aligned, aligned + len) lies inside the Vec's allocation (which we borrow
    // mutably, so nothing else uses it meanwhile); MADV_HUGEPAGE changes only how the kernel
    // backs those pages, never their contents or validity.
    let _ = unsafe {
        rustix::mm::madvise(
            aligned as *mut std::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
}

// ---------------------------------------------------------------------------------------------
// Network and named sockets (connection::Listener / Client)
// ---------------------------------------------------------------------------------------------

/// Where a listening or connecting stream socket is: the platform form of
/// `connection::Address`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SockAddr<'a> {
    /// A TCP address (IPv4 or IPv6).
    Inet(std::net::SocketAddr),
    /// A Unix socket at a path in the file system.
    Path(&'a std::path::Path),
    /// A Unix socket in Linux's abstract namespace (no file; gone with its last descriptor).
    Abstract(&'a [u8]),
}

fn unix_addr(addr: SockAddr<'_>) -> io::Result<Option<rustix::net::SocketAddrUnix>> {
    Ok(match addr {
        SockAddr::Inet(_) => None,
        SockAddr::Path(p) => Some(rustix::net::SocketAddrUnix::new(p)?),
        SockAddr::Abstract(n) => Some(rustix::net::SocketAddrUnix::new_abstract_name(n)?),
    })
}

/// A new close-on-exec stream socket of the family `addr` needs (blocking, unconnected).
///
/// Called only by `fdreg`, which registers it.
pub(crate) fn stream_socket(addr: SockAddr<'_>) -> io::Result<OwnedFd> {
    let family = match addr {
        SockAddr::Inet(std::net::SocketAddr::V4(_)) => AddressFamily::INET,
        SockAddr::Inet(std::net::SocketAddr::V6(_)) => AddressFamily::INET6,
        SockAddr::Path(_) | SockAddr::Abstract(_) => AddressFamily::UNIX,
    };
    Ok(rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Binds `fd` to `addr` and listens, with the socket non-blocking (so `accept` never
/// blocks: callers poll first). TCP sockets get `SO_REUSEADDR`, so a restarted server can
/// bind its port again while old connections linger in `TIME_WAIT`.
pub(crate) fn bind_listen(fd: BorrowedFd<'_>, addr: SockAddr<'_>, backlog: i32) -> io::Result<()> {
    match (addr, unix_addr(addr)?) {
        (SockAddr::Inet(a), _) => {
            rustix::net::sockopt::set_socket_reuseaddr(fd, true)?;
            rustix::net::bind(fd, &a)?;
        }
        (_, Some(u)) => rustix::net::bind(fd, &u)?,
        (_, None) => unreachable!("unix_addr gives an address for every Unix form"),
    }
    rustix::net::listen(fd, backlog)?;
    set_nonblocking(fd, true)
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let mut fl = rustix::fs::fcntl_getfl(fd)?;
    fl.set(rustix::fs::OFlags::NONBLOCK, on);
    Ok(rustix::fs::fcntl_setfl(fd, fl)?)
}

/// Accepts one pending connection on the (non-blocking) listening socket `fd`: a blocking,
/// close-on-exec socket, or `WouldBlock` when none is waiting. Connections the peer reset
/// before we took them are skipped.
///
/// Called only by `fdreg`, which registers the result.
pub(crate) fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match rustix::net::accept_with(fd, SocketFlags::CLOEXEC) {
            Ok(s) => return Ok(s),
            Err(Errno::INTR | Errno::CONNABORTED) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The address a TCP socket is bound to (the real port after binding port 0).
pub(crate) fn local_inet_addr(fd: BorrowedFd<'_>) -> io::Result<std::net::SocketAddr> {
    let any = rustix::net::getsockname(fd)?;
    std::net::SocketAddr::try_from(any)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an internet socket"))
}

/// Connects `fd` (from [`stream_socket`]) to `addr`, giving up at `deadline` with
/// `TimedOut`. The socket is blocking again afterwards.
pub(crate) fn connect_until(
    fd: BorrowedFd<'_>,
    addr: SockAddr<'_>,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let unix = unix_addr(addr)?;
    set_nonblocking(fd, true)?;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connecting timed out");
    loop {
        let res = match (addr, &unix) {
            (SockAddr::Inet(a), _) => rustix::net::connect(fd, &a),
            (_, Some(u)) => rustix::net::connect(fd, u),
            (_, None) => unreachable!("unix_addr gives an address for every Unix form"),
        };
        match res {
            Ok(()) => break,
            Err(Errno::INPROGRESS | Errno::INTR) => {
                // A TCP connect under way: writable once it is settled either way.
                if !wait_fd(fd, true, deadline)? {
                    return Err(timed_out());
                }
                match rustix::net::sockopt::socket_error(fd)? {
                    Ok(()) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(Errno::AGAIN) => {
                // A Unix listener whose backlog is full: try again shortly, until the deadline.
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(timed_out());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    set_nonblocking(fd, false)
}

/// Turns Nagle's algorithm off (`TCP_NODELAY`): a small message goes out at once instead of
/// waiting up to 40 ms for the peer's delayed acknowledgement.
pub(crate) fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_tcp_nodelay(fd, true)?)
}

/// One `send` that never blocks and never raises SIGPIPE: `WouldBlock` when the buffer is full.
pub(crate) fn send_nowait(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::net::send(fd, buf, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `recv` that never blocks: `WouldBlock` when nothing is there, 0 at end of stream.
/// (No descriptors: used on network sockets and during the authkey handshake.)
pub(crate) fn recv_nowait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Fills `buf` with random bytes from the kernel's generator (`getrandom(2)`), for the
/// handshake's nonces.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A close-on-exec readiness set (an epoll instance on Linux): a descriptor that polls
/// readable while any descriptor watched in it is ready for what it is watched for.
///
/// Called only by `fdreg`, which registers it.
pub(crate) fn readiness_set() -> io::Result<OwnedFd> {
    Ok(rustix::event::epoll::create(
        rustix::event::epoll::CreateFlags::CLOEXEC,
    )?)
}

/// Watches `fd` in `set` (level-triggered) for writability (`write`) or readability and
/// hang-up; `add` for a descriptor not watched yet, otherwise its interest changes.
pub(crate) fn watch(
    set: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    write: bool,
    add: bool,
) -> io::Result<()> {
    use rustix::event::epoll::{self, EventData, EventFlags};
    let flags = if write {
        EventFlags::OUT
    } else {
        EventFlags::IN | EventFlags::RDHUP
    };
    let data = EventData::new_u64(0);
    if add {
        epoll::add(set, fd, data, flags)?;
    } else {
        epoll::modify(set, fd, data, flags)?;
    }
    Ok(())
}

/// Stops watching `fd` in `set`.
pub(crate) fn unwatch(set: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::event::epoll::delete(set, fd)?)
}
