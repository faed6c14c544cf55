//! The untyped framed channel under every [`Connection`](super::Connection) and every
//! internal control stream (process bootstrap, fork server, pool workers).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, frame};
use crate::error::{Error, ErrorKind};
use crate::fdreg::{self, RegisteredFd};
use crate::sys::socket;
use crate::wait::lock;

use super::tls::TlsStream;

/// The read buffer starts this small (most channels carry a few small frames: a child's
/// task and report) and is allocated on the first read, not at creation.
const READ_FIRST: usize = 4 * 1024;
/// It doubles up to this size while reads keep filling it (streams of small messages).
const READ_CHUNK: usize = 64 * 1024;
/// Payloads at least this large are read straight into their destination.
const DIRECT_READ: usize = 16 * 1024;
/// A payload's buffer starts at most this large and doubles as bytes arrive, up to the
/// announced length: memory follows what the peer actually sent, never what it announced.
const PAYLOAD_FIRST: usize = 256 * 1024;
/// Buffers this large are backed by transparent huge pages where the kernel allows.
const HUGE_PAGES_FROM: usize = 4 << 20;

/// One received frame.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    pub(crate) payload: Vec<u8>,
    /// The descriptors that arrived with this frame (and only those: see [`Reader::claim`]).
    pub(crate) fds: Vec<RegisteredFd>,
    /// This process was out of descriptors when the frame's arrived: the kernel dropped
    /// them (all or some), the bytes are intact and the stream goes on.
    pub(crate) fds_lost: bool,
}

impl Frame {
    /// Decodes the payload as a `T`, handing the frame's descriptors to the handles inside.
    ///
    /// # Errors
    /// `Io` for a frame whose descriptors were lost ([`Frame::fds_lost`]), besides decoding's.
    pub(crate) fn decode<T: DeserializeOwned>(self) -> Result<T, Error> {
        if self.fds_lost {
            return Err(fds_lost_error());
        }
        codec::decode(&self.payload, self.fds)
    }
}

/// The error for a message whose descriptors the kernel dropped because this process was out
/// of them.
pub(crate) fn fds_lost_error() -> Error {
    Error::msg(
        ErrorKind::Io,
        format!(
            "this process ran out of file descriptors (the limit is {}) while receiving a \
             message's descriptors: the message was dropped, the stream goes on; close \
             descriptors no longer needed or raise the limit (`ulimit -n`, RLIMIT_NOFILE)",
            crate::sys::process::descriptor_limit()
        ),
    )
}

/// Descriptors received but not yet given to a frame: at most this many (two frames' worth)
/// may wait; more is a peer sending descriptors no frame announces.
const MAX_PENDING_FDS: usize = 2 * socket::MAX_FDS_PER_FRAME;

#[derive(Debug)]
struct Reader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes read from the stream so far: the stream offset of `buf[end]`.
    received: u64,
    /// Descriptors not yet given to a frame, each batch with the stream offset of the last
    /// byte that arrived with it (see [`Reader::claim`]) and whether the kernel dropped
    /// descriptors of that batch (this process was out of them).
    batches: VecDeque<(u64, Vec<RegisteredFd>, bool)>,
    /// A frame whose header (at this stream offset) was read but whose payload is still
    /// arriving.
    partial: Option<(frame::Header, u64, Vec<u8>)>,
    /// Set after a protocol error: the stream can no longer be trusted.
    broken: Option<ErrorKind>,
}

#[derive(Debug, Default)]
struct Writer {
    scratch: Vec<u8>,
    fds: Vec<RegisteredFd>,
    /// Set when a deadline passed in the middle of a frame: the peer has part of a message,
    /// so nothing more may be written (it would be read as the rest of that message).
    broken: Option<String>,
}

/// A mutex that a waiter can give up on at a deadline (std's cannot), so a `recv_timeout`
/// behind another thread's blocking `recv` still returns in time.
///
/// Without a deadline it is a plain mutex. With one, taking it is one `try_lock` when it is
/// free (the common case: one thread per end) and a short spin when it is about to be; then
/// the waiter counts itself in `waiters` and sleeps on `freed` under `gate`, and a holder
/// that leaves while someone waits wakes one under `gate`, so no wake-up falls between a
/// waiter's failed try and its sleep.
#[derive(Debug, Default)]
pub(crate) struct Turn<T> {
    inner: Mutex<T>,
    waiters: AtomicUsize,
    gate: Mutex<()>,
    freed: Condvar,
}

