//! The child's entry: a constructor that runs before `main` (or the test harness).
//!
//! Every program that links multiproc carries [`boot`], which the loader runs before `main`.
//! In an ordinary start it reads one environment variable, finds it absent and returns: the
//! program runs as usual. When multiproc re-executes the program as a `Spawn` child or as the
//! fork server, the variable names the inherited descriptors; `boot` removes it (so the
//! child's own children start clean), becomes the child or the server, and exits without ever
//! returning to the loader, so `main` never runs in a child.
//!
//! What runs twice, then: other constructors of the program (`#[ctor]` functions and the like,
//! including ones that run before ours) run in the child too. `main`, lazily initialised
//! statics that only `main` touches, and the test harness do not.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, RawFd};

use super::protocol::{control_tail, FromChild, Ident, TaskSpec};
use super::{child_exit, exit_code_for, fingerprint, global, report, watch_lifeline};
use crate::connection::channel::Channel;
use crate::fdreg::{self, RegisteredFd};
use crate::sys;
use crate::task;

/// The environment variable that turns a re-executed program into a child or the fork server.
pub(crate) const BOOT_ENV: &str = "__MULTIPROC_BOOT";

/// Exit code of a child that could not even start its task (parent gone, protocol error).
const EXIT_BOOT_FAILED: i32 = 70;

#[ctor::ctor(unsafe)]
fn boot() {
    let Some(value) = std::env::var_os(BOOT_ENV) else {
        return;
    };
    // SAFETY-free in edition 2021, and sound here: no other thread exists before `main`.
    std::env::remove_var(BOOT_ENV);
    let value = value.to_string_lossy().into_owned();
    let mut parts = value.split(':');
    let role = parts.next().unwrap_or("");
    let nums: Vec<RawFd> = parts.filter_map(|p| p.parse().ok()).collect();
    match (role, nums.as_slice()) {
        ("child", [ctrl, lifeline]) => {
            let ctrl = adopt(*ctrl);
            let lifeline = adopt(*lifeline);
            watch_lifeline(lifeline);
            child_main(ctrl, false, None)
        }
        ("server", [fd]) => super::forkserver::serve(adopt(*fd)),
        _ => {
            eprintln!("multiproc: malformed {BOOT_ENV}={value:?}; refusing to start");
            child_exit(EXIT_BOOT_FAILED)
        }
    }
}

fn adopt(fd: RawFd) -> RegisteredFd {
    match sys::process::adopt_inherited_fd(fd) {
        // Before `main`, with one thread: no fork can copy it before it is listed.
        Ok(fd) => fdreg::adopt(fd),
        Err(e) => {
            eprintln!(
                "multiproc: inherited descriptor {fd} is not usable ({e}); refusing to start"
            );
            child_exit(EXIT_BOOT_FAILED)
        }
    }
}

/// What a child sets up before it has a task. A fork-server *spare* does this ahead of time,
/// so a request only has to hand it its control socket.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Our own pidfd, announced to the parent with `Hello` (fork-server children).
    pidfd: Option<RegisteredFd>,
    hello: bool,
}

/// Sets up signals, the panic hook and our state; opens our pidfd if we will say `Hello`.
pub(crate) fn child_prepare(hello: bool) -> Prepared {
    sys::process::ignore_sigpipe();
    sys::process::default_sigchld();
    task::install_panic_hook();
    drop(global());
    let pidfd = if hello {
        fdreg::pidfd_open(sys::process::getpid()).ok().flatten()
    } else {
        None
    };
    Prepared { pidfd, hello }
}

/// Runs the task that arrives on `ctrl`, reports it, and exits.
///
/// `hello`: announce our pid (and pidfd) first (fork-server children, whose pid the parent
/// does not know). `close`: a descriptor inherited from the fork server to close first.
pub(crate) fn child_main(ctrl: RegisteredFd, hello: bool, close: Option<RawFd>) -> ! {
    if let Some(fd) = close {
        fdreg::close_forgotten(fd);
    }
    child_run(ctrl, child_prepare(hello))
}

/// The second half of [`child_main`], for a prepared child.
pub(crate) fn child_run(ctrl: RegisteredFd, prepared: Prepared) -> ! {
    let chan = Channel::new(ctrl);
    let pid = sys::process::getpid();
    if prepared.hello {
        let msg = FromChild::Hello {
            pid,
            has_pidfd: prepared.pidfd.is_some(),
        };
        // A parent that dropped its handle no longer reads: the task still runs (its spec is
        // already in our socket), so a failed announcement is not fatal.
        let fds: Vec<_> = prepared.pidfd.iter().map(|p| p.as_fd()).collect();
        let _ = chan.send_parts(&[&control_tail(&msg)], &fds);
        drop(prepared);
    }
    let spec: TaskSpec = match chan.recv(None) {
        Ok(s) => s,
        Err(_) => child_exit(EXIT_BOOT_FAILED),
    };
    match fingerprint() {
        Ok(mine) if mine == spec.fingerprint.as_slice() => {}
        _ => {
            let _ = chan.send_parts(&[&control_tail(&FromChild::Mismatch)], &[]);
            child_exit(EXIT_BOOT_FAILED)
        }
    }
    {
        let mut g = global();
        g.me = Ident {
            pid,
            name: spec.name,
        };
        g.parent = Some(spec.parent);
    }
    let args = match chan.recv_frame(None) {
        Ok(f) => f,
        Err(_) => child_exit(EXIT_BOOT_FAILED),
    };
    // SAFETY: `spec.entry` came from `task::to_offset` in our parent, over the socket our
    // parent created for this child alone, and the fingerprint check above proved that the
    // parent runs this very executable.
    let entry = unsafe { task::from_offset(spec.entry) };
    let mut out = Vec::new();
    let mut out_fds = Vec::new();
    let outcome = entry(&args.payload, args.fds, &mut out, &mut out_fds);
    report(&chan, &outcome, &out, &out_fds);
    child_exit(exit_code_for(&outcome))
}
