//! The `ForkServer` start method: a clean, single-threaded server that forks children.
//!
//! The server is this very program re-executed with a boot variable (`bootstrap.rs` diverts
//! it before `main`), so it has one thread and a small, clean address space. Protocol on its
//! stream: the parent sends `Hello{fingerprint}` and gets `Ready{pid}`; then each
//! `Spawn` frame carries the child's end of a fresh control socket pair. The server forks, the
//! child arms `PR_SET_PDEATHSIG` (reliable: the server has a single thread), checks its parent
//! is still the server, announces itself to *our* process with `Hello{pid}` and its pidfd, and
//! runs like a `Spawn` child. The server keeps a copy of the child's control socket and a pidfd;
//! when the pidfd reports the exit it reaps the child and writes `Exit{code}` on that socket
//! (never blocking: a full socket is retried when writable).
//!
//! When the parent's stream reaches end of file (the parent exited or was killed) the server
//! SIGKILLs every child it has and exits.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::bootstrap;
use super::protocol::{FromChild, FromServer, ToServer};
use super::{fingerprint, Global, Launched};
use crate::connection::channel::Channel;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The parent's handle on its fork server.
#[derive(Debug)]
pub(super) struct Client {
    chan: Channel,
    pid: i32,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing our end makes the server exit; reap it so it leaves no zombie.
        let _ = sys::socket::shutdown(self.chan.fd(), sys::socket::Half::Write);
        let _ = sys::process::wait_child(self.pid, true);
    }
}

fn start() -> Result<Client> {
    let (parent_end, server_end) = sys::socket::socketpair().map_err(Error::io)?;
    let s = server_end.as_raw_fd();
    let mut cmd = super::exec::self_command(format!("server:{s}"), vec![s]);
    cmd.stdin(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(e).context("starting the fork server"))?;
    let pid = child.id() as i32;
    drop(server_end);
    let client = Client {
        chan: Channel::new(parent_end),
        pid,
    };
    client.chan.send(&ToServer::Hello {
        fingerprint: fingerprint()?.to_vec(),
    })?;
    match client
        .chan
        .recv::<FromServer>(Some(Instant::now() + Duration::from_secs(30)))
    {
        Ok(FromServer::Ready { .. }) => Ok(client),
        Ok(FromServer::Mismatch) => {
            Err(Error::new(ErrorKind::ExecutableMismatch).context("starting the fork server"))
        }
        Err(e) => Err(e.context("waiting for the fork server to start")),
    }
}

/// Asks the server for a child; the returned stream leads to it (its pid arrives in `Hello`).
pub(super) fn launch(g: &mut Global) -> Result<Launched> {
    let mut last = None;
    for _attempt in 0..2 {
        if g.server.is_none() {
            g.server = Some(start()?);
        }
        let (parent_end, child_end) = sys::socket::socketpair().map_err(Error::io)?;
        let server = g.server.as_ref().expect("started above");
        let mut payload = Vec::new();
        crate::codec::encode(&ToServer::Spawn, &mut payload, &mut Vec::new())?;
        match server.chan.send_raw(&payload, &[child_end.as_fd()]) {
            Ok(()) => {
                drop(child_end);
                return Ok(Launched {
                    pid: 0,
                    pidfd: None,
                    chan: Channel::new(parent_end),
                    via_server: true,
                });
            }
            Err(e) if e.is_disconnected() => {
                // The server died (someone killed it): start a new one once.
                g.server = None;
                last = Some(e);
            }
            Err(e) => return Err(e.context("asking the fork server for a child")),
        }
    }
    Err(last
        .unwrap_or_else(|| Error::new(ErrorKind::Disconnected))
        .context("asking the fork server for a child"))
}

struct Kid {
    pid: i32,
    pidfd: Option<OwnedFd>,
    ctrl: Channel,
    exit: Option<i32>,
}

