//! The TLS transport of a network connection (`tls` feature, rustls), and [`Wire`], the
//! non-blocking byte I/O the authkey handshake runs on (plain socket or TLS).
//!
//! A [`TlsStream`] holds the rustls session under a mutex that is held only across
//! non-blocking steps (encrypt into its buffer, `send`/`recv` with `MSG_DONTWAIT`, decrypt),
//! never while waiting: a waiter releases it and polls the socket. So one thread may send
//! while another receives, as on a plain connection. Memory stays bounded: rustls buffers at
//! most one record of ciphertext being read and [`SEND_BUFFER`] of plaintext being sent.
//!
//! Without the `tls` feature, `TlsStream` is an empty enum: the channel's TLS branches are
//! unreachable and compile away.

use std::io;
use std::os::fd::BorrowedFd;
#[cfg(feature = "tls")]
use std::time::Instant;

use crate::sys::socket;

/// Non-blocking byte I/O on one connection during its handshake: the socket itself, or the
/// TLS session over it.
#[derive(Clone, Copy)]
pub(crate) struct Wire<'a> {
    pub(crate) fd: BorrowedFd<'a>,
    pub(crate) tls: Option<&'a TlsStream>,
}

impl Wire<'_> {
    /// Reads what is there (`WouldBlock` if nothing; 0 at end of stream).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls {
            None => socket::recv_nowait(self.fd, buf),
            Some(t) => t.try_read(self.fd, buf),
        }
    }

    /// Writes what the socket takes now (`WouldBlock` if nothing).
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self.tls {
            None => socket::send_nowait(self.fd, buf),
            Some(t) => t.try_write(self.fd, buf),
        }
    }

    /// Sends what TLS still holds; `true` when nothing is left.
    pub(crate) fn flush(&self) -> io::Result<bool> {
        match self.tls {
            None => Ok(true),
            Some(t) => t.flush(self.fd),
        }
    }
}

#[cfg(feature = "tls")]
pub(crate) use imp::TlsStream;

#[cfg(not(feature = "tls"))]
pub(crate) use stub::TlsStream;

#[cfg(not(feature = "tls"))]
mod stub {
    use std::io;
    use std::os::fd::BorrowedFd;
    use std::time::Instant;

    /// No TLS in this build (the `tls` feature is off): no value of this type exists.
    #[derive(Debug)]
    pub(crate) enum TlsStream {}

    #[allow(clippy::unused_self)]
    impl TlsStream {
        pub(crate) fn try_read(&self, _: BorrowedFd<'_>, _: &mut [u8]) -> io::Result<usize> {
            match *self {}
        }
        pub(crate) fn try_write(&self, _: BorrowedFd<'_>, _: &[u8]) -> io::Result<usize> {
            match *self {}
        }
        pub(crate) fn flush(&self, _: BorrowedFd<'_>) -> io::Result<bool> {
            match *self {}
        }
        pub(crate) fn read(
            &self,
            _: BorrowedFd<'_>,
            _: &mut [u8],
            _: Option<Instant>,
        ) -> io::Result<Option<usize>> {
            match *self {}
        }
        pub(crate) fn wait_readable(
            &self,
            _: BorrowedFd<'_>,
            _: Option<Instant>,
        ) -> io::Result<bool> {
            match *self {}
        }
        pub(crate) fn has_plaintext(&self) -> bool {
            match *self {}
        }
        pub(crate) fn write_all_until(
            &self,
            _: BorrowedFd<'_>,
            _: &[&[u8]],
            _: Option<Instant>,
        ) -> io::Result<usize> {
            match *self {}
        }
    }
}

/// Plaintext a sender may hand rustls before it must wait for the socket.
#[cfg(feature = "tls")]
pub(crate) const SEND_BUFFER: usize = 64 * 1024;

#[cfg(feature = "tls")]
mod imp {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    use crate::wait::lock;

