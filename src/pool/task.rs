//! The pool's wire format and the functions a worker runs.
//!
//! One frame (see `codec/frame.rs`) carries several messages back to back; descriptors
//! attached to the frame are handed out to the messages in order (each says how many it owns).
//!
//! ```text
//! parent → worker
//!   INIT    tag=2 | entry u64 (0: no initializer) | seal u64 | len u32 | encoded
//!           initializer args (the first frame a worker receives; every descriptor of the
//!           frame belongs to it)
//!   TASK    tag=1 [| 0x40: entry u64 | seal u64 follow] | nfds u8 | len u32 | lo u32 |
//!           hi u32 | args
//!           args = postcard `Vec<A>`; the worker runs elements lo..hi of it. The entry
//!           offset is sent with the first task of a frame and whenever it changes.
//!   entry = `task::to_offset` of the trampoline, seal = `task::seal(entry)`: the writers
//!           below take only a [`SealedEntry`] (made once per job), and the worker runs only an entry whose
//!           seal matches under the key it adopted at boot (`task::from_sealed`, checked
//!           once per entry change). A task whose seal does not match fails (status FAILED,
//!           `Failure::BadEntry`), and so do the tasks after it in the frame that name no
//!           entry of their own; an initializer's, INIT_FAILED (the pool breaks).
//! worker → parent
//!   RESULT  tag=1 | status u8 | nfds u8 | busy_ns u64 | len u32 | bytes
//!           status ALL_OK / SOME_FAILED: bytes = postcard `Vec<Result<R, Failure>>`, one per
//!           element lo..hi; status FAILED: bytes = postcard `Failure` for the whole task.
//!           Results come back in the order the tasks were sent (one FIFO per worker).
//!   RUNNING tag=2 | seq u64 | elem u32 | running_for_us u64
//!           "task number `seq` (counted from 0 on this worker) has been running element
//!           `elem` for at least this long"; sent by the worker's watchdog after flushing
//!           every result it held, so every earlier task has been reported.
//!   READY   tag=3                       (after the initializer succeeded)
//!   INIT_FAILED tag=4 | len u32 | postcard `Failure`
//!   ALIVE   tag=5 | seq u64             (with a task_timeout: "task `seq` is running and
//!           this worker is not frozen"; sent at least every `beat` while a task runs)
//! ```
//!
//! The element range lets the parent re-send part of a chunk after a crash without
//! understanding the (typed) argument bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, ErrorKind};
use crate::fdreg::RegisteredFd;
use crate::task::{self, EntryFn, Outcome};

const TAG_TASK: u8 = 1;
const FLAG_ENTRY: u8 = 0x40;
const TAG_INIT: u8 = 2;

const TAG_RESULT: u8 = 1;
const TAG_RUNNING: u8 = 2;
const TAG_READY: u8 = 3;
const TAG_INIT_FAILED: u8 = 4;
const TAG_ALIVE: u8 = 5;

/// Every element returned normally.
pub(super) const ALL_OK: u8 = 0;
/// Some element failed (its slot holds a [`Failure`]).
pub(super) const SOME_FAILED: u8 = 1;
/// The whole task failed (the bytes are one [`Failure`]).
pub(super) const FAILED: u8 = 2;

/// Bytes of a TASK header before the args (with the entry offset and its seal).
pub(super) const TASK_HEADER_MAX: usize = 1 + 8 + 8 + 1 + 4 + 8;
/// Bytes of a RESULT header.
pub(super) const RESULT_HEADER: usize = 1 + 1 + 1 + 8 + 4;

/// The advice on an argument or result over the pool's limit.
pub(super) const TOO_LARGE: &str =
    "PoolBuilder::max_message_size sets the pool's limit on a task's arguments and result";

/// Why one element (or a whole task) failed inside the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Failure {
    /// The function panicked.
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The arguments could not be decoded.
    BadArgs(String),
    /// The result could not be encoded.
    BadResult(String),
    /// The result is larger than the pool's `max_message_size`.
    TooLarge { size: u64, limit: u64 },
    /// The worker refused the task's (or initializer's) entry point: its seal does not
    /// match (a forged or corrupted frame). Nothing ran.
    BadEntry(String),
}

