//! Function identity: how a child finds the function its parent asked it to run.
//!
//! A task is a zero-sized callable: a function item or a closure that captures nothing. For
//! each `(F, A, R)` the compiler emits one monomorphised [`EntryFn`], `run::<F, A, R>`, which
//! decodes the arguments, conjures the zero-sized `F`, calls it and encodes the result. The
//! parent sends the entry's *offset from an anchor function in this crate*, never an absolute
//! address, so ASLR does not matter; the child adds its own anchor's address back. That is only
//! meaningful in the very same executable, so the child first compares the executable
//! fingerprint (ELF build-id) sent by the parent with its own, and the offset only ever
//! arrives over the private socket its parent handed it at birth.
//!
//! A capturing closure (or a `fn` pointer, which is not zero-sized) is rejected at compile
//! time by the `const` assertion in [`entry_of`].

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::fdreg::RegisteredFd;

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
/// captures something, or a `fn` pointer. Every entry point calls it.
pub(crate) fn reject_captures<F>() {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "multiproc: a task must be a function item or a closure that captures nothing \
             (pass the data it needs as arguments)"
        )
    };
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
}

/// Set in a `Fork` child right after the fork (see [`mark_forked_child`]).
static FORKED_CHILD: AtomicBool = AtomicBool::new(false);

/// Marks this process as a `Fork` child: from now on the panic hook reports with plain
/// `write(2)` calls instead of running the previous hook, whose locks (std's backtrace lock,
/// the output-capture lock) another thread of the parent may have held at the fork.
pub(crate) fn mark_forked_child() {
    FORKED_CHILD.store(true, Ordering::Relaxed);
}

/// Installs (once) a panic hook that records where a panic happened, then runs the previous
/// hook (which prints the usual message on stderr), or in a `Fork` child writes the message
/// itself, without taking any lock.
///
/// A `Fork` launch installs it in the parent, before forking, so a forked child never calls
/// `take_hook`/`set_hook` (the `Once` is complete in the copy).
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            if FORKED_CHILD.load(Ordering::Relaxed) {
                let payload = info.payload();
                let msg = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("Box<dyn Any>");
                let thread = std::thread::current();
                let text = format!(
                    "\nthread '{}' panicked at {}:\n{msg}\n",
                    thread.name().unwrap_or("<unnamed>"),
                    location.as_deref().unwrap_or("<unknown>"),
                );
                crate::sys::process::write_stderr_raw(text.as_bytes());
            }
            if let Some(s) = location {
                PANIC_LOCATION.with(|c| *c.borrow_mut() = Some(s));
            }
            if !FORKED_CHILD.load(Ordering::Relaxed) {
                prev(info);
            }
        }));
    });
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
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Ok(v),
        Err(payload) => {
            let message = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "(panic payload is not a string)".to_string()
            };
            // The payload's own destructor could panic; leak it instead.
            std::mem::forget(payload);
            let location = PANIC_LOCATION.with(|c| c.borrow_mut().take());
            Err((message, location))
        }
    }
}

#[inline(never)]
fn anchor() {}

/// The offset of `entry` from this crate's anchor, valid in any process of this executable.
pub(crate) fn to_offset(entry: EntryFn) -> u64 {
    (entry as usize).wrapping_sub(anchor as fn() as usize) as u64
}

/// Turns an offset from [`to_offset`] back into a callable entry.
///
/// # Safety
///
/// `offset` must have been produced by [`to_offset`] in a process running the very same
/// executable (same fingerprint), and reached us over a channel only our parent could write.
pub(crate) unsafe fn from_offset(offset: u64) -> EntryFn {
    let addr = (anchor as fn() as usize).wrapping_add(offset as usize);
    // SAFETY: per the contract, `addr` is the address of an `EntryFn` in this executable's
    // code, relocated by the same base as `anchor`.
    unsafe { std::mem::transmute::<usize, EntryFn>(addr) }
}
