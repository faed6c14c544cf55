//! Messages on a child's control stream and on the fork server's stream.
//!
//! Parent → child: [`TaskSpec`], then the encoded arguments as a raw frame (with descriptors).
//! Child → parent: (fork-server children only) [`FromChild::Hello`] with the child's pidfd;
//! then [`FromChild::Done`], followed by the encoded result as a raw frame when the outcome is
//! `Ok`. Fork server → parent, on the same stream after the child has exited:
//! [`FromChild::Exit`] (or [`FromChild::SpawnFailed`] instead of everything).

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
    /// The child's name.
    pub(crate) name: String,
    /// Whether the child is a daemon.
    pub(crate) daemon: bool,
    /// The parent, for `parent_process()`.
    pub(crate) parent: Ident,
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
    /// (From the fork server) the child exited: code >= 0, or -signal.
    Exit { code: i32 },
    /// (From the fork server) the child could not be created.
    SpawnFailed(String),
}

/// Requests to the fork server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToServer {
    /// First message: the parent's fingerprint.
    Hello {
        #[serde(with = "crate::codec::bytes")]
        fingerprint: Vec<u8>,
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
