//! Function identity: how a child finds the function its parent asked it to run.
//!
//! A task is a zero-sized callable: a function item or a closure that captures nothing. For
//! each `(F, A, R)` the compiler emits one monomorphised [`EntryFn`], `run::<F, A, R>`, which
//! decodes the arguments, conjures the zero-sized `F`, calls it and encodes the result. The
//! parent sends the entry's *offset from an anchor function in this crate*, never an absolute
//! address, so ASLR does not matter; the child adds its own anchor's address back. That is only
//! meaningful in the very same executable, so the child first compares the executable
//! fingerprint (ELF build-id) sent by the parent with its own, and the offset only ever
//! arrives over the private socket its parent handed it at birth, with its *seal* (below):
//! [`from_sealed`] is the only way from an offset back to a function.
//!
//! A capturing closure (or a `fn` pointer, which is not zero-sized) is rejected at compile
//! time by the `const` assertion in [`entry_of`].

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::connection::channel::Channel;
use crate::fdreg::RegisteredFd;

/// A value that can be a task's argument: it is encoded in the parent and decoded, owned, in
/// the child (`Serialize + DeserializeOwned`; implemented for every such type).
///
/// Borrowed data (`&str`, `&[T]`, a struct holding references) cannot cross into another
/// process: pass owned values (`String`, `Vec<T>`). A resource that cannot be serialised at
/// all (an HTTP client, a database connection, a thread pool) is created in the child: with a
/// pool, in its `initializer`, kept per worker ([`with_worker_state`](crate::with_worker_state)).
///
/// A type without serde support is refused at the call, with a message that says what to do:
///
/// ```compile_fail,E0277
/// struct HttpClient; // not serialisable
/// fn fetch(_c: HttpClient) -> usize { 0 }
/// // error: `HttpClient` cannot be sent to a child process as a task argument
/// let p = multiproc::Process::spawn(HttpClient, fetch);
/// ```
///
/// A borrowed argument (`&str`) is refused too, but the compiler reports it as a lifetime
/// problem ("implementation of `Deserialize` is not general enough"), which it does not let
/// a library reword: the fix is the same, an owned type.
///
/// ```compile_fail
/// fn count(s: &str) -> usize { s.len() }
/// let p = multiproc::Process::spawn("abc", count); // use `String`
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent to a child process as a task argument",
    label = "this argument must be an owned, serialisable value",
    note = "arguments are copied into the child process: use owned types (`String` instead of `&str`, `Vec<T>` instead of `&[T]`) that implement `serde::Serialize` and `serde::de::DeserializeOwned`",
    note = "a resource that cannot be serialised (an HTTP client, a database connection) is created in the child instead: with a pool, in its `initializer`, kept per worker with `multiproc::with_worker_state`"
)]
pub trait TaskArg: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> TaskArg for T {}

/// A value that can be a task's return value: encoded in the child, decoded, owned, in the
/// parent (`Serialize + DeserializeOwned`; implemented for every such type).
///
/// ```compile_fail,E0277
/// struct Handle; // not serialisable
/// fn open(_: ()) -> Handle { Handle }
/// // error: `Handle` cannot be returned from a child process
/// let p = multiproc::Process::spawn((), open);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a child process",
    label = "the return value must be an owned, serialisable value",
    note = "the return value is copied back from the child process: use owned types (`String` instead of `&str`, `Vec<T>` instead of `&[T]`) that implement `serde::Serialize` and `serde::de::DeserializeOwned`"
)]
pub trait TaskResult: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> TaskResult for T {}

/// The monomorphised trampoline a child runs: `(args, arg fds, result out, result fds out)`.
pub(crate) type EntryFn =
    fn(&[u8], Vec<RegisteredFd>, &mut Vec<u8>, &mut Vec<RegisteredFd>) -> Outcome;

/// What became of one call, sent back to the parent (the result bytes travel separately).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Returned normally; the encoded result follows.
    Ok,
    /// Panicked with this message at this location.
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The arguments could not be decoded into the function's argument type.
    BadArgs(String),
    /// The return value could not be encoded.
    BadResult(String),
}

/// The entry point for task `F` taking `A` and returning `R`.
pub(crate) fn entry_of<F, A, R>() -> EntryFn
where
    F: FnOnce(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    reject_captures::<F>();
    run::<F, A, R>
}

/// Fails to compile (when instantiated) for a callable that is not zero-sized: a closure that
/// captures something, or a `fn` pointer. Every public generic entry point evaluates
/// [`NoCaptures::OK`] itself (so the compiler's "instantiating" note names the user's call);
/// the internal layers evaluate the same constant, which is reported once.
pub(crate) fn reject_captures<F>() {
    let () = NoCaptures::<F>::OK;
}

