//! The messages between rank 0 (the hub) and the agent ranks, and the byte relay that
//! carries a pool worker's channel across them.
//!
//! Every MPI message is `kind u8 | id u64 (LE) | body`, on tag 0 of `MPI_COMM_WORLD`. `id` is
//! the pool's worker id for worker messages and 0 otherwise. Structured bodies are postcard;
//! `DATA` bodies are raw bytes of the worker's channel, relayed unchanged in both directions,
//! so the pool's own protocol (`src/pool/README.md`) runs end to end.

use std::collections::VecDeque;
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

/// `DATA` bytes rank 0 may have sent to one rank per worker it runs there, that the rank has
/// not credited back: what a rank that stopped answering can leave in rank 0's pending sends.
/// Above the pool's byte budget per worker (96 KiB, `src/pool/README.md`), so the window never
/// holds back a stream the pool keeps within its budget (a single task larger than that
/// crosses in pieces, each credited as the agent takes it).
pub(crate) const WINDOW_PER_WORKER: usize = 128 * 1024;
/// The largest message either side sends (header included), except the handshake's: at the
/// eager limit multiproc sets for Open MPI's shared memory ([`EAGER_ENV`]) and Open MPI's
/// TCP default, so a message takes one copy. A larger limit elsewhere only costs speed: rank
/// 0 receives without waiting (`MPI_Imrecv`), so a sender that stopped in the middle of a
/// message that needs its help never blocks it.
pub(crate) const PIECE: usize = 64 * 1024 - 256;

/// Open MPI variables set (before `MPI_Init`, on every rank, each unless the user set it):
/// the shared-memory transport's eager limit raised from 4 KiB to what [`PIECE`] needs.
pub(crate) const EAGER_ENV: [(&str, &str); 2] = [
    ("OMPI_MCA_btl_vader_eager_limit", "65536"),
    ("OMPI_MCA_btl_vader_max_send_size", "65536"),
];

/// Heartbeat period, both ways.
pub(crate) const BEAT: std::time::Duration = std::time::Duration::from_millis(100);
/// Bytes read from one live worker's socket per round, at most (in [`PIECE`]s).
pub(crate) const READ_MAX: usize = 4 * PIECE;

/// Spare message buffers: a message is built in one and its buffer comes back when the send
/// or receive completes, so the relay allocates nothing per message once it runs.
#[derive(Debug, Default)]
pub(crate) struct Buffers(Vec<Vec<u8>>);

impl Buffers {
    /// At most this many spares are kept.
    const KEEP: usize = 64;

    /// An empty buffer.
    pub(crate) fn get(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_default()
    }

    /// Gives a buffer back (kept if there is room and it is not oversized).
    pub(crate) fn put(&mut self, mut b: Vec<u8>) {
        if self.0.len() < Self::KEEP && b.capacity() <= 2 * PIECE {
            b.clear();
            self.0.push(b);
        }
    }

    /// One message, in a spare buffer.
    pub(crate) fn msg(&mut self, kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
        let mut m = self.get();
        header(&mut m, kind, id);
        m.extend_from_slice(body);
        m
    }
}

/// Replaces `m` with the header of a message (the body is appended after it).
pub(crate) fn header(m: &mut Vec<u8>, kind: u8, id: u64) {
    m.clear();
    m.push(kind);
    m.extend_from_slice(&id.to_le_bytes());
}

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

    /// Reads what is available into `buf` (without blocking; `buf` is not empty): the bytes
    /// are `buf[..n]` for `Data(n)`.
    pub(crate) fn read_some(&mut self, buf: &mut [u8]) -> Read {
        if self.read_done {
            return Read::End;
        }
        let r = rustix::net::recv(self.fd.as_fd(), buf, rustix::net::RecvFlags::DONTWAIT);
        let got = match r {
            Ok((n, _)) => n,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                return Read::Nothing;
            }
            Err(_) => 0,
        };
        if got == 0 {
            self.read_done = true;
            Read::End
        } else {
            Read::Data(got)
        }
    }

    /// Writes bytes to the socket now, as far as it takes them without blocking (after
    /// what waits already); queues the rest.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        let mut done = 0;
        if self.out.is_empty() {
            let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
            while done < bytes.len() {
                match rustix::net::send(self.fd.as_fd(), &bytes[done..], flags) {
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => {
                        self.broken = true;
                        return;
                    }
                }
            }
        }
        self.out.extend(&bytes[done..]);
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

