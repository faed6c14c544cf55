//! The cleanup watcher of a named segment: a tiny `sh` process that removes the segment's
//! name when its creator dies without dropping the handle (`SIGKILL`, `abort`, a crash).
//!
//! The watcher blocks reading a pipe whose write end only the creator's handle holds (a
//! registered, close-on-exec descriptor, so no child of ours keeps it: `Fork` children
//! neutralise it, exec'd ones never get it). When the creator dies, the kernel closes the
//! write end, `read` sees end of file and the watcher `exec`s `rm -f -- <path>`. When the
//! handle drops normally (or persists, or unlinks), the creator first `SIGKILL`s and reaps
//! the watcher, so it can never remove a name that was meanwhile reused by someone else,
//! and then acts itself. The watcher runs in its own process group, so a terminal's Ctrl-C
//! (which kills the creator) does not kill it too. It is the one process this crate starts
//! that outlives its parent, on purpose, and it lives only until it has removed the name.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::fdreg::{self, RegisteredFd};

/// A running watcher for one name.
#[derive(Debug)]
pub(super) struct Watcher {
    child: Child,
    /// The write end of the watcher's stdin: its lifeline.
    _lifeline: RegisteredFd,
}

impl Watcher {
    /// Starts a watcher that removes `path` when this process dies holding the watcher.
    pub(super) fn start(path: &str) -> io::Result<Watcher> {
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "read x; exec rm -f -- \"$1\"",
                "multiproc-shm-watch",
                path,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin was piped");
        // Registered, so a `Fork` child neutralises its copy (std's own descriptor is
        // close-on-exec but unknown to the registry).
        let lifeline = match fdreg::duplicate(stdin.as_fd()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        drop(stdin);
        Ok(Watcher {
            child,
            _lifeline: lifeline,
        })
    }

    /// Stops the watcher without letting it remove anything: killed and reaped before its
    /// lifeline closes.
    pub(super) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
