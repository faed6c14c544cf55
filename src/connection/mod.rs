//! Pipes and connections: typed, framed, duplex or one-way message streams between processes.
//!
//! A [`Connection<T>`] sends and receives values of type `T` (anything serde can serialise),
//! or raw byte messages. Connections are ordinary arguments: pass one to a child process (any
//! start method) or inside another message, and the descriptor travels with it.
//!
//! ```
//! use multiproc::{Pipe, Process};
//!
//! let (parent, child) = Pipe::new::<String>()?;
//! let p = Process::spawn(child, |conn| {
//!     let msg = conn.recv().unwrap();
//!     conn.send(&format!("{msg}, world")).unwrap();
//! })?;
//! parent.send(&"hello".to_string())?;
//! assert_eq!(parent.recv()?, "hello, world");
//! p.join()?;
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! # Network connections: Listener and Client
//!
//! [`Listener`] and [`Client`] connect unrelated processes by address, with an authkey
//! (Python's `multiprocessing.connection.Listener` / `Client`).
//!
//! ```
//! use multiproc::connection::{Address, Client, Listener};
//!
//! let listener = Listener::<String>::bind(&"127.0.0.1:0".parse()?, b"secret key")?;
//! let addr = listener.local_addr().clone(); // the real port
//! let t = std::thread::spawn(move || {
//!     let conn = Client::connect::<String>(&addr, b"secret key").unwrap();
//!     conn.send(&"hello".to_string()).unwrap();
//! });
//! let conn = listener.accept()?;
//! assert_eq!(conn.recv()?, "hello");
//! # t.join().unwrap();
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! ## Addresses
//!
//! [`Address`] is a TCP address (`"127.0.0.1:5000"`, `"[::1]:0"`; port 0 picks a free port,
//! which [`Listener::local_addr`] reports), a Unix socket path (`"unix:/run/app.sock"`) or,
//! on Linux, a name in the abstract namespace (`"unix:@app"`: no file at all). A Unix socket
//! file is removed when its `Listener` drops (if it is still the one the listener made), and
//! a stale file left by a killed server is replaced at `bind`, so a restarted server binds
//! the same path again; TCP listeners set `SO_REUSEADDR` for the same reason.
//!
//! ## The connection
//!
//! Both ends get an ordinary [`Connection<T>`]: `send`/`recv`/`recv_timeout`/`poll`/
//! `send_bytes`..., and [`wait`] works on it. Every TCP connection has
//! `TCP_NODELAY` set (a small message leaves at once; Python's ~40 ms connect stall is
//! Nagle's algorithm waiting for a delayed acknowledgement). Over a Unix socket, handles
//! (connections, queues) inside messages travel as between parent and child; over TCP (or
//! TLS) they cannot, and sending one fails with [`ErrorKind::Unsupported`] before anything
//! is written.
//!
//! ## Security
//!
//! **What the authkey protects: who may connect.** Before a connection is handed to either
//! side, both prove they know the key, by HMAC-SHA256 over fresh random nonces (32 bytes
//! each from the kernel's `getrandom`, checked in constant time; `auth.rs` has the exact
//! exchange). A client with the wrong key is refused, and a client refuses a server that
//! cannot prove the key, before any message is sent. The key never crosses the wire, and a
//! recorded handshake cannot be replayed. Use a long random key (32 bytes); an empty one is
//! refused.
//!
//! **What it does not protect.** Without TLS, messages travel in clear and unauthenticated
//! after the handshake: an attacker on the network path can read them, and can take over or
//! relay a connection once it is authenticated. **TLS** (the `tls` feature,
//! [`Listener::bind_tls`], [`Client::connect_tls`]) adds confidentiality and integrity
//! against such an attacker, and server authentication by certificate; the authkey
//! handshake still runs inside it (the key says who may connect, TLS protects the bytes).
//! On one machine, a Unix socket path's file permissions (or a private directory) limit who
//! can even try.
//!
//! **No code runs from received bytes.** Unlike Python's pickle, a message is decoded with
//! postcard into the `T` the connection was typed with: bytes can be a wrong value (an
//! [`ErrorKind::Decode`] error), never a function call. Nothing from a peer is decoded at all
//! before it has authenticated: the handshake reads fixed-size messages (40, 72 and 33 bytes)
//! into fixed buffers.
//!
//! **The bounds.** A connection made here accepts messages up to 64 MiB by default
//! ([`NET_MAX_MESSAGE`]; [`Listener::set_max_message_size`] for what a listener accepts,
//! [`Connection::set_max_message_size`] on either end); a larger frame header fails with
//! [`ErrorKind::TooLarge`] before anything is allocated, and memory then follows the bytes
//! that actually arrive. A garbage, truncated or oversized handshake or frame closes only
//! that connection. The handshake has a deadline (5 s by default,
//! [`Listener::set_handshake_timeout`]), and handshakes run side by side, so a silent or slow
//! client holds only its own slot, never `accept` for others; at most [`MAX_PENDING`]
//! handshakes are in progress at once (beyond that the oldest is dropped).
//!
//! ## Errors
//!
//! A wrong key is [`ErrorKind::AuthenticationFailed`] on the client; the listener drops such
//! clients (and garbage) and keeps accepting. A server that is not there is
//! [`ErrorKind::Io`] (connection refused) at connect; a server that goes away later is
//! [`ErrorKind::Disconnected`] on the next receive, never a hang.

