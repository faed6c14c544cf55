//! The manager's wire messages (`README.md` next to this file is the protocol).
//!
//! Every value the server stores is an encoded blob: the server never needs the user's types
//! for the built-in objects (a dict is a map from encoded keys to encoded values; postcard's
//! encoding of a key is canonical for the types used as keys, so equal keys are equal bytes).
//! Only custom objects are decoded in the server, by the code registered for them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// Bumped when a message changes meaning.
pub(crate) const VERSION: u32 = 1;

/// An encoded value, carried as one byte string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub(crate) struct Blob(#[serde(with = "crate::codec::bytes")] pub(crate) Vec<u8>);

/// The kinds of object a manager holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Dict,
    List,
    Queue,
    JoinableQueue,
    Value,
    Namespace,
    Lock,
    RLock,
    Semaphore,
    Event,
    Condition,
    Barrier,
    Custom,
}

/// Who asks: a random number per proxy instance and a hash of the thread, so an `RLock`
/// knows its owner (a lock taken through one connection may be released through another of
/// the same proxy).
pub(crate) type Owner = (u64, u64);

/// A wait limit in microseconds, relative (clocks differ between hosts); `None`: no limit.
pub(crate) type Wait = Option<u64>;

/// A client's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// The first message on a connection, after authentication.
    Hello { version: u32 },
    /// Find the object `name` (creating it from `init` if it does not exist); `signature` is
    /// the proxy's element types, checked against the object's.
    Attach {
        kind: Kind,
        name: String,
        signature: String,
        init: Init,
    },
    /// An operation on an object attached on this connection.
    Call { id: u32, op: Op },
    /// The names and kinds of every object.
    List,
}

/// How an object is created when it does not exist yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Init {
    /// Empty (dict, list, namespace, event, locks, condition).
    Empty,
    /// A value's initial value.
    Value(Blob),
    /// A queue's bound (`None`: unbounded).
    Queue(Option<u64>),
    /// A semaphore's initial count and bound.
    Semaphore { value: u64, bounded: bool },
    /// A barrier's number of parties.
    Barrier(u64),
    /// Attach only: fail if it does not exist.
    Existing,
}

/// An operation on one object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    // dict
    Get(Blob),
    Insert(Blob, Blob),
    Remove(Blob),
    Contains(Blob),
    Update(Vec<(Blob, Blob)>),
    GetOrInsert(Blob, Blob),
    Keys,
    Items,
    // list
    Push(Blob),
    Extend(Vec<Blob>),
    Index(u64),
    SetIndex(u64, Blob),
    InsertAt(u64, Blob),
    RemoveAt(u64),
    Pop,
    // dict, list, queue, namespace
    Len,
    Clear,
    Values,
    // queue
    Put(Blob, Wait),
    Take(Wait),
    TaskDone,
    JoinQueue(Wait),
    // value
    Load,
    Store(Blob),
    Swap(Blob),
    CompareSwap(Blob, Blob),
    // namespace
    GetAttr(String),
    SetAttr(String, Blob),
    DelAttr(String),
    // locks, semaphores, conditions
    Acquire(Owner, Wait),
    Release(Owner),
    // event
    Set,
    Unset,
    IsSet,
    WaitEvent(Wait),
    // condition
    WaitCond(Owner, Wait),
    Notify(u64),
    NotifyAll,
    // barrier
    WaitBarrier(Wait),
    Abort,
    Reset,
    // custom
    Custom(Blob),
}

/// The server's answer to one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Response {
    Done,
    Attached(u32),
    Maybe(Option<Blob>),
    One(Blob),
    Flag(bool),
    Count(u64),
    Many(Vec<Blob>),
    Pairs(Vec<(Blob, Blob)>),
    Names(Vec<(String, Kind)>),
    /// A lock was acquired; `true` if its previous holder died holding it.
    Acquired {
        owner_died: bool,
    },
    Failed(WireError),
}

/// An error as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub(crate) kind: WireKind,
    pub(crate) message: String,
}

/// The error kinds a server reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum WireKind {
    Timeout,
    WouldBlock,
    Closed,
    Decode,
    Protocol,
    Unsupported,
    Broken,
}

impl WireError {
    pub(crate) fn new(kind: WireKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Error {
        let kind = match w.kind {
            WireKind::Timeout => ErrorKind::Timeout,
            WireKind::WouldBlock => ErrorKind::WouldBlock,
            WireKind::Closed | WireKind::Broken => ErrorKind::Closed,
            WireKind::Decode => ErrorKind::Decode,
            WireKind::Protocol => ErrorKind::Protocol,
            WireKind::Unsupported => ErrorKind::Unsupported,
        };
        Error::msg(kind, w.message)
    }
}

/// Decodes one request from a frame's payload: postcard into the closed enum above, with
/// nothing allocated beyond what the (already bounded) payload holds.
pub(crate) fn decode_request(bytes: &[u8]) -> Result<Request, Error> {
    postcard::from_bytes(bytes).map_err(|e| {
        Error::msg(
            ErrorKind::Protocol,
            format!("malformed manager request: {e}"),
        )
    })
}

/// Decodes a server's answer.
pub(crate) fn decode_response(bytes: &[u8]) -> Result<Response, Error> {
    postcard::from_bytes(bytes).map_err(|e| {
        Error::msg(
            ErrorKind::Protocol,
            format!("malformed answer from the manager: {e}"),
        )
    })
}

/// Encodes a message (requests and responses hold no handles).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(v).map_err(|e| Error::msg(ErrorKind::Encode, e.to_string()))
}

/// Encodes a user value into a blob.
pub(crate) fn blob<T: Serialize + ?Sized>(v: &T) -> Result<Blob, Error> {
    let mut out = Vec::new();
    let mut fds = Vec::new();
    crate::codec::encode(v, &mut out, &mut fds)?;
    if !fds.is_empty() {
        return Err(Error::msg(
            ErrorKind::Encode,
            "a value stored in a manager cannot hold a handle (a connection or a queue): \
             the manager keeps bytes, not descriptors",
        ));
    }
    Ok(Blob(out))
}

/// Decodes a blob into a user value.
pub(crate) fn unblob<T: serde::de::DeserializeOwned>(b: &Blob) -> Result<T, Error> {
    crate::codec::decode(&b.0, Vec::new())
}