/// The server's main loop (runs in the re-executed program, never returns).
pub(crate) fn serve(fd: OwnedFd) -> ! {
    sys::process::ignore_sigint();
    sys::process::ignore_sigpipe();
    let chan = Channel::new(fd);
    let me = sys::process::getpid();
    match chan.recv::<ToServer>(None) {
        Ok(ToServer::Hello { fingerprint: fp }) => {
            let ok = fingerprint()
                .map(|mine| mine == fp.as_slice())
                .unwrap_or(false);
            let reply = if ok {
                FromServer::Ready { pid: me }
            } else {
                FromServer::Mismatch
            };
            if chan.send(&reply).is_err() || !ok {
                sys::process::exit_now(0);
            }
        }
        _ => sys::process::exit_now(0),
    }
    let mut kids: Vec<Kid> = Vec::new();
    loop {
        // Which kids to reap: those whose pidfd reported their exit (or all, without pidfds).
        let mut exited: Vec<usize> = Vec::new();
        if !chan.has_buffered() {
            let mut set = vec![(
                chan.fd(),
                sys::socket::Events::IN | sys::socket::Events::RDHUP,
            )];
            let mut owner = vec![usize::MAX];
            for (i, k) in kids.iter().enumerate() {
                match (&k.exit, &k.pidfd) {
                    (Some(_), _) => set.push((k.ctrl.fd(), sys::socket::Events::OUT)),
                    (None, Some(p)) => set.push((p.as_fd(), sys::socket::Events::IN)),
                    (None, None) => continue,
                }
                owner.push(i);
            }
            // Children without a pidfd (old kernels) are polled for exit every 20 ms.
            let slow = kids.iter().any(|k| k.exit.is_none() && k.pidfd.is_none());
            let deadline = slow.then(|| Instant::now() + Duration::from_millis(20));
            let ready = sys::socket::poll_each(&set, deadline).unwrap_or_default();
            exited.extend(ready.into_iter().filter(|&j| j > 0).map(|j| owner[j]));
            if slow {
                exited.extend((0..kids.len()).filter(|&i| kids[i].pidfd.is_none()));
            }
        }
        // 1. A request from the parent, or its end of file.
        if chan.poll(Some(Instant::now())).unwrap_or(true) {
            match chan.recv_frame(None) {
                Ok(mut frame) => {
                    let req = crate::codec::decode::<ToServer>(&frame.payload, Vec::new());
                    if let (Ok(ToServer::Spawn), Some(ctrl)) = (req, frame.fds.pop()) {
                        if let Some(kid) = fork_child(&chan, &mut kids, ctrl, me) {
                            kids.push(kid);
                        }
                    }
                }
                Err(_) => shutdown(&mut kids),
            }
        }
        // 2. Reap the children that exited and report their status (never blocking).
        for i in exited {
            let k = &mut kids[i];
            if k.exit.is_none() {
                if let Ok(Some(exit)) = sys::process::wait_child(k.pid, false) {
                    k.exit = Some(exit.python_code());
                }
            }
        }
        kids.retain(|k| match k.exit {
            None => true,
            Some(code) => {
                let mut payload = Vec::new();
                if crate::codec::encode(&FromChild::Exit { code }, &mut payload, &mut Vec::new())
                    .is_err()
                {
                    return false;
                }
                // Keep the child only while its report could not be sent yet (socket full);
                // sent, or the parent's end gone: done with it.
                matches!(k.ctrl.try_send_raw(&payload), Err(e) if e.kind() == ErrorKind::WouldBlock)
            }
        });
    }
}

fn shutdown(kids: &mut [Kid]) -> ! {
    for k in kids.iter() {
        if k.exit.is_none() {
            match &k.pidfd {
                Some(p) => {
                    let _ = sys::process::signal_pidfd(p.as_fd(), sys::process::SIGKILL);
                }
                None => {
                    let _ = sys::process::signal_pid(k.pid, sys::process::SIGKILL);
                }
            }
        }
    }
    for k in kids.iter() {
        if k.exit.is_none() {
            let _ = sys::process::wait_child(k.pid, true);
        }
    }
    sys::process::exit_now(0)
}

fn fork_child(chan: &Channel, kids: &mut Vec<Kid>, ctrl: OwnedFd, server_pid: i32) -> Option<Kid> {
    // The server is single-threaded: `fork` here has no lock hazards.
    match super::fork::fork_single_threaded() {
        Err(e) => {
            let mut payload = Vec::new();
            let _ = crate::codec::encode(
                &FromChild::SpawnFailed(e.to_string()),
                &mut payload,
                &mut Vec::new(),
            );
            let _ = Channel::new(ctrl).try_send_raw(&payload);
            None
        }
        Ok(None) => {
            // Child: drop everything of the server's (single-threaded, so plain drops are fine).
            kids.clear();
            let _ = chan;
            if sys::process::kill_me_with_parent().is_err() || sys::process::getppid() != server_pid
            {
                sys::process::exit_now(71);
            }
            sys::process::default_sigint();
            bootstrap::child_main(ctrl, true, Some(chan.fd().as_raw_fd()))
        }
        Ok(Some(pid)) => {
            let pidfd = sys::process::pidfd_open(pid).ok().flatten();
            Some(Kid {
                pid,
                pidfd,
                ctrl: Channel::new(ctrl),
                exit: None,
            })
        }
    }
}