mod auth;
pub(crate) mod channel;
mod listener;
mod tls;

pub use listener::{
    Address, Client, Listener, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_PENDING, NET_MAX_MESSAGE,
};

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::socket;
use crate::wait::deadline_after;
use channel::Channel;

/// One end of a [`Pipe`]: sends and receives values of type `T`.
///
/// Methods take `&self`: one thread may send while another receives. Two threads receiving at
/// once are serialised (each gets whole messages). Do not let two *processes* read (or write)
/// the same end at once; as in Python, their messages would interleave. Moving the end to a
/// child (as an argument) is the normal way to share it.
///
/// Dropping a `Connection` closes this process's copy of its end; the peer sees
/// [`ErrorKind::Disconnected`] once every copy is closed.
pub struct Connection<T> {
    chan: Channel,
    readable: bool,
    writable: bool,
    _type: PhantomData<fn(T) -> T>,
}

/// Creates connected [`Connection`] pairs, like Python's `multiprocessing.Pipe`.
#[derive(Debug, Clone, Copy)]
pub struct Pipe;

impl Pipe {
    /// A duplex pair: both ends send and receive (`Pipe()` in Python).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the process is out of descriptors.
    #[allow(clippy::new_ret_no_self)] // Python's `Pipe()` returns the pair
    pub fn new<T>() -> Result<(Connection<T>, Connection<T>)> {
        let (a, b) = Channel::pair()?;
        Ok((
            Connection::from_channel(a, true, true),
            Connection::from_channel(b, true, true),
        ))
    }

    /// A one-way pair `(reader, writer)` (`Pipe(duplex=False)` in Python).
    ///
    /// ```
    /// let (r, w) = multiproc::Pipe::simplex::<u32>()?;
    /// w.send(&7)?;
    /// assert_eq!(r.recv()?, 7);
    /// assert!(r.send(&1).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the process is out of descriptors.
    pub fn simplex<T>() -> Result<(Connection<T>, Connection<T>)> {
        let (r, w) = Channel::pipe_pair()?;
        Ok((
            Connection::from_channel(r, true, false),
            Connection::from_channel(w, false, true),
        ))
    }
}

impl<T> Connection<T> {
    fn from_channel(chan: Channel, readable: bool, writable: bool) -> Self {
        Connection {
            chan,
            readable,
            writable,
            _type: PhantomData,
        }
    }

    fn check_read(&self) -> Result<()> {
        if self.readable {
            Ok(())
        } else {
            Err(Error::msg(
                ErrorKind::Unsupported,
                "this end of a one-way pipe is write-only",
            ))
        }
    }

