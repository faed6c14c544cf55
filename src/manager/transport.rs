//! How a manager's connections are made: a listening socket (TCP, a Unix path, or a Linux
//! abstract name), an authentication step, then a framed [`Channel`] per client.
//!
//! This is the stopgap used until `connection::{Listener, Client}` land: the same shape
//! (bind / accept with a deadline / connect with a deadline), over std's sockets adopted into
//! the descriptor registry. Authentication is a challenge-response keyed by the authkey, done
//! before the manager decodes anything from the peer.

use std::fmt;
use std::hash::Hasher;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::connection::channel::Channel;
use crate::error::{Error, ErrorKind, Result};

/// Where a manager listens: a TCP address, a Unix socket path, or a Linux abstract name.
///
/// Parses from `"127.0.0.1:5000"`, `"unix:/path/to/socket"` and `"unix:@name"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Address {
    /// A TCP address (`TCP_NODELAY` is set on every connection).
    Tcp(SocketAddr),
    /// A Unix socket at a path in the file system.
    Unix(PathBuf),
    /// A Unix socket in Linux's abstract namespace (nothing in the file system).
    Abstract(Vec<u8>),
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
    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("unix:") {
            if let Some(name) = rest.strip_prefix('@') {
                return Ok(Address::Abstract(name.as_bytes().to_vec()));
            }
            return Ok(Address::Unix(PathBuf::from(rest)));
        }
        s.parse::<SocketAddr>().map(Address::Tcp).map_err(|e| {
            Error::msg(
                ErrorKind::Unsupported,
                format!(
                    "`{s}` is not an address ({e}): write `127.0.0.1:5000`, `unix:/path` or \
                     `unix:@name`"
                ),
            )
        })
    }
}

/// The listening socket of a manager.
#[derive(Debug)]
pub(crate) enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds `addr` (port 0 / an empty abstract name pick one); returns the listener and the
/// address clients should use.
pub(crate) fn bind(addr: &Address) -> Result<(Listening, Address)> {
    let ctx = "binding the manager's address";
    match addr {
        Address::Tcp(a) => {
            let l = TcpListener::bind(a).map_err(|e| Error::io(e).context(ctx))?;
            let local = l.local_addr().map_err(Error::io)?;
            Ok((Listening::Tcp(l), Address::Tcp(local)))
        }
        Address::Unix(p) => {
            let l = UnixListener::bind(p).map_err(|e| Error::io(e).context(ctx))?;
            Ok((Listening::Unix(l), addr.clone()))
        }
        Address::Abstract(name) => {
            let sa = UnixAddr::from_abstract_name(name).map_err(Error::io)?;
            let l = UnixListener::bind_addr(&sa).map_err(|e| Error::io(e).context(ctx))?;
            Ok((Listening::Unix(l), addr.clone()))
        }
    }
}

impl Listening {
    /// Accepts one connection (blocking). The socket is adopted into the registry.
    pub(crate) fn accept(&self) -> Result<Channel> {
        let fd: OwnedFd = match self {
            Listening::Tcp(l) => {
                let (s, _) = l.accept().map_err(Error::io)?;
                let _ = s.set_nodelay(true);
                s.into()
            }
            Listening::Unix(l) => l.accept().map_err(Error::io)?.0.into(),
        };
        Ok(Channel::new(crate::fdreg::adopt(fd)))
    }
}

impl AsFd for Listening {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listening::Tcp(l) => l.as_fd(),
            Listening::Unix(l) => l.as_fd(),
        }
    }
}