/// The compile-time check that a task type is zero-sized (see [`reject_captures`]).
pub(crate) struct NoCaptures<F>(std::marker::PhantomData<F>);

impl<F> NoCaptures<F> {
    /// Evaluating this fails the build for a capturing closure or a `fn` pointer.
    pub(crate) const OK: () = assert!(
        std::mem::size_of::<F>() == 0,
        "multiproc: a task must be a function item or a closure that captures nothing; \
         pass the data it needs as arguments (`Process::spawn((a, b), |(a, b)| ...)`) \
         instead of capturing it, and name a function directly instead of passing a `fn` \
         pointer (see the `instantiating` note below for the call)"
    );
}

fn run<F, A, R>(
    args: &[u8],
    fds: Vec<RegisteredFd>,
    out: &mut Vec<u8>,
    out_fds: &mut Vec<RegisteredFd>,
) -> Outcome
where
    F: FnOnce(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    let a: A = match codec::decode(args, fds) {
        Ok(a) => a,
        Err(e) => return Outcome::BadArgs(e.to_string()),
    };
    call(conjure::<F>(), a, out, out_fds)
}

/// Produces the one value of a zero-sized callable type.
pub(crate) fn conjure<F: Copy + 'static>() -> F {
    assert_eq!(std::mem::size_of::<F>(), 0);
    // SAFETY: `F` is zero-sized (checked at compile time in `entry_of` and again above), so it
    // has exactly one value and no bytes to initialise. It is a closure or function item type
    // (the caller's bound), which carries no invariant beyond its type, and it is `Copy`, so
    // conjuring it duplicates nothing that has a destructor. Reading a zero-sized value
    // through a dangling, well-aligned, non-null pointer is valid.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Set while this thread runs a task under [`catch_panic`]: its panic is reported to the
    /// parent, so the hook stays quiet.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// The environment variable that makes a child print the panics it reports to its parent
/// (message, and a backtrace as `RUST_BACKTRACE` asks). By default they are not printed: the
/// parent gets them as an [`Error`](crate::Error), and a passing test run stays quiet.
pub(crate) const PANIC_OUTPUT_ENV: &str = "MULTIPROC_CHILD_PANIC_OUTPUT";

static PANIC_OUTPUT: AtomicBool = AtomicBool::new(false);

// The hook's per-process state is lock-free: a `Fork` child sets it up while another thread
// of the parent may have been inside the hook at the fork (a lock would stay held forever).

/// This child's name, for the panic output: a leaked `String`, replaced (never freed) by
/// `spawn::child_setup`.
static PROCESS_NAME: AtomicPtr<String> = AtomicPtr::new(std::ptr::null_mut());

/// Called from the panic hook in a `panic = "abort"` build, before the abort: sends the
/// message and location on `chan` to whoever reads this child's outcome.
pub(crate) type AbortReporter = fn(chan: &Channel, message: &str, location: Option<&str>);

/// The abort reporter (an [`AbortReporter`] cast to a pointer) and its channel.
static ABORT_REPORTER: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static ABORT_CHANNEL: AtomicPtr<Channel> = AtomicPtr::new(std::ptr::null_mut());

/// Names this process in panic output.
pub(crate) fn set_process_name(name: &str) {
    let leaked: &'static mut String = Box::leak(Box::new(name.to_string()));
    PROCESS_NAME.store(leaked, Ordering::Release);
}

fn process_name() -> &'static str {
    let p = PROCESS_NAME.load(Ordering::Acquire);
    if p.is_null() {
        return "";
    }
    // SAFETY: a non-null pointer was stored by `set_process_name` from a leaked `Box`, which
    // is never freed or written again.
    unsafe { (*p).as_str() }
}

/// Sets who hears about a task's panic in a `panic = "abort"` build: `report` on `chan` (the
/// process control stream; a pool worker may put its own).
pub(crate) fn set_abort_reporter(chan: &'static Channel, report: AbortReporter) {
    ABORT_CHANNEL.store(std::ptr::from_ref(chan).cast_mut(), Ordering::Release);
    ABORT_REPORTER.store(report as *mut (), Ordering::Release);
}

fn report_abort(message: &str, location: Option<&str>) {
    let f = ABORT_REPORTER.load(Ordering::Acquire);
    let chan = ABORT_CHANNEL.load(Ordering::Acquire);
    if f.is_null() || chan.is_null() {
        return;
    }
    // SAFETY: both were stored together by `set_abort_reporter`: `f` from an `AbortReporter`
    // (a function pointer, so the cast back is to its own type) and `chan` from a
    // `&'static Channel`, valid for the rest of the process.
    let (report, chan) = unsafe { (std::mem::transmute::<*mut (), AbortReporter>(f), &*chan) };
    report(chan, message, location);
}

