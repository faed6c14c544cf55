//! Creating children: the three start methods behind one contract.
//!
//! Every start method produces a [`Launched`] child: its pid, a pidfd when the kernel has
//! them, and the parent's end of the child's private control stream (a socket pair created
//! here; the child's end is never visible to anyone else). Over that stream the child reports
//! its [`Outcome`](crate::task::Outcome) and, for fork-server children, the server reports the
//! exit status.
//!
//! * `fork.rs`: `fork()` the caller; the child runs the closure it already has in memory.
//! * `exec.rs`: re-execute `/proc/self/exe`; the child's constructor (`bootstrap.rs`) takes
//!   over before `main` and receives a [`TaskSpec`](protocol::TaskSpec) plus arguments.
//! * `forkserver.rs`: one clean single-threaded server (itself started like `exec.rs`) forks
//!   children on request; the parent passes the child's end of the control stream with
//!   SCM_RIGHTS and then talks to the child directly.
//!
//! # Global state and `fork`
//!
//! All process-wide state lives in [`GLOBAL`]: our identity, the lifeline pipe, the fork
//! server client and, in an opaque slot (`Global::above`: `spawn` names nothing from the
//! layers above it), `process`'s registry of live children. Every multiproc descriptor is on the
//! descriptor registry's list (`crate::fdreg`) from its creation to its close. A `Fork` launch
//! holds std's stdio locks, this lock and the registry across `fork()` itself, so a forked
//! child sees a consistent state and neutralises every multiproc descriptor it inherited but
//! its own (otherwise it would keep other children's streams open and hide their
//! end-of-stream from us). `README.md` next to this file is the whole protocol.
//!
//! # No orphans
//!
//! A parent that dies, even by SIGKILL, takes its children along within milliseconds:
//! fork-server children get `PR_SET_PDEATHSIG(SIGKILL)` against the (single-threaded) server,
//! and the server kills them all and exits when its stream from the parent reaches end of file.
//! `Fork` and `Spawn` children watch the parent's *lifeline*, a pipe whose write end only the
//! parent holds; a thread in the child kills the child when the pipe reports hang-up.

pub(crate) mod bootstrap;
mod exec;
mod fork;
mod forkserver;
pub(crate) mod protocol;

use std::any::Any;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::connection::channel::Channel;
use crate::context::StartMethod;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys;
use crate::task;
use protocol::{FromChild, Ident, Setup, TaskSpec};

/// Process-wide state (see the module docs for why it is one lock).
pub(crate) struct Global {
    /// This process.
    pub(crate) me: Ident,
    /// Our parent, when we are a multiproc child.
    pub(crate) parent: Option<Ident>,
    /// `(read, write)` ends of the lifeline pipe, created on first use.
    lifeline: Option<(RegisteredFd, RegisteredFd)>,
    /// The fork server client, started on first use.
    server: Option<forkserver::Client>,
    /// What the layer above keeps under this lock (`process`'s children and reaper state),
    /// opaque here because `spawn` sits below `process`. `None` until first use; a fresh
    /// `Global` (a `Fork` child's) starts with none.
    pub(crate) above: Option<Box<dyn Any + Send>>,
    /// For default names `Process-N`.
    counter: u64,
}

impl Global {
    fn fresh(me: Ident, parent: Option<Ident>) -> Self {
        Global {
            me,
            parent,
            lifeline: None,
            server: None,
            above: None,
            counter: 0,
        }
    }

    /// The read end of the lifeline, creating the pipe on first use.
    fn lifeline_read(&mut self) -> Result<RawFd> {
        if self.lifeline.is_none() {
            let (r, w) =
                fdreg::pipe().map_err(|e| Error::io(e).context("creating the lifeline pipe"))?;
            self.lifeline = Some((r, w));
        }
        Ok(self
            .lifeline
            .as_ref()
            .map(|(r, _)| r.as_raw_fd())
            .unwrap_or(-1))
    }

    /// Next default name.
    pub(crate) fn next_name(&mut self) -> String {
        self.counter += 1;
        format!("Process-{}", self.counter)
    }
}

static GLOBAL: OnceLock<Mutex<Global>> = OnceLock::new();

