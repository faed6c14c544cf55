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
use super::{child_exit, fingerprint, global, watch_lifeline};
use crate::connection::channel::Channel;
use crate::fdreg::{self, RegisteredFd};
use crate::sys;
use crate::task;

/// The environment variable that turns a re-executed program into a child or the fork server.
pub(crate) const BOOT_ENV: &str = "__MULTIPROC_BOOT";

/// Exit code of a child that could not even start its task (parent gone, protocol error).
const EXIT_BOOT_FAILED: i32 = 70;

// SAFETY: (`ctor(unsafe)`: code before `main`) it runs on the process's only thread and, in a
// normal start, only reads one environment variable; in a child or the fork server it uses
// std and `sys` facilities that work before `main` on Linux and exits the process itself.
#[ctor::ctor(unsafe)]
fn boot() {
    let Some(value) = std::env::var_os(BOOT_ENV) else {
        // A normal start (the MPI backend has a constructor of its own for ranks above 0).
        return;
    };
    // SAFETY-free in edition 2021, and sound here: no other thread exists before `main`.
    std::env::remove_var(BOOT_ENV);
    let value = value.to_string_lossy().into_owned();
    let parts: Vec<&str> = value.split(':').collect();
    let fd = |s: &str| s.parse::<RawFd>().ok();
    match parts.as_slice() {
        ["child", ctrl, lifeline, key] => {
            let (Some(ctrl), Some(lifeline), Some(key)) = (fd(ctrl), fd(lifeline), parse_key(key))
            else {
                eprintln!("multiproc: malformed {BOOT_ENV}={value:?}; refusing to start");
                child_exit(EXIT_BOOT_FAILED)
            };
            task::adopt_key(key);
            let ctrl = adopt(ctrl);
            let lifeline = adopt(lifeline);
            watch_lifeline(lifeline);
            child_main(ctrl, false, None)
        }
        ["server", server] if fd(server).is_some() => {
            super::forkserver::serve(adopt(fd(server).unwrap_or(-1)))
        }
        _ => {
            eprintln!("multiproc: malformed {BOOT_ENV}={value:?}; refusing to start");
            child_exit(EXIT_BOOT_FAILED)
        }
    }
}

/// The entry key in the boot variable: 32 hex digits.
pub(crate) fn format_key(k: [u64; 2]) -> String {
    format!("{:016x}{:016x}", k[0], k[1])
}

fn parse_key(s: &str) -> Option<[u64; 2]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    Some([
        u64::from_str_radix(&s[..16], 16).ok()?,
        u64::from_str_radix(&s[16..], 16).ok()?,
    ])
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
    // The stream lives until this child exits (the panic hook may report on it).
    let chan: &'static Channel = Box::leak(Box::new(Channel::new(ctrl)));
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
    let refuse = |msg: FromChild| -> ! {
        let _ = chan.send_parts(&[&control_tail(&msg)], &[]);
        child_exit(EXIT_BOOT_FAILED)
    };
    let spec: TaskSpec = match chan.recv(None) {
        Ok(s) => s,
        Err(_) => child_exit(EXIT_BOOT_FAILED),
    };
    match fingerprint() {
        Ok(mine) if mine == spec.fingerprint.as_slice() => {}
        _ => refuse(FromChild::Mismatch),
    }
    // Before anything else uses the offset: only an entry our parent sealed is ever called.
    let Ok(entry) = task::from_sealed(spec.entry, spec.seal) else {
        refuse(FromChild::BadEntry)
    };
    {
        let mut g = global();
        g.me = Ident {
            pid,
            name: spec.setup.name.clone(),
        };
        g.parent = Some(spec.parent);
    }
    if let Err(m) = super::child_setup(&spec.setup, chan) {
        refuse(FromChild::SetupFailed(m))
    }
    let args = match chan.recv_frame(None) {
        Ok(f) => f,
        Err(e) if e.kind() == crate::ErrorKind::TooLarge => refuse(FromChild::SetupFailed(
            format!("the arguments are too large for this child: {e}"),
        )),
        Err(_) => child_exit(EXIT_BOOT_FAILED),
    };
    super::run_task(chan, entry, &args.payload, args.fds)
}