/// Whether children print the panics they report (`MULTIPROC_CHILD_PANIC_OUTPUT` set to
/// anything but `0` *in the parent* at spawn time; the parent sends it in the setup).
pub(crate) fn panic_output_requested() -> bool {
    std::env::var_os(PANIC_OUTPUT_ENV).is_some_and(|v| v != "0" && !v.is_empty())
}

/// Makes the hook print (or not) the panics this child reports.
pub(crate) fn set_panic_output(on: bool) {
    PANIC_OUTPUT.store(on, Ordering::Relaxed);
}

/// Set in a `Fork` child right after the fork (see [`mark_forked_child`]).
static FORKED_CHILD: AtomicBool = AtomicBool::new(false);

/// Marks this process as a `Fork` child: from now on the panic hook reports with plain
/// `write(2)` calls instead of running the previous hook, whose locks (std's backtrace lock,
/// the output-capture lock) another thread of the parent may have held at the fork.
pub(crate) fn mark_forked_child() {
    FORKED_CHILD.store(true, Ordering::Relaxed);
}

/// Installs (once) the child's panic hook.
///
/// A panic in a task (inside [`catch_panic`]) is recorded (its location, for the report) and
/// printed only when asked ([`set_panic_output`]); in a `panic = "abort"` build it is also
/// handed to the abort reporter first, since the process will not live to report it. Every
/// other panic (another thread, a panic outside the task) goes to the previous hook, which
/// prints it as usual.
///
/// In a `Fork` child ([`mark_forked_child`]) the hook prints with plain `write(2)` calls
/// instead of running the previous hook, whose locks another thread of the parent may have
/// held at the fork. A `Fork` launch installs it in the parent, before forking, so a forked
/// child never calls `take_hook`/`set_hook` (the `Once` is complete in the copy).
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let forked = FORKED_CHILD.load(Ordering::Relaxed);
            if !IN_TASK.with(|t| t.get()) {
                return print_panic(&prev, info, location.as_deref(), forked);
            }
            if cfg!(panic = "abort") {
                report_abort(&payload_message(info.payload()), location.as_deref());
            }
            if PANIC_OUTPUT.load(Ordering::Relaxed) {
                let header = format!(
                    "multiproc: panic in process '{}' (pid {}), reported to its parent:\n",
                    process_name(),
                    std::process::id()
                );
                crate::sys::process::write_stderr_raw(header.as_bytes());
                print_panic(&prev, info, location.as_deref(), forked);
            }
            PANIC_LOCATION.with(|c| *c.borrow_mut() = location);
        }));
    });
}

/// Prints a panic: the previous hook, or in a `Fork` child a plain `write(2)` of the message
/// (no lock taken).
fn print_panic(
    prev: &(dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static),
    info: &std::panic::PanicHookInfo<'_>,
    location: Option<&str>,
    forked: bool,
) {
    if !forked {
        return prev(info);
    }
    let text = format!(
        "\nthread '{}' panicked at {}:\n{}\n",
        std::thread::current().name().unwrap_or("<unnamed>"),
        location.unwrap_or("<unknown>"),
        payload_message(info.payload()),
    );
    crate::sys::process::write_stderr_raw(text.as_bytes());
}

/// The text of a panic payload.
fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(panic payload is not a string)".to_string()
    }
}

/// Calls `f(a)`, catching a panic, and encodes the result into `out`.
pub(crate) fn call<F, A, R>(
    f: F,
    a: A,
    out: &mut Vec<u8>,
    out_fds: &mut Vec<RegisteredFd>,
) -> Outcome
where
    F: FnOnce(A) -> R,
    R: Serialize,
{
    match catch_panic(move || f(a)) {
        Ok(r) => match codec::encode(&r, out, out_fds) {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::BadResult(e.to_string()),
        },
        Err((message, location)) => Outcome::Panicked { message, location },
    }
}

