//! [`Listener`] and [`Client`]: connections between unrelated processes, by address, with an
//! authkey. The user-facing story (addresses, the connection, security, bounds) is in the
//! `connection` module's docs (`mod.rs`); the handshake is in `auth.rs`, TLS in `tls.rs`.

use std::fmt;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::auth::{Handshake, Progress, Role};
use super::channel::{Channel, Turn};
use super::tls::{TlsStream, Wire};
use super::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys::socket::{self, Events, SockAddr};
use crate::wait::deadline_after;

/// The default largest message of a connection made by a [`Listener`] or [`Client`]: 64 MiB
/// (a local [`Pipe`](crate::Pipe) allows 1 GiB; a network peer is trusted less).
pub const NET_MAX_MESSAGE: usize = 64 << 20;

/// The default deadline of the authkey handshake on the listening side: 5 s.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Client::connect`] waits, in all, for the connection and the handshake: 30 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many handshakes are in progress on one listener at once.
pub const MAX_PENDING: usize = 64;

/// Connections taken off the kernel's queue per wake-up of `accept`.
const ACCEPT_BATCH: usize = 16;

/// Where a [`Listener`] listens and a [`Client`] connects.
///
/// Parsed from `"127.0.0.1:5000"`, `"[::1]:0"`, `"localhost:5000"` (resolved, first address),
/// `"unix:/path/to/sock"` and `"unix:@name"` (Linux's abstract namespace); displayed the
/// same way.
///
/// ```
/// use multiproc::connection::Address;
/// let a: Address = "unix:@my-service".parse()?;
/// assert_eq!(a, Address::Abstract(b"my-service".to_vec()));
/// assert_eq!(a.to_string(), "unix:@my-service");
/// let t: Address = "127.0.0.1:5000".parse()?;
/// assert!(matches!(t, Address::Tcp(_)));
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Address {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket file at this path.
    Unix(PathBuf),
    /// A Unix socket in Linux's abstract namespace (no file; the name is these bytes).
    Abstract(Vec<u8>),
}

impl Address {
    fn sock(&self) -> SockAddr<'_> {
        match self {
            Address::Tcp(a) => SockAddr::Inet(*a),
            Address::Unix(p) => SockAddr::Path(p),
            Address::Abstract(n) => SockAddr::Abstract(n),
        }
    }

    fn is_tcp(&self) -> bool {
        matches!(self, Address::Tcp(_))
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Tcp(a)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Abstract(n) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
        }
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Address> {
        if let Some(rest) = s.strip_prefix("unix:") {
            return if let Some(name) = rest.strip_prefix('@') {
                Ok(Address::Abstract(name.as_bytes().to_vec()))
            } else if rest.is_empty() {
                Err(bad_address(s))
            } else {
                Ok(Address::Unix(PathBuf::from(rest)))
            };
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Address::Tcp(a));
        }
        match s.to_socket_addrs() {
            Ok(mut it) => it.next().map(Address::Tcp).ok_or_else(|| bad_address(s)),
            Err(_) => Err(bad_address(s)),
        }
    }
}

fn bad_address(s: &str) -> Error {
    Error::msg(
        ErrorKind::Unsupported,
        format!(
            "{s:?} is not an address: use \"host:port\" (\"127.0.0.1:5000\", \"[::1]:0\"), \
             \"unix:/path/to/socket\" or \"unix:@abstract-name\""
        ),
    )
}

fn check_key(authkey: &[u8]) -> Result<Arc<[u8]>> {
    if authkey.is_empty() {
        return Err(Error::msg(
            ErrorKind::Unsupported,
            "an empty authkey authenticates nobody: pass a secret shared by both sides (32 \
             random bytes, say)",
        ));
    }
    Ok(Arc::from(authkey))
}

/// One connection whose handshake is in progress on the listening side.
struct Pending {
    fd: RegisteredFd,
    tls: Option<Box<TlsStream>>,
    hs: Handshake,
    waits: Progress,
    deadline: Instant,
}

impl Pending {
    /// Runs the handshake as far as the socket allows: `Ok(true)` when it is done.
    fn advance(&mut self) -> Result<bool> {
        let w = Wire {
            fd: self.fd.as_fd(),
            tls: self.tls.as_deref(),
        };
        self.waits = self.hs.advance(&w)?;
        Ok(self.waits == Progress::Done)
    }
}

