//! The `Fork` start method.
//!
//! The child is a copy of the caller, made while the global state lock is held (so the copy of
//! that state is consistent and owned by the one thread that exists in the child). In the
//! child, before any user code runs, we only: close the internal descriptors we inherited
//! (`close`), reset the global state to a fresh one for the child (our own lock, held by this
//! thread), and arm the parent-death mechanism. Then the task runs: that is the part whose
//! soundness depends on the contract documented on [`StartMethod::Fork`](crate::StartMethod).

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::MutexGuard;

use super::protocol::{control_tail, FromChild};
use super::protocol::{Ident, Setup};
use super::{channel_fds, child_exit, child_setup, run_task, watch_lifeline, Global, Launched};
use crate::connection::channel::Channel;
use crate::error::{Error, Result};
use crate::sys;
use crate::task::EntryFn;

/// Forks; the child runs `entry(payload, fds)` and exits. Returns the guard back to the parent.
///
/// `fds` are fresh duplicates of the handles inside the arguments: the child keeps exactly
/// those and neutralises every other multiproc descriptor it inherited.
pub(super) fn launch(
    mut g: MutexGuard<'static, Global>,
    setup: &Setup,
    entry: EntryFn,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(MutexGuard<'static, Global>, Launched)> {
    let (parent_end, child_end) = sys::socket::socketpair().map_err(Error::io)?;
    let from_main = sys::process::is_main_thread();
    if !from_main {
        // PR_SET_PDEATHSIG would fire when *this thread* ends: use the lifeline instead.
        g.lifeline_read()?;
    }
    let mut inherited = g.internal_fds();
    // Held across fork: no channel can be created or closed meanwhile, so the list is exact.
    let channels = channel_fds();
    inherited.extend(channels.iter().copied());
    // SAFETY: see the module docs: until the task runs, the child only replaces descriptors
    // (`dup3`), swaps out state it exclusively owns (both locks are held by this very thread)
    // and starts the lifeline thread; the task itself runs under `StartMethod::Fork`'s contract.
    match unsafe { sys::process::fork() } {
        Err(e) => Err(Error::io(e).context("fork")),
        Ok(sys::process::Forked::Child) => {
            drop(parent_end);
            let mut channels = channels;
            if sys::process::neutralize(&inherited).is_err() {
                child_exit(71);
            }
            // The numbers in the list now name dead sockets owned by values we never use.
            channels.clear();
            drop(channels);
            let me = Ident {
                pid: sys::process::getpid(),
                name: setup.name.clone(),
            };
            let parent = g.me.clone();
            let parent_pid = parent.pid;
            let mut old = std::mem::replace(&mut *g, Global::fresh(me, Some(parent)));
            let lifeline: Option<OwnedFd> = old.lifeline.take().map(|(r, w)| {
                debug_assert!(inherited.contains(&w.as_raw_fd()));
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
            drop(channels);
            drop(child_end);
            drop(fds);
            // Without a pidfd (out of descriptors) waitpid still works; never lose the child.
            let pidfd = sys::process::pidfd_open(pid).ok().flatten();
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