/// How often a timed [`Turn::take`] tries before it sleeps.
const SPIN_TRIES: usize = 64;

/// Holds a [`Turn`]; gives it to the next waiter on drop.
pub(crate) struct TurnGuard<'a, T> {
    turn: &'a Turn<T>,
    guard: Option<MutexGuard<'a, T>>,
}

impl<T> Turn<T> {
    pub(crate) fn new(value: T) -> Self {
        Turn {
            inner: Mutex::new(value),
            waiters: AtomicUsize::new(0),
            gate: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    fn try_take(&self) -> Option<MutexGuard<'_, T>> {
        match self.inner.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Waits for the turn until `deadline` (`None`: as long as it takes); `None` if the
    /// deadline passed first.
    pub(crate) fn take(&self, deadline: Option<Instant>) -> Option<TurnGuard<'_, T>> {
        let guard = match deadline {
            // No deadline: std's own contended path (it spins briefly, then sleeps); the
            // holder's unlock wakes us.
            None => lock(&self.inner),
            Some(deadline) => self.take_until_instant(deadline)?,
        };
        Some(TurnGuard {
            turn: self,
            guard: Some(guard),
        })
    }

    fn take_until_instant(&self, deadline: Instant) -> Option<MutexGuard<'_, T>> {
        // A holder usually leaves within microseconds (a send or receive that does not
        // wait): try a little before sleeping.
        for _ in 0..SPIN_TRIES {
            if let Some(g) = self.try_take() {
                return Some(g);
            }
            std::hint::spin_loop();
        }
        let mut gate = lock(&self.gate);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let got = loop {
            if let Some(g) = self.try_take() {
                break Some(g);
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            gate = self
                .freed
                .wait_timeout(gate, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        got
    }

    /// Waits for the turn until `deadline`, or fails with `Timeout`.
    fn take_until(&self, deadline: Option<Instant>) -> Result<TurnGuard<'_, T>, Error> {
        self.take(deadline).ok_or_else(|| {
            Error::msg(
                ErrorKind::Timeout,
                "another thread was using this end of the connection until the deadline",
            )
        })
    }
}

impl<T> std::ops::Deref for TurnGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held until drop")
    }
}

impl<T> std::ops::DerefMut for TurnGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held until drop")
    }
}

impl<T> Drop for TurnGuard<'_, T> {
    fn drop(&mut self) {
        self.guard.take();
        // The unlock above comes before the look at `waiters` (a waiter counts itself
        // before its last try).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.turn.waiters.load(Ordering::SeqCst) > 0 {
            let _gate = lock(&self.turn.gate);
            self.turn.freed.notify_one();
        }
    }
}

/// A framed byte stream: over a Unix stream socket (descriptors ride along), a pipe with a
/// side socket for descriptors, or a network connection (TCP, or TLS over TCP or a Unix
/// socket: no descriptors).
///
/// Reading and writing are locked separately, so one thread may send while another receives.
/// Its descriptors are [`RegisteredFd`]s: closed (and taken off the registry) on drop.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: RegisteredFd,
    /// For a one-way pipe: the socket that carries descriptors beside it (pipes cannot).
    side: Option<RegisteredFd>,
    /// A network connection: descriptors cannot travel (sending a handle is an error).
    net: bool,
    /// The TLS session of a TLS connection: every byte goes through it.
    tls: Option<Box<TlsStream>>,
    reader: Turn<Reader>,
    writer: Turn<Writer>,
    max_message: AtomicUsize,
}

impl Channel {
    /// A channel over a stream socket.
    pub(crate) fn new(fd: RegisteredFd) -> Self {
        Self::with_side(fd, None)
    }

    /// A channel over one end of a pipe, with `side` (a stream socket) for descriptors.
    pub(crate) fn with_side(fd: RegisteredFd, side: Option<RegisteredFd>) -> Self {
        Channel {
            fd,
            side,
            net: false,
            tls: None,
            reader: Turn::new(Reader {
                buf: Box::default(),
                start: 0,
                end: 0,
                received: 0,
                batches: VecDeque::new(),
                partial: None,
                broken: None,
            }),
            writer: Turn::new(Writer::default()),
            max_message: AtomicUsize::new(frame::DEFAULT_MAX_MESSAGE),
        }
    }

