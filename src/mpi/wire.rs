//! The messages between rank 0 (the hub) and the agent ranks, and the byte relay that
//! carries a pool worker's channel across them.
//!
//! Every MPI message is `kind u8 | id u64 (LE) | body`, on tag 0 of `MPI_COMM_WORLD`. `id` is
//! the pool's worker id for worker messages and 0 otherwise. Structured bodies are postcard;
//! `DATA` bodies are raw bytes of the worker's channel, relayed unchanged in both directions,
//! so the pool's own protocol (`src/pool/README.md`) runs end to end.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;

/// Agent → hub: who I am (body: [`Hello`]).
pub(crate) const HELLO: u8 = 1;
/// Both ways: I am alive (sent every [`BEAT`]).
pub(crate) const BEAT_MSG: u8 = 2;
/// Agent → hub: worker `id` started (body: pid u32).
pub(crate) const SPAWNED: u8 = 3;
/// Agent → hub: worker `id` could not be started (body: the error as text).
pub(crate) const SPAWN_FAILED: u8 = 4;
/// Both ways: bytes of worker `id`'s channel.
pub(crate) const DATA: u8 = 5;
/// Agent → hub: worker `id` exited (body: [`Died`]); sent after its last `DATA`.
pub(crate) const DIED: u8 = 6;
/// Hub → agent: accepted (body: [`Welcome`]).
pub(crate) const WELCOME: u8 = 7;
/// Hub → agent: refused (body: the reason as text); the agent finalizes and exits.
pub(crate) const REFUSE: u8 = 8;
/// Hub → agent: start worker `id` (body: [`SpawnSpec`]).
pub(crate) const SPAWN: u8 = 9;
/// Hub → agent: end of stream on worker `id`'s channel (shut its write half).
pub(crate) const EOF: u8 = 10;
/// Hub → agent: SIGKILL worker `id`.
pub(crate) const KILL: u8 = 11;
/// Hub → agent: kill every worker, finalize MPI and exit.
pub(crate) const SHUTDOWN: u8 = 12;
/// Agent → hub: it has taken this many more `DATA` bytes (body: u64), freeing the window.
pub(crate) const CREDIT: u8 = 13;

/// `DATA` bytes rank 0 may have sent to one rank that the rank has not credited back: what a
/// rank that stopped answering can leave in rank 0's pending sends.
pub(crate) const WINDOW: usize = 64 * 1024;
/// The largest message either side sends (header included), except the handshake's: below
/// the transports' eager limit (Open MPI: 4 KiB over shared memory, 64 KiB over TCP), so a
/// receive never waits for a sender that stopped halfway.
pub(crate) const PIECE: usize = 4000;

/// Heartbeat period, both ways.
pub(crate) const BEAT: std::time::Duration = std::time::Duration::from_millis(100);
/// Bytes read from one socket per round (one `DATA` message at most this large).
pub(crate) const READ_MAX: usize = 256 * 1024;

/// An agent's introduction.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The build-id of its executable.
    pub(crate) fingerprint: Vec<u8>,
    /// Its host name.
    pub(crate) host: String,
    /// Its pid.
    pub(crate) pid: u32,
    /// Workers it runs by default: the host's cores divided among the host's ranks.
    pub(crate) default_workers: u32,
    /// Its kernel and pid namespace (see `agent::kernel_id`): when rank 0's is the same,
    /// `pid` names this very process there, and rank 0 watches it exit through a pidfd.
    pub(crate) kernel: String,
}

/// The hub's answer to a matching [`Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Welcome {
    /// The entry key of rank 0 (the agent adopts it before it starts any process).
    pub(crate) key: [u64; 2],
    /// Rank 0 beats too: an agent that hears nothing from it for this long (the pool's
    /// `mpi_rank_timeout`, in ms) takes it as gone and leaves, ending its workers.
    pub(crate) rank_timeout_ms: u64,
}

/// What a local worker needs (the pool's `WorkerArgs` without the channel, and its name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpawnSpec {
    pub(crate) name: String,
    pub(crate) max_tasks: u64,
    pub(crate) tick_us: u64,
    pub(crate) beat_us: u64,
    pub(crate) ignore_sigint: bool,
    pub(crate) max_message: u64,
}

/// How a worker ended: Python-style exit code (negative: signal), if known.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Died {
    pub(crate) code: Option<i32>,
}