impl Failure {
    pub(super) fn to_error(&self) -> Error {
        match self {
            Failure::Panicked { message, location } => {
                Error::panicked(message.clone(), location.clone())
            }
            Failure::BadArgs(m) => Error::msg(
                ErrorKind::Decode,
                format!("the worker could not decode the task's arguments: {m}"),
            ),
            Failure::BadResult(m) => Error::msg(
                ErrorKind::Encode,
                format!("the worker could not encode the task's result: {m}"),
            ),
            Failure::TooLarge { size, limit } => Error::too_large(*size, *limit).context(TOO_LARGE),
            Failure::BadEntry(m) => Error::msg(
                ErrorKind::Protocol,
                format!("the worker refused the task's entry point: {m}"),
            ),
        }
    }

    pub(super) fn from_outcome(o: Outcome) -> Option<Failure> {
        match o {
            Outcome::Ok => None,
            Outcome::Panicked { message, location } => {
                Some(Failure::Panicked { message, location })
            }
            Outcome::BadArgs(m) => Some(Failure::BadArgs(m)),
            Outcome::BadResult(m) => Some(Failure::BadResult(m)),
        }
    }
}

/// A bounds-checked little-endian reader over one frame.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(super) fn protocol(what: &str) -> Error {
    Error::msg(ErrorKind::Protocol, format!("pool channel: {what}"))
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    pub(super) fn pos(&self) -> usize {
        self.pos
    }
    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| protocol("truncated message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(super) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.bytes(1)?[0])
    }
    pub(super) fn u32(&mut self) -> Result<u32, Error> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn u64(&mut self) -> Result<u64, Error> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

// ---- The records, each writer next to its reader ------------------------------------

/// An entry offset as it travels on the pool channel: with its seal.
///
/// The pool makes one with [`SealedEntry::of`] where it names the function (once per
/// `map`, `imap`, `apply_async` or initializer, not per task) and the tasks carry it, so the
/// frame writers below only ever write sealed entries and sealing costs nothing per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SealedEntry {
    /// `task::to_offset` of the trampoline.
    pub(super) offset: u64,
    /// `task::seal(offset)` under the sender's key.
    pub(super) seal: u64,
}

impl SealedEntry {
    /// `entry`'s offset, sealed under this process's key.
    pub(super) fn of(entry: EntryFn) -> SealedEntry {
        SealedEntry::seal(task::to_offset(entry))
    }

    /// Seals `offset` under this process's key.
    pub(super) fn seal(offset: u64) -> SealedEntry {
        SealedEntry {
            offset,
            seal: task::seal(offset),
        }
    }

    /// The entry this names, if its seal matches under this process's key.
    ///
    /// # Errors
    /// [`Failure::BadEntry`] for a forged or corrupted entry (nothing is run).
    pub(super) fn open(self) -> Result<EntryFn, Failure> {
        task::from_sealed(self.offset, self.seal).map_err(|e| Failure::BadEntry(e.to_string()))
    }

    fn put(self, frame: &mut Vec<u8>) {
        frame.extend_from_slice(&self.offset.to_le_bytes());
        frame.extend_from_slice(&self.seal.to_le_bytes());
    }

    fn read(cur: &mut Cursor<'_>) -> Result<SealedEntry, Error> {
        Ok(SealedEntry {
            offset: cur.u64()?,
            seal: cur.u64()?,
        })
    }
}

/// INIT (parent → worker, the first frame): the initializer's sealed entry (`None`: there
/// is none, written as offset 0) and its arguments.
pub(super) fn put_init(frame: &mut Vec<u8>, entry: Option<SealedEntry>, args: &[u8]) {
    frame.push(TAG_INIT);
    entry
        .unwrap_or(SealedEntry { offset: 0, seal: 0 })
        .put(frame);
    frame.extend_from_slice(&(args.len() as u32).to_le_bytes());
    frame.extend_from_slice(args);
}