    /// A network connection that has passed the authkey handshake (over `tls` if given):
    /// frames as usual, no descriptors when `tcp` or TLS, and the network's smaller default
    /// maximum message.
    pub(crate) fn network(fd: RegisteredFd, tls: Option<Box<TlsStream>>, tcp: bool) -> Self {
        let mut c = Self::new(fd);
        c.net = tcp || tls.is_some();
        c.tls = tls;
        c.set_max_message(super::listener::NET_MAX_MESSAGE);
        c
    }

    /// Whether this is a network connection made by a `Listener` or `Client` (which
    /// cannot move to another process: it is checked as TCP or TLS, and stays here).
    pub(crate) fn is_network(&self) -> bool {
        self.net
    }

    /// A channel over descriptors received as a handle: `fd` must be a Unix stream socket
    /// (duplex), or a pipe with `side` a Unix stream socket (one-way). Anything else (a TCP or
    /// listening socket, a regular file, a pipe without its side socket) is refused with the
    /// reason, and the descriptors are closed.
    pub(crate) fn from_handle(
        fd: RegisteredFd,
        side: Option<RegisteredFd>,
    ) -> Result<Channel, &'static str> {
        match &side {
            None if socket::is_unix_stream_socket(fd.as_fd()) => Ok(Channel::new(fd)),

            Some(s) if socket::is_fifo(fd.as_fd()) && socket::is_unix_stream_socket(s.as_fd()) => {
                Ok(Channel::with_side(fd, side))
            }
            _ => Err(
                "the descriptors sent as a Connection are not a multiproc pipe or socket \
                 (a connection is a connected Unix stream socket, or a pipe with its side \
                 socket)",
            ),
        }
    }

    /// A connected pair.
    pub(crate) fn pair() -> Result<(Channel, Channel), Error> {
        let (a, b) =
            fdreg::socketpair().map_err(|e| Error::io(e).context("creating a socket pair"))?;
        Ok((Channel::new(a), Channel::new(b)))
    }

    /// A one-way pair `(reader, writer)` over a pipe, with a socket pair beside it for the
    /// descriptors of handles sent through it. Pipes are the fastest kernel transport for
    /// small messages here (about half a socket's round trip).
    pub(crate) fn pipe_pair() -> Result<(Channel, Channel), Error> {
        let (r, w) = fdreg::pipe().map_err(|e| Error::io(e).context("creating a pipe"))?;
        let (sr, sw) =
            fdreg::socketpair().map_err(|e| Error::io(e).context("creating a socket pair"))?;
        Ok((
            Channel::with_side(r, Some(sr)),
            Channel::with_side(w, Some(sw)),
        ))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The descriptor side channel of a pipe-based channel.
    pub(crate) fn side(&self) -> Option<BorrowedFd<'_>> {
        self.side.as_ref().map(|s| s.as_fd())
    }

    fn link(&self) -> Link<'_> {
        Link {
            fd: self.fd(),
            side: self.side(),
            tls: self.tls.as_deref(),
        }
    }

    /// Refuses descriptors on a network connection, before anything is written.
    fn check_fds(&self, n: usize) -> Result<(), Error> {
        if n > 0 && self.net {
            return Err(Error::msg(
                ErrorKind::Unsupported,
                "this message holds a handle (a Connection, a Queue, ...), and handles cannot                  travel over a network (TCP or TLS) connection: only a Unix-socket connection                  carries descriptors; send the data instead, or connect over a `unix:` address",
            ));
        }
        Ok(())
    }

    /// Writes one frame: on a socket, descriptors ride with its first byte; on a pipe, they go
    /// first through the side socket and the frame's header says how many to collect.
    ///
    /// With a `deadline`, either the whole frame is written in time, or nothing of it (a
    /// `Timeout` that leaves the stream as it was), or the deadline passed in the middle: then
    /// the writer is poisoned (a `Timeout` saying so; later sends fail with `Closed`) and a
    /// socket's sending half is shut down, so the peer sees the message cut off instead of
    /// waiting for its rest. `dontwait` (without a deadline) fails with `WouldBlock` when not
    /// a byte could be written, and otherwise finishes the frame.
    fn write_frame(
        &self,
        w: &mut Writer,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
        dontwait: bool,
    ) -> Result<(), Error> {
        if let Some(why) = &w.broken {
            return Err(Error::msg(ErrorKind::Closed, why.clone()));
        }
        self.check_fds(fds.len())?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(tls) = &self.tls {
            let sent = tls
                .write_all_until(self.fd(), parts, deadline)
                .map_err(Error::io)?;
            return self.after_timed_write(w, sent > 0, sent, total);
        }
        let Some(deadline) = deadline else {
            return match &self.side {
                None => socket::send_frame(self.fd(), parts, fds, dontwait),
                Some(side) => {
                    if !fds.is_empty() {
                        socket::send_frame(side.as_fd(), &[&[0]], fds, false).map_err(Error::io)?;
                    }
                    socket::write_all(self.fd(), parts)
                }
            }
            .map_err(Error::io);
        };
        let (started, sent) = match &self.side {
            None => {
                let sent =
                    socket::send_frame_until(self.fd(), parts, fds, deadline).map_err(Error::io)?;
                (sent > 0, sent)
            }
            Some(side) => {
                // Room in the pipe first, so descriptors never go out ahead of a frame that
                // then cannot start.
                if !socket::wait_fd(self.fd(), true, Some(deadline)).map_err(Error::io)? {
                    return Err(unsent_timeout());
                }
                let mut started = false;
                if !fds.is_empty() {
                    if socket::send_frame_until(side.as_fd(), &[&[0]], fds, deadline)
                        .map_err(Error::io)?
                        == 0
                    {
                        return Err(unsent_timeout());
                    }
                    // The descriptors are on their way: the frame must follow them.
                    started = true;
                }
                let sent =
                    socket::write_all_until(self.fd(), parts, deadline).map_err(Error::io)?;
                (started || sent > 0, sent)
            }
        };
        self.after_timed_write(w, started, sent, total)
    }

    /// The outcome of a timed write that wrote `sent` of `total` bytes (`started`: the peer
    /// may hold part of the frame): done, nothing sent, or the writer poisoned.
    fn after_timed_write(
        &self,
        w: &mut Writer,
        started: bool,
        sent: usize,
        total: usize,
    ) -> Result<(), Error> {
        if sent == total {
            return Ok(());
        }
        if !started {
            return Err(unsent_timeout());
        }
        let why = format!(
            "this connection can no longer send: an earlier send ran out of time after \
             {sent} of the {total} bytes of its message were written, so the peer holds part \
             of a message; make a new connection"
        );
        w.broken = Some(why);
        if self.side.is_none() {
            // (Over TLS too: the peer then sees the stream end in the middle of the frame.)
            let _ = socket::shutdown(self.fd(), socket::Half::Write);
        }
        Err(Error::msg(
            ErrorKind::Timeout,
            format!(
                "the deadline passed after {sent} of the {total} bytes of the message were \
                 written; the rest was not sent and this end can no longer send (the peer \
                 sees the message cut off)"
            ),
        ))
    }

    /// Sends one frame whose payload is `parts` concatenated (no copy), with `fds` attached.
    pub(crate) fn send_parts(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let len = parts.iter().map(|p| p.len()).sum();
        let header = frame::encode_header(len, fds.len())?;
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(&header[..]);
        all.extend_from_slice(parts);
        let mut w = self.writer.take_until(None)?;
        self.write_frame(&mut w, &all, fds, None, false)
    }

    pub(crate) fn set_max_message(&self, n: usize) {
        self.max_message.store(n, Ordering::Relaxed);
    }

    pub(crate) fn max_message(&self) -> usize {
        self.max_message.load(Ordering::Relaxed)
    }

    /// Sends raw `payload` with `fds` attached as one frame.
    pub(crate) fn send_raw(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        self.send_raw_until(payload, fds, None)
    }

    /// Sends raw `payload` with `fds` attached as one frame, giving up at `deadline` (see
    /// [`write_frame`](Self::write_frame) for what a deadline in the middle of it does).
    pub(crate) fn send_raw_until(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let header = frame::encode_header(payload.len(), fds.len())?;
        let mut w = self.writer.take_until(deadline)?;
        self.write_frame(&mut w, &[&header, payload], fds, deadline, false)
    }

    /// Serialises `value` and sends it as one frame (handles inside travel as descriptors).
    pub(crate) fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.send_until(value, None)
    }

    /// [`send`](Self::send), giving up at `deadline` (see [`write_frame`](Self::write_frame)).
    pub(crate) fn send_until<T: Serialize + ?Sized>(
        &self,
        value: &T,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let mut guard = self.writer.take_until(deadline)?;
        let w = &mut *guard;
        let mut scratch = std::mem::take(&mut w.scratch);
        let mut fds = std::mem::take(&mut w.fds);
        scratch.clear();
        fds.clear();
        scratch.extend_from_slice(&[0u8; frame::HEADER_LEN]);
        let res = codec::encode(value, &mut scratch, &mut fds).and_then(|()| {
            let len = scratch.len() - frame::HEADER_LEN;
            let header = frame::encode_header(len, fds.len())?;
            scratch[..frame::HEADER_LEN].copy_from_slice(&header);
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            self.write_frame(w, &[&scratch], &borrowed, deadline, false)
        });
        fds.clear();
        if scratch.capacity() > 1 << 20 {
            scratch = Vec::new();
        }
        w.scratch = scratch;
        w.fds = fds;
        res
    }

    /// Sends a small frame without blocking; `WouldBlock` if the socket buffer is full.
    pub(crate) fn try_send_raw(&self, payload: &[u8]) -> Result<(), Error> {
        let header = frame::encode_header(payload.len(), 0)?;
        let mut w = self.writer.take_until(None)?;
        self.write_frame(&mut w, &[&header, payload], &[], None, true)
    }

    /// Receives one frame, waiting until `deadline` (forever with `None`).
    pub(crate) fn recv_frame(&self, deadline: Option<Instant>) -> Result<Frame, Error> {
        let mut r = self.reader.take_until(deadline)?;
        r.recv(self.link(), self.max_message(), deadline)
    }

    /// Receives one frame into `dest` (payload only) if it fits; otherwise leaves it queued.
    ///
    /// Bytes go straight from the socket into `dest`: no intermediate buffer for large payloads.
    /// Descriptors attached to the frame are closed.
    pub(crate) fn recv_into(
        &self,
        dest: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<usize, Error> {
        let mut r = self.reader.take_until(deadline)?;
        let (header, at) = r.peek_header(self.link(), self.max_message(), deadline)?;
        if header.len > dest.len() {
            return Err(too_short(header.len, dest.len()));
        }
        if r.partial.is_some() {
            // A timed-out typed receive left a frame half read: finish it the ordinary way.
            let f = r.recv(self.link(), self.max_message(), deadline)?;
            dest[..f.payload.len()].copy_from_slice(&f.payload);
            return Ok(f.payload.len());
        }
        r.start += frame::HEADER_LEN;
        let mut filled = 0;
        while filled < header.len {
            let avail = r.end - r.start;
            if avail > 0 {
                let n = avail.min(header.len - filled);
                dest[filled..filled + n].copy_from_slice(&r.buf[r.start..r.start + n]);
                r.start += n;
                filled += n;
                continue;
            }
            // Into the caller's buffer directly; a timeout here would lose the frame's
            // position, so the rest of a started frame is read without a deadline.
            let n = self.link().read_plain(&mut dest[filled..header.len])?;
            if n == 0 {
                r.broken = Some(ErrorKind::Disconnected);
                return Err(Error::msg(
                    ErrorKind::Disconnected,
                    "the peer closed the stream in the middle of a frame",
                ));
            }
            r.received += n as u64;
            filled += n;
        }
        drop(r.claim(self.link(), header, at)?);
        Ok(header.len)
    }

    /// Receives and decodes one value.
    pub(crate) fn recv<T: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<T, Error> {
        self.recv_frame(deadline)?.decode()
    }

    /// Whether a frame (or end of stream) can be read without blocking, waiting until `deadline`.
    ///
    /// While another thread is receiving on this end, this waits for it (until `deadline`)
    /// and then looks again.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        let Some(r) = self.reader.take(deadline) else {
            return Ok(false);
        };
        if r.end > r.start || r.broken.is_some() {
            return Ok(true);
        }
        // Not holding the turn while waiting: that would stall another thread's receive.
        drop(r);
        self.link().wait_read(deadline)
    }

    /// Whether a thread is receiving on this end right now.
    #[cfg(test)]
    pub(crate) fn is_receiving(&self) -> bool {
        self.reader.take(Some(Instant::now())).is_none()
    }

    /// The capacity of a partly received frame's payload buffer.
    #[cfg(test)]
    pub(crate) fn partial_capacity(&self) -> Option<usize> {
        let r = self.reader.take(None)?;
        r.partial.as_ref().map(|p| p.2.capacity())
    }

    /// How many payload bytes of a partly received frame have arrived.
    #[cfg(test)]
    pub(crate) fn partial_len(&self) -> Option<usize> {
        let r = self.reader.take(None)?;
        r.partial.as_ref().map(|p| p.2.len())
    }

    /// Whether a thread is sending on this end right now.
    #[cfg(test)]
    pub(crate) fn is_sending(&self) -> bool {
        self.writer.take(Some(Instant::now())).is_none()
    }

    /// Whether buffered bytes are waiting (so `wait` must not block on the fd). `false`
    /// while another thread is receiving on this end (its bytes are its own).
    pub(crate) fn has_buffered(&self) -> bool {
        match self.reader.take(Some(Instant::now())) {
            Some(r) => {
                r.end > r.start
                    || r.partial.is_some()
                    || self.tls.as_ref().is_some_and(|t| t.has_plaintext())
            }
            None => false,
        }
    }

    /// Whether a whole frame is buffered (or an error is: a bad header), so a receive
    /// completes without reading the descriptor. Unlike [`has_buffered`](Self::has_buffered),
    /// `false` for the start of a frame whose rest is still to arrive: a caller that then
    /// waits on the descriptor is woken by the rest instead of spinning on the part.
    pub(crate) fn has_frame(&self) -> bool {
        if self.tls.as_ref().is_some_and(|t| t.has_plaintext()) {
            return true;
        }
        match self.reader.take(Some(Instant::now())) {
            Some(r) => {
                let avail = r.end - r.start;
                if let Some((h, _, p)) = &r.partial {
                    return avail >= h.len - p.len();
                }
                if avail < frame::HEADER_LEN {
                    return false;
                }
                let mut hb = [0u8; frame::HEADER_LEN];
                hb.copy_from_slice(&r.buf[r.start..r.start + frame::HEADER_LEN]);
                match frame::decode_header(&hb, self.max_message()) {
                    Ok(h) => avail - frame::HEADER_LEN >= h.len,
                    Err(_) => true,
                }
            }
            None => false,
        }
    }
}

