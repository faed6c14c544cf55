//! A non-blocking MPI send that owns its buffer, and the raw MPI calls whose errors the
//! backend acts on (feature `mpi`).
//!
//! rsmpi's `immediate_send` borrows its buffer for a scope that must end with the request
//! complete, which does not fit a relay loop that must never wait for a peer that stopped.
//! [`Isend`] keeps the bytes in a box of its own until `MPI_Test` says MPI is done with
//! them; if it is dropped before that (the peer was declared lost), the box is leaked, never
//! freed under MPI's feet.

#![allow(unsafe_code)]

use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;

/// One send in flight.
#[derive(Debug)]
pub(crate) struct Isend {
    req: ffi::MPI_Request,
    buf: Option<Box<[u8]>>,
    rank: i32,
}

impl Isend {
    /// Starts sending `msg` to `rank` of `comm` (tag 0); never waits for the receiver. A
    /// failure is noted for [`take_failed`] (and the send counts as done).
    pub(crate) fn start(comm: &SimpleCommunicator, rank: i32, msg: Vec<u8>) -> Isend {
        let buf = msg.into_boxed_slice();
        let len = buf.len();
        let mut req = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `buf` is a live allocation of `len` bytes that this `Isend` owns and never
        // touches or frees until MPI_Test reports the request complete (or leaks it on drop);
        // the datatype is MPI_UINT8_T, one byte per element; `comm` is a valid communicator
        // for the duration of the call; `req` is only read if MPI_Isend succeeded.
        let code = unsafe {
            ffi::MPI_Isend(
                buf.as_ptr().cast(),
                len as std::os::raw::c_int,
                u8::equivalent_datatype().as_raw(),
                rank,
                0,
                comm.as_raw(),
                req.as_mut_ptr(),
            )
        };
        if let Err(e) = check("MPI_Isend", Some(rank), code) {
            note_failed(e);
            // No request to test; what MPI did with the buffer is unknown: leak it.
            std::mem::forget(buf);
            return Isend {
                // SAFETY: reads rsmpi's static holding MPI_REQUEST_NULL, set before any call.
                req: unsafe { ffi::RSMPI_REQUEST_NULL },
                buf: None,
                rank,
            };
        }
        // SAFETY: MPI_Isend succeeded, so it wrote the request.
        let req = unsafe { req.assume_init() };
        Isend {
            req,
            buf: Some(buf),
            rank,
        }
    }