/// Reads INIT: the initializer's entry (`None`: there is none) and its arguments.
pub(super) fn read_init(payload: &[u8]) -> Result<(Option<SealedEntry>, &[u8]), Error> {
    let mut cur = Cursor::new(payload);
    if cur.u8()? != TAG_INIT {
        return Err(protocol("the first message is not INIT"));
    }
    let entry = SealedEntry::read(&mut cur)?;
    let len = cur.u32()? as usize;
    Ok(((entry.offset != 0).then_some(entry), cur.bytes(len)?))
}

/// TASK (parent → worker): appends the header of a task running elements `lo..hi` of
/// `args_len` bytes of arguments with `nfds` descriptors; the caller appends the arguments.
/// `entry`, when given, is written with its seal.
pub(super) fn put_task_header(
    frame: &mut Vec<u8>,
    entry: Option<SealedEntry>,
    nfds: u8,
    args_len: usize,
    lo: u32,
    hi: u32,
) {
    match entry {
        Some(e) => {
            frame.push(TAG_TASK | FLAG_ENTRY);
            e.put(frame);
        }
        None => frame.push(TAG_TASK),
    }
    frame.push(nfds);
    frame.extend_from_slice(&((args_len + 8) as u32).to_le_bytes());
    frame.extend_from_slice(&lo.to_le_bytes());
    frame.extend_from_slice(&hi.to_le_bytes());
}

/// One TASK as read: a new (sealed, not yet checked) entry if it carries one, its
/// descriptor count, and the body `lo u32 | hi u32 | args` that `run_chunk` takes.
pub(super) struct TaskRecord<'a> {
    pub(super) entry: Option<SealedEntry>,
    pub(super) nfds: usize,
    pub(super) body: &'a [u8],
}

/// Reads one TASK.
pub(super) fn read_task<'a>(cur: &mut Cursor<'a>) -> Result<TaskRecord<'a>, Error> {
    let tag = cur.u8()?;
    if tag & !FLAG_ENTRY != TAG_TASK {
        return Err(protocol("unknown message from the pool"));
    }
    let entry = if tag & FLAG_ENTRY != 0 {
        Some(SealedEntry::read(cur)?)
    } else {
        None
    };
    let nfds = cur.u8()? as usize;
    let len = cur.u32()? as usize;
    let body = cur.bytes(len)?;
    Ok(TaskRecord { entry, nfds, body })
}

/// RESULT (worker → parent) with `status` ALL_OK / SOME_FAILED: the encoded
/// `Vec<Result<R, Failure>>` of a task, with `nfds` descriptors and its busy time.
pub(super) fn put_result(buf: &mut Vec<u8>, status: u8, nfds: u8, busy_ns: u64, bytes: &[u8]) {
    buf.reserve(RESULT_HEADER + bytes.len());
    buf.push(TAG_RESULT);
    buf.push(status);
    buf.push(nfds);
    buf.extend_from_slice(&busy_ns.to_le_bytes());
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// RESULT with status FAILED: the whole task failed with `f`.
pub(super) fn put_failed_result(buf: &mut Vec<u8>, busy_ns: u64, f: &Failure) {
    let mut bytes = Vec::new();
    let _ = codec::encode(f, &mut bytes, &mut Vec::new());
    put_result(buf, FAILED, 0, busy_ns, &bytes);
}

/// RUNNING (worker → parent): task `seq` has been running element `elem` for `running_us`.
pub(super) fn put_running(buf: &mut Vec<u8>, seq: u64, elem: u32, running_us: u64) {
    buf.push(TAG_RUNNING);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&elem.to_le_bytes());
    buf.extend_from_slice(&running_us.to_le_bytes());
}

