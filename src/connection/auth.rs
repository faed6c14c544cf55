//! The authkey handshake of a network connection: mutual HMAC-SHA256 challenge-response.
//!
//! ```text
//! server → client   hello    "mpauth\x01S" ‖ Ns                        40 bytes
//! client → server   answer   "mpauth\x01C" ‖ Nc ‖ HMAC(k, "multiproc client" ‖ Ns ‖ Nc)   72 bytes
//! server → client   verdict  1 ‖ HMAC(k, "multiproc server" ‖ Nc ‖ Ns)   33 bytes
//!                   (or 0 ‖ 32 zero bytes: refused, then the server closes)
//! ```
//!
//! `Ns` and `Nc` are 32 random bytes from the kernel (`getrandom`), fresh per connection, so a
//! recorded answer is useless later; the two labels keep a client's proof from being
//! reflected as a server's. Both MACs are checked with `hmac`'s constant-time `verify_slice`.
//! Every message has a fixed size: a side reads exactly the bytes of the step it is in, into
//! a fixed buffer, so nothing a peer sends before it has authenticated is decoded or
//! allocated for. The state machine never blocks: [`Handshake::advance`] does what the socket
//! allows and says what it waits for, so a listener can run many handshakes at once and a
//! stalled client holds only its own.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::tls::Wire;
use crate::error::{Error, ErrorKind};

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const SERVER_MAGIC: &[u8; 8] = b"mpauth\x01S";
const CLIENT_MAGIC: &[u8; 8] = b"mpauth\x01C";
const HELLO_LEN: usize = 8 + NONCE_LEN;
/// The largest message of the handshake (the client's answer).
pub(crate) const ANSWER_LEN: usize = 8 + NONCE_LEN + MAC_LEN;
const VERDICT_LEN: usize = 1 + MAC_LEN;
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

/// Which side of the handshake this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The accepting side (sends the first nonce).
    Server,
    /// The connecting side.
    Client,
}

/// What [`Handshake::advance`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The socket must become readable.
    Read,
    /// The socket must become writable.
    Write,
    /// Both sides proved they know the key: the connection is ready for frames.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Server: hello sent (or sending), waiting for the answer. Client: waiting for hello.
    First,
    /// Client: answer sent (or sending), waiting for the verdict.
    Second,
    /// Server: verdict being sent; `Ok` or refused once it is out.
    Verdict {
        accepted: bool,
    },
    Finished,
}

/// One side's handshake in progress.
pub(crate) struct Handshake {
    role: Role,
    key: std::sync::Arc<[u8]>,
    step: Step,
    mine: [u8; NONCE_LEN],
    theirs: [u8; NONCE_LEN],
    out: [u8; ANSWER_LEN],
    out_len: usize,
    out_at: usize,
    inb: [u8; ANSWER_LEN],
    need: usize,
    have: usize,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the nonces.
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

fn mac(key: &[u8], label: &[u8], a: &[u8], b: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(label);
    m.update(a);
    m.update(b);
    m
}

impl Handshake {
    /// Starts a handshake with a fresh nonce from the kernel.
    pub(crate) fn new(role: Role, key: std::sync::Arc<[u8]>) -> Result<Self, Error> {
        let mut mine = [0u8; NONCE_LEN];
        crate::sys::socket::random_bytes(&mut mine)
            .map_err(|e| Error::io(e).context("drawing the handshake's nonce"))?;
        let mut h = Handshake {
            role,
            key,
            step: Step::First,
            mine,
            theirs: [0; NONCE_LEN],
            out: [0; ANSWER_LEN],
            out_len: 0,
            out_at: 0,
            inb: [0; ANSWER_LEN],
            need: 0,
            have: 0,
        };
        match role {
            Role::Server => {
                h.send(&[SERVER_MAGIC, &mine[..]]);
                h.need = ANSWER_LEN;
            }
            Role::Client => h.need = HELLO_LEN,
        }
        Ok(h)
    }

