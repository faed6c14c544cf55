//! Every public error type of the crate.

use std::fmt;
use std::io;

/// A specialised `Result` for multiproc operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The category of an [`Error`], for matching.
///
/// ```
/// # use multiproc::{Error, ErrorKind};
/// fn retryable(e: &Error) -> bool {
///     matches!(e.kind(), ErrorKind::Timeout | ErrorKind::WorkerLost)
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The function panicked in the child; [`Error::panic_message`] has the message.
    Panicked,
    /// The child was killed by a signal before it returned; [`Error::signal`] says which.
    Killed,
    /// The child exited (with [`Error::exit_code`]) before it returned a result.
    Exited,
    /// A pool worker died while running the task (crash, OOM kill, `abort`, signal).
    WorkerLost,
    /// A deadline passed (`*_timeout` calls, or a pool's per-task timeout).
    Timeout,
    /// The other end is gone: the peer closed its end or its process exited.
    Disconnected,
    /// Nothing is available right now (`try_*` calls).
    WouldBlock,
    /// The value could not be serialised.
    Encode,
    /// The bytes received could not be deserialised into the expected type.
    Decode,
    /// A message (an argument, a return value, a frame on a stream) was larger than the
    /// configured maximum message size; [`Error`]'s message says which limit to raise.
    TooLarge,
    /// The peer broke the wire protocol (garbage bytes, a forged handle, a truncated frame).
    Protocol,
    /// A network peer did not prove it knows the authkey (a
    /// [`Listener`](crate::connection::Listener) refused ours, or could not prove its own).
    AuthenticationFailed,
    /// The other process (a child, or an MPI rank) is not running the same executable as
    /// this one.
    ExecutableMismatch,
    /// The object was closed, or the pool no longer accepts work.
    Closed,
    /// The task was cancelled because its pool was terminated.
    Cancelled,
    /// The result was already taken (a second `get` on a pool's `AsyncResult`).
    AlreadyJoined,
    /// `recv_bytes_into` was given a buffer smaller than the message (the message stays queued).
    BufferTooShort,
    /// The operation is not supported here (platform or configuration).
    Unsupported,
    /// A [`Barrier`](crate::sync::Barrier) is broken: a party timed out, died, or called
    /// `abort` or `reset` while others waited.
    BrokenBarrier,
    /// The call does not fit the object's state: releasing a `BoundedSemaphore` past its
    /// bound, acquiring a `Lock` this thread already holds, more waiters than a `Condition`
    /// or `Barrier` has room for.
    InvalidState,
    /// An operating-system error; [`std::error::Error::source`] has the `io::Error`.
    Io,
}

#[derive(Debug)]
enum Detail {
    None,
    Message(String),
    Panic {
        message: String,
        location: Option<String>,
        /// The signal that ended the child after the panic (`panic = "abort"` builds).
        signal: Option<i32>,
    },
    Signal(i32),
    Code(i32),
    Io(io::Error),
    Size {
        size: u64,
        limit: u64,
    },
}

/// The error type of multiproc: what happened, and what to do about it.
///
/// Inspect it with [`kind`](Error::kind) and the accessors ([`panic_message`](Error::panic_message),
/// [`signal`](Error::signal), [`exit_code`](Error::exit_code)).
///
/// ```
/// use multiproc::{ErrorKind, Process};
/// let p = Process::spawn((), |()| -> u32 { panic!("boom") }).unwrap();
/// let err = p.join().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Panicked);
/// assert_eq!(err.panic_message(), Some("boom"));
/// ```
pub struct Error {
    kind: ErrorKind,
    detail: Detail,
    context: Option<&'static str>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            detail: Detail::None,
            context: None,
        }
    }
    pub(crate) fn msg(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            detail: Detail::Message(message.into()),
            context: None,
        }
    }
    pub(crate) fn panicked(message: String, location: Option<String>) -> Self {
        Error {
            kind: ErrorKind::Panicked,
            detail: Detail::Panic {
                message,
                location,
                signal: None,
            },
            context: None,
        }
    }
    /// A child killed by `signal` right after it panicked (a `panic = "abort"` build: the
    /// hook sent the message before the abort).
    pub(crate) fn killed_after_panic(
        signal: i32,
        message: String,
        location: Option<String>,
    ) -> Self {
        Error {
            kind: ErrorKind::Killed,
            detail: Detail::Panic {
                message,
                location,
                signal: Some(signal),
            },
            context: None,
        }
    }
    pub(crate) fn killed(kind: ErrorKind, signal: i32) -> Self {
        Error {
            kind,
            detail: Detail::Signal(signal),
            context: None,
        }
    }
    pub(crate) fn exited(kind: ErrorKind, code: i32) -> Self {
        Error {
            kind,
            detail: Detail::Code(code),
            context: None,
        }
    }
    pub(crate) fn too_large(size: u64, limit: u64) -> Self {
        Error {
            kind: ErrorKind::TooLarge,
            detail: Detail::Size { size, limit },
            context: None,
        }
    }
    pub(crate) fn io(err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => ErrorKind::Disconnected,
            io::ErrorKind::WouldBlock => ErrorKind::WouldBlock,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            detail: Detail::Io(err),
            context: None,
        }
    }
    /// Adds what we were doing, shown before the cause ("spawning the fork server: ...").
    pub(crate) fn context(mut self, what: &'static str) -> Self {
        if self.context.is_none() {
            self.context = Some(what);
        }
        self
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The panic message, when the child's function panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.detail {
            Detail::Panic { message, .. } => Some(message),
            _ => None,
        }
    }
    /// Where the child panicked (`file:line:column`), when known.
    pub fn panic_location(&self) -> Option<&str> {
        match &self.detail {
            Detail::Panic { location, .. } => location.as_deref(),
            _ => None,
        }
    }
    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.detail {
            Detail::Signal(s) => Some(s),
            Detail::Panic { signal, .. } => signal,
            _ => None,
        }
    }
    /// The child's exit code, when it exited early with one.
    pub fn exit_code(&self) -> Option<i32> {
        match self.detail {
            Detail::Code(c) => Some(c),
            _ => None,
        }
    }
    /// `true` for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }
    /// `true` for [`ErrorKind::Disconnected`].
    pub fn is_disconnected(&self) -> bool {
        self.kind == ErrorKind::Disconnected
    }
    /// `true` for [`ErrorKind::WouldBlock`]: a `try_*` call found nothing to do right now.
    pub fn is_would_block(&self) -> bool {
        self.kind == ErrorKind::WouldBlock
    }
}