/// ALIVE (worker → parent): task `seq` runs and the worker is not frozen.
pub(super) fn put_alive(buf: &mut Vec<u8>, seq: u64) {
    buf.push(TAG_ALIVE);
    buf.extend_from_slice(&seq.to_le_bytes());
}

/// READY (worker → parent): the initializer succeeded.
pub(super) fn put_ready(buf: &mut Vec<u8>) {
    buf.push(TAG_READY);
}

/// INIT_FAILED (worker → parent): the initializer failed with `f`.
pub(super) fn put_init_failed(buf: &mut Vec<u8>, f: &Failure) {
    let mut bytes = Vec::new();
    let _ = codec::encode(f, &mut bytes, &mut Vec::new());
    buf.push(TAG_INIT_FAILED);
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(&bytes);
}

/// One record from a worker, as read by the parent.
#[derive(Debug)]
pub(super) enum FromWorker {
    /// RESULT: the result bytes are `start..start + len` of the frame.
    Result {
        status: u8,
        nfds: usize,
        busy_ns: u64,
        start: usize,
        len: usize,
    },
    Running {
        seq: u64,
        elem: u32,
        running_us: u64,
    },
    Alive,
    Ready,
    InitFailed(Failure),
}

/// Reads the next record of a frame from a worker.
pub(super) fn read_from_worker(cur: &mut Cursor<'_>) -> Result<FromWorker, Error> {
    Ok(match cur.u8()? {
        TAG_RESULT => {
            let status = cur.u8()?;
            let nfds = cur.u8()? as usize;
            let busy_ns = cur.u64()?;
            let len = cur.u32()? as usize;
            let start = cur.pos();
            cur.bytes(len)?;
            FromWorker::Result {
                status,
                nfds,
                busy_ns,
                start,
                len,
            }
        }
        TAG_RUNNING => FromWorker::Running {
            seq: cur.u64()?,
            elem: cur.u32()?,
            running_us: cur.u64()?,
        },
        TAG_ALIVE => {
            cur.u64()?;
            FromWorker::Alive
        }
        TAG_READY => FromWorker::Ready,
        TAG_INIT_FAILED => {
            let len = cur.u32()? as usize;
            FromWorker::InitFailed(codec::decode(cur.bytes(len)?, Vec::new())?)
        }
        _ => return Err(protocol("unknown message from a worker")),
    })
}

/// Appends a postcard varint (the encoding of a sequence length).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The entry point that runs chunks of `F: A -> R`.
///
/// A capturing closure (or a `fn` pointer, which is not zero-sized) is rejected at compile
/// time, as in [`task::entry_of`].
pub(super) fn chunk_entry<F, A, R>() -> EntryFn
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    crate::task::reject_captures::<F>();
    run_chunk::<F, A, R>
}

/// Runs elements `lo..hi` of a chunk. `args` = `lo u32 | hi u32 | postcard Vec<A>`.
///
/// `out` receives `Vec<Result<R, Failure>>`; the outcome is `BadArgs` when the chunk cannot
/// be decoded, `BadResult` (with `out` left empty) never: an element whose result cannot be
/// encoded becomes a `Failure` in its own slot. The worker reads [`take_any_failed`] after
/// the call to learn whether some element failed.
fn run_chunk<F, A, R>(
    args: &[u8],
    fds: Vec<RegisteredFd>,
    out: &mut Vec<u8>,
    out_fds: &mut Vec<RegisteredFd>,
) -> Outcome
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    if args.len() < 8 {
        return Outcome::BadArgs("truncated task".into());
    }
    let lo = u32::from_le_bytes([args[0], args[1], args[2], args[3]]) as usize;
    let hi = u32::from_le_bytes([args[4], args[5], args[6], args[7]]) as usize;
    let items: Vec<A> = match codec::decode(&args[8..], fds) {
        Ok(v) => v,
        Err(e) => return Outcome::BadArgs(e.to_string()),
    };
    if lo > hi || hi > items.len() {
        return Outcome::BadArgs(format!(
            "element range {lo}..{hi} of a chunk of {}",
            items.len()
        ));
    }
    let f = task::conjure::<F>();
    let mut results: Vec<Result<R, Failure>> = Vec::with_capacity(hi - lo);
    let mut failed = false;
    for (j, a) in items.into_iter().enumerate().skip(lo).take(hi - lo) {
        super::worker::element_started(j as u32);
        let r = task::catch_panic(move || f(a))
            .map_err(|(message, location)| Failure::Panicked { message, location });
        failed |= r.is_err();
        results.push(r);
    }
    if encode_results(&results, out, out_fds) {
        failed = true;
    }
    if failed {
        super::worker::mark_failed();
    }
    Outcome::Ok
}