    fn send(&mut self, parts: &[&[u8]]) {
        let mut at = 0;
        for p in parts {
            self.out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.out_len = at;
        self.out_at = 0;
    }

    /// Does what the socket allows now; never blocks.
    ///
    /// # Errors
    /// [`ErrorKind::AuthenticationFailed`] when a side does not know the key,
    /// [`ErrorKind::Protocol`] when the peer is not speaking this handshake,
    /// [`ErrorKind::Disconnected`] when it closed, [`ErrorKind::Io`] otherwise.
    pub(crate) fn advance(&mut self, wire: &Wire<'_>) -> Result<Progress, Error> {
        loop {
            while self.out_at < self.out_len {
                match wire.try_write(&self.out[self.out_at..self.out_len]) {
                    Ok(0) => return Err(closed_during()),
                    Ok(n) => self.out_at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return Ok(Progress::Write)
                    }
                    Err(e) => return Err(io_error(e)),
                }
            }
            match wire.flush() {
                Ok(true) => {}
                Ok(false) => return Ok(Progress::Write),
                Err(e) => return Err(io_error(e)),
            }
            if let Step::Verdict { accepted } = self.step {
                self.step = Step::Finished;
                return if accepted {
                    Ok(Progress::Done)
                } else {
                    Err(Error::msg(
                        ErrorKind::AuthenticationFailed,
                        "the client did not prove it knows the authkey; it was told so and \
                         disconnected",
                    ))
                };
            }
            if self.step == Step::Finished {
                return Ok(Progress::Done);
            }
            while self.have < self.need {
                match wire.try_read(&mut self.inb[self.have..self.need]) {
                    Ok(0) => return Err(closed_during()),
                    Ok(n) => self.have += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return Ok(Progress::Read)
                    }
                    Err(e) => return Err(io_error(e)),
                }
            }
            self.have = 0;
            self.step_done()?;
        }
    }

    /// A whole message of the current step has arrived in `inb`: check it and move on.
    fn step_done(&mut self) -> Result<(), Error> {
        let msg = self.inb;
        match (self.role, self.step) {
            (Role::Server, Step::First) => {
                if &msg[..8] != CLIENT_MAGIC {
                    return Err(Error::msg(
                        ErrorKind::Protocol,
                        "the peer is not a multiproc client (bad handshake magic; a TLS \
                         client talking to a plain listener, or the other way round?)",
                    ));
                }
                self.theirs.copy_from_slice(&msg[8..8 + NONCE_LEN]);
                let ok = mac(&self.key, b"multiproc client", &self.mine, &self.theirs)
                    .verify_slice(&msg[8 + NONCE_LEN..ANSWER_LEN])
                    .is_ok();
                if ok {
                    let proof =
                        mac(&self.key, b"multiproc server", &self.theirs, &self.mine).finalize();
                    self.send(&[&[ACCEPTED], &proof.into_bytes()[..]]);
                } else {
                    self.send(&[&[REFUSED], &[0u8; MAC_LEN]]);
                }
                self.need = 0;
                self.step = Step::Verdict { accepted: ok };
            }
            (Role::Client, Step::First) => {
                if &msg[..8] != SERVER_MAGIC {
                    return Err(Error::msg(
                        ErrorKind::Protocol,
                        "the server is not a multiproc Listener (bad handshake magic; a plain \
                         client talking to a TLS listener, or another program on that port?)",
                    ));
                }
                self.theirs.copy_from_slice(&msg[8..HELLO_LEN]);
                let proof =
                    mac(&self.key, b"multiproc client", &self.theirs, &self.mine).finalize();
                let mine = self.mine;
                self.send(&[CLIENT_MAGIC, &mine[..], &proof.into_bytes()[..]]);
                self.need = VERDICT_LEN;
                self.step = Step::Second;
            }
            (Role::Client, Step::Second) => {
                match msg[0] {
                    REFUSED => {
                        return Err(Error::msg(
                            ErrorKind::AuthenticationFailed,
                            "the listener refused our authkey: both sides must use the same \
                             key",
                        ))
                    }
                    ACCEPTED => {}
                    other => {
                        return Err(Error::msg(
                            ErrorKind::Protocol,
                            format!("the listener sent an unknown handshake verdict {other}"),
                        ))
                    }
                }
                mac(&self.key, b"multiproc server", &self.mine, &self.theirs)
                    .verify_slice(&msg[1..VERDICT_LEN])
                    .map_err(|_| {
                        Error::msg(
                            ErrorKind::AuthenticationFailed,
                            "the listener did not prove it knows the authkey (a different key, \
                             or not the server we meant to reach); nothing was sent to it",
                        )
                    })?;
                self.step = Step::Finished;
            }
            _ => unreachable!("no message is read in this step"),
        }
        Ok(())
    }
}

fn closed_during() -> Error {
    Error::msg(
        ErrorKind::Disconnected,
        "the peer closed the connection during the authkey handshake",
    )
}

fn io_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        // rustls reports a failed TLS handshake (or garbage instead of TLS records) this way.
        Error::msg(ErrorKind::Protocol, format!("TLS: {e}"))
    } else {
        Error::io(e).context("during the authkey handshake")
    }
}
