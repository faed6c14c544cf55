//! Messages on a child's control stream and on the fork server's stream.
//!
//! Parent → child: [`TaskSpec`], then the encoded arguments as a raw frame (with descriptors).
//! Child → parent: (fork-server children only, after the server's [`FromChild::Status`])
//! [`FromChild::Hello`] with the child's pidfd; then [`FromChild::Done`], with the encoded
//! result in the same frame when the outcome is `Ok` (see [`control_tail`]). Fork server →
//! parent: [`FromChild::Status`] first on the stream, carrying the status socket, on which
//! [`FromChild::Exit`] follows once the child has exited ([`FromChild::SpawnFailed`] on the
//! stream instead when no child could be made).

use serde::{Deserialize, Serialize};

use crate::task::Outcome;

/// Who a process is, for `current_process()` / `parent_process()`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Ident {
    pub(crate) pid: i32,
    pub(crate) name: String,
}

/// What the child must run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskSpec {
    /// The parent's executable fingerprint; the child refuses to run if its own differs.
    #[serde(with = "crate::codec::bytes")]
    pub(crate) fingerprint: Vec<u8>,
    /// `task::to_offset` of the entry point.
    pub(crate) entry: u64,
    /// `task::seal` of `entry`: the child runs only entries sealed with its parent's key.
    pub(crate) seal: u64,
    /// How the child sets itself up before the task.
    pub(crate) setup: Setup,
    /// Whether the child is a daemon.
    pub(crate) daemon: bool,
    /// The parent, for `parent_process()`.
    pub(crate) parent: Ident,
}

/// What every child applies to itself before its task runs (all start methods; `Fork`
/// children get it in memory). See `spawn::child_setup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The child's name (`current_process().name`, its thread name).
    pub(crate) name: String,
    /// The start method that made the child (`StartMethod::to_u8`), which becomes the child's
    /// default, as in Python.
    pub(crate) method: u8,
    /// (Fork-server children) the parent's working directory at the time of the spawn.
    pub(crate) cwd: Option<std::ffi::OsString>,
    /// (Fork-server children) the parent's environment as changes to the server's:
    /// `(name, Some(value))` to set, `(name, None)` to remove.
    pub(crate) env: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
    /// Whether SIGINT is ignored (`None`: keep what the child inherited).
    pub(crate) ignore_sigint: Option<bool>,
    /// Whether SIGHUP is ignored (`None`: keep what the child inherited).
    pub(crate) ignore_sighup: Option<bool>,
    /// The largest argument frame the child accepts and result it sends.
    pub(crate) max_message: u64,
    /// Print the panics the child reports (`MULTIPROC_CHILD_PANIC_OUTPUT` in the parent).
    pub(crate) panic_output: bool,
}

/// Frames a parent reads from a child's control stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromChild {
    /// A fork-server child announces itself (its pidfd is attached when the kernel has them).
    Hello { pid: i32, has_pidfd: bool },
    /// The function finished.
    Done(Outcome),
    /// The child refused to run: its executable differs from the parent's.
    Mismatch,
    /// The child refused to run: the entry point was not sealed with its parent's key.
    BadEntry,
    /// The child could not set itself up as asked (e.g. enter the parent's directory).
    SetupFailed(String),
    /// The return value is larger than the maximum message size (it was not sent).
    TooLarge { size: u64, limit: u64 },
    /// The function panicked in a `panic = "abort"` build: the message, sent from the panic
    /// hook just before the process aborts.
    Aborting {
        message: String,
        location: Option<String>,
    },
    /// (From the fork server, first on the stream) the attached descriptor is the status
    /// socket on which the server will report the exit.
    Status,
    /// (From the fork server, on the status socket) the child exited: code >= 0, or -signal.
    Exit { code: i32 },
    /// (From the fork server, on the child's control stream, which it then closes) the child
    /// could not be created: why, naming the limit when the server ran out of descriptors.
    SpawnFailed(String),
}

/// The parent's error for [`FromChild::SpawnFailed`]: `Io`, the kind this process reports
/// when it runs out of descriptors itself, with the server's reason.
pub(crate) fn spawn_failed(reason: &str) -> crate::error::Error {
    crate::error::Error::msg(
        crate::error::ErrorKind::Io,
        format!("the fork server could not start the child: {reason}"),
    )
}

/// Requests to the fork server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToServer {
    /// First message: the parent's fingerprint.
    Hello {
        #[serde(with = "crate::codec::bytes")]
        fingerprint: Vec<u8>,
        /// The key the server's children check entry seals with (`task::seal`).
        key: [u64; 2],
    },
    /// Fork a child whose control stream is the attached descriptor.
    Spawn,
}

/// The fork server's answer to `Hello`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromServer {
    /// Ready to fork children.
    Ready { pid: i32 },
    /// The server runs a different executable.
    Mismatch,
}

/// Child→parent frames are `body ‖ control ‖ control length (u32 LE)`: the control message
/// goes last so that a body (the encoded return value) is handed on without a copy, and a
/// return value travels in the same frame (one wake-up) as the `Done` that announces it.
pub(crate) fn control_tail(msg: &FromChild) -> Vec<u8> {
    let mut v = postcard::to_allocvec(msg).unwrap_or_default();
    let n = v.len() as u32;
    v.extend_from_slice(&n.to_le_bytes());
    v
}

/// Splits a child→parent frame: returns the control message, leaves the body in `frame`.
pub(crate) fn split_control(
    frame: &mut crate::connection::channel::Frame,
) -> crate::error::Result<FromChild> {
    let bad = || {
        crate::error::Error::msg(
            crate::error::ErrorKind::Protocol,
            "malformed control frame from the child",
        )
    };
    let len = frame.payload.len();
    let n = frame
        .payload
        .get(len.checked_sub(4).ok_or_else(bad)?..)
        .ok_or_else(bad)?;
    let n = u32::from_le_bytes(n.try_into().map_err(|_| bad())?) as usize;
    let start = len.checked_sub(4 + n).ok_or_else(bad)?;
    let msg = crate::codec::decode::<FromChild>(&frame.payload[start..len - 4], Vec::new())?;
    frame.payload.truncate(start);
    Ok(msg)
}

/// A task spec as a forger would send it (`crate::__chaos::task_spec`): this executable's
/// fingerprint, the given entry and seal, a `Spawn` child's default setup.
pub(crate) fn forged_spec(entry: u64, seal: u64) -> Vec<u8> {
    let spec = TaskSpec {
        fingerprint: super::fingerprint().map(<[u8]>::to_vec).unwrap_or_default(),
        entry,
        seal,
        setup: Setup {
            name: "forged".into(),
            method: crate::StartMethod::Spawn.to_u8(),
            cwd: None,
            env: Vec::new(),
            ignore_sigint: None,
            ignore_sighup: None,
            max_message: 1 << 20,
            panic_output: false,
        },
        daemon: false,
        parent: Ident {
            pid: crate::sys::process::getpid(),
            name: "MainProcess".into(),
        },
    };
    let mut payload = Vec::new();
    let _ = crate::codec::encode(&spec, &mut payload, &mut Vec::new());
    payload
}

/// The variant name of the control message at the end of a child→parent frame's payload
/// (`crate::__chaos::child_reply`).
pub(crate) fn reply_name(payload: &[u8]) -> Option<String> {
    let mut frame = crate::connection::channel::Frame {
        payload: payload.to_vec(),
        fds: Vec::new(),
        fds_lost: false,
    };
    let msg = split_control(&mut frame).ok()?;
    let name = format!("{msg:?}");
    Some(name.split([' ', '(', '{']).next().unwrap_or("").to_string())
}
