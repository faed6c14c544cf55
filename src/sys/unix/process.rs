//! Process creation, signals, exit statuses and parent-death handling.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

/// How a process ended: `Code(n)` for `exit(n)`, `Signal(s)` when killed by signal `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Normal exit with this code.
    Code(i32),
    /// Terminated by this signal.
    Signal(i32),
}

impl Exit {
    /// Python's `exitcode`: the code, or the negated signal number.
    pub(crate) fn python_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => -s,
        }
    }
}

/// The result of [`fork`] in each process.
#[derive(Debug)]
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork(2)`.
///
/// # Safety
///
/// In a multi-threaded process the child holds copies of locks that other threads held at the
/// moment of the fork, and those threads do not exist in the child. The caller must make sure
/// the child only does what is safe under that condition: async-signal-safe calls, or code the
/// caller knows takes no lock another thread could have held (glibc's allocator is reset for
/// the child by glibc itself).
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the contract above; `fork` has no other preconditions.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Leaves the process at once with `code`, running no exit handlers and flushing nothing.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// This process's id.
pub(crate) fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The parent's id (0 when the parent is outside our pid namespace).
pub(crate) fn getppid() -> i32 {
    rustix::process::getppid()
        .map(|p| p.as_raw_nonzero().get())
        .unwrap_or(0)
}

fn pid(raw: i32) -> io::Result<Pid> {
    Pid::from_raw(raw).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"))
}

fn signal(sig: i32) -> io::Result<Signal> {
    Signal::from_named_raw(sig)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))
}

/// A race-free handle on process `raw` (a pidfd). `Ok(None)` where the kernel has none.
pub(crate) fn pidfd_open(raw: i32) -> io::Result<Option<OwnedFd>> {
    match rustix::process::pidfd_open(pid(raw)?, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOSYS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` through a pidfd. `ESRCH` (already exited) is not an error.
pub(crate) fn signal_pidfd(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, signal(sig)?) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to a pid. `ESRCH` (already gone) is not an error.
pub(crate) fn signal_pid(raw: i32, sig: i32) -> io::Result<()> {
    match rustix::process::kill_process(pid(raw)?, signal(sig)?) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps child `raw`. With `block == false` returns `Ok(None)` while it still runs.
pub(crate) fn wait_child(raw: i32, block: bool) -> io::Result<Option<Exit>> {
    let opts = if block {
        WaitOptions::empty()
    } else {
        WaitOptions::NOHANG
    };
    loop {
        match rustix::process::waitpid(Some(pid(raw)?), opts) {
            Ok(None) => return Ok(None),
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(Some(Exit::Code(code)));
                }
                if let Some(sig) = status.terminating_signal() {
                    return Ok(Some(Exit::Signal(sig)));
                }
                // Stopped or continued: not an exit; keep waiting.
                if !block {
                    return Ok(None);
                }
            }
            Err(Errno::INTR) => continue,
            // Already reaped by someone else (SIGCHLD ignored, a foreign `waitpid(-1)`): it is
            // gone and its status is lost. Report that as a final state rather than forever
            // "still running".
            Err(Errno::CHILD) => return Ok(Some(Exit::Code(STATUS_LOST))),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The exit code reported for a child whose status someone else collected.
pub(crate) const STATUS_LOST: i32 = 255;

/// Whether `e` says this process (`EMFILE`) or the system (`ENFILE`) ran out of descriptors.
pub(crate) fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}

/// This process's soft `RLIMIT_NOFILE` as text ("unlimited" when there is none), for error
/// messages about running out of descriptors.
pub(crate) fn descriptor_limit() -> String {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

/// Asks the kernel to SIGKILL this process when the thread that created it exits.
///
/// Only reliable when the parent is single-threaded (the fork server), since Linux ties the
/// signal to the parent *thread*.
pub(crate) fn kill_me_with_parent() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        Signal::KILL,
    ))?)
}

