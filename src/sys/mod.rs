//! The platform layer: every system call the crate makes goes through here.
//!
//! A backend provides, in prose:
//!
//! * **sockets** ([`socket`]): a connected, close-on-exec stream socket pair; `send_frame`
//!   writes a header and payload with optional file descriptors attached to the first byte
//!   (SCM_RIGHTS on Unix), never raising SIGPIPE; `recv_with_fds` reads whatever is available
//!   into a buffer without blocking and hands over any descriptors that arrived with it
//!   (telling a truncation by an exhausted descriptor table from one by a peer that sent too
//!   many); `wait_fd` blocks until an fd is ready or a deadline passes. The creators here
//!   (socket pairs, pipes, memfds, pidfds) are called only by `fdreg`, which lists what they
//!   make before anyone can fork.
//! * **processes** ([`process`]): `fork` (unsafe: see its contract), `exit_now` (leave without
//!   running exit handlers), race-free process handles (pidfd on Linux) that can be signalled
//!   and polled for exit, `waitpid`, the parent-death signal, and `atexit`.
//! * **fingerprint** ([`exe`]): a stable identity of the running executable (the ELF build-id
//!   on Linux) so a child can check it runs the very same program as its parent.
//! * **shared memory** ([`shm`]): anonymous segments whose size cannot change after creation
//!   (a sealed memfd on Linux), passable as descriptors and checkable on receipt; shared
//!   mappings with a control region (atomics, mutexes) and a data region (copies); giving
//!   pages back (`PUNCH_HOLE`).
//! * **robust locks** ([`robust`]): process-shared mutexes in shared memory that tell the next
//!   locker when the previous owner died holding one (glibc robust mutexes on Linux).
//! * **futexes** ([`futex`]): sleep while a 32-bit word in shared memory holds a value, and
//!   wake sleepers, across processes (shared futexes on Linux).
//!
//! Linux is the first backend. macOS would use the same Unix shape with a kqueue
//! `EVFILT_PROC` in place of pidfds; Windows would need a handle-based backend. One `cfg`
//! switch picks the backend below; nothing outside `sys` names a platform API.
//!
//! Unsafe code is allowed in this module only; every block carries a `// SAFETY:` comment.

#[cfg(target_os = "linux")]
mod unix;
#[cfg(target_os = "linux")]
pub(crate) use unix::*;

#[cfg(not(target_os = "linux"))]
compile_error!("multiproc currently supports Linux only; macOS and Windows backends are planned");
