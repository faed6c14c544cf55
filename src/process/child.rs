//! The parent's side of one child: what it has read from the child's streams, the exit
//! status, and the small state machine that `join`, `exitcode` and `is_alive` drive.
//!
//! States, per child: *starting* (a fork-server child has not said `Hello`: no pid yet) →
//! *running* → *outcome known* (`Done`, a refusal, or end of stream) and *exit known* (reaped
//! by `waitpid`, or the fork server's `Exit` report; 255 once the server died). The two
//! "known" halves arrive in either order; every poll reads what is there and keeps it, so a
//! later `join` still finds the return value. The messages are `spawn::protocol`'s; the
//! child's half of the protocol is `spawn::run_task`.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::reaper::ReaperState;
use crate::connection::channel::{Channel, Frame};
use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;
use crate::spawn::protocol::{self, FromChild};
use crate::spawn::{self, Launched};
use crate::sys;
use crate::task::Outcome;
use crate::wait::lock;

/// What the parent has read from a child's control stream so far.
#[derive(Debug, Default)]
struct Io {
    /// The outcome the child reported.
    done: Option<Outcome>,
    /// The encoded return value (after `Done(Ok)`).
    result: Option<Frame>,
    /// The child did not run the function, and why.
    refused: Option<Refusal>,
    /// A `panic = "abort"` child's panic, reported just before it aborted.
    aborting: Option<(String, Option<String>)>,
    /// The stream reached end of file.
    eof: bool,
}

/// Why a child did not run its function (or could not send its result).
#[derive(Debug)]
enum Refusal {
    Mismatch,
    BadEntry,
    Setup(String),
    TooLarge {
        size: u64,
        limit: u64,
    },
    /// The fork server could not make the child (`SpawnFailed`): its reason, for every later
    /// call (`join` after a `kill` or `is_alive` that read it first).
    ServerRefused(String),
}

/// Everything the parent knows about one child; shared by the [`Process`] handle and the
/// global registry (which outlives a dropped handle until the child is reaped).
pub(crate) struct ChildShared {
    pid: AtomicI32,
    pub(super) pidfd: OnceLock<RegisteredFd>,
    pub(super) chan: Channel,
    /// Fork-server children: the socket on which the server reports the exit.
    status: OnceLock<Channel>,
    pub(super) via_server: bool,
    pub(super) name: String,
    pub(super) daemon: bool,
    pub(super) method: StartMethod,
    /// Serialises readers of `chan`.
    io: Mutex<Io>,
    /// Python exit code once known; guards reaping and signalling.
    pub(super) exit: Mutex<Option<i32>>,
    /// The handle was dropped before the child was reaped.
    pub(super) detached: AtomicBool,
    /// Out of the registry (joined, or reaped): nothing is left to wait for.
    pub(super) unregistered: AtomicBool,
}

impl fmt::Debug for ChildShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildShared")
            .field("pid", &self.pid.load(Ordering::Relaxed))
            .field("name", &self.name)
            .field("method", &self.method)
            .finish()
    }
}

impl ChildShared {
    pub(super) fn new(l: Launched, name: String, daemon: bool, method: StartMethod) -> Self {
        let pidfd = OnceLock::new();
        if let Some(fd) = l.pidfd {
            let _ = pidfd.set(fd);
        }
        ChildShared {
            pid: AtomicI32::new(l.pid),
            pidfd,
            chan: l.chan,
            status: OnceLock::new(),
            via_server: l.via_server,
            name,
            daemon,
            method,
            io: Mutex::new(Io::default()),
            exit: Mutex::new(None),
            detached: AtomicBool::new(false),
            unregistered: AtomicBool::new(false),
        }
    }