/// Resets SIGPIPE to "ignore" (as Rust's `main` does) so writes to closed peers give EPIPE.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN has no handler code to run; `signal` is safe to call.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Ignores SIGINT (the fork server must survive a Ctrl-C aimed at the terminal's group).
pub(crate) fn ignore_sigint() {
    // SAFETY: as above, SIG_IGN installs no handler.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

/// Restores the default SIGCHLD disposition: an inherited `SIG_IGN` would make the kernel
/// reap our children itself, and we could never learn how they ended.
pub(crate) fn default_sigchld() {
    // SAFETY: SIG_DFL installs no handler.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}

/// Restores the default SIGINT disposition (in children of the fork server).
pub(crate) fn default_sigint() {
    // SAFETY: SIG_DFL installs no handler.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

/// Makes `cmd` keep `fds` open across `exec` (all our descriptors are close-on-exec).
pub(crate) fn inherit_fds(cmd: &mut Command, fds: Vec<i32>) {
    // SAFETY: the closure runs in the forked child before exec and only calls `fcntl`, which is
    // async-signal-safe; it allocates nothing (the Vec was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
}

/// Registers `f` to run when the process calls `exit` (not `_exit`).
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain `extern "C" fn()` with static lifetime, as `atexit` requires.
    unsafe { libc::atexit(f) };
}

/// Closes a raw descriptor whose owning value is never used again in this process (the
/// fork server's stream, in a freshly forked child of the server; see
/// `fdreg::close_forgotten`).
pub(crate) fn close_raw(fd: i32) {
    // SAFETY: the caller guarantees that the value owning `fd` is never used or dropped
    // again, so nothing can act on the number after it is closed (and possibly reused).
    unsafe { libc::close(fd) };
}

/// Writes `bytes` to standard error with plain `write(2)` calls: no lock, no allocation
/// (for a forked child, where std's stderr lock may be held by a thread that is gone).
/// Errors are ignored: there is nowhere to report them.
pub(crate) fn write_stderr_raw(mut bytes: &[u8]) {
    // SAFETY: fd 2 is only written to; `BorrowedFd` does not close it.
    let fd = unsafe { BorrowedFd::borrow_raw(2) };
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Makes each descriptor in `fds` refer to a dead socket (reads: end of file; writes: EPIPE)
/// while keeping its number taken, so values that still hold the number never touch a reused
/// descriptor. Used in forked children on inherited multiproc descriptors.
pub(crate) fn neutralize(fds: &[i32]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if fds.is_empty() {
        return Ok(());
    }
    let (dead, peer) = super::socket::socketpair()?;
    drop(peer);
    for &fd in fds.iter().filter(|&&fd| fd != dead.as_raw_fd()) {
        // SAFETY: `dup3` atomically replaces `fd` (which this process inherited and which no
        // live value will use for anything but a failing read/write or a close) with a
        // close-on-exec duplicate of `dead`; it touches no memory.
        if unsafe { libc::dup3(dead.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the calling thread is the process's main thread.
pub(crate) fn is_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// SIGTERM.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// SIGKILL.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Takes ownership of descriptor `raw` inherited across `exec` (named in our boot variable),
/// after checking it is open, and makes it close-on-exec again.
pub(crate) fn adopt_inherited_fd(raw: i32) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if raw < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "negative descriptor",
        ));
    }
    // SAFETY: F_GETFD only inspects the descriptor table; an invalid fd gives EBADF.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is open (checked above) and was inherited for us alone: the boot variable
    // that names it is consumed before `main`, so no other value in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// SIGINT.
pub(crate) const SIGINT: i32 = libc::SIGINT;
/// SIGHUP.
pub(crate) const SIGHUP: i32 = libc::SIGHUP;

/// Whether signal `sig` is currently ignored (`SIG_IGN`) in this process.
pub(crate) fn is_ignored(sig: i32) -> bool {
    // SAFETY: an all-zero `sigaction` is a valid value of the plain C struct; with a null new
    // action, `sigaction` only writes the current one into `old` and changes nothing.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Sets signal `sig` to "ignore" or back to its default action (a child applying the
/// dispositions its parent sent).
pub(crate) fn set_ignored(sig: i32, ignored: bool) {
    let action = if ignored {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: SIG_IGN and SIG_DFL install no handler code.
    unsafe { libc::signal(sig, action) };
}

/// Names the calling thread (`/proc/self/task/*/comm`, shown by `ps` and `top`); the kernel
/// keeps the first 15 bytes.
pub(crate) fn set_thread_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    if let Ok(c) = std::ffi::CStr::from_bytes_with_nul(&bytes) {
        let _ = rustix::thread::set_name(c);
    }
}