/// The idle loop's back-off (MPI has no descriptor to wait on: an incoming message is seen
/// at the next round). For [`SPIN`] after the last work it only yields, so a busy stream
/// keeps its latency; then it polls the descriptors it has (the pool's sockets, the
/// workers') with a timeout that grows to [`NAP`], and after [`DOZE_AFTER`] without work to
/// [`DOZE`], so an idle pool costs (almost) no CPU.
#[derive(Debug)]
pub(crate) struct Idle {
    /// When the current idle stretch began.
    since: Option<std::time::Instant>,
    /// Rounds that slept in this stretch.
    naps: u32,
    /// MPI yields in an empty probe itself ([`mpi_yields`]).
    mpi_yields: bool,
}

/// How long an idle loop spins (yielding) after its last work.
pub(crate) const SPIN: std::time::Duration = std::time::Duration::from_millis(2);
/// The longest sleep of an idle loop in its first [`DOZE_AFTER`].
pub(crate) const NAP: std::time::Duration = std::time::Duration::from_millis(1);
/// Idle this long, an idle loop sleeps up to [`DOZE`] at a time.
pub(crate) const DOZE_AFTER: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest sleep of a loop idle for [`DOZE_AFTER`]: the latency of the first message
/// after a long pause, and about 1/`DOZE` wake-ups a second while idle.
pub(crate) const DOZE: std::time::Duration = std::time::Duration::from_millis(5);

/// Whether Open MPI yields the processor itself in a call that finds nothing to do
/// (`mpi_yield_when_idle`; by default on when `mpirun` oversubscribes the host, which it
/// tells the ranks as `mpi_oversubscribe`): then every spinning round already yields once,
/// in its probe, and yielding again only doubles the rounds other processes run before this
/// one looks again.
fn mpi_yields() -> bool {
    let on = |v: String| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "t" | "true" | "y" | "yes" | "enabled"
        )
    };
    match std::env::var("OMPI_MCA_mpi_yield_when_idle") {
        Ok(v) => on(v),
        Err(_) => std::env::var("OMPI_MCA_mpi_oversubscribe").is_ok_and(on),
    }
}

impl Idle {
    /// A loop that has just had work.
    pub(crate) fn new() -> Idle {
        Idle {
            since: None,
            naps: 0,
            mpi_yields: mpi_yields(),
        }
    }

    /// There was work: the next wait spins again.
    pub(crate) fn reset(&mut self) {
        self.since = None;
        self.naps = 0;
    }

    /// Waits a little, as the back-off says: yields, or polls `set` until a timeout.
    /// Returns whether `set[0]` became ready.
    pub(crate) fn wait(
        &mut self,
        set: &[(std::os::fd::BorrowedFd<'_>, crate::sys::socket::Events)],
    ) -> bool {
        let now = std::time::Instant::now();
        let idle_for = now.duration_since(*self.since.get_or_insert(now));
        if idle_for < SPIN {
            if !self.mpi_yields {
                std::thread::yield_now();
            }
            return false;
        }
        self.naps = self.naps.saturating_add(1);
        let most = if idle_for < DOZE_AFTER { NAP } else { DOZE };
        let nap = (std::time::Duration::from_micros(20) * self.naps).min(most);
        crate::sys::socket::poll_each(set, Some(now + nap))
            .map(|r| r.first() == Some(&0))
            .unwrap_or(false)
    }
}