    pub(crate) fn chan(&self) -> &Channel {
        &self.chan
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Gives up on a child whose task could not be sent: kill it, stop reading, reap later.
    pub(crate) fn abandon(&self) {
        let _ = self.ensure_started();
        let _ = self.signal(sys::process::SIGKILL);
        self.detached.store(true, Ordering::Relaxed);
        let _ = sys::socket::shutdown(self.chan.fd(), sys::socket::Half::Read);
        super::reaper::start_reaper();
    }

    /// For a fork-server child: waits for its `Hello` (pid and pidfd), which `spawn` does not
    /// wait for. A no-op for other children and once the pid is known.
    ///
    /// Another thread may be inside `join` holding the stream (it reads the `Hello` itself
    /// and publishes the pid): then wait for the pid to appear instead of for the lock.
    pub(super) fn ensure_started(&self) -> Result<()> {
        if !self.via_server || self.pid() != 0 {
            return Ok(());
        }
        let limit = Instant::now() + Duration::from_secs(60);
        let deadline = Some(limit);
        let mut io = loop {
            match self.io.try_lock() {
                Ok(io) => break io,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            if self.pid() != 0 {
                return Ok(());
            }
            if Instant::now() >= limit {
                return Err(
                    Error::new(ErrorKind::Timeout).context("waiting for the child to start")
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        while self.pid() == 0 {
            if io.eof {
                return Err(Error::msg(
                    ErrorKind::Disconnected,
                    "the child ended before it started",
                ));
            }
            if !self.pump(&mut io, deadline)? {
                return Err(
                    Error::new(ErrorKind::Timeout).context("waiting for the child to start")
                );
            }
        }
        Ok(())
    }

    /// Reads one frame from the child's stream into `io`. `Ok(false)` on timeout.
    fn pump(&self, io: &mut Io, deadline: Option<Instant>) -> Result<bool> {
        let mut frame = match self.chan.recv_frame(deadline) {
            Ok(f) => f,
            Err(e) if e.is_timeout() => return Ok(false),
            Err(e) if e.is_disconnected() => {
                io.eof = true;
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        match protocol::split_control(&mut frame)? {
            FromChild::Hello { pid, has_pidfd } => {
                if has_pidfd {
                    if let Some(fd) = frame.fds.pop() {
                        let _ = self.pidfd.set(fd);
                    }
                }
                self.pid.store(pid, Ordering::Relaxed);
            }
            FromChild::Done(o) => {
                if o == Outcome::Ok {
                    io.result = Some(frame);
                }
                io.done = Some(o);
            }
            FromChild::Mismatch => io.refused = Some(Refusal::Mismatch),
            FromChild::BadEntry => io.refused = Some(Refusal::BadEntry),
            FromChild::SetupFailed(m) => io.refused = Some(Refusal::Setup(m)),
            FromChild::TooLarge { size, limit } => {
                io.refused = Some(Refusal::TooLarge { size, limit })
            }
            FromChild::Aborting { message, location } => io.aborting = Some((message, location)),
            FromChild::Status => {
                if let Some(fd) = frame.fds.pop() {
                    let _ = self.status.set(Channel::new(fd));
                }
            }
            FromChild::Exit { code } => *lock(&self.exit) = Some(code),
            FromChild::SpawnFailed(m) => {
                io.eof = true;
                // There is no child: its state is final.
                lock(&self.exit).get_or_insert(sys::process::STATUS_LOST);
                let e = protocol::spawn_failed(&m);
                io.refused = Some(Refusal::ServerRefused(m));
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Reads the fork server's exit report. `Ok(false)` on timeout.
    fn read_status(&self, status: &Channel, deadline: Option<Instant>) -> Result<bool> {
        match status.recv_frame(deadline) {
            Ok(mut f) => {
                if let FromChild::Exit { code } = protocol::split_control(&mut f)? {
                    *lock(&self.exit) = Some(code);
                }
                Ok(true)
            }
            Err(e) if e.is_timeout() => Ok(false),
            Err(_) => self.server_gone(deadline),
        }
    }

    /// The fork server died before it reported the exit: nobody can learn the child's status
    /// any more (Python reports 255 then). The child dies with the server (`PDEATHSIG`); once
    /// it is gone, its exit code becomes [`sys::process::STATUS_LOST`]. `Ok(false)` on timeout.
    fn server_gone(&self, deadline: Option<Instant>) -> Result<bool> {
        if let Some(p) = self.pidfd.get() {
            if !sys::socket::wait_fd(p.as_fd(), false, deadline).map_err(Error::io)? {
                return Ok(false);
            }
        }
        lock(&self.exit).get_or_insert(sys::process::STATUS_LOST);
        Ok(true)
    }

    /// Whether the child is known to be gone, without blocking (reaps a direct child).
    pub(super) fn exited_now(&self) -> bool {
        if self.exit_known().is_some() {
            return true;
        }
        match (self.via_server, self.pidfd.get()) {
            (false, _) => self.try_reap().is_some(),
            (true, Some(p)) => {
                sys::socket::wait_fd(p.as_fd(), false, Some(Instant::now())).unwrap_or(false)
            }
            (true, None) => false,
        }
    }

    pub(super) fn exit_known(&self) -> Option<i32> {
        *lock(&self.exit)
    }

    /// Reaps a direct child without blocking; returns its exit code once known.
    pub(super) fn try_reap(&self) -> Option<i32> {
        let mut exit = lock(&self.exit);
        if exit.is_none() && !self.via_server {
            if let Ok(Some(e)) = sys::process::wait_child(self.pid(), false) {
                *exit = Some(e.python_code());
            }
        }
        *exit
    }

    /// Waits for the exit status until `deadline`; `Ok(None)` on timeout.
    fn wait_exit(&self, io: &mut Io, deadline: Option<Instant>) -> Result<Option<i32>> {
        if self.via_server {
            loop {
                if let Some(c) = self.exit_known() {
                    return Ok(Some(c));
                }
                match self.status.get() {
                    Some(status) => {
                        if !self.read_status(status, deadline)? {
                            return Ok(None);
                        }
                    }
                    // The status socket arrives first on the stream: read up to it. A stream
                    // that ended without one: the server died first.
                    None if io.eof => {
                        if !self.server_gone(deadline)? {
                            return Ok(None);
                        }
                    }
                    None => {
                        if !self.pump(io, deadline)? {
                            return Ok(None);
                        }
                    }
                }
            }
        }
        let mut backoff = Duration::from_micros(50);
        loop {
            if let Some(c) = self.try_reap() {
                return Ok(Some(c));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            match self.pidfd.get() {
                Some(p) => {
                    sys::socket::wait_fd(p.as_fd(), false, deadline).map_err(Error::io)?;
                }
                None => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    /// Joins until `deadline`: reads the outcome and the exit status, then hands out the
    /// result (decoded afresh on every call, so a re-join returns it again).
    ///
    /// `still_running` is the kind of the error when the deadline passes first
    /// ([`ErrorKind::Timeout`], or [`ErrorKind::WouldBlock`] for `try_join`).
    pub(super) fn join_until<R: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        still_running: ErrorKind,
    ) -> Result<R> {
        let running = || {
            Error::msg(
                still_running,
                "the child is still running (join again later, or terminate it)",
            )
        };
        let Some(mut io) = self.lock_io_until(deadline) else {
            return Err(running());
        };
        if !self.read_outcome(&mut io, deadline)? {
            return Err(running());
        }
        let returned = io.done == Some(Outcome::Ok) && io.result.is_some();
        let code = match (self.via_server, self.pidfd.get()) {
            // The function returned: joining only has to see the child gone, which its pidfd
            // says directly; the fork server's exit report is read later, if ever asked for.
            (true, Some(p)) if returned && self.exit_known().is_none() => {
                if !sys::socket::wait_fd(p.as_fd(), false, deadline).map_err(Error::io)? {
                    return Err(running());
                }
                0
            }
            _ => match self.wait_exit(&mut io, deadline)? {
                Some(code) => code,
                None => return Err(running()),
            },
        };
        unregister(self);
        outcome_of(&io, code)
    }

    /// Takes the stream's reader lock, waiting at most until `deadline`: another thread may be
    /// blocked in `join` holding it, and a `join_timeout` must still return in time. `None`
    /// at the deadline. (A short sleep between tries: the holder is waiting on the child, which
    /// is what we would wait on too.)
    fn lock_io_until(&self, deadline: Option<Instant>) -> Option<std::sync::MutexGuard<'_, Io>> {
        loop {
            match self.io.try_lock() {
                Ok(io) => return Some(io),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            if deadline.is_none() {
                return Some(lock(&self.io));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Reads the child's stream until its outcome is known (or the stream ended). `Ok(false)`
    /// when `deadline` passed first.
    ///
    /// Once the exit is known, everything the child wrote is already buffered: the rest is
    /// read without waiting (a descendant that kept a copy of the stream cannot stall us).
    fn read_outcome(&self, io: &mut Io, deadline: Option<Instant>) -> Result<bool> {
        while io.done.is_none() && io.refused.is_none() && !io.eof {
            if self.exit_known().is_some() {
                if !self.pump(io, Some(Instant::now()))? {
                    break;
                }
            } else if !self.pump(io, deadline)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn is_alive(&self) -> bool {
        let _ = self.ensure_started();
        if self.exit_known().is_some() {
            return false;
        }
        if !self.via_server {
            return self.try_reap().is_none();
        }
        if let Some(p) = self.pidfd.get() {
            return !sys::socket::wait_fd(p.as_fd(), false, Some(Instant::now())).unwrap_or(false);
        }
        !self.drain_nonblocking() && self.exit_known().is_none()
    }

    /// Reads whatever frames are ready (fork-server children), without blocking. Returns true
    /// once the stream has ended: the server keeps its copy of the child's end until it has
    /// reported the exit, so end of stream means the child is gone.
    fn drain_nonblocking(&self) -> bool {
        match self.io.try_lock() {
            Ok(mut io) => {
                while !io.eof && self.exit_known().is_none() {
                    match self.pump(&mut io, Some(Instant::now())) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(_) => {
                            io.eof = true;
                            break;
                        }
                    }
                }
                if let Some(status) = self.status.get() {
                    let _ = self.read_status(status, Some(Instant::now()));
                }
                io.eof
            }
            Err(_) => false,
        }
    }

    pub(super) fn exitcode(&self) -> Option<i32> {
        let _ = self.ensure_started();
        if self.via_server {
            if self.exit_known().is_none() && !self.is_alive() {
                // Exited: the server's report may still be in flight; wait for it briefly.
                let deadline = Some(Instant::now() + Duration::from_secs(5));
                if let Some(mut io) = self.lock_io_until(deadline) {
                    let _ = self.wait_exit(&mut io, deadline);
                }
            }
            self.exit_known()
        } else {
            self.try_reap()
        }
    }

    pub(super) fn signal(&self, sig: i32) -> Result<()> {
        self.ensure_started()?;
        let exit = lock(&self.exit);
        if exit.is_some() {
            return Ok(());
        }
        match self.pidfd.get() {
            Some(p) => sys::process::signal_pidfd(p.as_fd(), sig),
            None if self.pid() > 0 => sys::process::signal_pid(self.pid(), sig),
            None => Ok(()),
        }
        .map_err(Error::io)
    }
}

/// What `join` returns once the child's outcome and exit code are known.
fn outcome_of<R: DeserializeOwned>(io: &Io, code: i32) -> Result<R> {
    match &io.done {
        Some(Outcome::Ok) => match &io.result {
            Some(frame) => decode_copy(frame),
            None => Err(exit_error(code)),
        },
        Some(Outcome::Panicked { message, location }) => {
            Err(Error::panicked(message.clone(), location.clone()))
        }
        Some(Outcome::BadArgs(m)) => Err(Error::msg(
            ErrorKind::Decode,
            format!("the child could not decode its arguments: {m}"),
        )),
        Some(Outcome::BadResult(m)) => Err(Error::msg(
            ErrorKind::Encode,
            format!("the child could not encode its return value: {m}"),
        )),
        None => match &io.refused {
            Some(Refusal::Mismatch) => Err(Error::new(ErrorKind::ExecutableMismatch)),
            Some(Refusal::BadEntry) => Err(Error::msg(
                ErrorKind::Protocol,
                "the child refused its entry point (not sealed by this parent)",
            )),
            Some(Refusal::Setup(m)) => Err(Error::msg(
                ErrorKind::Io,
                format!("the child could not set itself up: {m}"),
            )),
            Some(Refusal::ServerRefused(m)) => Err(protocol::spawn_failed(m)),
            Some(Refusal::TooLarge { size, limit }) => {
                Err(Error::too_large(*size, *limit).context("sending the child's return value"))
            }
            None => match &io.aborting {
                Some((message, location)) if code < 0 => Err(Error::killed_after_panic(
                    -code,
                    message.clone(),
                    location.clone(),
                )),
                _ => Err(exit_error(code)),
            },
        },
    }
}

/// Decodes the return value from the kept frame, with duplicates of its descriptors, so the
/// frame stays intact for a later join.
fn decode_copy<R: DeserializeOwned>(frame: &Frame) -> Result<R> {
    let fds = frame
        .fds
        .iter()
        .map(|f| f.try_clone())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io(e).context("duplicating the descriptors of the return value"))?;
    crate::codec::decode(&frame.payload, fds)
        .map_err(|e| e.context("decoding the child's return value"))
}

fn exit_error(code: i32) -> Error {
    if code < 0 {
        Error::killed(ErrorKind::Killed, -code)
    } else {
        Error::exited(ErrorKind::Exited, code)
    }
}

/// What `process` keeps in the global state (`spawn::Global::above`, under its lock).
#[derive(Debug, Default)]
pub(super) struct Book {
    /// Children that are not reaped yet.
    pub(super) children: Vec<Arc<ChildShared>>,
    /// The reaper of detached children.
    pub(super) reaper: ReaperState,
}

/// `process`'s part of the global state, created on first use (a `Fork` child's fresh global
/// state starts without one).
pub(super) fn book(g: &mut spawn::Global) -> &mut Book {
    let slot = g.above.get_or_insert_with(|| Box::new(Book::default()));
    if !slot.is::<Book>() {
        // Only this module stores the slot, so this never runs; it keeps the downcast total.
        *slot = Box::new(Book::default());
    }
    slot.downcast_mut::<Book>()
        .expect("the slot was just made to hold a Book")
}

pub(super) fn unregister(child: &ChildShared) {
    child.unregistered.store(true, Ordering::Relaxed);
    book(&mut spawn::global())
        .children
        .retain(|c| !std::ptr::eq(Arc::as_ptr(c), child));
}

impl spawn::ChildRecord for ChildShared {
    fn chan(&self) -> &Channel {
        ChildShared::chan(self)
    }

    fn abandon(&self) {
        ChildShared::abandon(self)
    }
}

impl ChildShared {
    /// What dropping the handle does: let go at once of a child that is gone, otherwise mark
    /// it detached (the reaper collects it) and stop reading its result.
    pub(super) fn release(&self) {
        if self.unregistered.load(Ordering::Relaxed) {
            // Joined: nothing left to do.
        } else if self.exited_now() {
            // Already gone (`exitcode()` or `is_alive()` saw the exit, or it just ended):
            // nothing left to wait for, so let go of its streams and pidfd now.
            unregister(self);
        } else {
            self.detached.store(true, Ordering::Relaxed);
            // Writes of a result nobody will read fail at once instead of blocking the child.
            let _ = sys::socket::shutdown(self.chan.fd(), sys::socket::Half::Read);
            super::reaper::start_reaper();
        }
    }

    /// What `connection::wait` polls: the pidfd (readable once the child is gone), or the
    /// stream before a fork-server child has announced its pidfd; and whether it is done.
    pub(super) fn wait_handle(&self) -> (BorrowedFd<'_>, bool) {
        // A fork-server child's pidfd arrives with its `Hello`.
        let _ = self.ensure_started();
        let done = self.exit_known().is_some();
        match self.pidfd.get() {
            Some(p) => (p.as_fd(), done),
            None => (self.chan.fd(), done),
        }
    }
}