/// Encodes `results` as a postcard `Vec<Result<R, Failure>>`; an element whose result cannot
/// be encoded (or would push the chunk over the descriptor limit) becomes a
/// `Failure::BadResult`. Returns whether that happened.
fn encode_results<R: Serialize>(
    results: &[Result<R, Failure>],
    out: &mut Vec<u8>,
    out_fds: &mut Vec<RegisteredFd>,
) -> bool {
    let start = out.len();
    let fstart = out_fds.len();
    if codec::encode(results, out, out_fds).is_ok() {
        return false;
    }
    // Slow path: element by element, so that one bad value fails only its own slot. The
    // bytes are the same as the one-shot encoding (a length, then the elements); the handle
    // table is shared, so indices stay global to the task.
    out.truncate(start);
    out_fds.truncate(fstart);
    put_varint(out, results.len() as u64);
    for r in results {
        let s = out.len();
        let fs = out_fds.len();
        let res = match r {
            Ok(v) => codec::encode(&Ok::<&R, ()>(v), out, out_fds),
            Err(f) => codec::encode(&Err::<(), &Failure>(f), out, out_fds),
        };
        if let Err(e) = res {
            out.truncate(s);
            out_fds.truncate(fs);
            let bad = Err::<(), Failure>(Failure::BadResult(e.to_string()));
            let _ = codec::encode(&bad, out, &mut Vec::new());
        }
    }
    true
}

/// The entry point that runs an initializer `F: A -> S` and keeps `S` as the worker's state.
pub(super) fn init_entry<F, A, S>() -> EntryFn
where
    F: Fn(A) -> S + Copy + Send + 'static,
    A: DeserializeOwned,
    S: 'static,
{
    crate::task::reject_captures::<F>();
    run_init::<F, A, S>
}