/// Doubles `payload`'s capacity (at least to [`PAYLOAD_FIRST`]), never past `len`, the
/// announced length: the buffer is at most twice what has arrived.
fn grow(payload: &mut Vec<u8>, len: usize) {
    let target = payload
        .capacity()
        .saturating_mul(2)
        .max(PAYLOAD_FIRST)
        .min(len);
    payload.reserve_exact(target - payload.len());
    if target >= HUGE_PAGES_FROM {
        socket::advise_huge_pages(payload);
    }
}

/// The error of a timed send that wrote nothing: the stream is as it was.
fn unsent_timeout() -> Error {
    Error::msg(
        ErrorKind::Timeout,
        "the peer did not take the message in time (nothing of it was sent)",
    )
}

fn too_short(len: usize, have: usize) -> Error {
    Error::msg(
        ErrorKind::BufferTooShort,
        format!("the message has {len} bytes, the buffer {have}"),
    )
}

/// The descriptors a reader reads from.
#[derive(Clone, Copy)]
struct Link<'a> {
    fd: BorrowedFd<'a>,
    side: Option<BorrowedFd<'a>>,
    /// A TLS connection's session: bytes are read through it.
    tls: Option<&'a TlsStream>,
}

impl Link<'_> {
    /// Waits until a read would not block, or `deadline`: `false` then.
    fn wait_read(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        match self.tls {
            None => socket::wait_fd(self.fd, false, deadline),
            Some(t) => t.wait_readable(self.fd, deadline),
        }
        .map_err(stream_error)
    }

    /// Reads what is there into `buf`, blocking; 0 at end of stream (plain reads: no
    /// descriptors).
    fn read_plain(&self, buf: &mut [u8]) -> Result<usize, Error> {
        match self.tls {
            None => socket::read_into(self.fd, buf),
            Some(t) => t.read(self.fd, buf, None).map(|n| n.unwrap_or(0)),
        }
        .map_err(stream_error)
    }
}

