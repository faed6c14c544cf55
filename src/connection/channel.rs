//! The untyped framed channel under every [`Connection`](super::Connection) and every
//! internal control stream (process bootstrap, fork server, pool workers).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, frame};
use crate::error::{Error, ErrorKind};
use crate::sys::socket;

/// The read buffer starts this small (most channels carry a few small frames: a child's
/// task and report) and is allocated on the first read, not at creation.
const READ_FIRST: usize = 4 * 1024;
/// It doubles up to this size while reads keep filling it (streams of small messages).
const READ_CHUNK: usize = 64 * 1024;
/// Payloads at least this large are read straight into their destination.
const DIRECT_READ: usize = 16 * 1024;

/// One received frame.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Frame {
    /// Decodes the payload as a `T`, handing the frame's descriptors to the handles inside.
    pub(crate) fn decode<T: DeserializeOwned>(self) -> Result<T, Error> {
        codec::decode(&self.payload, self.fds)
    }
}

#[derive(Debug)]
struct Reader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    /// A frame whose header was read but whose payload is still arriving.
    partial: Option<(frame::Header, Vec<u8>)>,
    /// Set after a protocol error: the stream can no longer be trusted.
    broken: Option<ErrorKind>,
}

#[derive(Debug, Default)]
struct Writer {
    scratch: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// A framed, descriptor-carrying byte stream over a Unix stream socket.
///
/// Reading and writing are locked separately, so one thread may send while another receives.
#[derive(Debug)]
pub(crate) struct Channel {
    /// Always `Some` until `drop`, which closes it under the registry lock.
    fd: Option<OwnedFd>,
    /// For a one-way pipe: the socket that carries descriptors beside it (pipes cannot).
    side: Option<OwnedFd>,
    reader: Mutex<Reader>,
    writer: Mutex<Writer>,
    max_message: AtomicUsize,
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self::with_side(fd, None)
    }

    /// A channel over one end of a pipe, with `side` (a stream socket) for descriptors.
    pub(crate) fn with_side(fd: OwnedFd, side: Option<OwnedFd>) -> Self {
        crate::spawn::register_channel_fd(fd.as_raw_fd());
        if let Some(s) = &side {
            crate::spawn::register_channel_fd(s.as_raw_fd());
        }
        Self::registered(fd, side)
    }

    /// A channel over descriptors that are already in the registry.
    fn registered(fd: OwnedFd, side: Option<OwnedFd>) -> Self {
        Channel {
            fd: Some(fd),
            side,
            reader: Mutex::new(Reader {
                buf: Box::default(),
                start: 0,
                end: 0,
                fds: VecDeque::new(),
                partial: None,
                broken: None,
            }),
            writer: Mutex::new(Writer::default()),
            max_message: AtomicUsize::new(frame::DEFAULT_MAX_MESSAGE),
        }
    }

    /// A connected pair.
    pub(crate) fn pair() -> Result<(Channel, Channel), Error> {
        let (a, b) = crate::spawn::create_registered(|| {
            let (a, b) = socket::socketpair()?;
            let fds = vec![a.as_raw_fd(), b.as_raw_fd()];
            Ok(((a, b), fds))
        })
        .map_err(|e| Error::io(e).context("creating a socket pair"))?;
        Ok((Channel::registered(a, None), Channel::registered(b, None)))
    }

    /// A one-way pair `(reader, writer)` over a pipe, with a socket pair beside it for the
    /// descriptors of handles sent through it. Pipes are the fastest kernel transport for
    /// small messages here (about half a socket's round trip).
    pub(crate) fn pipe_pair() -> Result<(Channel, Channel), Error> {
        let (r, w) = socket::pipe().map_err(|e| Error::io(e).context("creating a pipe"))?;
        let (sr, sw) =
            socket::socketpair().map_err(|e| Error::io(e).context("creating a socket pair"))?;
        Ok((
            Channel::with_side(r, Some(sr)),
            Channel::with_side(w, Some(sw)),
        ))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("a channel's descriptor lives until drop")
            .as_fd()
    }