/// Locks the global state (poisoning is ignored: the state stays consistent between calls).
pub(crate) fn global() -> MutexGuard<'static, Global> {
    GLOBAL
        .get_or_init(|| {
            Mutex::new(Global::fresh(
                Ident {
                    pid: sys::process::getpid(),
                    name: "MainProcess".into(),
                },
                None,
            ))
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The fork server's pid, if this process started one (for `crate::__chaos`).
pub(crate) fn fork_server_pid() -> Option<u32> {
    global().server.as_ref().map(|c| c.pid() as u32)
}

/// This executable's fingerprint, computed once.
pub(crate) fn fingerprint() -> Result<&'static [u8]> {
    static FP: OnceLock<std::result::Result<Vec<u8>, String>> = OnceLock::new();
    match FP.get_or_init(|| sys::exe::fingerprint().map_err(|e| e.to_string())) {
        Ok(v) => Ok(v),
        Err(e) => Err(Error::msg(
            ErrorKind::Io,
            format!("reading /proc/self/exe for its fingerprint: {e}"),
        )),
    }
}

/// A child that was just started.
#[derive(Debug)]
pub(crate) struct Launched {
    pub(crate) pid: i32,
    pub(crate) pidfd: Option<RegisteredFd>,
    pub(crate) chan: Channel,
    /// Reaped by the fork server (exit status arrives on `chan`) rather than by us.
    pub(crate) via_server: bool,
}

/// What to launch, besides the function and its arguments.
#[derive(Debug, Clone)]
pub(crate) struct LaunchOpts {
    pub(crate) method: StartMethod,
    pub(crate) name: Option<String>,
    pub(crate) daemon: bool,
    /// The child ignores SIGINT whatever the parent does (pool workers finishing their tasks
    /// on Ctrl-C).
    pub(crate) ignore_sigint: bool,
    /// The largest argument and return value, in encoded bytes (both directions).
    pub(crate) max_message: usize,
}

impl LaunchOpts {
    /// What the child applies to itself (`child_setup`), computed in the parent at spawn time.
    fn setup(&self, name: &str, server_env: Option<&forkserver::Client>) -> Setup {
        let parent_ignores = |sig| sys::process::is_ignored(sig);
        // Fork and Spawn children inherit the dispositions (an ignored signal stays ignored
        // across fork and exec); a fork-server child would get the server's, so it is told.
        let (sigint, sighup) = match self.method {
            StartMethod::ForkServer => (
                Some(self.ignore_sigint || parent_ignores(sys::process::SIGINT)),
                Some(parent_ignores(sys::process::SIGHUP)),
            ),
            _ => (self.ignore_sigint.then_some(true), None),
        };
        Setup {
            name: name.to_string(),
            method: self.method.to_u8(),
            cwd: server_env.and_then(|_| std::env::current_dir().ok().map(|d| d.into_os_string())),
            env: server_env.map(|c| c.env_changes()).unwrap_or_default(),
            ignore_sigint: sigint,
            ignore_sighup: sighup,
            max_message: self.max_message as u64,
            panic_output: task::panic_output_requested(),
        }
    }
}

/// What [`launch`] needs of the record the layer above keeps for a new child (`process`'s
/// `ChildShared`), so that `spawn` names nothing above it.
pub(crate) trait ChildRecord {
    /// The control stream to the child.
    fn chan(&self) -> &Channel;
    /// The task could not be sent: stop the child and let the reaper collect it.
    fn abandon(&self);
}

/// Starts `f(args)` in a new child. Returns the child and its (resolved) name.
///
/// `register` runs under the global lock once the child exists, so the registry never misses
/// a child a concurrent `fork` could inherit.
pub(crate) fn launch<F, A, R, C: ChildRecord>(
    opts: &LaunchOpts,
    args: A,
    _f: F, // only its type matters: the child conjures the zero-sized value
    register: impl FnOnce(&mut Global, Launched, String) -> Arc<C>,
) -> Result<Arc<C>>
where
    F: FnOnce(A) -> R + Copy + 'static,
    A: Serialize + DeserializeOwned,
    R: Serialize,
{
    let entry = task::entry_of::<F, A, R>();
    // Sealing needs the key; drawing it costs one read of /dev/urandom the first time.
    let seal = task::seal(task::to_offset(entry));
    // Every method sends the arguments encoded, even `Fork`: that way a forked child gets
    // fresh descriptors for exactly the handles among its arguments, and multiproc closes all
    // the other ones it inherited.
    let mut payload = Vec::new();
    let mut fds = Vec::new();
    codec::encode(&args, &mut payload, &mut fds)?;
    drop(args);
    if payload.len() > opts.max_message {
        return Err(
            Error::too_large(payload.len() as u64, opts.max_message as u64)
                .context("encoding the child's arguments"),
        );
    }
    let fp = fingerprint()?.to_vec();
    // A `Fork` child's setup is computed before any lock (it reads the environment).
    let fork_setup = (opts.method == StartMethod::Fork).then(|| opts.setup("", None));
    // Lock order (README.md): std's stdio locks, then the global state, then the registry.
    let stdio = (opts.method == StartMethod::Fork).then(fork::prepare);
    let mut g = global();
    let name = opts.name.clone().unwrap_or_else(|| g.next_name());
    if let Some(stdio) = stdio {
        let mut setup = fork_setup.unwrap_or_else(|| opts.setup("", None));
        setup.name = name.clone();
        let (mut g, launched) = fork::launch(stdio, g, &setup, entry, &payload, fds)?;
        launched.chan.set_max_message(opts.max_message);
        return Ok(register(&mut g, launched, name));
    }
    let launched = if opts.method == StartMethod::Spawn {
        let lifeline = g.lifeline_read()?;
        exec::launch(lifeline)?
    } else {
        forkserver::launch(&mut g)?
    };
    let spec = TaskSpec {
        fingerprint: fp,
        entry: task::to_offset(entry),
        seal,
        setup: opts.setup(&name, g.server.as_ref().filter(|_| launched.via_server)),
        daemon: opts.daemon,
        parent: g.me.clone(),
    };
    launched.chan.set_max_message(opts.max_message);
    let via_server = launched.via_server;
    let shared = register(&mut g, launched, name);
    drop(g);
    // Talk to the child outside the lock (the arguments may be large).
    if let Err(e) = send_task(shared.chan(), &spec, &payload, &fds) {
        let e = explain_hang_up(shared.chan(), via_server, e);
        // The child would wait for its task forever: stop it and let the reaper collect it.
        shared.abandon();
        return Err(e);
    }
    Ok(shared)
}

/// A child that hung up before taking its task: the fork server may have refused it (and
/// said why on its stream), or this process is out of descriptors and lost its start to that
/// (a descriptor of its start-up could not be received). Say so, rather than only
/// "disconnected". The probe is one duplicate, closed at once.
fn explain_hang_up(chan: &Channel, via_server: bool, e: Error) -> Error {
    if !e.is_disconnected() {
        return e;
    }
    if let Some(refused) = via_server.then(|| forkserver::refusal(chan)).flatten() {
        return refused;
    }
    match crate::fdreg::duplicate(chan.fd()) {
        Err(io) if sys::process::is_out_of_descriptors(&io) => {
            Error::io(io).context("starting the child (it hung up before taking its task)")
        }
        _ => e,
    }
}

fn send_task(chan: &Channel, spec: &TaskSpec, payload: &[u8], fds: &[RegisteredFd]) -> Result<()> {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    chan.send(spec)
        .and_then(|()| chan.send_raw(payload, &borrowed))
        .map_err(|e| e.context("sending the task to the child"))
}

/// Runs in every child before its task (all start methods): takes the start method as the
/// default (as Python), enters the parent's working directory and environment (fork-server
/// children), applies the signal dispositions, names the process and its main thread, and
/// sets up the panic hook (quiet for a reported panic; in a `panic = "abort"` build it reports
/// on `chan` before the abort).
///
/// The child is single-threaded here, except a `Fork` child's lifeline thread. A `Fork`
/// child's setup has no environment or directory to apply and takes no lock: another thread
/// of the parent may have held any lock at the fork.
pub(crate) fn child_setup(
    setup: &Setup,
    chan: &'static Channel,
) -> std::result::Result<(), String> {
    crate::context::set_start_method(StartMethod::from_u8(setup.method));
    for (k, v) in &setup.env {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    if let Some(dir) = &setup.cwd {
        std::env::set_current_dir(dir)
            .map_err(|e| format!("could not enter the parent's working directory {dir:?}: {e}"))?;
    }
    if let Some(i) = setup.ignore_sigint {
        sys::process::set_ignored(sys::process::SIGINT, i);
    }
    if let Some(i) = setup.ignore_sighup {
        sys::process::set_ignored(sys::process::SIGHUP, i);
    }
    sys::process::set_thread_name(&setup.name);
    task::set_process_name(&setup.name);
    chan.set_max_message(usize::try_from(setup.max_message).unwrap_or(usize::MAX));
    task::set_abort_reporter(chan, report_abort);
    task::install_panic_hook();
    task::set_panic_output(setup.panic_output);
    Ok(())
}

/// The abort reporter of a process child: the panic goes to the parent as `Aborting`.
fn report_abort(chan: &Channel, message: &str, location: Option<&str>) {
    let msg = FromChild::Aborting {
        message: message.to_string(),
        location: location.map(str::to_string),
    };
    let _ = chan.send_parts(&[&protocol::control_tail(&msg)], &[]);
}

/// Runs in the child: calls `entry` on the arguments, reports the outcome (and the result
/// bytes) to the parent and exits with Python's code (0, or 1 after a panic or a result that
/// could not be sent). The parent's half of this protocol is `ChildShared::pump`.
pub(crate) fn run_task(
    chan: &Channel,
    entry: task::EntryFn,
    args: &[u8],
    fds: Vec<RegisteredFd>,
) -> ! {
    let mut out = Vec::new();
    let mut out_fds = Vec::new();
    let outcome = entry(args, fds, &mut out, &mut out_fds);
    child_exit(report(chan, &outcome, &out, &out_fds))
}

/// Reports `outcome` to the parent; returns the exit code. A parent that stopped listening is
/// not an error worth more than a quiet exit.
fn report(chan: &Channel, outcome: &task::Outcome, out: &[u8], out_fds: &[RegisteredFd]) -> i32 {
    let limit = chan.max_message();
    let (msg, code) = match outcome {
        task::Outcome::Ok if out.len() > limit => (
            FromChild::TooLarge {
                size: out.len() as u64,
                limit: limit as u64,
            },
            1,
        ),
        task::Outcome::Ok => (FromChild::Done(outcome.clone()), 0),
        _ => (FromChild::Done(outcome.clone()), 1),
    };
    let tail = protocol::control_tail(&msg);
    let _ = if code == 0 {
        let borrowed: Vec<_> = out_fds.iter().map(|f| f.as_fd()).collect();
        chan.send_parts(&[out, &tail], &borrowed)
    } else {
        chan.send_parts(&[&tail], &[])
    };
    code
}

/// Flushes Rust's standard streams and leaves without running the parent's exit handlers.
///
/// In a `Fork` child the stdio locks are free here: the parent held them across `fork()` and
/// the child released them (see `fork.rs`), so only the child's own threads can hold them.
pub(crate) fn child_exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::process::exit_now(code)
}

/// Starts a thread that kills this process when `lifeline` reports hang-up (the parent died).
pub(crate) fn watch_lifeline(lifeline: RegisteredFd) {
    let res = std::thread::Builder::new()
        .name("multiproc-lifeline".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                match sys::socket::wait_fd(lifeline.as_fd(), false, None) {
                    Ok(true) => break,
                    Ok(false) => continue,
                    Err(_) => break,
                }
            }
            let _ = sys::process::signal_pid(sys::process::getpid(), sys::process::SIGKILL);
        });
    if res.is_err() {
        // Without a watcher we cannot promise to die with the parent; refuse to run.
        eprintln!("multiproc: could not start the lifeline thread in the child; exiting");
        child_exit(71);
    }
}

/// At exit: closes our stream to the fork server and waits for it (it kills what is left of
/// its children and exits), so it never lingers as a zombie re-parented to init.
pub(crate) fn stop_server_at_exit() {
    let server = match try_global() {
        Some(mut g) => g.server.take(),
        None => None,
    };
    drop(server);
}

/// Locks the global state if it is free right now (used at exit).
pub(crate) fn try_global() -> Option<MutexGuard<'static, Global>> {
    match GLOBAL.get()?.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests;
