//! Reaping: the thread that collects dropped, unjoined children, and the at-exit logic.
//!
//! A dropped handle whose child still runs marks it *detached*; the reaper thread runs only
//! while detached children exist. It sleeps in `poll` on their pidfds (on a fork-server
//! child's stream until it announced one) and on a wake-up socket that a newly detached child
//! rings, so it costs nothing between exits (children without a pidfd, on old kernels or out
//! of descriptors, are checked every 50 ms). Its state lives in the global state, which a
//! `Fork` child starts afresh. At normal exit, [`at_exit`] terminates daemon children, waits
//! for the others (Python's semantics), and then waits for the fork server.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::child::{book, unregister, ChildShared};
use crate::connection::channel::Channel;
use crate::spawn;
use crate::sys;
use crate::wait::lock;

/// Whether [`at_exit`] is registered with the C library (once per address space: a `Fork`
/// child inherits the registration with the flag).
static AT_EXIT_SET: AtomicBool = AtomicBool::new(false);

/// What every launch does first: registers [`at_exit`] the first time, and reaps detached
/// children that have exited.
pub(super) fn before_launch() {
    if !AT_EXIT_SET.swap(true, Ordering::AcqRel) {
        sys::process::at_exit(at_exit);
    }
    reap_detached();
}

/// Reaps detached children that have exited (called on every launch and by the reaper);
/// returns the detached children still running.
pub(super) fn reap_detached() -> Vec<Arc<ChildShared>> {
    let detached: Vec<Arc<ChildShared>> = {
        let mut g = spawn::global();
        book(&mut g)
            .children
            .iter()
            .filter(|c| c.detached.load(Ordering::Relaxed))
            .cloned()
            .collect()
    };
    let mut left = Vec::new();
    for c in detached {
        if c.is_alive() {
            left.push(c);
        } else {
            c.try_reap();
            unregister(&c);
        }
    }
    left
}

/// The reaper's state, part of the global state (`child::Book`), so a `Fork` child starts
/// with none.
#[derive(Debug, Default)]
pub(super) struct ReaperState {
    /// Whether the reaper thread runs.
    running: bool,
    /// Its wake-up socket pair (write end, read end), while it runs: a newly detached child
    /// joins its poll.
    wake: Option<Arc<(Channel, Channel)>>,
}

/// Makes sure the reaper thread runs, and wakes it so that it watches a newly detached child.
pub(super) fn start_reaper() {
    let mut g = spawn::global();
    let reaper = &mut book(&mut g).reaper;
    if reaper.wake.is_none() {
        match crate::fdreg::socketpair() {
            Ok((a, b)) => reaper.wake = Some(Arc::new((Channel::new(a), Channel::new(b)))),
            // Out of descriptors: launches and `active_children` still reap.
            Err(_) => return,
        }
    }
    let Some(wake) = reaper.wake.clone() else {
        return;
    };
    if reaper.running {
        drop(g);
        let _ = wake.0.try_send_raw(&[]);
        return;
    }
    reaper.running = true;
    drop(g);
    let spawned = std::thread::Builder::new()
        .name("multiproc-reaper".into())
        .spawn(move || reaper_loop(&wake));
    if spawned.is_err() {
        book(&mut spawn::global()).reaper.running = false;
    }
}

/// The reaper thread: while detached children exist, sleeps in `poll` on their pidfds (a
/// fork-server child's stream until it announced its pidfd) and on the wake-up socket, and
/// reaps whoever exited. No timer, except for children without a pidfd (old kernels, or out
/// of descriptors), which are checked every 50 ms.
fn reaper_loop(wake: &(Channel, Channel)) {
    loop {
        let left = reap_detached();
        if left.is_empty() {
            // A child detached after our scan is already marked: check under the lock that
            // `start_reaper` takes, so either we see it or it sees us stopped.
            let mut g = spawn::global();
            let book = book(&mut g);
            if !book
                .children
                .iter()
                .any(|c| c.detached.load(Ordering::Relaxed))
            {
                // Idle: keep no descriptor (the pair closes with the last `Arc`, ours).
                book.reaper.running = false;
                book.reaper.wake = None;
                return;
            }
            continue;
        }
        let mut set = vec![(wake.1.fd(), sys::socket::Events::IN)];
        let mut slow = false;
        for c in &left {
            match c.pidfd.get() {
                Some(p) => set.push((p.as_fd(), sys::socket::Events::IN)),
                None if c.via_server && c.pid() == 0 => {
                    set.push((c.chan.fd(), sys::socket::Events::IN))
                }
                None => slow = true,
            }
        }
        let deadline = slow.then(|| Instant::now() + Duration::from_millis(50));
        let _ = sys::socket::poll_each(&set, deadline);
        while wake.1.recv_frame(Some(Instant::now())).is_ok() {}
    }
}

/// At normal exit: terminate daemon children, wait for the others (Python's semantics).
pub(super) extern "C" fn at_exit() {
    // glibc destroys the exiting thread's thread-locals before it runs `atexit` handlers, and
    // decoding a child's last frame uses the codec's thread-local tables: an access here would
    // panic, and a panic cannot leave an `extern "C"` function (the process would abort). So
    // the work runs on a fresh thread, or, if none can be started, under `catch_unwind`.
    let worker = std::thread::Builder::new()
        .name("multiproc-exit".into())
        .spawn(finish_children);
    match worker {
        Ok(h) => drop(h.join()),
        Err(_) => drop(std::panic::catch_unwind(finish_children)),
    }
}

/// Terminates daemon children and waits for the others, then stops the fork server.
fn finish_children() {
    let children: Vec<Arc<ChildShared>> = {
        // Another thread may hold the lock forever (it is being torn down with us): give up
        // rather than hang the exit.
        let mut tries = 0;
        loop {
            if let Some(mut g) = spawn::try_global() {
                break book(&mut g).children.clone();
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
    spawn::stop_server_at_exit();
}