    /// The descriptor side channel of a pipe-based channel.
    pub(crate) fn side(&self) -> Option<BorrowedFd<'_>> {
        self.side.as_ref().map(|s| s.as_fd())
    }

    fn link(&self) -> Link<'_> {
        Link {
            fd: self.fd(),
            side: self.side(),
        }
    }

    /// Writes one frame: on a socket, descriptors ride with its first byte; on a pipe, they go
    /// first through the side socket and the frame's header says how many to collect.
    fn write_frame(
        &self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        dontwait: bool,
    ) -> Result<(), Error> {
        match &self.side {
            None => socket::send_frame(self.fd(), parts, fds, dontwait),
            Some(side) => {
                if !fds.is_empty() {
                    socket::send_frame(side.as_fd(), &[&[0]], fds, false).map_err(Error::io)?;
                }
                socket::write_all(self.fd(), parts)
            }
        }
        .map_err(Error::io)
    }

    /// Sends one frame whose payload is `parts` concatenated (no copy), with `fds` attached.
    pub(crate) fn send_parts(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let len = parts.iter().map(|p| p.len()).sum();
        let header = frame::encode_header(len, fds.len())?;
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(&header[..]);
        all.extend_from_slice(parts);
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.write_frame(&all, fds, false)
    }

    pub(crate) fn set_max_message(&self, n: usize) {
        self.max_message.store(n, Ordering::Relaxed);
    }

    pub(crate) fn max_message(&self) -> usize {
        self.max_message.load(Ordering::Relaxed)
    }

    /// Sends raw `payload` with `fds` attached as one frame.
    pub(crate) fn send_raw(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let header = frame::encode_header(payload.len(), fds.len())?;
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.write_frame(&[&header, payload], fds, false)
    }

    /// Serialises `value` and sends it as one frame (handles inside travel as descriptors).
    pub(crate) fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Writer { scratch, fds } = &mut *w;
        scratch.clear();
        fds.clear();
        scratch.extend_from_slice(&[0u8; frame::HEADER_LEN]);
        codec::encode(value, scratch, fds)?;
        let len = scratch.len() - frame::HEADER_LEN;
        let header = frame::encode_header(len, fds.len())?;
        scratch[..frame::HEADER_LEN].copy_from_slice(&header);
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let res = self.write_frame(&[scratch], &borrowed, false);
        drop(borrowed);
        fds.clear();
        if scratch.capacity() > 1 << 20 {
            *scratch = Vec::new();
        }
        res
    }

    /// Sends a small frame without blocking; `WouldBlock` if the socket buffer is full.
    pub(crate) fn try_send_raw(&self, payload: &[u8]) -> Result<(), Error> {
        let header = frame::encode_header(payload.len(), 0)?;
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.write_frame(&[&header, payload], &[], true)
    }

    /// Receives one frame, waiting until `deadline` (forever with `None`).
    pub(crate) fn recv_frame(&self, deadline: Option<Instant>) -> Result<Frame, Error> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if r.partial.is_some() {
            // A timed-out typed receive left a frame half read: finish it the ordinary way.
            let header = r.peek_header(self.link(), self.max_message(), deadline)?;
            if header.len > dest.len() {
                return Err(too_short(header.len, dest.len()));
            }
            let f = r.recv(self.link(), self.max_message(), deadline)?;
            dest[..f.payload.len()].copy_from_slice(&f.payload);
            return Ok(f.payload.len());
        }
        let header = r.peek_header(self.link(), self.max_message(), deadline)?;
        if header.len > dest.len() {
            return Err(too_short(header.len, dest.len()));
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
            let n =
                socket::read_into(self.fd(), &mut dest[filled..header.len]).map_err(Error::io)?;
            if n == 0 {
                r.broken = Some(ErrorKind::Disconnected);
                return Err(Error::msg(
                    ErrorKind::Disconnected,
                    "the peer closed the stream in the middle of a frame",
                ));
            }
            filled += n;
        }
        r.collect_fds(self.link(), header.nfds)?;
        r.fds.drain(..header.nfds);
        Ok(header.len)
    }

    /// Receives and decodes one value.
    pub(crate) fn recv<T: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<T, Error> {
        self.recv_frame(deadline)?.decode()
    }

    /// Whether a frame (or end of stream) can be read without blocking, waiting until `deadline`.
    pub(crate) fn poll(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        {
            let r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            if r.end > r.start || r.broken.is_some() {
                return Ok(true);
            }
        }
        socket::wait_fd(self.fd(), false, deadline).map_err(Error::io)
    }

    /// Whether buffered bytes are waiting (so `wait` must not block on the fd).
    pub(crate) fn has_buffered(&self) -> bool {
        let r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        r.end > r.start || r.partial.is_some()
    }
}

