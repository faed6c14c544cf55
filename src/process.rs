//! [`Process`]: a function running in a child process.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::channel::{Channel, Frame};
use crate::connection::Waitable;
use crate::context::{get_start_method, StartMethod};
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;
use crate::spawn::protocol::{self, FromChild};
use crate::spawn::{self, LaunchOpts, Launched};
use crate::sys;
use crate::task::Outcome;

/// What the parent has read from a child's control stream so far.
#[derive(Debug, Default)]
struct Io {
    /// The outcome the child reported.
    done: Option<Outcome>,
    /// The encoded return value (after `Done(Ok)`).
    result: Option<Frame>,
    /// The child refused to run (different executable).
    mismatch: bool,
    /// The stream reached end of file.
    eof: bool,
    /// The return value was handed out by `join`.
    taken: bool,
}

/// Everything the parent knows about one child; shared by the [`Process`] handle and the
/// global registry (which outlives a dropped handle until the child is reaped).
pub(crate) struct ChildShared {
    pid: AtomicI32,
    pidfd: OnceLock<RegisteredFd>,
    chan: Channel,
    /// Fork-server children: the socket on which the server reports the exit.
    status: OnceLock<Channel>,
    via_server: bool,
    name: String,
    daemon: bool,
    method: StartMethod,
    /// Serialises readers of `chan`.
    io: Mutex<Io>,
    /// Python exit code once known; guards reaping and signalling.
    exit: Mutex<Option<i32>>,
    /// The handle was dropped before the child was reaped.
    detached: AtomicBool,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChildShared {
    fn new(l: Launched, name: String, daemon: bool, method: StartMethod) -> Self {
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
        start_reaper();
    }

    /// For a fork-server child: waits for its `Hello` (pid and pidfd), which `spawn` does not
    /// wait for. A no-op for other children and once the pid is known.
    ///
    /// Another thread may be inside `join` holding the stream (it reads the `Hello` itself
    /// and publishes the pid): then wait for the pid to appear instead of for the lock.
    fn ensure_started(&self) -> Result<()> {
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
            FromChild::Mismatch => io.mismatch = true,
            FromChild::Status => {
                if let Some(fd) = frame.fds.pop() {
                    let _ = self.status.set(Channel::new(fd));
                }
            }
            FromChild::Exit { code } => *lock(&self.exit) = Some(code),
            FromChild::SpawnFailed(m) => {
                io.eof = true;
                return Err(Error::msg(
                    ErrorKind::Io,
                    format!("the fork server could not fork: {m}"),
                ));
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
            Err(e) => Err(Error::msg(
                ErrorKind::Disconnected,
                format!("the fork server went away before reporting how the child ended ({e})"),
            )),
        }
    }

    fn exit_known(&self) -> Option<i32> {
        *lock(&self.exit)
    }

    /// Reaps a direct child without blocking; returns its exit code once known.
    fn try_reap(&self) -> Option<i32> {
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
                    // The status socket arrives first on the stream: read up to it.
                    None if io.eof => {
                        return Err(Error::msg(
                            ErrorKind::Disconnected,
                            "the fork server went away before reporting how the child ended",
                        ))
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

    /// Joins until `deadline`: reads the outcome and the exit status.
    fn join_until<R: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<Option<R>> {
        let mut io = lock(&self.io);
        loop {
            let server_reported_exit = self.via_server && self.exit_known().is_some();
            if io.done.is_some() || io.mismatch || io.eof || server_reported_exit {
                break;
            }
            if !self.pump(&mut io, deadline)? {
                return Ok(None);
            }
        }
        let returned = io.done == Some(Outcome::Ok) && io.result.is_some();
        let code = match (self.via_server, self.pidfd.get()) {
            // The function returned: joining only has to see the child gone, which its pidfd
            // says directly; the fork server's exit report is read later, if ever asked for.
            (true, Some(p)) if returned && self.exit_known().is_none() => {
                if !sys::socket::wait_fd(p.as_fd(), false, deadline).map_err(Error::io)? {
                    return Ok(None);
                }
                0
            }
            _ => match self.wait_exit(&mut io, deadline)? {
                Some(code) => code,
                None => return Ok(None),
            },
        };
        unregister(self);
        match &io.done {
            Some(Outcome::Ok) => {
                if io.taken {
                    return Err(Error::new(ErrorKind::AlreadyJoined));
                }
                match io.result.take() {
                    Some(frame) => {
                        io.taken = true;
                        frame
                            .decode()
                            .map(Some)
                            .map_err(|e| e.context("decoding the child's return value"))
                    }
                    None => Err(exit_error(code)),
                }
            }
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
            None if io.mismatch => Err(Error::new(ErrorKind::ExecutableMismatch)),
            None => Err(exit_error(code)),
        }
    }

    fn is_alive(&self) -> bool {
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

    fn exitcode(&self) -> Option<i32> {
        let _ = self.ensure_started();
        if self.via_server {
            if self.exit_known().is_none() && !self.is_alive() {
                // Exited: the server's report may still be in flight; wait for it briefly.
                let mut io = lock(&self.io);
                let _ = self.wait_exit(&mut io, Some(Instant::now() + Duration::from_secs(5)));
            }
            self.exit_known()
        } else {
            self.try_reap()
        }
    }

    fn signal(&self, sig: i32) -> Result<()> {
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

fn exit_error(code: i32) -> Error {
    if code < 0 {
        Error::killed(ErrorKind::Killed, -code)
    } else {
        Error::exited(ErrorKind::Exited, code)
    }
}

fn unregister(child: &ChildShared) {
    spawn::global()
        .children
        .retain(|c| !std::ptr::eq(Arc::as_ptr(c), child));
}

/// A function running in a child process, like Python's `multiprocessing.Process`.
///
/// `R` is the function's return type; [`join`](Process::join) hands it back.
///
/// ```
/// use multiproc::Process;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let p = Process::spawn(7u64, square)?;
/// println!("child pid {}", p.pid());
/// assert_eq!(p.join()?, 49);
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Dropping
///
/// Dropping a `Process` that was not joined does not kill the child: it runs on, its return
/// value is discarded, and multiproc reaps it in the background (no zombie). Daemon children
/// are terminated when the parent exits; non-daemon children are waited for at exit, as in
/// Python. If the parent dies abnormally, every child dies with it.
pub struct Process<R> {
    shared: Arc<ChildShared>,
    _ret: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.shared.pid())
            .field("name", &self.shared.name)
            .field("daemon", &self.shared.daemon)
            .field("start_method", &self.shared.method)
            .finish()
    }
}

/// Configures a [`Process`] before it starts: name, daemon flag, start method.
///
/// ```
/// use multiproc::{Process, StartMethod};
/// let p = Process::builder()
///     .name("worker")
///     .daemon(true)
///     .start_method(StartMethod::Spawn)
///     .spawn((2u32, 3u32), |(a, b)| a + b)?;
/// assert_eq!(p.name(), "worker");
/// assert_eq!(p.join()?, 5);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
}

impl ProcessBuilder {
    /// A builder with the defaults: name `Process-N`, not a daemon, the default start method.
    pub fn new() -> Self {
        Self::default()
    }

    /// The child's name (`current_process().name` in the child).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemon child is terminated when the parent exits instead of being waited for.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// How to create the child (default: [`get_start_method`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts `f(args)` in a child process.
    ///
    /// `f` must be a function item or a closure that captures nothing; everything it needs
    /// comes through `args`. A capturing closure does not compile.
    ///
    /// # Errors
    /// [`ErrorKind::Encode`] if `args` cannot be serialised; [`ErrorKind::Io`] if the
    /// process cannot be created; [`ErrorKind::ExecutableMismatch`] if the fork server runs
    /// another build of the program.
    pub fn spawn<A, F, R>(self, args: A, f: F) -> Result<Process<R>>
    where
        F: FnOnce(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let method = self.method.unwrap_or_else(get_start_method);
        let opts = LaunchOpts {
            method,
            name: self.name,
            daemon: self.daemon,
        };
        let daemon = self.daemon;
        let shared = spawn::launch(&opts, args, f, |g, launched, name| {
            let c = Arc::new(ChildShared::new(launched, name, daemon, method));
            g.children.push(c.clone());
            c
        })?;
        Ok(Process {
            shared,
            _ret: PhantomData,
        })
    }
}

impl Process<()> {
    /// A builder for a process with a name, daemon flag or start method.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::new()
    }
}

impl<R: Serialize + DeserializeOwned> Process<R> {
    /// Starts `f(args)` in a child process with the default settings.
    ///
    /// See [`ProcessBuilder::spawn`].
    ///
    /// # Errors
    /// As [`ProcessBuilder::spawn`].
    pub fn spawn<A, F>(args: A, f: F) -> Result<Process<R>>
    where
        F: FnOnce(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned,
    {
        ProcessBuilder::new().spawn(args, f)
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to finish and returns its return value.
    ///
    /// # Errors
    /// [`ErrorKind::Panicked`] (with the message), [`ErrorKind::Killed`] (with the signal),
    /// [`ErrorKind::Exited`] (with the exit code) when the child did not return normally;
    /// [`ErrorKind::AlreadyJoined`] if an earlier `join` took the value.
    pub fn join(&self) -> Result<R> {
        self.shared
            .join_until(None)
            .map(|r| r.expect("no deadline, so no timeout"))
    }

    /// Waits at most `timeout`; `Ok(None)` if the child is still running.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn join_timeout(&self, timeout: Duration) -> Result<Option<R>> {
        self.shared.join_until(Some(Instant::now() + timeout))
    }
}

impl<R> Process<R> {
    /// The child's process id.
    ///
    /// For a fork-server child this may wait (briefly) for the child to announce itself; it
    /// is 0 if the child could not be started.
    pub fn pid(&self) -> u32 {
        let _ = self.shared.ensure_started();
        self.shared.pid() as u32
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the child is a daemon.
    pub fn daemon(&self) -> bool {
        self.shared.daemon
    }

    /// The start method that created the child.
    pub fn start_method(&self) -> StartMethod {
        self.shared.method
    }

    /// Whether the child is still running (reaps it if it has exited).
    pub fn is_alive(&self) -> bool {
        self.shared.is_alive()
    }

    /// `None` while running; then the exit code, or `-signal` if a signal killed it (Python's
    /// `exitcode`).
    pub fn exitcode(&self) -> Option<i32> {
        self.shared.exitcode()
    }

    /// Sends SIGTERM (exit code −15 unless the child handles it). No-op once it has exited.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the signal cannot be sent.
    pub fn terminate(&self) -> Result<()> {
        self.shared.signal(sys::process::SIGTERM)
    }

    /// Sends SIGKILL (exit code −9). No-op once it has exited.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the signal cannot be sent.
    pub fn kill(&self) -> Result<()> {
        self.shared.signal(sys::process::SIGKILL)
    }
}

impl<R> Waitable for Process<R> {
    fn wait_handle(&self) -> (BorrowedFd<'_>, bool) {
        // A fork-server child's pidfd arrives with its `Hello`.
        let _ = self.shared.ensure_started();
        let done = self.shared.exit_known().is_some();
        match self.shared.pidfd.get() {
            Some(p) => (p.as_fd(), done),
            None => (self.shared.chan.fd(), done),
        }
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if self.shared.exit_known().is_none() {
            self.shared.detached.store(true, Ordering::Relaxed);
            // Writes of a result nobody will read fail at once instead of blocking the child.
            let _ = sys::socket::shutdown(self.shared.chan.fd(), sys::socket::Half::Read);
            start_reaper();
        }
    }
}

/// Reaps detached children that have exited (called on every launch and by the reaper).
pub(crate) fn reap_detached() -> usize {
    let detached: Vec<Arc<ChildShared>> = {
        let g = spawn::global();
        g.children
            .iter()
            .filter(|c| c.detached.load(Ordering::Relaxed))
            .cloned()
            .collect()
    };
    let mut left = 0;
    for c in detached {
        if c.is_alive() {
            left += 1;
        } else {
            c.try_reap();
            unregister(&c);
        }
    }
    left
}

fn start_reaper() {
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("multiproc-reaper".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_millis(50));
            if reap_detached() == 0 {
                RUNNING.store(false, Ordering::Release);
                // A child detached after the count: make sure someone reaps it.
                if reap_detached() == 0 || RUNNING.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    if spawned.is_err() {
        RUNNING.store(false, Ordering::Release);
    }
}

/// A process's identity, as returned by [`current_process`], [`parent_process`] and
/// [`active_children`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Name (`"MainProcess"` for a program that is not a multiproc child).
    pub name: String,
}

/// This process: its pid and name (`current_process()`).
///
/// ```
/// let me = multiproc::current_process();
/// assert_eq!(me.pid, std::process::id());
/// ```
pub fn current_process() -> ProcessInfo {
    let g = spawn::global();
    ProcessInfo {
        pid: sys::process::getpid() as u32,
        name: g.me.name.clone(),
    }
}

/// The process that started this one, when this is a multiproc child (`parent_process()`).
pub fn parent_process() -> Option<ProcessInfo> {
    let g = spawn::global();
    g.parent.as_ref().map(|p| ProcessInfo {
        pid: p.pid as u32,
        name: p.name.clone(),
    })
}

/// The children of this process that are still running; reaps those that have exited
/// (`active_children()`).
pub fn active_children() -> Vec<ProcessInfo> {
    reap_detached();
    let all: Vec<Arc<ChildShared>> = spawn::global().children.clone();
    all.iter()
        .filter(|c| c.is_alive())
        .map(|c| ProcessInfo {
            pid: c.pid() as u32,
            name: c.name.clone(),
        })
        .collect()
}

/// At normal exit: terminate daemon children, wait for the others (Python's semantics).
pub(crate) extern "C" fn at_exit() {
    let children: Vec<Arc<ChildShared>> = {
        // Another thread may hold the lock forever (it is being torn down with us): give up
        // rather than hang the exit.
        let mut tries = 0;
        loop {
            if let Some(g) = spawn::try_global() {
                break g.children.clone();
            }
            tries += 1;
            if tries > 100 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for c in &children {
        if c.daemon {
            let _ = c.signal(sys::process::SIGTERM);
        }
    }
    for c in &children {
        let deadline = c.daemon.then(|| Instant::now() + Duration::from_secs(1));
        let exited = match c.pidfd.get() {
            Some(p) => sys::socket::wait_fd(p.as_fd(), false, deadline).unwrap_or(true),
            None => true,
        };
        if !exited {
            let _ = c.signal(sys::process::SIGKILL);
        }
        if !c.via_server {
            let exit = lock(&c.exit);
            if exit.is_none() {
                let _ = sys::process::wait_child(c.pid(), true);
            }
        }
    }
}