/// An I/O error of a read; a failed TLS session (a tampered record, say: `InvalidData` with
/// its reason) is the peer breaking the protocol.
fn stream_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData && e.raw_os_error().is_none() {
        Error::msg(ErrorKind::Protocol, e.to_string())
    } else {
        Error::io(e)
    }
}

impl Reader {
    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self, link: Link<'_>, deadline: Option<Instant>) -> Result<bool, Error> {
        let fd = link.fd;
        if self.buf.is_empty() {
            self.buf = vec![0u8; READ_FIRST].into_boxed_slice();
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if deadline.is_some() && !link.wait_read(deadline)? {
            return Err(Error::new(ErrorKind::Timeout));
        }
        let n = match (link.side, link.tls) {
            (_, Some(t)) => t
                .read(fd, &mut self.buf[self.end..], None)
                .map(|n| n.unwrap_or(0)),
            (None, None) => {
                let mut got = Vec::new();
                let res = fdreg::recv_keeping_bytes(fd, &mut self.buf[self.end..], &mut got);
                if let Ok((n, lost)) = res {
                    if !got.is_empty() || lost {
                        // Tagged with the last byte that came with them (see `claim`).
                        self.batches
                            .push_back((self.received + n.max(1) as u64 - 1, got, lost));
                    }
                }
                res.map(|(n, _)| n)
            }
            (Some(_), None) => socket::read_into(fd, &mut self.buf[self.end..]),
        }
        .map_err(|e| self.recv_error(e))?;
        if self.batches.iter().map(|(_, b, _)| b.len()).sum::<usize>() > MAX_PENDING_FDS {
            self.batches.clear();
            return Err(self.poison("the peer sent descriptors that no frame announces"));
        }
        self.received += n as u64;
        let filled_it = self.end + n == self.buf.len();
        self.end += n;
        if filled_it && self.buf.len() < READ_CHUNK {
            let mut bigger = vec![0u8; self.buf.len() * 2].into_boxed_slice();
            bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
            self.end -= self.start;
            self.start = 0;
            self.buf = bigger;
        }
        Ok(n > 0)
    }