fn too_short(len: usize, have: usize) -> Error {
    Error::msg(
        ErrorKind::BufferTooShort,
        format!("the message has {len} bytes, the buffer {have}"),
    )
}

impl Drop for Channel {
    fn drop(&mut self) {
        crate::spawn::close_registered(self.fd.take().into_iter().chain(self.side.take()));
    }
}

/// The descriptors a reader reads from.
#[derive(Clone, Copy)]
struct Link<'a> {
    fd: BorrowedFd<'a>,
    side: Option<BorrowedFd<'a>>,
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
        if deadline.is_some() && !socket::wait_fd(fd, false, deadline).map_err(Error::io)? {
            return Err(Error::new(ErrorKind::Timeout));
        }
        let n = match link.side {
            None => socket::recv_some(fd, &mut self.buf[self.end..], &mut self.fds),
            Some(_) => socket::read_into(fd, &mut self.buf[self.end..]),
        }
        .map_err(|e| {
            // Descriptors were lost with the bytes read (too many in one frame): the stream
            // can no longer be trusted.
            if e.kind() == std::io::ErrorKind::InvalidData {
                self.broken = Some(ErrorKind::Protocol);
            }
            Error::io(e)
        })?;
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

    /// Makes sure the `nfds` descriptors of the current frame have arrived (from the side
    /// socket of a pipe, where they were sent just before the frame).
    fn collect_fds(&mut self, link: Link<'_>, nfds: usize) -> Result<(), Error> {
        while self.fds.len() < nfds {
            let got = match link.side {
                Some(side) => {
                    socket::recv_some(side, &mut [0u8; 1], &mut self.fds).map_err(Error::io)?
                }
                None => 0,
            };
            if got == 0 {
                self.broken = Some(ErrorKind::Protocol);
                return Err(Error::msg(
                    ErrorKind::Protocol,
                    format!(
                        "frame announced {nfds} descriptors but {} arrived",
                        self.fds.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn peek_header(
        &mut self,
        link: Link<'_>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<frame::Header, Error> {
        if let Some(kind) = self.broken {
            return Err(Error::msg(
                kind,
                "the stream was abandoned after an earlier protocol error",
            ));
        }
        if let Some((h, _)) = &self.partial {
            return Ok(*h);
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
        match frame::decode_header(&hb, max) {
            Ok(h) => Ok(h),
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
        let (header, mut payload) = match self.partial.take() {
            Some(p) => p,
            None => {
                let h = self.peek_header(link, max, deadline)?;
                self.start += frame::HEADER_LEN;
                // Capacity is reserved up to the announced length, which is within the limit;
                // pages are only touched as bytes arrive.
                let mut v = Vec::with_capacity(h.len);
                if h.len >= 4 << 20 {
                    socket::advise_huge_pages(&mut v);
                }
                (h, v)
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
            if deadline.is_some() && !socket::wait_fd(fd, false, deadline).map_err(Error::io)? {
                self.partial = Some((header, payload));
                return Err(Error::new(ErrorKind::Timeout));
            }
            let got = if want >= DIRECT_READ {
                socket::read_into_vec(fd, &mut payload, want).map_err(Error::io)?
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
        self.collect_fds(link, header.nfds)?;
        let fds = self.fds.drain(..header.nfds).collect();
        Ok(Frame { payload, fds })
    }
}