/// The accepting side's state, one `accept` at a time.
#[derive(Default)]
struct Accepting {
    pending: Vec<Pending>,
    /// Connections authenticated while `accept` was returning another one.
    ready: std::collections::VecDeque<Pending>,
}

/// A listening socket that hands out authenticated [`Connection`]s (Python's
/// `multiprocessing.connection.Listener`).
///
/// Methods take `&self`; several threads may call [`accept`](Self::accept) (one at a time
/// does the work, the others wait their turn until their deadline). Dropping the listener
/// closes the socket, drops the handshakes in progress and removes its Unix socket file;
/// connections already accepted stay open.
///
/// See the [`connection` module documentation](crate::connection#network-connections-listener-and-client) for addresses, the handshake and the security
/// model.
pub struct Listener<T> {
    fd: RegisteredFd,
    /// What [`AsFd`] gives: watches the listening socket, every handshake in progress (for
    /// what it waits for) and every finished one not yet returned (writable, so at once).
    readiness: RegisteredFd,
    addr: Address,
    key: Arc<[u8]>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Turn<Accepting>,
    handshake_nanos: AtomicU64,
    max_message: AtomicUsize,
    /// The socket file this listener made, with its identity (device, inode): removed on drop
    /// if it is still that file.
    socket_file: Option<(PathBuf, u64, u64)>,
    _type: PhantomData<fn(T) -> T>,
}