    /// Whether MPI is done with the buffer (then it is freed).
    pub(crate) fn test(&mut self) -> bool {
        if self.buf.is_none() {
            return true;
        }
        let mut flag: std::os::raw::c_int = 0;
        // SAFETY: `self.req` is the request MPI_Isend returned and has not completed yet (the
        // buffer is still held); MPI_STATUS_IGNORE is a valid status argument.
        let code = unsafe { ffi::MPI_Test(&mut self.req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
        if let Err(e) = check("MPI_Test", Some(self.rank), code) {
            note_failed(e);
            // The request's state is unknown: leak the buffer, never test it again.
            std::mem::forget(self.buf.take());
            return true;
        }
        if flag != 0 {
            self.buf = None;
        }
        flag != 0
    }
}

impl Drop for Isend {
    fn drop(&mut self) {
        if !self.test() {
            // MPI may still read it: leak the bytes rather than free them.
            std::mem::forget(self.buf.take());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors returned, not fatal.
//
// With `MPI_ERRORS_RETURN` on the communicator, a failed call returns its error code instead
// of aborting the job. rsmpi's wrappers ignore those codes (its probe reads the flag and the
// status whatever the call returned, its receive then fills a buffer MPI may not have
// written), so the calls whose errors we act on are made here, raw, and every code checked.

/// A failed MPI call: which call, on which rank if known, and MPI's own text for the error.
#[derive(Debug, Clone)]
pub(crate) struct MpiError {
    /// The call that failed (`"MPI_Isend"`, ...).
    pub(crate) call: &'static str,
    /// The peer it was about, if the call names one.
    pub(crate) rank: Option<i32>,
    /// MPI's error code.
    pub(crate) code: std::os::raw::c_int,
    /// MPI's description of `code`.
    pub(crate) text: String,
}

impl std::fmt::Display for MpiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed (MPI error {}: {})",
            self.call, self.code, self.text
        )
    }
}

/// `Err` for a return code other than `MPI_SUCCESS`.
fn check(call: &'static str, rank: Option<i32>, code: std::os::raw::c_int) -> Result<(), MpiError> {
    if code == ffi::MPI_SUCCESS as std::os::raw::c_int {
        return Ok(());
    }
    let mut buf = vec![0u8; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: std::os::raw::c_int = 0;
    // SAFETY: `buf` holds MPI_MAX_ERROR_STRING bytes (and one more), as MPI_Error_string
    // requires; it writes at most that many and their count to `len`. Its own return code is
    // ignored: on failure `len` stays 0 and the text is empty.
    unsafe { ffi::MPI_Error_string(code, buf.as_mut_ptr().cast(), &mut len) };
    buf.truncate((len.max(0) as usize).min(ffi::MPI_MAX_ERROR_STRING as usize));
    Err(MpiError {
        call,
        rank,
        code,
        text: String::from_utf8_lossy(&buf).trim().to_string(),
    })
}

/// Makes the calls on `comm` return their errors instead of aborting the job (MPI's default,
/// `MPI_ERRORS_ARE_FATAL`).
pub(crate) fn errors_return(comm: &SimpleCommunicator) -> Result<(), MpiError> {
    // SAFETY: `comm` is a valid communicator for the duration of the call; the handler is
    // MPI's predefined MPI_ERRORS_RETURN, read from rsmpi's static (set once by its C shim).
    let code = unsafe { ffi::MPI_Comm_set_errhandler(comm.as_raw(), ffi::RSMPI_ERRORS_RETURN) };
    check("MPI_Comm_set_errhandler", None, code)
}

/// Receives one message (any tag) from any rank of `comm` if one is waiting: `Ok(None)`
/// when none is. An error names the source rank when MPI's status gives one.
pub(crate) fn try_recv_any(comm: &SimpleCommunicator) -> Result<Option<(i32, Vec<u8>)>, MpiError> {
    let mut flag: std::os::raw::c_int = 0;
    let mut msg = std::mem::MaybeUninit::<ffi::MPI_Message>::uninit();
    let mut st = std::mem::MaybeUninit::<ffi::MPI_Status>::zeroed();
    // SAFETY: every out-pointer points to storage of its type that lives across the call;
    // `comm` is valid; the any-source and any-tag constants are rsmpi's statics.
    let code = unsafe {
        ffi::MPI_Improbe(
            ffi::RSMPI_ANY_SOURCE,
            ffi::RSMPI_ANY_TAG,
            comm.as_raw(),
            &mut flag,
            msg.as_mut_ptr(),
            st.as_mut_ptr(),
        )
    };
    // SAFETY: the status was zeroed before the call, so it is initialised whatever MPI did.
    let st = unsafe { st.assume_init() };
    let src = st.MPI_SOURCE;
    let named = (src >= 0).then_some(src);
    check("MPI_Improbe", named, code)?;
    if flag == 0 {
        return Ok(None);
    }
    // SAFETY: the call succeeded with `flag` set, so MPI wrote the matched message handle.
    let mut msg = unsafe { msg.assume_init() };
    let mut count: std::os::raw::c_int = 0;
    // SAFETY: `st` is the status MPI_Improbe filled for this message; the datatype is
    // MPI_UINT8_T.
    let code = unsafe { ffi::MPI_Get_count(&st, u8::equivalent_datatype().as_raw(), &mut count) };
    check("MPI_Get_count", Some(src), code)?;
    // MPI_UNDEFINED (negative) cannot happen for bytes; refuse it rather than trust it.
    let Ok(len) = usize::try_from(count) else {
        return Err(MpiError {
            call: "MPI_Get_count",
            rank: Some(src),
            code: 0,
            text: format!("a message of {count} bytes"),
        });
    };
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has room for `count` bytes of MPI_UINT8_T; `msg` is the handle that
    // MPI_Improbe matched and has not been received yet (MPI_Mrecv consumes it); the status
    // is ignored.
    let code = unsafe {
        ffi::MPI_Mrecv(
            buf.as_mut_ptr().cast(),
            count,
            u8::equivalent_datatype().as_raw(),
            &mut msg,
            ffi::RSMPI_STATUS_IGNORE,
        )
    };
    check("MPI_Mrecv", Some(src), code)?;
    Ok(Some((src, buf)))
}

/// Sends `msg` to `rank` of `comm` (tag 0), blocking until MPI has the bytes (for messages
/// below the eager limit: at once).
pub(crate) fn send(comm: &SimpleCommunicator, rank: i32, msg: &[u8]) -> Result<(), MpiError> {
    // SAFETY: `msg` is a live slice of `msg.len()` bytes for the duration of this blocking
    // call; the datatype is MPI_UINT8_T; `comm` is valid.
    let code = unsafe {
        ffi::MPI_Send(
            msg.as_ptr().cast(),
            msg.len() as std::os::raw::c_int,
            u8::equivalent_datatype().as_raw(),
            rank,
            0,
            comm.as_raw(),
        )
    };
    check("MPI_Send", Some(rank), code)
}

/// Failed sends to each rank, for the relay loop to act on (see [`take_failed`]).
static FAILED: std::sync::Mutex<Vec<MpiError>> = std::sync::Mutex::new(Vec::new());
/// Set when `FAILED` holds something (the relay loop checks it every round, lock-free).
static ANY_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes a failed call about a peer: the relay loop collects it with [`take_failed`].
pub(crate) fn note_failed(e: MpiError) {
    crate::wait::lock(&FAILED).push(e);
    ANY_FAILED.store(true, std::sync::atomic::Ordering::Release);
}

/// The failed calls noted since the last call (cheap when there are none).
pub(crate) fn take_failed() -> Vec<MpiError> {
    // A plain load first: this runs every round of the relay loop.
    if !ANY_FAILED.load(std::sync::atomic::Ordering::Acquire)
        || !ANY_FAILED.swap(false, std::sync::atomic::Ordering::AcqRel)
    {
        return Vec::new();
    }
    std::mem::take(&mut *crate::wait::lock(&FAILED))
}