    fn check_write(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::msg(
                ErrorKind::Unsupported,
                "this end of a one-way pipe is read-only",
            ))
        }
    }

    /// Sends raw bytes as one message (`send_bytes` in Python).
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the peer is gone; [`ErrorKind::TooLarge`] over 4 GiB.
    pub fn send_bytes(&self, buf: &[u8]) -> Result<()> {
        self.check_write()?;
        self.chan.send_raw(buf, &[])
    }

    /// Sends raw bytes as one message, waiting at most `timeout` for the peer to take them.
    ///
    /// # Errors
    /// As [`send_deadline`](Self::send_deadline): a message is written whole or not at all.
    pub fn send_bytes_timeout(&self, buf: &[u8], timeout: Duration) -> Result<()> {
        self.check_write()?;
        self.chan.send_raw_until(buf, &[], deadline_after(timeout))
    }

    /// Sends raw bytes as one message, waiting until `deadline` for the peer to take them.
    ///
    /// # Errors
    /// As [`send_deadline`](Self::send_deadline): a message is written whole or not at all.
    pub fn send_bytes_deadline(&self, buf: &[u8], deadline: Instant) -> Result<()> {
        self.check_write()?;
        self.chan.send_raw_until(buf, &[], Some(deadline))
    }

    /// Receives one message as raw bytes, blocking until it arrives (`recv_bytes`).
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] when the peer has closed its end and nothing is left;
    /// [`ErrorKind::TooLarge`] / [`ErrorKind::Protocol`] on oversized or malformed frames.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.check_read()?;
        Ok(self.chan.recv_frame(None)?.payload)
    }

    /// Receives one message as raw bytes if a whole one is there now.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] if not (a message that has partly arrived stays, and a later
    /// call continues it); otherwise as [`recv_bytes`](Self::recv_bytes).
    pub fn try_recv_bytes(&self) -> Result<Vec<u8>> {
        self.check_read()?;
        would_block_for_now(
            self.chan
                .recv_frame(Some(Instant::now()))
                .map(|f| f.payload),
        )
    }

    /// Receives one message as raw bytes, waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`recv_bytes_deadline`](Self::recv_bytes_deadline).
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        self.check_read()?;
        Ok(self.chan.recv_frame(deadline_after(timeout))?.payload)
    }

    /// Receives one message as raw bytes, waiting until `deadline`; like
    /// [`recv_deadline`](Self::recv_deadline), a message that has partly arrived by then is
    /// kept for the next receive.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if no whole message arrived in time, otherwise as
    /// [`recv_bytes`](Self::recv_bytes).
    pub fn recv_bytes_deadline(&self, deadline: Instant) -> Result<Vec<u8>> {
        self.check_read()?;
        Ok(self.chan.recv_frame(Some(deadline))?.payload)
    }

    /// Receives one message into `buf`, returning its length (`recv_bytes_into`).
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooShort`] if the message does not fit; it stays queued, so a
    /// following [`recv_bytes`](Self::recv_bytes) returns it.
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        self.check_read()?;
        self.chan.recv_into(buf, None)
    }

    /// Waits up to `timeout` for a message (or end of stream); `Duration::ZERO` just checks.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] only on operating-system failures.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.check_read()?;
        self.chan.poll(deadline_after(timeout))
    }

    /// The largest message this end accepts (default 1 GiB). Larger frames fail with
    /// [`ErrorKind::TooLarge`] before anything is allocated.
    pub fn max_message_size(&self) -> usize {
        self.chan.max_message()
    }

    /// Sets the largest message this end accepts.
    pub fn set_max_message_size(&self, bytes: usize) {
        self.chan.set_max_message(bytes)
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.writable
    }
}

impl<T: Serialize> Connection<T> {
    /// Sends a value (`send` in Python). Handles inside it (connections, queues) travel too.
    ///
    /// Blocks while the peer's buffer is full (the peer is not reading).
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the peer is gone; [`ErrorKind::Encode`] if serde fails
    /// (with the message of the value's own `Serialize` error); [`ErrorKind::Closed`] after a
    /// timed send stopped in the middle of a message (see [`send_deadline`](Self::send_deadline)).
    pub fn send(&self, value: &T) -> Result<()> {
        self.check_write()?;
        self.chan.send(value)
    }

    /// Sends a value, waiting at most `timeout` for the peer to take it.
    ///
    /// # Errors
    /// As [`send_deadline`](Self::send_deadline).
    pub fn send_timeout(&self, value: &T, timeout: Duration) -> Result<()> {
        self.check_write()?;
        self.chan.send_until(value, deadline_after(timeout))
    }

    /// Sends a value, waiting until `deadline` for the peer to take it.
    ///
    /// A message is written whole or not at all, as far as the peer can tell:
    ///
    /// - if the peer took none of it by the deadline, the result is [`ErrorKind::Timeout`] and
    ///   the connection is as it was (sending again is safe);
    /// - if the deadline passes in the middle of the message (the peer took part of it and
    ///   then stopped reading), the result is [`ErrorKind::Timeout`] too, but this end can no
    ///   longer send: its later sends fail with [`ErrorKind::Closed`], and the peer's receive
    ///   reports the message cut off ([`ErrorKind::Disconnected`]) rather than a garbled one
    ///   (on a duplex connection at once, on a one-way pipe once the writing end is closed).
    ///   Receiving on a duplex end still works.
    ///
    /// A message larger than the kernel's buffer needs the peer to be reading while it is
    /// sent.
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{ErrorKind, Pipe};
    ///
    /// let (a, _b) = Pipe::new::<Vec<u8>>()?;
    /// // Nobody reads `_b`: small messages fill its buffer, then a send times out.
    /// let e = loop {
    ///     if let Err(e) = a.send_timeout(&vec![0; 1000], Duration::from_millis(10)) {
    ///         break e;
    ///     }
    /// };
    /// assert_eq!(e.kind(), ErrorKind::Timeout);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] as above; otherwise as [`send`](Self::send).
    pub fn send_deadline(&self, value: &T, deadline: Instant) -> Result<()> {
        self.check_write()?;
        self.chan.send_until(value, Some(deadline))
    }
}

impl<T: DeserializeOwned> Connection<T> {
    /// Receives a value, blocking until one arrives (`recv` in Python).
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] when the peer has closed its end and nothing is left;
    /// [`ErrorKind::Decode`] if the bytes are not a `T`; [`ErrorKind::TooLarge`] or
    /// [`ErrorKind::Protocol`] for oversized or malformed frames.
    pub fn recv(&self) -> Result<T> {
        self.check_read()?;
        self.chan.recv(None)
    }

    /// Receives a value if one is ready now, without waiting.
    ///
    /// ```
    /// use multiproc::{ErrorKind, Pipe};
    /// let (a, b) = Pipe::new::<u32>()?;
    /// assert_eq!(b.try_recv().unwrap_err().kind(), ErrorKind::WouldBlock);
    /// a.send(&5)?;
    /// # b.poll(std::time::Duration::from_secs(30))?;
    /// assert_eq!(b.try_recv()?, 5);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] if no whole message is there yet (a message that has partly
    /// arrived stays, and a later call continues it); otherwise as [`recv`](Self::recv).
    pub fn try_recv(&self) -> Result<T> {
        would_block_for_now(self.recv_deadline(Instant::now()))
    }

    /// Receives a value, waiting at most `timeout` (`Duration::MAX`: as long as it takes).
    ///
    /// # Errors
    /// As [`recv_deadline`](Self::recv_deadline).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.check_read()?;
        self.chan.recv(deadline_after(timeout))
    }

    /// Receives a value, waiting until `deadline`.
    ///
    /// Returns by the deadline (plus scheduling delay) whatever the peer does: a message
    /// that has only partly arrived by then (a header, part of its payload) is kept, and the
    /// next receive continues it, so nothing is lost or misframed.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if no whole message arrived in time (or another thread was
    /// receiving on this end until then), otherwise as [`recv`](Self::recv).
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T> {
        self.check_read()?;
        self.chan.recv(Some(deadline))
    }
}