/// A readable name for common signals.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

impl ErrorKind {
    /// What the kind means, as `Display` says it before the detail.
    pub(crate) fn what(self) -> &'static str {
        match self {
            ErrorKind::Panicked => "the function panicked in the child process",
            ErrorKind::Killed => "the child process was killed",
            ErrorKind::Exited => "the child process exited before returning a result",
            ErrorKind::WorkerLost => "the pool worker running this task died",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Disconnected => "the other end disconnected",
            ErrorKind::WouldBlock => "nothing available without blocking",
            ErrorKind::Encode => "could not serialise the value",
            ErrorKind::Decode => "could not deserialise the received bytes into the expected type",
            ErrorKind::TooLarge => "message larger than the maximum message size",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::AuthenticationFailed => "authentication failed",
            ErrorKind::ExecutableMismatch => {
                "the other process is not running the same executable as this one"
            }
            ErrorKind::Closed => "closed",
            ErrorKind::Cancelled => "cancelled: the pool was terminated",
            ErrorKind::AlreadyJoined => "the result was already taken by an earlier join",
            ErrorKind::BufferTooShort => "buffer too short for the message (it stays queued)",
            ErrorKind::Unsupported => "not supported",
            ErrorKind::BrokenBarrier => "the barrier is broken",
            ErrorKind::InvalidState => "not possible in the object's current state",
            ErrorKind::Io => "operating-system error",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.context {
            write!(f, "{c}: ")?;
        }
        f.write_str(self.kind.what())?;
        match &self.detail {
            // The cause is the source; what to do about this one is said here.
            Detail::Io(e) if crate::sys::process::is_out_of_descriptors(e) => write!(
                f,
                ": out of file descriptors (the limit is {}); close descriptors no longer \
                 needed (drop finished `Process`es, `Pool`s and handles) or raise the limit \
                 (`ulimit -n`, RLIMIT_NOFILE)",
                crate::sys::process::descriptor_limit()
            ),
            Detail::None | Detail::Io(_) => Ok(()),
            Detail::Message(m) => write!(f, ": {m}"),
            Detail::Panic {
                message,
                location,
                signal,
            } => {
                if let Some(s) = signal {
                    write!(f, " by signal {s} ({}) after it panicked", signal_name(*s))?;
                }
                write!(f, ": '{message}'")?;
                if let Some(l) = location {
                    write!(f, " at {l}")?;
                }
                Ok(())
            }
            Detail::Signal(s) => write!(f, " by signal {s} ({})", signal_name(*s)),
            Detail::Code(c) => write!(f, " (exit code {c})"),
            Detail::Size { size, limit } => write!(
                f,
                ": {size} bytes, limit {limit}; if the value is expected, raise the limit \
                 (`max_message_size` on `ProcessBuilder` or `PoolBuilder`, \
                 `set_max_message_size` on a `Connection`)"
            ),
        }
    }
}

/// Reads like [`Display`](fmt::Display), with the kind: `unwrap()` on a failed call shows
/// `Error { kind: Timeout, message: "timed out: ..." }`.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.detail {
            Detail::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::io(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Queue errors
// ---------------------------------------------------------------------------------------------

/// A value that could not be put on a queue, given back with the reason.
///
/// Nothing of the item reached the queue. Match on [`kind`](PutError::kind):
/// [`ErrorKind::WouldBlock`] (full, from `try_put`), [`ErrorKind::Timeout`] (still full at the
/// deadline), [`ErrorKind::Closed`] (this handle was closed), [`ErrorKind::Encode`] (serde
/// failed, or the item holds a handle). `?` turns it into an [`Error`], dropping the item.
///
/// ```
/// use multiproc::{ErrorKind, Queue};
/// let q = Queue::bounded(1)?;
/// q.put(1u32)?;
/// let err = q.try_put(2).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::WouldBlock);
/// assert_eq!(err.into_inner(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct PutError<T> {
    item: T,
    error: Error,
}

impl<T> PutError<T> {
    pub(crate) fn new(item: T, error: Error) -> Self {
        PutError { item, error }
    }
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        self.item
    }
    /// The item and the reason.
    pub fn into_parts(self) -> (T, Error) {
        (self.item, self.error)
    }
    /// The item that was not put, by reference.
    pub fn item(&self) -> &T {
        &self.item
    }
    /// Why it was not put.
    pub fn error(&self) -> &Error {
        &self.error
    }
    /// The category of [`error`](PutError::error).
    pub fn kind(&self) -> ErrorKind {
        self.error.kind
    }
    /// `true` when the queue was full (`try_put`) or stayed full until the deadline.
    pub fn is_full(&self) -> bool {
        matches!(self.error.kind, ErrorKind::WouldBlock | ErrorKind::Timeout)
    }
    /// `true` for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.error.kind == ErrorKind::Timeout
    }
    /// `true` for [`ErrorKind::Closed`].
    pub fn is_closed(&self) -> bool {
        self.error.kind == ErrorKind::Closed
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Self {
        e.error
    }
}
