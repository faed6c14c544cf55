//! How a manager's connections are made: [`Listener`] and [`Client`] (the authkey handshake,
//! `TCP_NODELAY`, bounded frames), carrying raw byte messages that the manager encodes and
//! decodes itself (`protocol.rs`). Local managers listen on a Unix socket in the abstract
//! namespace; served ones on whatever address they were given.

use std::time::Instant;

use crate::connection::{Address, Client, Connection, Listener};
use crate::error::{Error, ErrorKind, Result};

/// One authenticated connection; only byte messages travel on it.
pub(crate) type Wire = Connection<()>;

/// Listens on `addr` for clients that know `authkey`.
pub(crate) fn bind(addr: &Address, authkey: &[u8], max_message: usize) -> Result<Listener<()>> {
    let l = Listener::bind(addr, authkey)?;
    l.set_max_message_size(max_message);
    Ok(l)
}

/// Connects to `addr` and authenticates, giving up at `deadline`.
pub(crate) fn connect(addr: &Address, authkey: &[u8], deadline: Option<Instant>) -> Result<Wire> {
    let r = match deadline {
        Some(d) => Client::connect_deadline(addr, authkey, d),
        None => Client::connect(addr, authkey),
    };
    r.map_err(|e| match e.kind() {
        ErrorKind::Io | ErrorKind::Disconnected => Error::msg(
            ErrorKind::Disconnected,
            format!("cannot reach the manager at {addr} ({e}): is its server running?"),
        ),
        _ => e,
    })
}

/// Receives one message, waiting until `deadline` (`None`: as long as it takes).
pub(crate) fn recv(wire: &Wire, deadline: Option<Instant>) -> Result<Vec<u8>> {
    match deadline {
        Some(d) => wire.recv_bytes_deadline(d),
        None => wire.recv_bytes(),
    }
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if crate::sys::socket::random_bytes(&mut b).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for (i, c) in b.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            let v = h.finish().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    b
}