    /// The socket as rustls's `Read`/`Write`, never blocking.
    struct NoWait<'a>(BorrowedFd<'a>);

    impl Read for NoWait<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            socket::recv_nowait(self.0, buf)
        }
    }

    impl Write for NoWait<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            socket::send_nowait(self.0, buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct State {
        conn: rustls::Connection,
        /// The socket reached end of stream (no more ciphertext will come).
        eof: bool,
    }

    /// A rustls session over a connection's socket.
    pub(crate) struct TlsStream {
        state: Mutex<State>,
    }

    impl std::fmt::Debug for TlsStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TlsStream").finish_non_exhaustive()
        }
    }

    fn tls_error(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    impl TlsStream {
        fn with(mut conn: rustls::Connection) -> Self {
            conn.set_buffer_limit(Some(SEND_BUFFER));
            TlsStream {
                state: Mutex::new(State { conn, eof: false }),
            }
        }

        /// The accepting side, with `config`'s certificate.
        pub(crate) fn server(config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
            let c = rustls::ServerConnection::new(config).map_err(tls_error)?;
            Ok(Self::with(c.into()))
        }

        /// The connecting side, checking the server's certificate for `name`.
        pub(crate) fn client(
            config: Arc<rustls::ClientConfig>,
            name: rustls::pki_types::ServerName<'static>,
        ) -> io::Result<Self> {
            let c = rustls::ClientConnection::new(config, name).map_err(tls_error)?;
            Ok(Self::with(c.into()))
        }

        /// Sends queued records without blocking; `true` when none are left.
        fn flush_locked(st: &mut State, fd: BorrowedFd<'_>) -> io::Result<bool> {
            while st.conn.wants_write() {
                match st.conn.write_tls(&mut NoWait(fd)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        }

        /// Takes in the ciphertext the socket has now; `WouldBlock` when it has none.
        fn pull(st: &mut State, fd: BorrowedFd<'_>) -> io::Result<()> {
            if st.eof {
                return Ok(());
            }
            let n = st.conn.read_tls(&mut NoWait(fd))?;
            if n == 0 {
                st.eof = true;
            }
            st.conn.process_new_packets().map_err(tls_error)?;
            // Alerts and handshake replies go out at once where the socket allows.
            Self::flush_locked(st, fd)?;
            Ok(())
        }

        pub(crate) fn try_read(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
            let mut st = lock(&self.state);
            loop {
                match st.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if st.eof {
                    return Ok(0);
                }
                Self::pull(&mut st, fd)?;
            }
        }

        pub(crate) fn try_write(&self, fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
            let mut st = lock(&self.state);
            let n = st.conn.writer().write(buf)?;
            let _ = Self::flush_locked(&mut st, fd)?;
            if n == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }

        pub(crate) fn flush(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
            Self::flush_locked(&mut lock(&self.state), fd)
        }

        /// Whether decrypted bytes (or the end of the stream) wait to be read.
        pub(crate) fn has_plaintext(&self) -> bool {
            let mut st = lock(&self.state);
            st.eof
                || st
                    .conn
                    .process_new_packets()
                    .is_ok_and(|s| s.plaintext_bytes_to_read() > 0 || s.peer_has_closed())
        }

        /// Waits until a read would not block (plaintext, end of stream or an error), or
        /// `deadline`: `false` then.
        pub(crate) fn wait_readable(
            &self,
            fd: BorrowedFd<'_>,
            deadline: Option<Instant>,
        ) -> io::Result<bool> {
            loop {
                {
                    let mut st = lock(&self.state);
                    loop {
                        if st.eof {
                            return Ok(true);
                        }
                        match st.conn.process_new_packets() {
                            Ok(s) if s.plaintext_bytes_to_read() > 0 || s.peer_has_closed() => {
                                return Ok(true)
                            }
                            Ok(_) => {}
                            Err(_) => return Ok(true),
                        }
                        match Self::pull(&mut st, fd) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            // The read reports it.
                            Err(_) => return Ok(true),
                        }
                    }
                }
                if !socket::wait_fd(fd, false, deadline)? {
                    return Ok(false);
                }
            }
        }

        /// Reads decrypted bytes, waiting until `deadline` (`None`: forever); `Ok(None)` when
        /// it passed first, `Ok(Some(0))` at end of stream.
        pub(crate) fn read(
            &self,
            fd: BorrowedFd<'_>,
            buf: &mut [u8],
            deadline: Option<Instant>,
        ) -> io::Result<Option<usize>> {
            loop {
                match self.try_read(fd, buf) {
                    Ok(n) => return Ok(Some(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !socket::wait_fd(fd, false, deadline)? {
                            return Ok(None);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        /// Encrypts and sends `parts`, waiting until `deadline` (`None`: forever). Returns
        /// the plaintext bytes sent: all of them, or fewer when the deadline passed (0 when
        /// none was taken; a message taken but not yet on the wire counts as started).
        pub(crate) fn write_all_until(
            &self,
            fd: BorrowedFd<'_>,
            parts: &[&[u8]],
            deadline: Option<Instant>,
        ) -> io::Result<usize> {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            let mut done = 0;
            for p in parts {
                let mut at = 0;
                while at < p.len() {
                    match self.try_write(fd, &p[at..]) {
                        Ok(n) => {
                            at += n;
                            done += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if !socket::wait_fd(fd, true, deadline)? {
                                return Ok(done.min(total.saturating_sub(1)));
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            while !self.flush(fd)? {
                if !socket::wait_fd(fd, true, deadline)? {
                    return Ok(done.min(total.saturating_sub(1)));
                }
            }
            Ok(done)
        }
    }
}
