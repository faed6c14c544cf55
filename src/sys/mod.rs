//! The platform layer: every system call the crate makes goes through here.
//!
//! A backend provides, in prose:
//!
//! * **sockets** ([`socket`]): a connected, close-on-exec stream socket pair; `send_frame`
//!   writes a header and payload with optional file descriptors attached to the first byte
//!   (SCM_RIGHTS on Unix), never raising SIGPIPE; `recv_with_fds` reads whatever is available
//!   into a buffer without blocking and hands over any descriptors that arrived with it
//!   (telling a truncation by an exhausted descriptor table from one by a peer that sent too
//!   many); `wait_fd` blocks until an fd is ready or a deadline passes. For
//!   `connection::Listener`/`Client`: TCP and Unix (path or abstract) stream sockets that
//!   bind, listen, accept without blocking and connect with a deadline, `TCP_NODELAY`,
//!   non-blocking `send`/`recv`, a readiness set (one descriptor that polls ready while
//!   any watched one is: epoll), and random bytes from the kernel for the handshake's nonces. The creators here
//!   (socket pairs, pipes, memfds, pidfds) are called only by `fdreg`, which lists what they
//!   make before anyone can fork.
//! * **processes** ([`process`]): `fork` (unsafe: see its contract), `exit_now` (leave without
//!   running exit handlers), race-free process handles (pidfd on Linux) that can be signalled
//!   and polled for exit, `waitpid`, the parent-death signal, and `atexit`.
//! * **fingerprint** ([`exe`]): a stable identity of the running executable (the ELF build-id
//!   on Linux) so a child can check it runs the very same program as its parent.
//! * **shared memory** ([`shm`]): anonymous segments whose size cannot change after creation
//!   (a sealed memfd on Linux), passable as descriptors and checkable on receipt; shared
//!   mappings with a control region (atomics) and a data region (copies); giving
//!   pages back (`PUNCH_HOLE`).
//! * **robust locks** ([`robust`]): process-shared locks in shared memory that tell the next
//!   locker when the previous owner died holding one, whatever the memory holds (a futex lock
//!   whose owner word names a thread, checked in `/proc` on Linux).
//! * **futexes** ([`futex`]): sleep while a 32-bit word in shared memory holds a value, and
//!   wake sleepers, across processes (shared futexes on Linux).
//!
//! Linux is the first backend. macOS would use the same Unix shape with a kqueue
//! `EVFILT_PROC` in place of pidfds; Windows would need a handle-based backend. One `cfg`
//! switch picks the backend below; nothing outside `sys` names a platform API.
//!
//! Almost all of the crate's unsafe code is here (ARCHITECTURE.md, "Unsafe code", lists the
//! few other places); every block carries a `// SAFETY:` comment.

#[cfg(target_os = "linux")]
mod unix;
#[cfg(target_os = "linux")]
use unix as backend;

// The interface, item by item: a second backend that lacks one (or names it differently)
// fails to compile here, not somewhere in the crate above. Add an item here when a backend
// gains one that the crate uses.

/// Stream sockets, pipes, descriptor passing and readiness.
pub(crate) mod socket {
    /// What `recv_with_fds` returns (named only by tests; the crate uses its fields).
    #[allow(unused_imports)]
    pub(crate) use super::backend::socket::Received;
    pub(crate) use super::backend::socket::{
        advise_huge_pages, is_fifo, is_unix_stream_socket, pipe, poll_each, poll_many, read_into,
        read_into_vec, recv_with_fds, send_frame, send_frame_until, shutdown, socketpair,
        truncation_error, wait_fd, write_all, write_all_until, Events, Half, MAX_FDS_PER_FRAME,
    };
    // Network and named sockets (connection::Listener / Client).
    pub(crate) use super::backend::socket::{
        accept, bind_listen, connect_until, local_inet_addr, random_bytes, recv_nowait,
        send_nowait, set_nodelay, stream_socket, SockAddr,
    };
    pub(crate) use super::backend::socket::{readiness_set, unwatch, watch};
}

/// Processes: fork, exit, handles, signals, waiting, inherited descriptors.
pub(crate) mod process {
    /// What `wait_child` returns (named only by tests; the crate uses its methods).
    #[allow(unused_imports)]
    pub(crate) use super::backend::process::Exit;
    pub(crate) use super::backend::process::{
        adopt_inherited_fd, at_exit, close_raw, default_sigchld, default_sigint, exit_now, fork,
        getpid, getppid, ignore_sigint, ignore_sigpipe, inherit_fds, is_main_thread,
        kill_me_with_parent, neutralize, pidfd_open, signal_pid, signal_pidfd, wait_child,
        write_stderr_raw, Forked, SIGKILL, SIGTERM,
    };
    pub(crate) use super::backend::process::{
        descriptor_limit, is_ignored, is_out_of_descriptors, set_ignored, set_thread_name, SIGHUP,
        SIGINT, STATUS_LOST,
    };
}

/// MPI sends and receives that never wait for the peer, and MPI calls whose errors are
/// returned (feature `mpi`).
#[cfg(feature = "mpi")]
pub(crate) mod mpi {
    pub(crate) use super::backend::mpi::{
        errors_return, note_failed, probe, send, take_failed, try_recv_any, Irecv, Isend,
    };
}

/// The running executable's identity.
pub(crate) mod exe {
    pub(crate) use super::backend::exe::fingerprint;
}

/// Sealed shared-memory segments and their mappings.
pub(crate) mod shm {
    pub(crate) use super::backend::shm::{
        allocate, open_named, regular_len, unlink_named, write_at, NAMED_DIR,
    };
    pub(crate) use super::backend::shm::{
        create, discard, identity, page_size, read_at, sealed_len, Mapping,
    };
}

/// Process-shared robust locks.
pub(crate) mod robust {
    pub(crate) use super::backend::robust::{
        held_by_me, init, lock, lock_spinning, owner_died, prepare_fork, process_alive,
        process_identity, thread_alive, thread_identity, try_lock, try_lock_or_take_over, unlock,
        Acquired, Held, FORMAT, SLOT, TICK,
    };
}

/// Cross-process futex waits and wakes.
pub(crate) mod futex {
    pub(crate) use super::backend::futex::{wait, wake, Woken};
}

#[cfg(test)]
mod tests;

#[cfg(not(target_os = "linux"))]
compile_error!("multiproc currently supports Linux only; macOS and Windows backends are planned");