/// Connects to `addr`, giving up at `deadline`.
pub(crate) fn connect(addr: &Address, deadline: Option<Instant>) -> Result<Channel> {
    let fd: OwnedFd = match addr {
        Address::Tcp(a) => {
            let s = match crate::wait::remaining(deadline) {
                Some(left) => TcpStream::connect_timeout(a, left.max(Duration::from_millis(1))),
                None => TcpStream::connect(a),
            }
            .map_err(|e| refused(addr, e))?;
            let _ = s.set_nodelay(true);
            s.into()
        }
        Address::Unix(p) => UnixStream::connect(p).map_err(|e| refused(addr, e))?.into(),
        Address::Abstract(name) => {
            let sa = UnixAddr::from_abstract_name(name).map_err(Error::io)?;
            UnixStream::connect_addr(&sa)
                .map_err(|e| refused(addr, e))?
                .into()
        }
    };
    Ok(Channel::new(crate::fdreg::adopt(fd)))
}

fn refused(addr: &Address, e: std::io::Error) -> Error {
    Error::msg(
        ErrorKind::Disconnected,
        format!("cannot reach the manager at {addr} ({e}): is its server running?"),
    )
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        use std::hash::BuildHasher;
        for (i, c) in b.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            let v = h.finish().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    b
}

/// The answer to `challenge` under `authkey` (keyed SipHash over key, role and challenge).
fn answer(authkey: &[u8], role: u8, challenge: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, c) in out.chunks_mut(8).enumerate() {
        #[allow(deprecated)] // SipHash-2-4, used here as a keyed function
        let mut h = std::hash::SipHasher::new_with_keys(
            u64::from_le_bytes(challenge[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(challenge[8..].try_into().unwrap_or_default()),
        );
        h.write(b"multiproc-manager-auth-v1");
        h.write_u8(role);
        h.write_usize(i);
        h.write(authkey);
        c.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Constant-time equality of two answers.
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long either side of the handshake waits for the other.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of the handshake: challenge, check, then answer the client's challenge.
/// Only raw fixed-size byte strings are read; nothing is decoded before it succeeds.
pub(crate) fn authenticate_client(chan: &Channel, authkey: &[u8]) -> Result<()> {
    let deadline = crate::wait::deadline_after(HANDSHAKE_TIMEOUT);
    let ours: [u8; 16] = random_bytes();
    chan.send_raw_until(&ours, &[], deadline)?;
    let reply = chan.recv_frame(deadline)?.payload;
    if reply.len() != 32 {
        return Err(Error::msg(
            ErrorKind::Protocol,
            "malformed authentication reply",
        ));
    }
    let mut got = [0u8; 16];
    got.copy_from_slice(&reply[..16]);
    if !same(&got, &answer(authkey, b'c', &ours)) {
        let _ = chan.send_raw_until(b"refused", &[], deadline);
        return Err(Error::msg(
            ErrorKind::Protocol,
            "a client gave the wrong authkey",
        ));
    }
    let mut theirs = [0u8; 16];
    theirs.copy_from_slice(&reply[16..]);
    chan.send_raw_until(&answer(authkey, b's', &theirs), &[], deadline)
}

/// The client side of the handshake (mutual: the server proves it knows the key too).
pub(crate) fn authenticate_server(chan: &Channel, authkey: &[u8], addr: &Address) -> Result<()> {
    let deadline = crate::wait::deadline_after(HANDSHAKE_TIMEOUT);
    let challenge = chan.recv_frame(deadline)?.payload;
    if challenge.len() != 16 {
        return Err(Error::msg(
            ErrorKind::Protocol,
            format!("{addr} does not speak the manager protocol"),
        ));
    }
    let mut c = [0u8; 16];
    c.copy_from_slice(&challenge);
    let ours: [u8; 16] = random_bytes();
    let mut reply = answer(authkey, b'c', &c).to_vec();
    reply.extend_from_slice(&ours);
    chan.send_raw_until(&reply, &[], deadline)?;
    let back = chan.recv_frame(deadline)?.payload;
    let mut got = [0u8; 16];
    if back.len() != 16 || {
        got.copy_from_slice(&back);
        !same(&got, &answer(authkey, b's', &ours))
    } {
        return Err(Error::msg(
            ErrorKind::Protocol,
            format!(
                "the manager at {addr} refused the authkey (or does not know it): use the \
                 key the server was started with"
            ),
        ));
    }
    Ok(())
}
