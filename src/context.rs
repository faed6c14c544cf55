//! Start methods and the process-wide default.

use std::sync::atomic::{AtomicU8, Ordering};

/// How a child process is created, as in Python's `multiprocessing`.
///
/// | method | how | cost here | safe in a multi-threaded parent |
/// |---|---|---|---|
/// | [`ForkServer`](Self::ForkServer) (default) | a clean single-threaded server, started once by re-executing this program, forks each child | lowest after the first start | yes |
/// | [`Spawn`](Self::Spawn) | re-executes this program; the child becomes the task before `main` runs | about one `exec` per child | yes |
/// | [`Fork`](Self::Fork) | `fork()` of the calling process; the child runs the task in a copy of it | one `fork` of the caller | see below |
///
/// # Fork's contract
///
/// The child of [`Fork`](Self::Fork) is a copy of the whole parent taken in the middle of
/// whatever its other threads were doing, with only the calling thread running. Any lock
/// another thread held at that moment stays held forever in the child. multiproc's own code in
/// the child takes no such lock (and glibc resets its allocator's locks for the child), and
/// multiproc holds std's stdout and stderr locks across the fork, so printing is safe; beyond
/// that **the task is sound under `Fork` when the parent is single-threaded, or when the task
/// itself takes no lock that another parent thread might have held** (a `Mutex`, a logger,
/// a thread pool, a tokio runtime). When in doubt use the default.
/// File descriptors the parent has open are inherited by a forked child (as in Python);
/// multiproc neutralises its own (the child keeps only those of its arguments).
///
/// # What every child starts with
///
/// Whatever the method, a child runs in the parent's working directory and environment *as
/// they are at the time of the spawn*: `Fork` and `Spawn` children inherit them, and a
/// `ForkServer` child is sent the directory and the changes to the environment since the
/// server started (Python's forkserver sends the directory but keeps the server's
/// environment; we follow the parent, like the other two methods). An ignored SIGINT or SIGHUP
/// stays ignored in the child, under every method, as in Python; [`ProcessBuilder::ignore_sigint`](crate::ProcessBuilder::ignore_sigint)
/// makes a child ignore SIGINT on its own. In the child, [`get_start_method`] returns the
/// method that made it, so its own children use the same one by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    /// `fork()` the calling process (see the contract above).
    Fork,
    /// Re-execute the current program for every child.
    Spawn,
    /// Fork each child from a clean server process started on first use (the default).
    #[default]
    ForkServer,
}

impl StartMethod {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            StartMethod::Fork => 1,
            StartMethod::Spawn => 2,
            StartMethod::ForkServer => 3,
        }
    }
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => StartMethod::Fork,
            2 => StartMethod::Spawn,
            _ => StartMethod::ForkServer,
        }
    }
    /// Python's name for the method (`"fork"`, `"spawn"`, `"forkserver"`).
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }
}

static DEFAULT: AtomicU8 = AtomicU8::new(0);

/// Sets the start method used when a builder does not choose one (`set_start_method`).
///
/// ```
/// multiproc::set_start_method(multiproc::StartMethod::Spawn);
/// assert_eq!(multiproc::get_start_method(), multiproc::StartMethod::Spawn);
/// multiproc::set_start_method(multiproc::StartMethod::ForkServer);
/// ```
pub fn set_start_method(method: StartMethod) {
    DEFAULT.store(method.to_u8(), Ordering::Relaxed);
}

/// The start method used when a builder does not choose one.
///
/// In a multiproc child this is the method that started it (as in Python), until the child
/// calls [`set_start_method`].
pub fn get_start_method() -> StartMethod {
    StartMethod::from_u8(DEFAULT.load(Ordering::Relaxed))
}

/// Every start method this platform supports (`get_all_start_methods`).
pub fn all_start_methods() -> &'static [StartMethod] {
    &[
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ]
}

/// The number of CPUs this process may use (`cpu_count`).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
