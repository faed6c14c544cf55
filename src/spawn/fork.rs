//! The `Fork` start method.
//!
//! The child is a copy of the caller, made while this thread holds every lock multiproc's
//! code would need before the task runs: std's stdout and stderr locks (taken first, before
//! the global state), the global state ([`GLOBAL`](super::global)), and the descriptor
//! registry ([`ForkGuard`]). In the child, before any user code runs, we only: release the
//! stdio locks (we own them), neutralise every inherited multiproc descriptor except the
//! child's own (`dup3` of a dead socket over each), reset the global state to a fresh one for
//! the child, mark the process as a forked child (so the panic hook writes with plain
//! `write(2)` instead of std's locks), and arm the parent-death mechanism. Then the task runs:
//! that is the part whose soundness depends on the contract documented on
//! [`StartMethod::Fork`](crate::StartMethod). `README.md` next to this file has the whole
//! protocol, the lock order, and what may run between `fork` and the task.

#![allow(unsafe_code)]

use std::io::{StderrLock, StdoutLock, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::MutexGuard;

use super::protocol::{control_tail, FromChild, Ident, Setup};
use super::{child_exit, child_setup, run_task, watch_lifeline, Global, Launched};
use crate::connection::channel::Channel;
use crate::error::{Error, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys;
use crate::task::{self, EntryFn};

/// std's standard stream locks, held across `fork()` (so a thread that was in the middle of
/// a `println!` cannot leave the child's copy locked forever).
#[derive(Debug)]
pub(super) struct Stdio {
    _out: StdoutLock<'static>,
    _err: StderrLock<'static>,
}

/// Takes std's stdout and stderr locks (before the global state lock: a thread may print
/// while it holds them and then start a process) and flushes stdout, so the child does not
/// inherit, and print again, bytes the parent has buffered.
///
/// Also installs multiproc's panic hook here, in the parent, once: the child must not call
/// `take_hook`/`set_hook` (their lock may be held by a thread that does not exist there).
pub(super) fn prepare() -> Stdio {
    task::install_panic_hook();
    let mut out = std::io::stdout().lock();
    let _ = out.flush();
    Stdio {
        _out: out,
        _err: std::io::stderr().lock(),
    }
}

/// Forks; the child runs `entry(payload, fds)` and exits. Returns the guard back to the parent.
///
/// `fds` are fresh duplicates of the handles inside the arguments: the child keeps exactly
/// those and neutralises every other multiproc descriptor it inherited.
pub(super) fn launch(
    stdio: Stdio,
    mut g: MutexGuard<'static, Global>,
    setup: &Setup,
    entry: EntryFn,
    payload: &[u8],
    fds: Vec<RegisteredFd>,
) -> Result<(MutexGuard<'static, Global>, Launched)> {
    // The queue locks' fork handler is registered (its `Once` complete) before we fork.
    sys::robust::prepare_fork();
    let (parent_end, child_end) = fdreg::socketpair().map_err(Error::io)?;
    let from_main = sys::process::is_main_thread();
    if !from_main {
        // PR_SET_PDEATHSIG would fire when *this thread* ends: use the lifeline instead.
        g.lifeline_read()?;
    }
    // What the child keeps: its control stream, the lifeline's read end, its arguments.
    let mut keep: Vec<RawFd> = vec![child_end.as_raw_fd()];
    keep.extend(g.lifeline.as_ref().map(|(r, _)| r.as_raw_fd()));
    keep.extend(fds.iter().map(|f| f.as_raw_fd()));
    // Held across fork: no multiproc descriptor is created, received or closed meanwhile.
    let registry = fdreg::lock_for_fork();
    // SAFETY: see the module docs: until the task runs, the child only releases locks this
    // very thread holds, replaces descriptors (`dup3`), swaps out state it exclusively owns,
    // sets an atomic flag and starts the lifeline thread; the task itself runs under
    // `StartMethod::Fork`'s contract.
    match unsafe { sys::process::fork() } {
        Err(e) => Err(Error::io(e).context("fork")),
        Ok(sys::process::Forked::Child) => {
            drop(stdio);
            if registry.into_child(&keep).is_err() {
                child_exit(71);
            }
            // Neutralised and off the list: closing it touches nothing of anyone's.
            drop(parent_end);
            task::mark_forked_child();
            let me = Ident {
                pid: sys::process::getpid(),
                name: setup.name.clone(),
            };
            let parent = g.me.clone();
            let parent_pid = parent.pid;
            let mut old = std::mem::replace(&mut *g, Global::fresh(me, Some(parent)));
            let lifeline = old.lifeline.take().map(|(r, w)| {
                // The write end was neutralised; its number stays taken.
                std::mem::forget(w);
                r
            });
            // The old state's descriptors were neutralised; never run its destructors here
            // (they would wait for the fork server, which is not our child).
            std::mem::forget(old);
            drop(g);
            if from_main {
                // The parent may have died before the request took effect.
                if sys::process::kill_me_with_parent().is_err()
                    || sys::process::getppid() != parent_pid
                {
                    child_exit(71);
                }
                drop(lifeline);
            } else if let Some(l) = lifeline {
                watch_lifeline(l);
            }
            // The stream lives until this child exits (the panic hook may report on it).
            let chan: &'static Channel = Box::leak(Box::new(Channel::new(child_end)));
            if let Err(m) = child_setup(setup, chan) {
                let _ = chan.send_parts(&[&control_tail(&FromChild::SetupFailed(m))], &[]);
                child_exit(70);
            }
            run_task(chan, entry, payload, fds)
        }
        Ok(sys::process::Forked::Parent(pid)) => {
            drop(registry);
            drop(stdio);
            drop(child_end);
            drop(fds);
            // Without a pidfd (out of descriptors) waitpid still works; never lose the child.
            let pidfd = fdreg::pidfd_open(pid).ok().flatten();
            Ok((
                g,
                Launched {
                    pid,
                    pidfd,
                    chan: Channel::new(parent_end),
                    via_server: false,
                },
            ))
        }
    }
}

/// `fork()` for the fork server, which has a single thread. `Ok(None)` in the child.
pub(super) fn fork_single_threaded() -> std::io::Result<Option<i32>> {
    // SAFETY: only called from the fork server's main loop; the server never starts a thread,
    // so the child inherits no lock held by anyone else.
    match unsafe { sys::process::fork() }? {
        sys::process::Forked::Child => Ok(None),
        sys::process::Forked::Parent(pid) => Ok(Some(pid)),
    }
}