impl<T> AsFd for Connection<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.chan.fd()
    }
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.chan.fd())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

struct FdRef<'a>(BorrowedFd<'a>);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::codec::serialize_fd(self.0, s)
    }
}

struct FdOwned(crate::fdreg::RegisteredFd);

impl<'de> Deserialize<'de> for FdOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::codec::deserialize_fd(d).map(FdOwned)
    }
}

/// On the wire a connection is `(descriptor, flags, side descriptor of a pipe)`.
impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if self.chan.is_network() {
            return Err(serde::ser::Error::custom(
                "a network (TCP or TLS) connection cannot be sent to another process (a TLS \
                 session's keys live in this one); let the other process connect by itself",
            ));
        }
        if self.chan.has_buffered() {
            return Err(serde::ser::Error::custom(
                "this connection has received bytes that were not read yet; read them before \
                 sending the connection to another process",
            ));
        }
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&FdRef(self.chan.fd()))?;
        t.serialize_element(&(u8::from(self.readable) | (u8::from(self.writable) << 1)))?;
        t.serialize_element(&self.chan.side().map(FdRef))?;
        t.end()
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (FdOwned(fd), flags, side) = <(FdOwned, u8, Option<FdOwned>)>::deserialize(d)?;
        let chan = match Channel::from_handle(fd, side.map(|FdOwned(s)| s)) {
            Ok(c) => c,
            Err(msg) => {
                return crate::codec::custom(
                    msg.to_string(),
                    <D::Error as serde::de::Error>::custom,
                )
            }
        };
        Ok(Connection::from_channel(
            chan,
            flags & 1 != 0,
            flags & 2 != 0,
        ))
    }
}

