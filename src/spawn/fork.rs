//! The `Fork` start method.
//!
//! The child is a copy of the caller, made while the global state lock is held (so the copy of
//! that state is consistent and owned by the one thread that exists in the child). In the
//! child, before any user code runs, we only: close the internal descriptors we inherited
//! (`close`), reset the global state to a fresh one for the child (our own lock, held by this
//! thread), and arm the parent-death mechanism. Then the task runs: that is the part whose
//! soundness depends on the contract documented on [`StartMethod::Fork`](crate::StartMethod).

#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::MutexGuard;

use serde::Serialize;

use super::protocol::Ident;
use super::{child_exit, exit_code_for, report, watch_lifeline, Global, Launched};
use crate::connection::channel::Channel;
use crate::error::{Error, Result};
use crate::sys;
use crate::task;

/// Forks; the child runs `f(make_args())` and exits. Returns the guard back to the parent.
pub(super) fn launch<F, A, R>(
    mut g: MutexGuard<'static, Global>,
    name: &str,
    make_args: impl FnOnce() -> A,
    f: F,
) -> Result<(MutexGuard<'static, Global>, Launched)>
where
    F: FnOnce(A) -> R,
    R: Serialize,
{
    let (parent_end, child_end) = Channel::pair()?;
    let from_main = sys::process::is_main_thread();
    if !from_main {
        // PR_SET_PDEATHSIG would fire when *this thread* ends: use the lifeline instead.
        g.lifeline_read()?;
    }
    let internal = g.internal_fds();
    // SAFETY: see the module docs: until the task runs, the child only closes descriptors,
    // replaces state it exclusively owns (the global lock is held by this very thread) and
    // starts the lifeline thread; the task itself runs under `StartMethod::Fork`'s contract.
    match unsafe { sys::process::fork() } {
        Err(e) => Err(Error::io(e).context("fork")),
        Ok(sys::process::Forked::Child) => {
            drop(parent_end);
            for fd in internal {
                sys::process::close_raw(fd);
            }
            let me = Ident {
                pid: sys::process::getpid(),
                name: name.to_string(),
            };
            let parent = g.me.clone();
            let mut old = std::mem::replace(&mut *g, Global::fresh(me, Some(parent)));
            // The write end was closed above; the read end is ours to watch.
            let lifeline: Option<OwnedFd> = old.lifeline.take().map(|(r, w)| {
                std::mem::forget(w);
                r
            });
            // Every descriptor in `old` was closed above: forget it rather than close twice.
            std::mem::forget(old);
            drop(g);
            if from_main {
                if sys::process::kill_me_with_parent().is_err() {
                    child_exit(71);
                }
                drop(lifeline);
            } else if let Some(l) = lifeline {
                watch_lifeline(l);
            }
            task::install_panic_hook();
            let mut out = Vec::new();
            let mut out_fds = Vec::new();
            let outcome = task::call(f, make_args(), &mut out, &mut out_fds);
            report(&child_end, &outcome, &out, &out_fds);
            child_exit(exit_code_for(&outcome))
        }
        Ok(sys::process::Forked::Parent(pid)) => {
            drop(child_end);
            let pidfd = sys::process::pidfd_open(pid).map_err(Error::io)?;
            Ok((
                g,
                Launched {
                    pid,
                    pidfd,
                    chan: parent_end,
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
