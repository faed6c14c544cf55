//! [`Process`]: a function running in a child process.
//!
//! * `mod.rs` (here): the public API: [`Process`], [`ProcessBuilder`], [`ProcessInfo`] and
//!   the functions about this process.
//! * `child.rs`: the parent-side state of one child (`ChildShared`) and the state machine
//!   that reads its streams.
//! * `reaper.rs`: the reaper thread for dropped children and the at-exit logic.

mod child;
mod reaper;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::connection::Waitable;
use crate::context::{get_start_method, StartMethod};
use crate::error::{ErrorKind, Result};
use crate::spawn::{self, LaunchOpts};
use crate::sys;
use crate::task::{TaskArg, TaskResult};

pub(crate) use child::ChildShared;
use reaper::reap_detached;

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
/// # Panics in the child
///
/// A panic in the function comes back from [`join`](Process::join) as an error with
/// [`ErrorKind::Panicked`], its message and location. The child does not print it as well
/// (so a passing test that checks a child's panic prints nothing); set
/// `MULTIPROC_CHILD_PANIC_OUTPUT=1` to have children print the panics they report, with a
/// backtrace as `RUST_BACKTRACE` asks. A panic the parent never hears about (in another thread
/// of the child) is printed as usual. In a `panic = "abort"` build the message and location
/// still arrive, on the [`ErrorKind::Killed`] error (signal 6). The child's main thread is
/// named after the process (`Process-1`; the first 15 bytes, as `ps` shows it).
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
    ignore_sigint: bool,
    max_message: Option<usize>,
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

    /// Makes the child ignore SIGINT (default `false`: the child inherits the parent's
    /// disposition, as in Python, so an ignored SIGINT stays ignored).
    ///
    /// Ctrl-C in a terminal sends SIGINT to the whole foreground process group, children
    /// included; a child that ignores it keeps running while the parent decides what to do
    /// (a pool's "finish the running tasks on Ctrl-C" pattern). SIGHUP is inherited the same
    /// way (there is no option for it).
    ///
    /// ```
    /// use multiproc::Process;
    /// let p = Process::builder().ignore_sigint(true).spawn((), |()| 1u8)?;
    /// assert_eq!(p.join()?, 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn ignore_sigint(mut self, ignore: bool) -> Self {
        self.ignore_sigint = ignore;
        self
    }

    /// The largest encoded argument and return value, in bytes (default 1 GiB, the default
    /// of every stream). Over the limit, `spawn` (arguments) or `join` (return value) fails
    /// with [`ErrorKind::TooLarge`]; raise it when a bigger value is expected.
    ///
    /// ```
    /// use multiproc::{ErrorKind, Process};
    /// let p = Process::builder()
    ///     .max_message_size(1024)
    ///     .spawn((), |()| vec![0u8; 4096])?;
    /// assert_eq!(p.join().unwrap_err().kind(), ErrorKind::TooLarge);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message = Some(bytes);
        self
    }

    /// Starts `f(args)` in a child process.
    ///
    /// `f` must be a function item or a closure that captures nothing; everything it needs
    /// comes through `args` (owned, serialisable values: see [`TaskArg`]). A capturing
    /// closure or a `fn` pointer does not build: the error says so and its "instantiating"
    /// note names the call. The check runs when the code is compiled for real (after
    /// monomorphisation), so `cargo check` does not report it; `cargo build` and `cargo test`
    /// do.
    ///
    /// ```compile_fail,E0080
    /// let base = 10u32;
    /// let p = multiproc::Process::builder().spawn(5u32, move |x| x + base); // captures `base`
    /// ```
    ///
    /// ```compile_fail,E0080
    /// fn double(x: u32) -> u32 { x * 2 }
    /// let f: fn(u32) -> u32 = double; // a pointer: name `double` directly instead
    /// let p = multiproc::Process::builder().spawn(5u32, f);
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Encode`] if `args` cannot be serialised; [`ErrorKind::Io`] if the
    /// process cannot be created; [`ErrorKind::ExecutableMismatch`] if the fork server runs
    /// another build of the program.
    pub fn spawn<A, F, R>(self, args: A, f: F) -> Result<Process<R>>
    where
        F: FnOnce(A) -> R + Copy + Send + 'static,
        A: TaskArg,
        R: TaskResult,
    {
        let () = crate::task::NoCaptures::<F>::OK;
        let method = self.method.unwrap_or_else(get_start_method);
        let opts = LaunchOpts {
            method,
            name: self.name,
            daemon: self.daemon,
            ignore_sigint: self.ignore_sigint,
            max_message: self
                .max_message
                .unwrap_or(crate::codec::frame::DEFAULT_MAX_MESSAGE),
        };
        let daemon = self.daemon;
        reaper::before_launch();
        let shared = spawn::launch(&opts, args, f, |g, launched, name| {
            let c = Arc::new(ChildShared::new(launched, name, daemon, method));
            child::book(g).children.push(c.clone());
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

impl<R: TaskResult> Process<R> {
    /// Starts `f(args)` in a child process with the default settings.
    ///
    /// See [`ProcessBuilder::spawn`].
    ///
    /// # Errors
    /// As [`ProcessBuilder::spawn`].
    pub fn spawn<A, F>(args: A, f: F) -> Result<Process<R>>
    where
        F: FnOnce(A) -> R + Copy + Send + 'static,
        A: TaskArg,
    {
        let () = crate::task::NoCaptures::<F>::OK;
        ProcessBuilder::new().spawn(args, f)
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to finish and returns its return value (Python's `join()`, which
    /// also hands back what the function returned).
    ///
    /// Joining again is fine, as in Python: every `join` returns the same outcome, the value
    /// decoded afresh (handles inside it are duplicated), or the same error. The encoded value
    /// stays with the handle until it is dropped.
    ///
    /// ```
    /// use multiproc::Process;
    /// let p = Process::spawn(20u32, |x| x + 1)?;
    /// assert_eq!(p.join()?, 21);
    /// assert_eq!(p.join()?, 21); // a re-join returns again
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Panicked`] (with the message), [`ErrorKind::Killed`] (with the signal),
    /// [`ErrorKind::Exited`] (with the exit code) when the child did not return normally;
    /// [`ErrorKind::Decode`] if the value does not decode as `R`; [`ErrorKind::TooLarge`] if
    /// it exceeded [`ProcessBuilder::max_message_size`]; [`ErrorKind::Protocol`] if the child
    /// refused its entry point (a forged task); [`ErrorKind::Io`] if the child could not set
    /// itself up as the parent asked (enter its working directory).
    pub fn join(&self) -> Result<R> {
        self.shared.join_until(None, ErrorKind::Timeout)
    }

    /// Joins if the child has finished, without waiting.
    ///
    /// # Errors
    /// [`ErrorKind::WouldBlock`] while the child is running; otherwise as [`join`](Self::join).
    pub fn try_join(&self) -> Result<R> {
        self.shared
            .join_until(Some(Instant::now()), ErrorKind::WouldBlock)
    }

    /// Waits at most `timeout` (Python's `join(timeout)`); `Duration::MAX` waits for good.
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{ErrorKind, Process};
    /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
    /// let p = Process::spawn(60_000u64, nap)?;
    /// let e = p.join_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::Timeout); // still running
    /// p.kill()?;
    /// assert_eq!(p.join_timeout(Duration::MAX).unwrap_err().signal(), Some(9));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if the child is still running at the deadline (the handle stays
    /// usable); otherwise as [`join`](Self::join).
    pub fn join_timeout(&self, timeout: Duration) -> Result<R> {
        self.join_deadline_opt(crate::wait::deadline_after(timeout))
    }

    /// Waits until `deadline` at most.
    ///
    /// # Errors
    /// As [`join_timeout`](Self::join_timeout).
    pub fn join_deadline(&self, deadline: Instant) -> Result<R> {
        self.join_deadline_opt(Some(deadline))
    }

    fn join_deadline_opt(&self, deadline: Option<Instant>) -> Result<R> {
        self.shared.join_until(deadline, ErrorKind::Timeout)
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
    /// `exitcode`). Asking never loses the return value: a later [`join`](Self::join) still
    /// returns it.
    ///
    /// A fork-server child whose server died before reporting the exit (someone killed the
    /// server; the child dies with it) gets 255, as in Python: the status is lost.
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

impl<R> crate::connection::sealed::Sealed for Process<R> {}

impl<R> Waitable for Process<R> {
    fn wait_handle(&self) -> (BorrowedFd<'_>, bool) {
        self.shared.wait_handle()
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        self.shared.release();
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
    let all: Vec<Arc<ChildShared>> = child::book(&mut spawn::global()).children.clone();
    all.iter()
        .filter(|c| c.is_alive())
        .map(|c| ProcessInfo {
            pid: c.pid() as u32,
            name: c.name.clone(),
        })
        .collect()
}