pub(crate) mod sealed {
    /// Only multiproc's types are [`Waitable`](super::Waitable) (`Process` implements it in
    /// `process`, above this module).
    pub trait Sealed {}
}

impl<T> sealed::Sealed for Connection<T> {}

/// A receive with a deadline of now: "nothing in time" is `WouldBlock` (the `try_` shape).
fn would_block_for_now<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| {
        if e.is_timeout() {
            Error::new(ErrorKind::WouldBlock)
        } else {
            e
        }
    })
}

/// Something [`wait`] can wait on: a [`Connection`] (a message is ready), a
/// [`Process`](crate::Process) (it has exited) or a [`Listener`] (`accept` has work).
///
/// The trait is sealed: only multiproc's types implement it.
///
/// ```compile_fail,E0277
/// use std::os::fd::BorrowedFd;
/// struct Mine;
/// impl multiproc::connection::Waitable for Mine {
///     fn wait_handle(&self) -> (BorrowedFd<'_>, bool) {
///         unimplemented!()
///     }
/// }
/// ```
pub trait Waitable: sealed::Sealed {
    /// The descriptor that becomes readable, and whether the object is ready already.
    #[doc(hidden)]
    fn wait_handle(&self) -> (BorrowedFd<'_>, bool);
}

impl<T> Waitable for Connection<T> {
    fn wait_handle(&self) -> (BorrowedFd<'_>, bool) {
        (self.chan.fd(), self.chan.has_buffered())
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no limit).
///
/// Returns the indices of the ready objects, in order; empty on timeout. Like Python's
/// `multiprocessing.connection.wait`.
///
/// ```
/// use std::time::Duration;
/// let (a, b) = multiproc::Pipe::new::<u8>()?;
/// let (c, d) = multiproc::Pipe::new::<u8>()?;
/// b.send(&1)?;
/// let ready = multiproc::connection::wait(&[&a, &c], Some(Duration::from_secs(5)))?;
/// assert_eq!(ready, vec![0]);
/// # drop(d);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Errors
/// [`ErrorKind::Io`] on operating-system failures.
pub fn wait<W: Waitable + ?Sized>(objects: &[&W], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let handles: Vec<(BorrowedFd<'_>, bool)> = objects.iter().map(|o| o.wait_handle()).collect();
    let already: Vec<usize> = handles
        .iter()
        .enumerate()
        .filter(|(_, h)| h.1)
        .map(|(i, _)| i)
        .collect();
    if !already.is_empty() {
        return Ok(already);
    }
    let fds: Vec<BorrowedFd<'_>> = handles.iter().map(|h| h.0).collect();
    socket::poll_many(
        &fds,
        socket::Events::IN | socket::Events::RDHUP,
        timeout.and_then(deadline_after),
    )
    .map_err(Error::io)
}

#[cfg(test)]
mod tests;