/// Builds one message.
pub(crate) fn msg(kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(9 + body.len());
    m.push(kind);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Builds one message with a postcard body.
pub(crate) fn msg_with<T: Serialize>(kind: u8, id: u64, body: &T) -> Vec<u8> {
    msg(kind, id, &postcard::to_stdvec(body).unwrap_or_default())
}

/// Splits a message into kind, id and body.
pub(crate) fn parse(m: &[u8]) -> Result<(u8, u64, &[u8])> {
    if m.len() < 9 {
        return Err(Error::msg(
            ErrorKind::Protocol,
            format!("an MPI message of {} bytes is too short", m.len()),
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&m[1..9]);
    Ok((m[0], u64::from_le_bytes(id), &m[9..]))
}

/// Decodes a postcard body.
pub(crate) fn body<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> Result<T> {
    postcard::from_bytes(b).map_err(|e| {
        Error::msg(
            ErrorKind::Protocol,
            format!("a malformed {what} message over MPI: {e}"),
        )
    })
}

/// What one non-blocking read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Nothing now.
    Nothing,
    /// This many bytes.
    Data(usize),
    /// End of stream (or an error: the peer is gone either way).
    End,
}

/// One end of a relayed channel: the socket, and the bytes waiting to be written to it.
#[derive(Debug)]
pub(crate) struct Relay {
    pub(crate) fd: RegisteredFd,
    out: VecDeque<u8>,
    /// Writes failed (the peer is gone): later bytes are dropped.
    broken: bool,
    /// Shut the write half once `out` is empty.
    pub(crate) shut_pending: bool,
    /// End of stream was read (nothing more to read).
    pub(crate) read_done: bool,
}

impl Relay {
    pub(crate) fn new(fd: RegisteredFd) -> Self {
        Relay {
            fd,
            out: VecDeque::new(),
            broken: false,
            shut_pending: false,
            read_done: false,
        }
    }

    /// Reads what is available (without blocking, at most `max` bytes), appending it to `buf`.
    pub(crate) fn read_some(&mut self, buf: &mut Vec<u8>, max: usize) -> Read {
        if self.read_done {
            return Read::End;
        }
        let start = buf.len();
        buf.resize(start + max.clamp(1, READ_MAX), 0);
        let r = rustix::net::recv(
            self.fd.as_fd(),
            &mut buf[start..],
            rustix::net::RecvFlags::DONTWAIT,
        );
        let got = match r {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                buf.truncate(start);
                return Read::Nothing;
            }
            Err(_) => 0,
        };
        buf.truncate(start + got);
        if got == 0 {
            self.read_done = true;
            Read::End
        } else {
            Read::Data(got)
        }
    }

    /// Queues bytes for the socket.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if !self.broken {
            self.out.extend(bytes);
        }
    }

    /// Whether bytes wait to be written.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes what the socket takes now; shuts the write half once everything is written
    /// and an end of stream is pending. Returns whether anything was written.
    pub(crate) fn flush(&mut self) -> bool {
        let mut wrote = false;
        while !self.out.is_empty() && !self.broken {
            let (a, _) = self.out.as_slices();
            let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
            match rustix::net::send(self.fd.as_fd(), a, flags) {
                Ok(n) => {
                    self.out.drain(..n);
                    wrote = true;
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => {
                    self.broken = true;
                    self.out.clear();
                }
            }
        }
        if self.out.is_empty() && self.shut_pending {
            self.shut_pending = false;
            let _ = crate::sys::socket::shutdown(self.fd.as_fd(), crate::sys::socket::Half::Write);
        }
        wrote
    }

    /// Readiness to poll for: always input (until end of stream), output while bytes wait.
    pub(crate) fn events(&self) -> crate::sys::socket::Events {
        let mut ev = crate::sys::socket::Events::empty();
        if !self.read_done {
            ev |= crate::sys::socket::Events::IN;
        }
        if self.has_output() {
            ev |= crate::sys::socket::Events::OUT;
        }
        ev
    }
}

/// Waits in the idle loop: `idle` rounds without work so far. Spins (yielding) for the first
/// rounds, so a busy stream keeps its latency, then polls `fds` with a timeout growing to
/// 1 ms (MPI has no descriptor to wait on: an incoming message is seen at the next round).
pub(crate) fn idle_wait(
    idle: &mut u32,
    set: &[(std::os::fd::BorrowedFd<'_>, crate::sys::socket::Events)],
) -> io::Result<()> {
    *idle = idle.saturating_add(1);
    if *idle < SPIN_ROUNDS {
        std::thread::yield_now();
        return Ok(());
    }
    let us = ((*idle - SPIN_ROUNDS) as u64 * 20).min(1000);
    let until = std::time::Instant::now() + std::time::Duration::from_micros(us);
    crate::sys::socket::poll_each(set, Some(until)).map(|_| ())
}

/// Rounds an idle loop spins before it sleeps.
const SPIN_ROUNDS: u32 = 2000;