fn file_identity(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl<T> Listener<T> {
    /// Listens on `addr`; clients must know `authkey`.
    ///
    /// Port 0 picks a free port ([`local_addr`](Self::local_addr) says which). A Unix socket
    /// path whose file is left from a server that is gone (nobody accepts on it) is replaced.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the address is taken (`EADDRINUSE`) or not ours to bind;
    /// [`ErrorKind::Unsupported`] for an empty key.
    pub fn bind(addr: &Address, authkey: &[u8]) -> Result<Listener<T>> {
        Self::bind_inner(addr, authkey)
    }

    fn bind_inner(addr: &Address, authkey: &[u8]) -> Result<Listener<T>> {
        let key = check_key(authkey)?;
        let fd = match Self::try_bind(addr) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && Self::is_stale(addr) => {
                // A socket file nobody listens on: the server that made it is gone.
                let _ = std::fs::remove_file(match addr {
                    Address::Unix(p) => p,
                    _ => unreachable!("only socket files can be stale"),
                });
                Self::try_bind(addr)
            }
            r => r,
        }
        .map_err(|e| Error::io(e).context("binding the listener's address"))?;
        let (local, socket_file) = match addr {
            Address::Tcp(_) => (
                Address::Tcp(
                    socket::local_inet_addr(fd.as_fd())
                        .map_err(|e| Error::io(e).context("reading the bound address"))?,
                ),
                None,
            ),
            Address::Unix(p) => (
                addr.clone(),
                file_identity(p).map(|(d, i)| (p.clone(), d, i)),
            ),
            Address::Abstract(_) => (addr.clone(), None),
        };
        let readiness = fdreg::readiness_set()
            .map_err(|e| Error::io(e).context("creating the listener's readiness set"))?;
        socket::watch(readiness.as_fd(), fd.as_fd(), false, true)
            .map_err(|e| Error::io(e).context("watching the listening socket"))?;
        Ok(Listener {
            fd,
            readiness,
            addr: local,
            key,
            #[cfg(feature = "tls")]
            tls: None,
            state: Turn::new(Accepting::default()),
            handshake_nanos: AtomicU64::new(HANDSHAKE_TIMEOUT.as_nanos() as u64),
            max_message: AtomicUsize::new(NET_MAX_MESSAGE),
            socket_file,
            _type: PhantomData,
        })
    }

    fn try_bind(addr: &Address) -> std::io::Result<RegisteredFd> {
        let fd = fdreg::stream_socket(addr.sock())?;
        socket::bind_listen(fd.as_fd(), addr.sock(), 128)?;
        Ok(fd)
    }

    /// Whether `addr` is a socket file that nobody accepts on.
    fn is_stale(addr: &Address) -> bool {
        let Address::Unix(p) = addr else { return false };
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket());
        is_socket
            && matches!(
                std::os::unix::net::UnixStream::connect(p),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
    }

    /// Listens on `addr` with TLS: clients connect with [`Client::connect_tls`], the
    /// authkey handshake runs inside TLS (`tls` feature).
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    #[cfg(feature = "tls")]
    pub fn bind_tls(
        addr: &Address,
        authkey: &[u8],
        config: Arc<rustls::ServerConfig>,
    ) -> Result<Listener<T>> {
        let mut l = Self::bind_inner(addr, authkey)?;
        l.tls = Some(config);
        Ok(l)
    }

    /// The address it listens on, with the real port after binding port 0.
    pub fn local_addr(&self) -> &Address {
        &self.addr
    }

    /// Sets the deadline of each client's authkey handshake (default [`HANDSHAKE_TIMEOUT`]);
    /// a client that has not finished by then is dropped.
    pub fn set_handshake_timeout(&self, timeout: Duration) {
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.handshake_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The deadline of each client's handshake.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_nanos(self.handshake_nanos.load(Ordering::Relaxed))
    }

    /// Sets the largest message the connections it accepts from now on take (default
    /// [`NET_MAX_MESSAGE`], 64 MiB).
    pub fn set_max_message_size(&self, bytes: usize) {
        self.max_message.store(bytes, Ordering::Relaxed);
    }

    /// The largest message accepted connections take.
    pub fn max_message_size(&self) -> usize {
        self.max_message.load(Ordering::Relaxed)
    }

    /// Waits for a client that proves it knows the key, and returns its connection.
    ///
    /// Clients that fail (a wrong key, garbage, a handshake past its deadline, a hang-up)
    /// are dropped and `accept` goes on waiting; see the [`connection` docs](crate::connection#security).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] on operating-system failures (out of descriptors, say).
    pub fn accept(&self) -> Result<Connection<T>> {
        self.accept_deadline_inner(None)
    }

    /// [`accept`](Self::accept), waiting at most `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{connection::Listener, ErrorKind};
    /// let l = Listener::<u8>::bind(&"127.0.0.1:0".parse()?, b"key")?;
    /// let e = l.accept_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::Timeout);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if no client authenticated in time; otherwise as `accept`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection<T>> {
        self.accept_deadline_inner(deadline_after(timeout))
    }

    /// [`accept`](Self::accept), waiting until `deadline`.
    ///
    /// # Errors
    /// As [`accept_timeout`](Self::accept_timeout).
    pub fn accept_deadline(&self, deadline: Instant) -> Result<Connection<T>> {
        self.accept_deadline_inner(Some(deadline))
    }

    /// A connection that finished its handshake, as the caller's `Connection`.
    fn finish(&self, p: Pending) -> Connection<T> {
        let chan = Channel::network(p.fd, p.tls, self.addr.is_tcp());
        chan.set_max_message(self.max_message_size());
        Connection::from_channel(chan, true, true)
    }

    fn accept_deadline_inner(&self, deadline: Option<Instant>) -> Result<Connection<T>> {
        let timeout = || {
            Error::msg(
                ErrorKind::Timeout,
                "no client connected and proved the authkey in time",
            )
        };
        let mut st = self.state.take(deadline).ok_or_else(timeout)?;
        loop {
            if let Some(p) = st.ready.pop_front() {
                self.unwatch(&p);
                return Ok(self.finish(p));
            }
            let now = Instant::now();
            let mut i = 0;
            while i < st.pending.len() {
                if st.pending[i].deadline <= now {
                    let p = st.pending.swap_remove(i);
                    self.unwatch(&p);
                } else {
                    i += 1;
                }
            }
            let wake = st.pending.iter().map(|p| p.deadline).chain(deadline).min();
            let ready = {
                let mut set = vec![(self.fd.as_fd(), Events::IN)];
                for p in &st.pending {
                    let ev = if p.waits == Progress::Write {
                        Events::OUT
                    } else {
                        Events::IN | Events::RDHUP
                    };
                    set.push((p.fd.as_fd(), ev));
                }
                socket::poll_each(&set, wake).map_err(Error::io)?
            };
            // Handshakes first (indices are the poll set's), newest last.
            for &i in ready.iter().rev().filter(|&&i| i > 0) {
                let mut p = st.pending.swap_remove(i - 1);
                match p.advance() {
                    Ok(true) => {
                        self.watch(&p, false)?;
                        st.ready.push_back(p);
                    }
                    Ok(false) => {
                        self.watch(&p, false)?;
                        st.pending.push(p);
                    }
                    // Dropped: closes that connection only.
                    Err(_) => self.unwatch(&p),
                }
            }
            if ready.first() == Some(&0) {
                self.take_new(&mut st)?;
            }
            if st.ready.is_empty() && deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timeout());
            }
        }
    }

    /// Takes waiting connections off the kernel's queue and starts their handshakes.
    fn take_new(&self, st: &mut Accepting) -> Result<()> {
        for _ in 0..ACCEPT_BATCH {
            let fd = match fdreg::accept(self.fd.as_fd()) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Error::io(e).context("accepting a connection")),
            };
            if self.addr.is_tcp() {
                let _ = socket::set_nodelay(fd.as_fd());
            }
            let tls = self.server_tls()?;
            let hs = Handshake::new(Role::Server, self.key.clone())?;
            let deadline = deadline_after(self.handshake_timeout())
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365));
            let mut p = Pending {
                fd,
                tls,
                hs,
                waits: Progress::Write,
                deadline,
            };
            match p.advance() {
                Ok(true) => {
                    self.watch(&p, true)?;
                    st.ready.push_back(p);
                }
                Ok(false) => {
                    if st.pending.len() >= MAX_PENDING {
                        // The oldest (nearest its deadline) makes room.
                        let oldest = (0..st.pending.len())
                            .min_by_key(|&i| st.pending[i].deadline)
                            .expect("the list is full");
                        let p = st.pending.swap_remove(oldest);
                        self.unwatch(&p);
                    }
                    self.watch(&p, true)?;
                    st.pending.push(p);
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Watches `p` in the readiness set for what it waits for (`add`: not watched yet). A
    /// finished handshake is watched for writability: ready at once, so a poller comes back
    /// for it.
    fn watch(&self, p: &Pending, add: bool) -> Result<()> {
        let write = p.waits != Progress::Read;
        socket::watch(self.readiness.as_fd(), p.fd.as_fd(), write, add)
            .map_err(|e| Error::io(e).context("watching a connection's handshake"))
    }

    fn unwatch(&self, p: &Pending) {
        // Closing the descriptor would end the watch too (it is never duplicated); this
        // keeps the set exact meanwhile.
        let _ = socket::unwatch(self.readiness.as_fd(), p.fd.as_fd());
    }

    #[cfg(feature = "tls")]
    fn server_tls(&self) -> Result<Option<Box<TlsStream>>> {
        match &self.tls {
            None => Ok(None),
            Some(cfg) => Ok(Some(Box::new(
                TlsStream::server(cfg.clone()).map_err(Error::io)?,
            ))),
        }
    }

    #[cfg(not(feature = "tls"))]
    #[allow(clippy::unnecessary_wraps, clippy::unused_self)]
    fn server_tls(&self) -> Result<Option<Box<TlsStream>>> {
        Ok(None)
    }
}

impl<T> Drop for Listener<T> {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.socket_file {
            if file_identity(path) == Some((*dev, *ino)) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl<T> AsFd for Listener<T> {
    /// A descriptor that polls readable while `accept` has work: a client waiting to be
    /// taken, a handshake that can go on, or an authenticated connection waiting to be
    /// returned. A server that polls it (beside its connections) calls
    /// [`accept_timeout`](Listener::accept_timeout)`(Duration::ZERO)` when it is readable:
    /// that returns a connection, or [`ErrorKind::Timeout`] when a handshake needs more from
    /// its client (the descriptor becomes readable again when it has sent it). Handshake
    /// deadlines are checked while `accept` runs; between calls, at most [`MAX_PENDING`]
    /// handshakes wait.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.readiness.as_fd()
    }
}

impl<T> super::sealed::Sealed for Listener<T> {}

/// [`wait`](super::wait) on a listener: ready when [`accept`](Listener::accept) has work
/// (see [`AsFd`](Listener#impl-AsFd-for-Listener<T>)).
impl<T> super::Waitable for Listener<T> {
    fn wait_handle(&self) -> (BorrowedFd<'_>, bool) {
        (self.readiness.as_fd(), false)
    }
}

impl<T> fmt::Debug for Listener<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

/// Connects to a [`Listener`] (Python's `multiprocessing.connection.Client`).
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Connects to `addr` and proves the key (and checks that the listener knows it).
    /// Waits at most [`CONNECT_TIMEOUT`] (30 s) in all, so a server that accepts the
    /// connection but never runs the handshake cannot hold the caller forever.
    ///
    /// # Errors
    /// As [`connect_timeout`](Self::connect_timeout).
    pub fn connect<T>(addr: &Address, authkey: &[u8]) -> Result<Connection<T>> {
        Self::connect_timeout(addr, authkey, CONNECT_TIMEOUT)
    }

    /// Connects, waiting at most `timeout` for the connection and the handshake.
    ///
    /// # Errors
    /// [`ErrorKind::AuthenticationFailed`] if the listener refused the key or could not
    /// prove it knows it; [`ErrorKind::Timeout`] if the time ran out;
    /// [`ErrorKind::Protocol`] if the peer is not a multiproc listener;
    /// [`ErrorKind::Io`] if nobody listens there (connection refused) or the address is
    /// unreachable.
    pub fn connect_timeout<T>(
        addr: &Address,
        authkey: &[u8],
        timeout: Duration,
    ) -> Result<Connection<T>> {
        Self::connect_inner(addr, authkey, deadline_after(timeout), None)
    }

    /// [`connect_timeout`](Self::connect_timeout) until `deadline`.
    ///
    /// # Errors
    /// As [`connect_timeout`](Self::connect_timeout).
    pub fn connect_deadline<T>(
        addr: &Address,
        authkey: &[u8],
        deadline: Instant,
    ) -> Result<Connection<T>> {
        Self::connect_inner(addr, authkey, Some(deadline), None)
    }

    /// Connects with TLS to a listener made by [`Listener::bind_tls`]; the server's
    /// certificate is checked by `config` for `server_name` (`tls` feature). Waits at most
    /// `timeout`.
    ///
    /// # Errors
    /// As [`connect_timeout`](Self::connect_timeout); a failed TLS handshake (a certificate
    /// the config does not trust, a plain listener) is [`ErrorKind::Protocol`].
    #[cfg(feature = "tls")]
    pub fn connect_tls<T>(
        addr: &Address,
        authkey: &[u8],
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
        timeout: Duration,
    ) -> Result<Connection<T>> {
        let tls = TlsStream::client(config, server_name).map_err(Error::io)?;
        Self::connect_inner(addr, authkey, deadline_after(timeout), Some(Box::new(tls)))
    }

    fn connect_inner<T>(
        addr: &Address,
        authkey: &[u8],
        deadline: Option<Instant>,
        tls: Option<Box<TlsStream>>,
    ) -> Result<Connection<T>> {
        let key = check_key(authkey)?;
        let fd = fdreg::stream_socket(addr.sock())
            .map_err(|e| Error::io(e).context("creating a socket"))?;
        socket::connect_until(fd.as_fd(), addr.sock(), deadline).map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                Error::msg(
                    ErrorKind::Timeout,
                    format!("connecting to {addr} did not complete in time"),
                )
            } else {
                Error::io(e).context("connecting to the listener")
            }
        })?;
        if addr.is_tcp() {
            socket::set_nodelay(fd.as_fd()).map_err(Error::io)?;
        }
        let mut hs = Handshake::new(Role::Client, key)?;
        loop {
            let wire = Wire {
                fd: fd.as_fd(),
                tls: tls.as_deref(),
            };
            let write = match hs.advance(&wire)? {
                Progress::Done => break,
                Progress::Read => false,
                Progress::Write => true,
            };
            if !socket::wait_fd(fd.as_fd(), write, deadline).map_err(Error::io)? {
                return Err(Error::msg(
                    ErrorKind::Timeout,
                    format!(
                        "connected to {addr}, but the authkey handshake did not complete in \
                         time (is the server calling accept?)"
                    ),
                ));
            }
        }
        let chan = Channel::network(fd, tls, addr.is_tcp());
        Ok(Connection::from_channel(chan, true, true))
    }
}
