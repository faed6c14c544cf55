//! Non-blocking MPI sends and receives that own their buffers, and the raw MPI calls whose
//! errors the backend acts on (feature `mpi`).
//!
//! rsmpi's `immediate_send` borrows its buffer for a scope that must end with the request
//! complete, which does not fit a relay loop that must never wait for a peer that stopped.
//! [`Isend`] and [`Irecv`] keep their bytes in a buffer of their own until `MPI_Test` says
//! MPI is done with them, then give the buffer back for reuse; if one is dropped before that
//! (the peer was declared lost), the buffer is leaked, never freed under MPI's feet.
//!
//! [`probe`] matches the next message from any rank without receiving it (`MPI_Improbe`);
//! the caller then receives it into a buffer of its own, blocking ([`Probed::receive_into`])
//! or not ([`Probed::start`]). Every call's error code is checked (see "Errors returned, not
//! fatal" below): a failure about a peer is returned, or noted for [`take_failed`].

#![allow(unsafe_code)]

use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;

/// One send in flight.
#[derive(Debug)]
pub(crate) struct Isend {
    req: ffi::MPI_Request,
    buf: Option<Vec<u8>>,
    rank: i32,
    done: bool,
}

impl Isend {
    /// Starts sending `msg` to `rank` of `comm` (tag 0); never waits for the receiver. A
    /// failure is noted for [`take_failed`] (and the send counts as done).
    pub(crate) fn start(comm: &SimpleCommunicator, rank: i32, msg: Vec<u8>) -> Isend {
        let mut req = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `msg` is a live allocation of `msg.len()` bytes that this `Isend` owns and
        // never touches, moves out of or frees until MPI_Test reports the request complete
        // (or leaks on drop); moving the `Vec` itself does not move its heap buffer. The
        // datatype is MPI_UINT8_T, one byte per element; `comm` is a valid communicator for
        // the duration of the call; `req` is only read if MPI_Isend succeeded.
        let code = unsafe {
            ffi::MPI_Isend(
                msg.as_ptr().cast(),
                msg.len() as std::os::raw::c_int,
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
            std::mem::forget(msg);
            return Isend {
                // SAFETY: reads rsmpi's static holding MPI_REQUEST_NULL, set before any call.
                req: unsafe { ffi::RSMPI_REQUEST_NULL },
                buf: None,
                rank,
                done: true,
            };
        }
        // SAFETY: MPI_Isend succeeded, so it wrote the request.
        let req = unsafe { req.assume_init() };
        Isend {
            req,
            buf: Some(msg),
            rank,
            done: false,
        }
    }

    /// Whether MPI is done with the buffer (a failed test counts as done: the buffer is
    /// then leaked, and the failure noted for [`take_failed`]).
    pub(crate) fn test(&mut self) -> bool {
        if !self.done {
            self.done = test(&mut self.req, "MPI_Test", self.rank, &mut self.buf);
        }
        self.done
    }

    /// The buffer back, once [`test`](Self::test) said the send is complete.
    pub(crate) fn take(&mut self) -> Option<Vec<u8>> {
        if self.test() {
            self.buf.take()
        } else {
            None
        }
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

/// `MPI_Test` on a request that has not completed yet; `true` once it has. If the call
/// fails, the request's state is unknown: `buf` is leaked (never freed under MPI), the
/// failure is noted for [`take_failed`], and the request counts as done.
fn test(
    req: &mut ffi::MPI_Request,
    call: &'static str,
    rank: i32,
    buf: &mut Option<Vec<u8>>,
) -> bool {
    let mut flag: std::os::raw::c_int = 0;
    // SAFETY: callers pass a request that MPI_Isend/MPI_Imrecv returned and that has not
    // been reported complete yet (they stop testing once it is); MPI_STATUS_IGNORE is a
    // valid status argument.
    let code = unsafe { ffi::MPI_Test(req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
    if let Err(e) = check(call, Some(rank), code) {
        note_failed(e);
        std::mem::forget(buf.take());
        return true;
    }
    flag != 0
}

/// A message that [`probe`] matched: it must be received with
/// [`receive_into`](Self::receive_into) or [`start`](Self::start) (no other receive can take
/// it).
#[derive(Debug)]
pub(crate) struct Probed {
    msg: ffi::MPI_Message,
    /// The rank that sent it.
    pub(crate) source: i32,
    /// Its length in bytes.
    pub(crate) len: usize,
}

/// Matches the next message from any rank on `comm` (any tag), if one has arrived. An error
/// names the source rank when MPI's status gives one.
pub(crate) fn probe(comm: &SimpleCommunicator) -> Result<Option<Probed>, MpiError> {
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
    check("MPI_Improbe", (src >= 0).then_some(src), code)?;
    if flag == 0 {
        return Ok(None);
    }
    // SAFETY: the call succeeded with `flag` set, so MPI wrote the matched message handle.
    let msg = unsafe { msg.assume_init() };
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
    Ok(Some(Probed {
        msg,
        source: src,
        len,
    }))
}

impl Probed {
    /// Receives it into `buf` (its contents replaced), waiting until it has all arrived.
    pub(crate) fn receive_into(mut self, buf: &mut Vec<u8>) -> Result<(), MpiError> {
        buf.clear();
        buf.resize(self.len, 0);
        // SAFETY: `buf` holds `self.len` writable bytes, the message's length in
        // MPI_UINT8_T elements as MPI_Get_count reported it; `self.msg` is the matched
        // message MPI_Improbe returned, received exactly once (MPI_Mrecv consumes it, and
        // `self` is consumed); the status is ignored.
        let code = unsafe {
            ffi::MPI_Mrecv(
                buf.as_mut_ptr().cast(),
                self.len as std::os::raw::c_int,
                u8::equivalent_datatype().as_raw(),
                &mut self.msg,
                ffi::RSMPI_STATUS_IGNORE,
            )
        };
        check("MPI_Mrecv", Some(self.source), code)
    }

    /// Starts receiving it into `buf` without waiting (a large message may need its sender
    /// to take part: one that stopped never completes, and nothing waits for it). A failure
    /// is noted for [`take_failed`] (and the receive counts as done, with no message).
    pub(crate) fn start(mut self, mut buf: Vec<u8>) -> Irecv {
        buf.clear();
        buf.resize(self.len, 0);
        let mut req = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `buf` holds `self.len` writable bytes and is owned by the returned `Irecv`,
        // which never touches, moves out of or frees it until MPI_Test reports the receive
        // complete (or leaks it on drop); moving the `Vec` does not move its heap buffer.
        // `self.msg` is the matched message MPI_Improbe returned, received exactly once.
        // `req` is only read if MPI_Imrecv succeeded.
        let code = unsafe {
            ffi::MPI_Imrecv(
                buf.as_mut_ptr().cast(),
                self.len as std::os::raw::c_int,
                u8::equivalent_datatype().as_raw(),
                &mut self.msg,
                req.as_mut_ptr(),
            )
        };
        if let Err(e) = check("MPI_Imrecv", Some(self.source), code) {
            note_failed(e);
            std::mem::forget(buf);
            return Irecv {
                // SAFETY: reads rsmpi's static holding MPI_REQUEST_NULL, set before any call.
                req: unsafe { ffi::RSMPI_REQUEST_NULL },
                buf: None,
                rank: self.source,
                done: true,
            };
        }
        // SAFETY: MPI_Imrecv succeeded, so it wrote the request.
        let req = unsafe { req.assume_init() };
        Irecv {
            req,
            buf: Some(buf),
            rank: self.source,
            done: false,
        }
    }
}

/// One receive in flight.
#[derive(Debug)]
pub(crate) struct Irecv {
    req: ffi::MPI_Request,
    buf: Option<Vec<u8>>,
    rank: i32,
    done: bool,
}

impl Irecv {
    /// Whether the receive is over (then [`take`](Self::take) gives the message, unless the
    /// receive failed).
    pub(crate) fn test(&mut self) -> bool {
        if !self.done {
            self.done = test(&mut self.req, "MPI_Test", self.rank, &mut self.buf);
        }
        self.done
    }

    /// `Some(Some(message))` once it has arrived, `Some(None)` if the receive failed (noted
    /// for [`take_failed`]), `None` while it is arriving.
    pub(crate) fn take(&mut self) -> Option<Option<Vec<u8>>> {
        if self.test() {
            Some(self.buf.take())
        } else {
            None
        }
    }
}

impl Drop for Irecv {
    fn drop(&mut self) {
        if !self.test() {
            // MPI may still write it: leak the bytes rather than free them.
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
    let Some(p) = probe(comm)? else {
        return Ok(None);
    };
    let source = p.source;
    let mut buf = Vec::new();
    p.receive_into(&mut buf)?;
    Ok(Some((source, buf)))
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