/// Runs `f`, turning a panic into its message and location (`file:line:column`, when the
/// hook of [`install_panic_hook`] recorded one).
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, (String, Option<String>)> {
    let was = IN_TASK.with(|t| t.replace(true));
    let caught = catch_unwind(AssertUnwindSafe(f));
    IN_TASK.with(|t| t.set(was));
    match caught {
        Ok(v) => Ok(v),
        Err(payload) => {
            let message = payload_message(&*payload);
            // The payload's own destructor could panic; leak it instead.
            std::mem::forget(payload);
            let location = PANIC_LOCATION.with(|c| c.borrow_mut().take());
            Err((message, location))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed entries
// ---------------------------------------------------------------------------------------------
//
// An offset is only meaningful as the start of a trampoline; any other value would make the
// child jump into the middle of arbitrary code. The build-id check proves the executable is
// the same, not that the offset came from `to_offset`. So every offset travels with a *seal*:
// SipHash-2-4 (a keyed pseudo-random function, used here as a MAC) of the offset under a
// 128-bit key drawn from the OS when the root parent first needs one and handed to each child
// at boot (the boot variable for `Spawn`, the fork server's `Hello`, memory for forks, rank
// 0's `Welcome` for MPI agents). A forged or corrupted offset fails the check and the child
// refuses to run it; nobody without the key can make a seal. Pool workers get entries the
// same way: every INIT and TASK frame that names an entry carries its seal (written by
// `pool::task`), checked once per entry change (`pool::worker`), because a pool channel may
// be relayed by MPI agents over the network, where "only our parent can write to it" no
// longer holds.

static KEY: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static KEY_SET: AtomicBool = AtomicBool::new(false);

/// This process's entry key, drawn from `/dev/urandom` on first use unless one was adopted.
pub(crate) fn key() -> [u64; 2] {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if KEY_SET.load(Ordering::Acquire) {
            return;
        }
        let mut b = [0u8; 16];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .is_ok();
        if !random {
            // Still unpredictable to another process: std seeds `RandomState` from the OS.
            use std::hash::{BuildHasher, Hasher};
            for (i, chunk) in b.chunks_mut(8).enumerate() {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(i);
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0),
                );
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        adopt_key([
            u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(b[8..].try_into().unwrap_or_default()),
        ]);
    });
    [
        KEY[0].load(Ordering::Acquire),
        KEY[1].load(Ordering::Acquire),
    ]
}

/// Takes the key our parent handed us at boot (before any entry is checked).
pub(crate) fn adopt_key(k: [u64; 2]) {
    KEY[0].store(k[0], Ordering::Release);
    KEY[1].store(k[1], Ordering::Release);
    KEY_SET.store(true, Ordering::Release);
}

/// The seal of `offset` under this process's key.
pub(crate) fn seal(offset: u64) -> u64 {
    seal_with(key(), offset)
}

#[allow(deprecated)] // `SipHasher` is SipHash-2-4, exactly the keyed function wanted here
fn seal_with(k: [u64; 2], offset: u64) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(k[0], k[1]);
    h.write(b"multiproc-entry-v1");
    h.write(&offset.to_le_bytes());
    h.finish()
}

/// Turns a sealed offset back into an entry, refusing one whose seal does not match.
///
/// This is the only way back from an offset to a function: every receiver of entries (a
/// child's `TaskSpec`, a pool worker's INIT and TASK frames) goes through it, so no bytes a
/// peer wrote become a jump unless a holder of the key sealed them.
///
/// # Errors
/// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) for a forged or corrupted offset (or
/// one checked before this process has a key: it was given none at boot).
pub(crate) fn from_sealed(offset: u64, seal: u64) -> Result<EntryFn, crate::Error> {
    if !KEY_SET.load(Ordering::Acquire) || seal_with(key(), offset) != seal {
        return Err(crate::Error::msg(
            crate::ErrorKind::Protocol,
            "refusing to run an entry point that was not sealed by this process's parent \
             (forged or corrupted task)",
        ));
    }
    let addr = (anchor as fn() as usize).wrapping_add(offset as usize);
    // SAFETY: the seal proves that a holder of our key made it with `seal(to_offset(e))`:
    // only our parent (or ourselves) holds the key (the root process draws it, children
    // adopt their parent's at boot, MPI agents rank 0's), and every holder seals only
    // offsets that `to_offset` produced from an `EntryFn` in this executable (the caller
    // checked the fingerprint: a child compares the build-id, a pool worker is a child that
    // did). So `addr` is the address of an `EntryFn` in this executable's code, relocated by
    // the same base as `anchor`.
    Ok(unsafe { std::mem::transmute::<usize, EntryFn>(addr) })
}

#[inline(never)]
fn anchor() {}

/// The offset of `entry` from this crate's anchor, valid in any process of this executable.
/// It travels only with its [`seal`] and comes back only through [`from_sealed`].
pub(crate) fn to_offset(entry: EntryFn) -> u64 {
    (entry as usize).wrapping_sub(anchor as fn() as usize) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(_: ()) {}

    #[test]
    fn a_forged_offset_is_refused() {
        let good = to_offset(entry_of_noop());
        let seal = seal(good);
        assert!(from_sealed(good, seal).is_ok());
        for (offset, s) in [
            (good + 1, seal),
            (good, seal ^ 1),
            (0xdead_beef, 0),
            (good, 0),
        ] {
            let e = from_sealed(offset, s).map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Protocol);
            assert!(e.to_string().contains("not sealed"), "{e}");
        }
    }

    fn entry_of_noop() -> EntryFn {
        fn pick<F: FnOnce(()) + Copy + 'static>(_: F) -> EntryFn {
            entry_of::<F, (), ()>()
        }
        pick(noop)
    }
}
