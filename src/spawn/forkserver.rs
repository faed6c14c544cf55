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
//! A request the server cannot serve (out of descriptors: it inherited the program's
//! `RLIMIT_NOFILE`; or `fork` failed) is answered with `SpawnFailed{reason}` on the child's
//! control stream, which it then closes; the server goes on, and serves again once
//! descriptors are free (see [`Reserve`]: a request's descriptor is always received). The
//! parent reports the reason as an `Io` error naming the limit: from `spawn` when the stream
//! was closed before the task could be sent ([`refusal`]), otherwise from `join`.
//!
//! When the parent's stream reaches end of file (the parent exited or was killed) the server
//! SIGKILLs every child it has and exits.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use super::bootstrap;
use super::protocol::{control_tail, FromChild, FromServer, ToServer};
use super::{fingerprint, Global, Launched};
use crate::connection::channel::Channel;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::{self, RegisteredFd};
use crate::sys;

/// The parent's handle on its fork server.
#[derive(Debug)]
pub(super) struct Client {
    chan: Channel,
    pid: i32,
    /// The environment the server started with (its children's, unless told otherwise).
    env: HashMap<OsString, OsString>,
}

impl Client {
    /// The server's pid.
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// How our environment differs from the server's now: what each child must set or remove
    /// to run in the parent's current environment (Python's forkserver keeps the server's;
    /// we follow the parent, as `Spawn` and `Fork` children do).
    pub(super) fn env_changes(&self) -> Vec<(OsString, Option<OsString>)> {
        let now: HashMap<OsString, OsString> = std::env::vars_os().collect();
        let mut changes: Vec<(OsString, Option<OsString>)> = now
            .iter()
            .filter(|(k, v)| self.env.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        changes.extend(
            self.env
                .keys()
                .filter(|k| !now.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        changes
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing our end makes the server exit; reap it so it leaves no zombie.
        // Closing our end makes a healthy server exit; one that never answered is killed, so
        // this wait (under the global lock) is always short.
        let _ = sys::socket::shutdown(self.chan.fd(), sys::socket::Half::Write);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if !matches!(sys::process::wait_child(self.pid, false), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = sys::process::signal_pid(self.pid, sys::process::SIGKILL);
        let _ = sys::process::wait_child(self.pid, true);
    }
}

fn start() -> Result<Client> {
    let (parent_end, server_end) = fdreg::socketpair().map_err(Error::io)?;
    let s = server_end.as_raw_fd();
    let mut cmd = super::exec::self_command(format!("server:{s}"), vec![s]);
    cmd.stdin(std::process::Stdio::null());
    let env: HashMap<OsString, OsString> = std::env::vars_os().collect();
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(e).context("starting the fork server"))?;
    let pid = child.id() as i32;
    drop(server_end);
    let client = Client {
        chan: Channel::new(parent_end),
        pid,
        env,
    };
    client.chan.send(&ToServer::Hello {
        fingerprint: fingerprint()?.to_vec(),
        key: crate::task::key(),
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
        let (parent_end, child_end) = fdreg::socketpair().map_err(Error::io)?;
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

/// Why the fork server hung up on our request for a child, if it said so: a `spawn` whose
/// task could not be sent because the server had already closed the child's control stream
/// reads the [`FromChild::SpawnFailed`] it left there (after the status socket, when it got
/// that far), so the caller reports the server's reason (say, its descriptor limit) rather
/// than only "disconnected". Reads only what is already there.
pub(super) fn refusal(chan: &Channel) -> Option<Error> {
    let deadline = Some(Instant::now() + Duration::from_millis(100));
    for _ in 0..2 {
        let mut frame = chan.recv_frame(deadline).ok()?;
        match super::protocol::split_control(&mut frame).ok()? {
            FromChild::Status => continue,
            FromChild::SpawnFailed(m) => return Some(super::protocol::spawn_failed(&m)),
            _ => return None,
        }
    }
    None
}

/// A child forked ahead of time and fully prepared, waiting on `link` for its control socket:
/// a request then costs one message instead of a `fork` (measured here: the fork of the
/// server took ~125 µs of the ~340 µs a spawn+join cost).
struct Spare {
    pid: i32,
    pidfd: Option<RegisteredFd>,
    link: Channel,
}

/// How many spares the server keeps ready. Measured here (2 vCPUs): one spare takes a spawn
/// after a pause from ~300 to ~130 µs; in a tight spawn+join loop the replacement fork
/// competes with the running child either way, and more spares did not help the median.
const SPARES: usize = 1;

struct Kid {
    pid: i32,
    pidfd: Option<RegisteredFd>,
    /// The server's end of this child's *status* socket, on which it reports the exit. The
    /// child never holds it, so a child killed in the middle of a frame on its control stream
    /// cannot garble the report.
    status: Channel,
    exit: Option<i32>,
}

/// The server's main loop (runs in the re-executed program, never returns). Each round has
/// four phases: [`wait`] for a request, a child's exit or a dead spare; [`handle_request`];
/// reap the exited children; keep a spare ready and send the exit reports ([`report_exits`]).
pub(crate) fn serve(fd: RegisteredFd) -> ! {
    sys::process::ignore_sigint();
    sys::process::ignore_sigpipe();
    sys::process::default_sigchld();
    let chan = Channel::new(fd);
    let me = sys::process::getpid();
    handshake(&chan, me);
    let mut kids: Vec<Kid> = Vec::new();
    let mut spares: Vec<Spare> = Vec::new();
    let mut reserve = Reserve::take();
    loop {
        let exited = if chan.has_buffered() {
            Vec::new()
        } else {
            wait(&chan, &kids, &mut spares)
        };
        if chan.poll(Some(Instant::now())).unwrap_or(true) {
            handle_request(&chan, &mut kids, &mut spares, &mut reserve, me);
        }
        for i in exited {
            let k = &mut kids[i];
            if k.exit.is_none() {
                if let Ok(Some(exit)) = sys::process::wait_child(k.pid, false) {
                    k.exit = Some(exit.python_code());
                }
            }
        }
        // Keep spares ready, forking them while no request waits, and only with the reserve
        // in place: a spare must never take the room the next request's descriptor needs.
        while spares.len() < SPARES
            && reserve.refill()
            && !chan.has_buffered()
            && !chan.poll(Some(Instant::now())).unwrap_or(true)
        {
            match make_spare(&chan, &mut kids, &mut spares, &mut reserve, me) {
                Some(sp) => spares.push(sp),
                None => break,
            }
        }
        report_exits(&mut kids);
    }
}

/// The parent's `Hello`: same executable? Adopts the parent's entry key. Exits on mismatch.
fn handshake(chan: &Channel, me: i32) {
    match chan.recv::<ToServer>(None) {
        Ok(ToServer::Hello {
            fingerprint: fp,
            key,
        }) => {
            // Our children check the entries they are sent against the parent's key.
            crate::task::adopt_key(key);
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
}

/// Sleeps until the parent writes, a child exits (its pidfd), a report can be written, or a
/// spare dies (reaped here). Returns the indices of the kids to reap (all kids without a
/// pidfd, which are polled every 20 ms).
fn wait(chan: &Channel, kids: &[Kid], spares: &mut Vec<Spare>) -> Vec<usize> {
    let mut set = vec![(
        chan.fd(),
        sys::socket::Events::IN | sys::socket::Events::RDHUP,
    )];
    // (is a spare, index) of each entry after the first.
    let mut owner = vec![(false, usize::MAX)];
    for (i, sp) in spares.iter().enumerate() {
        if let Some(p) = &sp.pidfd {
            set.push((p.as_fd(), sys::socket::Events::IN));
            owner.push((true, i));
        }
    }
    for (i, k) in kids.iter().enumerate() {
        match (&k.exit, &k.pidfd) {
            (Some(_), _) => set.push((k.status.fd(), sys::socket::Events::OUT)),
            (None, Some(p)) => set.push((p.as_fd(), sys::socket::Events::IN)),
            (None, None) => continue,
        }
        owner.push((false, i));
    }
    let slow = kids.iter().any(|k| k.exit.is_none() && k.pidfd.is_none());
    let deadline = slow.then(|| Instant::now() + Duration::from_millis(20));
    let ready = sys::socket::poll_each(&set, deadline).unwrap_or_default();
    drop(set);
    let mut exited = Vec::new();
    let mut dead_spares = Vec::new();
    for j in ready.into_iter().filter(|&j| j > 0) {
        match owner[j] {
            (true, i) => dead_spares.push(i),
            (false, i) => exited.push(i),
        }
    }
    // A spare died (killed from outside): reap it; another is made later.
    for i in dead_spares.into_iter().rev() {
        let sp = spares.swap_remove(i);
        let _ = sys::process::wait_child(sp.pid, true);
    }
    if slow {
        exited.extend((0..kids.len()).filter(|&i| kids[i].pidfd.is_none()));
    }
    exited
}

/// Descriptors the server holds back so that a request's descriptor can always be received.
///
/// Out of descriptors, the kernel drops the descriptor that comes with a request: the child's
/// control socket, the only way to answer that request, so the parent would only see it hang
/// up. So the server keeps a pipe (two descriptors) in reserve, closes it just before it
/// reads a request, and takes it back after. A request after which the reserve cannot be
/// taken back is refused (`SpawnFailed`, naming the limit), and closing its control socket
/// frees the room to take the reserve back before the next read; so is one for which the
/// status socket cannot be made. Nothing else allocates while the reserve is out (spares are
/// only forked with the reserve in place), so every request is received whole and answered,
/// and the server serves again once children exit and free theirs.
struct Reserve(Option<(RegisteredFd, RegisteredFd)>);

impl Reserve {
    fn take() -> Reserve {
        Reserve(fdreg::pipe().ok())
    }
    /// Takes the reserve back (a no-op when it is in place); `false` if this process is out
    /// of descriptors.
    fn refill(&mut self) -> bool {
        if self.0.is_none() {
            self.0 = fdreg::pipe().ok();
        }
        self.0.is_some()
    }
}

/// Refuses a child: the parent's `spawn` or `join` reports `message` (the server goes on).
/// Closes `ctrl`, whose descriptor is free again when this returns.
fn refuse(ctrl: RegisteredFd, message: String) {
    let payload = control_tail(&FromChild::SpawnFailed(message));
    let _ = Channel::new(ctrl).try_send_raw(&payload);
}

/// The refusal when a system call for a new child failed with `e` while `what`: out of
/// descriptors, it names the limit.
fn could_not(what: &str, e: std::io::Error) -> String {
    if sys::process::is_out_of_descriptors(&e) {
        out_of_descriptors(what, Some(e))
    } else {
        format!("the fork server failed while {what}: {e}")
    }
}

/// The refusal when this process has no descriptor to spare.
fn out_of_descriptors(what: &str, e: Option<std::io::Error>) -> String {
    let limit = sys::process::descriptor_limit();
    let cause = e.map(|e| format!(" ({e})")).unwrap_or_default();
    format!(
        "the fork server is out of file descriptors{cause} while {what} (its limit is \
         {limit}, inherited from the program when the server started); it works again once \
         children exit, or raise the limit (`ulimit -n`, RLIMIT_NOFILE) before the first spawn"
    )
}

/// One request from the parent (a child to start), or its end of file (shut down).
fn handle_request(
    chan: &Channel,
    kids: &mut Vec<Kid>,
    spares: &mut Vec<Spare>,
    reserve: &mut Reserve,
    me: i32,
) {
    // Room for the request's descriptor, whatever the children hold (see `Reserve`).
    reserve.0 = None;
    let mut frame = match chan.recv_frame(None) {
        Ok(f) => f,
        Err(_) => shutdown(kids, std::mem::take(spares)),
    };
    let req = crate::codec::decode::<ToServer>(&frame.payload, Vec::new());
    let (Ok(ToServer::Spawn), Some(ctrl)) = (req, frame.fds.pop()) else {
        return;
    };
    if !reserve.refill() {
        refuse(ctrl, out_of_descriptors("receiving a request", None));
        // `ctrl`'s descriptor is free again: the reserve fits for the next request.
        reserve.refill();
        return;
    }
    let status = match open_status(&ctrl) {
        Ok(s) => s,
        Err(e) => return refuse(ctrl, could_not("opening the child's status socket", e)),
    };
    let kid = match spares.pop() {
        Some(sp) => match hand_to_spare(sp, ctrl) {
            Ok((pid, pidfd)) => Some(Kid {
                pid,
                pidfd,
                status,
                exit: None,
            }),
            Err(ctrl) => fork_child(chan, kids, spares, reserve, ctrl, status, me),
        },
        None => fork_child(chan, kids, spares, reserve, ctrl, status, me),
    };
    kids.extend(kid);
}

/// Sends each exited kid's report (never blocking) and forgets it once sent, or once the
/// parent's end is gone; a kid whose socket is full is retried when it becomes writable.
fn report_exits(kids: &mut Vec<Kid>) {
    kids.retain(|k| match k.exit {
        None => true,
        Some(code) => {
            let payload = control_tail(&FromChild::Exit { code });
            matches!(k.status.try_send_raw(&payload), Err(e) if e.kind() == ErrorKind::WouldBlock)
        }
    });
}

/// Gives `ctrl` to the spare; on failure (the spare died) gives `ctrl` back untouched, so
/// that a child forked on demand can announce itself on it instead.
fn hand_to_spare(
    sp: Spare,
    ctrl: RegisteredFd,
) -> std::result::Result<(i32, Option<RegisteredFd>), RegisteredFd> {
    match sp.link.send_raw(&[], &[ctrl.as_fd()]) {
        Ok(()) => Ok((sp.pid, sp.pidfd)),
        Err(_) => {
            let _ = sys::process::signal_pid(sp.pid, sys::process::SIGKILL);
            let _ = sys::process::wait_child(sp.pid, true);
            Err(ctrl)
        }
    }
}

/// Forks a prepared child that waits for its control socket (see [`Spare`]).
fn make_spare(
    chan: &Channel,
    kids: &mut Vec<Kid>,
    spares: &mut Vec<Spare>,
    reserve: &mut Reserve,
    server_pid: i32,
) -> Option<Spare> {
    let (here, there) = fdreg::socketpair().ok()?;
    match super::fork::fork_single_threaded() {
        Err(_) => None,
        Ok(None) => {
            kids.clear();
            spares.clear();
            reserve.0 = None;
            drop(here);
            become_server_child(chan, server_pid);
            // Prepared ahead of time, including the pidfd it announces with `Hello`.
            let prepared = bootstrap::child_prepare(true);
            let link = Channel::new(there);
            match link.recv_frame(None) {
                Ok(mut f) => match f.fds.pop() {
                    Some(ctrl) => {
                        drop(link);
                        bootstrap::child_run(ctrl, prepared)
                    }
                    None => sys::process::exit_now(0),
                },
                // The server is gone or shutting down.
                Err(_) => sys::process::exit_now(0),
            }
        }
        Ok(Some(pid)) => Some(Spare {
            pid,
            pidfd: fdreg::pidfd_open(pid).ok().flatten(),
            link: Channel::new(here),
        }),
    }
}

/// In a freshly forked child of the server: die with the server, close its stream.
fn become_server_child(chan: &Channel, server_pid: i32) {
    if sys::process::kill_me_with_parent().is_err() || sys::process::getppid() != server_pid {
        sys::process::exit_now(71);
    }
    sys::process::default_sigint();
    fdreg::close_forgotten(chan.fd().as_raw_fd());
}

fn shutdown(kids: &mut [Kid], spares: Vec<Spare>) -> ! {
    for sp in spares {
        let _ = sys::process::signal_pid(sp.pid, sys::process::SIGKILL);
        let _ = sys::process::wait_child(sp.pid, true);
    }
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

/// Creates the status socket of a new child and sends the parent its end, first on the
/// control stream (before the child can write anything).
fn open_status(ctrl: &RegisteredFd) -> std::io::Result<Channel> {
    let (here, there) = fdreg::socketpair()?;
    let msg = control_tail(&FromChild::Status);
    let header = crate::codec::frame::encode_header(msg.len(), 1).map_err(std::io::Error::other)?;
    sys::socket::send_frame(ctrl.as_fd(), &[&header, &msg], &[there.as_fd()], true)?;
    Ok(Channel::new(here))
}

/// Forks a child on demand for `ctrl` (no spare was ready). `status` is the server's end of
/// the child's status socket: the child drops its copy at once (it must never hold it).
fn fork_child(
    chan: &Channel,
    kids: &mut Vec<Kid>,
    spares: &mut Vec<Spare>,
    reserve: &mut Reserve,
    ctrl: RegisteredFd,
    status: Channel,
    server_pid: i32,
) -> Option<Kid> {
    // The server is single-threaded: `fork` here has no lock hazards.
    match super::fork::fork_single_threaded() {
        Err(e) => {
            refuse(ctrl, could_not("forking the child", e));
            None
        }
        Ok(None) => {
            // Child: drop everything of the server's (single-threaded, so plain drops are fine).
            kids.clear();
            spares.clear();
            reserve.0 = None;
            drop(status);
            become_server_child(chan, server_pid);
            bootstrap::child_main(ctrl, true, None)
        }
        Ok(Some(pid)) => {
            drop(ctrl);
            Some(Kid {
                pid,
                pidfd: fdreg::pidfd_open(pid).ok().flatten(),
                status,
                exit: None,
            })
        }
    }
}