fn run_init<F, A, S>(
    args: &[u8],
    fds: Vec<RegisteredFd>,
    _out: &mut Vec<u8>,
    _out_fds: &mut Vec<RegisteredFd>,
) -> Outcome
where
    F: Fn(A) -> S + Copy + Send + 'static,
    A: DeserializeOwned,
    S: 'static,
{
    let a: A = match codec::decode(args, fds) {
        Ok(a) => a,
        Err(e) => return Outcome::BadArgs(e.to_string()),
    };
    let f = task::conjure::<F>();
    match task::catch_panic(move || f(a)) {
        Ok(state) => {
            super::state::set(Box::new(state));
            Outcome::Ok
        }
        Err((message, location)) => Outcome::Panicked { message, location },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_reads_back_as_written() {
        let mut init = Vec::new();
        let sealed = SealedEntry::seal(42);
        assert_eq!(sealed.seal, task::seal(42));
        put_init(&mut init, Some(sealed), b"abc");
        assert_eq!(read_init(&init).unwrap(), (Some(sealed), &b"abc"[..]));
        assert!(read_init(&init[..5]).is_err(), "truncated");
        assert!(read_init(&init[..20]).is_err(), "truncated");
        let mut none = Vec::new();
        put_init(&mut none, None, b"");
        assert_eq!(read_init(&none).unwrap(), (None, &b""[..]));

        let mut tasks = Vec::new();
        let seven = SealedEntry::seal(7);
        put_task_header(&mut tasks, Some(seven), 2, 3, 1, 3);
        tasks.extend_from_slice(b"xyz");
        put_task_header(&mut tasks, None, 0, 1, 0, 1);
        tasks.push(b'q');
        let mut cur = Cursor::new(&tasks);
        let t = read_task(&mut cur).unwrap();
        assert_eq!((t.entry, t.nfds), (Some(seven), 2));
        assert_eq!(t.body, &[1, 0, 0, 0, 3, 0, 0, 0, b'x', b'y', b'z'][..]);
        let t = read_task(&mut cur).unwrap();
        assert_eq!((t.entry, t.nfds, t.body.len()), (None, 0, 9));
        assert!(cur.is_empty());

        let mut out = Vec::new();
        put_result(&mut out, SOME_FAILED, 1, 99, b"res");
        put_failed_result(&mut out, 5, &Failure::BadResult("no".into()));
        put_running(&mut out, 3, 4, 5);
        put_alive(&mut out, 3);
        put_ready(&mut out);
        put_init_failed(&mut out, &Failure::BadArgs("bad".into()));
        let mut cur = Cursor::new(&out);
        match read_from_worker(&mut cur).unwrap() {
            FromWorker::Result {
                status,
                nfds,
                busy_ns,
                start,
                len,
            } => {
                assert_eq!((status, nfds, busy_ns), (SOME_FAILED, 1, 99));
                assert_eq!(&out[start..start + len], b"res");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_from_worker(&mut cur).unwrap(),
            FromWorker::Result { status: FAILED, .. }
        ));
        assert!(matches!(
            read_from_worker(&mut cur).unwrap(),
            FromWorker::Running {
                seq: 3,
                elem: 4,
                running_us: 5
            }
        ));
        assert!(matches!(
            read_from_worker(&mut cur).unwrap(),
            FromWorker::Alive
        ));
        assert!(matches!(
            read_from_worker(&mut cur).unwrap(),
            FromWorker::Ready
        ));
        assert!(matches!(
            read_from_worker(&mut cur).unwrap(),
            FromWorker::InitFailed(Failure::BadArgs(_))
        ));
        assert!(cur.is_empty());
        // Garbage is an error, never a panic.
        for junk in [&[9u8][..], &[1, 0], &[2, 1, 2, 3]] {
            assert!(read_from_worker(&mut Cursor::new(junk)).is_err());
        }
    }

    fn double(x: u32) -> u32 {
        x * 2
    }

    fn entry_of<F: Fn(u32) -> u32 + Copy + Send + 'static>(_: F) -> EntryFn {
        chunk_entry::<F, u32, u32>()
    }

    #[test]
    fn every_entry_written_is_sealed_and_only_a_matching_seal_opens() {
        let offset = task::to_offset(entry_of(double));
        let mut frame = Vec::new();
        put_task_header(
            &mut frame,
            Some(SealedEntry::of(entry_of(double))),
            0,
            0,
            0,
            0,
        );
        put_init(&mut frame, Some(SealedEntry::seal(offset)), b"");
        let mut cur = Cursor::new(&frame);
        let sealed = read_task(&mut cur).unwrap().entry.unwrap();
        assert_eq!(sealed.seal, task::seal(offset));
        let (init, _) = read_init(&frame[cur.pos()..]).unwrap();
        assert_eq!(init, Some(sealed));
        let f = sealed.open().unwrap();
        assert_eq!(f as usize, entry_of(double) as usize);
        for forged in [
            SealedEntry {
                offset,
                seal: sealed.seal ^ 1,
            },
            SealedEntry {
                offset: offset.wrapping_add(16),
                seal: sealed.seal,
            },
            SealedEntry {
                offset: 0xdead_beef,
                seal: 0,
            },
        ] {
            match forged.open() {
                Err(Failure::BadEntry(m)) => assert!(m.contains("not sealed"), "{m}"),
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("{forged:?} was accepted"),
            }
            let e = Failure::BadEntry("x".into()).to_error();
            assert_eq!(e.kind(), ErrorKind::Protocol);
        }
    }
}