    /// The error for a failed receive. Descriptors lost with the bytes read (too many in one
    /// frame, or we are out of descriptors) leave a stream that can no longer be trusted.
    fn recv_error(&mut self, e: std::io::Error) -> Error {
        match fdreg::is_truncation(&e) {
            Some(out_of_fds) => {
                let kind = if out_of_fds {
                    ErrorKind::Io
                } else {
                    ErrorKind::Protocol
                };
                self.broken = Some(kind);
                Error::msg(kind, e.to_string())
            }
            None => Error::io(e),
        }
    }

    /// Marks the stream broken by a protocol error and returns that error.
    fn poison(&mut self, msg: impl Into<String>) -> Error {
        self.broken = Some(ErrorKind::Protocol);
        Error::msg(ErrorKind::Protocol, msg.into())
    }

    /// The descriptors of the frame whose header is at stream offset `at`, once all its bytes
    /// have been read.
    ///
    /// On a socket, a sender attaches a frame's descriptors to its first byte, and the kernel
    /// ends a read right after the bytes that carry descriptors; so a batch belongs to the
    /// frame that contains the last byte read with it. Batches before this frame belonged to
    /// frames that announced none: they are closed. On a pipe, a frame that announces
    /// descriptors has them sent just before it on the side socket, one message per frame.
    /// Either way the count must be exactly the announced one.
    fn claim(
        &mut self,
        link: Link<'_>,
        header: frame::Header,
        at: u64,
    ) -> Result<(Vec<RegisteredFd>, bool), Error> {
        let nfds = header.nfds;
        let mut fds = Vec::new();
        let mut lost = false;
        match link.side {
            None => {
                let end = at + (frame::HEADER_LEN + header.len) as u64;
                while let Some((last, _, _)) = self.batches.front() {
                    if *last >= end {
                        break;
                    }
                    let (last, batch, dropped) = self.batches.pop_front().expect("checked above");
                    if last >= at {
                        fds.extend(batch);
                        lost |= dropped;
                    }
                    // else: descriptors that came with no frame announcing them: closed.
                }
                if nfds == 0 {
                    // Sent along with a frame that announces none: closed, never kept.
                    fds.clear();
                }
            }
            Some(side) if nfds > 0 => {
                // The writer sends them before the frame, so they are there already: never
                // wait for them (a peer that announces descriptors and sends none would
                // otherwise hold the reader forever).
                let mut byte = [0u8; 1];
                match fdreg::try_recv(side, &mut byte, &mut fds) {
                    Ok(0) => {
                        return Err(self.poison(format!(
                            "frame announced {nfds} descriptors but the side socket is closed"
                        )))
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(self.recv_error(e)),
                }
            }
            Some(_) => {}
        }
        // Out of descriptors, the kernel installs what it can: fewer is then no protocol error.
        let lost = lost && nfds > 0;
        if fds.len() > nfds || (fds.len() < nfds && !lost) {
            return Err(self.poison(format!(
                "frame announced {nfds} descriptors but {} arrived with it",
                fds.len()
            )));
        }
        Ok((fds, lost))
    }

    fn peek_header(
        &mut self,
        link: Link<'_>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<(frame::Header, u64), Error> {
        if let Some(kind) = self.broken {
            return Err(Error::msg(
                kind,
                "the stream was abandoned after an earlier error (its framing or its \
                 descriptors were lost)",
            ));
        }
        if let Some((h, at, _)) = &self.partial {
            return Ok((*h, *at));
        }
        while self.end - self.start < frame::HEADER_LEN {
            if !self.fill(link, deadline)? {
                return Err(if self.end == self.start {
                    Error::new(ErrorKind::Disconnected)
                } else {
                    self.broken = Some(ErrorKind::Disconnected);
                    Error::msg(
                        ErrorKind::Disconnected,
                        "the peer closed the stream in the middle of a frame",
                    )
                });
            }
        }
        let mut hb = [0u8; frame::HEADER_LEN];
        hb.copy_from_slice(&self.buf[self.start..self.start + frame::HEADER_LEN]);
        let at = self.received - (self.end - self.start) as u64;
        match frame::decode_header(&hb, max) {
            Ok(h) => Ok((h, at)),
            Err(e) => {
                self.broken = Some(e.kind());
                Err(e)
            }
        }
    }

    fn recv(
        &mut self,
        link: Link<'_>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<Frame, Error> {
        let (header, at, mut payload) = match self.partial.take() {
            Some(p) => p,
            None => {
                let (h, at) = self.peek_header(link, max, deadline)?;
                self.start += frame::HEADER_LEN;
                // Never more than what arrives (see `grow`): a peer announcing a gigabyte
                // and sending a few bytes costs a few bytes.
                (h, at, Vec::with_capacity(h.len.min(PAYLOAD_FIRST)))
            }
        };
        let fd = link.fd;
        loop {
            let want = header.len - payload.len();
            if want == 0 {
                break;
            }
            let avail = self.end - self.start;
            if avail > 0 {
                let n = avail.min(want);
                payload.extend_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                continue;
            }
            if deadline.is_some() && !link.wait_read(deadline)? {
                self.partial = Some((header, at, payload));
                return Err(Error::new(ErrorKind::Timeout));
            }
            let got = if want >= DIRECT_READ && link.tls.is_none() {
                // Plain reads: the frame's descriptors came with its header, and `want` stops
                // at the frame's end, so no descriptor is ever read (and lost) here.
                if payload.len() == payload.capacity() {
                    grow(&mut payload, header.len);
                }
                let n = socket::read_into_vec(fd, &mut payload, want).map_err(Error::io)?;
                self.received += n as u64;
                n
            } else {
                match self.fill(link, None) {
                    Ok(true) => self.end - self.start,
                    Ok(false) => 0,
                    Err(e) => return Err(e),
                }
            };
            if got == 0 {
                self.broken = Some(ErrorKind::Disconnected);
                return Err(Error::msg(
                    ErrorKind::Disconnected,
                    format!(
                        "the peer closed the stream in the middle of a frame ({} of {} bytes)",
                        payload.len(),
                        header.len
                    ),
                ));
            }
        }
        let (fds, fds_lost) = self.claim(link, header, at)?;
        Ok(Frame {
            payload,
            fds,
            fds_lost,
        })
    }
}

#[cfg(test)]
mod tests;
