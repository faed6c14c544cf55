//! The `Spawn` start method: re-execute this program; `bootstrap.rs` takes over before `main`.

use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;

use super::bootstrap::BOOT_ENV;
use super::Launched;
use crate::connection::channel::Channel;
use crate::error::{Error, Result};
use crate::fdreg;
use crate::sys;

/// Builds the command that re-executes this program with `boot` as its boot variable,
/// keeping `keep` open across `exec`.
pub(super) fn self_command(boot: String, keep: Vec<RawFd>) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0);
    }
    cmd.env(BOOT_ENV, boot);
    sys::process::inherit_fds(&mut cmd, keep);
    cmd
}

/// Starts a child that will read its task from the returned control stream.
pub(super) fn launch(lifeline_read: RawFd) -> Result<Launched> {
    let (parent_end, child_end) = fdreg::socketpair().map_err(Error::io)?;
    let c = child_end.as_raw_fd();
    let key = super::bootstrap::format_key(crate::task::key());
    let mut cmd = self_command(
        format!("child:{c}:{lifeline_read}:{key}"),
        vec![c, lifeline_read],
    );
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(e).context("re-executing this program"))?;
    let pid = child.id() as i32;
    drop(child_end);
    // Without a pidfd (out of descriptors) waitpid still works; never lose the child.
    let pidfd = fdreg::pidfd_open(pid).ok().flatten();
    Ok(Launched {
        pid,
        pidfd,
        chan: Channel::new(parent_end),
        via_server: false,
    })
}
