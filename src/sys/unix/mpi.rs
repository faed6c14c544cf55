//! Non-blocking MPI sends and receives that own their buffers (feature `mpi`).
//!
//! rsmpi's `immediate_send` borrows its buffer for a scope that must end with the request
//! complete, which does not fit a relay loop that must never wait for a peer that stopped.
//! [`Isend`] and [`Irecv`] keep their bytes in a buffer of their own until `MPI_Test` says
//! MPI is done with them, then give the buffer back for reuse; if one is dropped before that
//! (the peer was declared lost), the buffer is leaked, never freed under MPI's feet.
//!
//! [`probe`] matches the next message from any rank without receiving it (`MPI_Improbe`);
//! the caller then receives it into a buffer of its own, blocking ([`Probed::receive_into`])
//! or not ([`Probed::start`]).

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
    done: bool,
}

impl Isend {
    /// Starts sending `msg` to `rank` of `comm` (tag 0); never waits for the receiver.
    pub(crate) fn start(comm: &SimpleCommunicator, rank: i32, msg: Vec<u8>) -> Isend {
        let mut req = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `msg` is a live allocation of `msg.len()` bytes that this `Isend` owns and
        // never touches, moves out of or frees until MPI_Test reports the request complete
        // (or leaks on drop); moving the `Vec` itself does not move its heap buffer. The
        // datatype is MPI_UINT8_T, one byte per element; `comm` is a valid communicator for
        // the duration of the call; `req` is written by MPI_Isend before it is read.
        let req = unsafe {
            ffi::MPI_Isend(
                msg.as_ptr().cast(),
                msg.len() as std::os::raw::c_int,
                u8::equivalent_datatype().as_raw(),
                rank,
                0,
                comm.as_raw(),
                req.as_mut_ptr(),
            );
            req.assume_init()
        };
        Isend {
            req,
            buf: Some(msg),
            done: false,
        }
    }

    /// Whether MPI is done with the buffer.
    pub(crate) fn test(&mut self) -> bool {
        if !self.done {
            self.done = test(&mut self.req);
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

/// `MPI_Test` on a request that has not completed yet.
fn test(req: &mut ffi::MPI_Request) -> bool {
    let mut flag: std::os::raw::c_int = 0;
    // SAFETY: callers pass a request that MPI_Isend/MPI_Imrecv returned and that has not
    // been reported complete yet (they stop testing once it is); MPI_STATUS_IGNORE is a
    // valid status argument.
    unsafe { ffi::MPI_Test(req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
    flag != 0
}

/// A message that [`probe`] matched: it must be received with [`receive_into`](Self::receive_into)
/// or [`start`](Self::start) (no other receive can take it).
#[derive(Debug)]
pub(crate) struct Probed {
    msg: ffi::MPI_Message,
    /// The rank that sent it.
    pub(crate) source: i32,
    /// Its length in bytes.
    pub(crate) len: usize,
}

/// Matches the next message from any rank on `comm` (any tag), if one has arrived.
pub(crate) fn probe(comm: &SimpleCommunicator) -> Option<Probed> {
    let mut flag: std::os::raw::c_int = 0;
    let mut msg = std::mem::MaybeUninit::<ffi::MPI_Message>::uninit();
    let mut status = std::mem::MaybeUninit::<ffi::MPI_Status>::uninit();
    // SAFETY: `comm` is a valid communicator for the duration of the call; `flag`, `msg`
    // and `status` are written by MPI_Improbe, and `msg`/`status` are read only when `flag`
    // says a message was matched.
    unsafe {
        ffi::MPI_Improbe(
            ffi::RSMPI_ANY_SOURCE,
            ffi::RSMPI_ANY_TAG,
            comm.as_raw(),
            &mut flag,
            msg.as_mut_ptr(),
            status.as_mut_ptr(),
        );
        if flag == 0 {
            return None;
        }
        let status = status.assume_init();
        let mut count: std::os::raw::c_int = 0;
        ffi::MPI_Get_count(&status, u8::equivalent_datatype().as_raw(), &mut count);
        Some(Probed {
            msg: msg.assume_init(),
            source: status.MPI_SOURCE,
            // MPI_UNDEFINED (negative) cannot happen for bytes; 0 then, and the message is
            // refused as too short by its parser.
            len: count.max(0) as usize,
        })
    }
}

impl Probed {
    /// Receives it into `buf` (its contents replaced), waiting until it has all arrived.
    pub(crate) fn receive_into(mut self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.resize(self.len, 0);
        // SAFETY: `buf` holds `self.len` writable bytes, the message's length in
        // MPI_UINT8_T elements as MPI_Get_count reported it; `self.msg` is the matched
        // message MPI_Improbe returned, received exactly once (MPI_Mrecv sets it to
        // MPI_MESSAGE_NULL, and `self` is consumed).
        unsafe {
            ffi::MPI_Mrecv(
                buf.as_mut_ptr().cast(),
                self.len as std::os::raw::c_int,
                u8::equivalent_datatype().as_raw(),
                &mut self.msg,
                ffi::RSMPI_STATUS_IGNORE,
            );
        }
    }

    /// Starts receiving it into `buf` without waiting (a large message may need its sender
    /// to take part: one that stopped never completes, and nothing waits for it).
    pub(crate) fn start(mut self, mut buf: Vec<u8>) -> Irecv {
        buf.clear();
        buf.resize(self.len, 0);
        let mut req = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `buf` holds `self.len` writable bytes and is owned by the returned `Irecv`,
        // which never touches, moves out of or frees it until MPI_Test reports the receive
        // complete (or leaks it on drop); moving the `Vec` does not move its heap buffer.
        // `self.msg` is the matched message MPI_Improbe returned, received exactly once.
        // `req` is written by MPI_Imrecv before it is read.
        let req = unsafe {
            ffi::MPI_Imrecv(
                buf.as_mut_ptr().cast(),
                self.len as std::os::raw::c_int,
                u8::equivalent_datatype().as_raw(),
                &mut self.msg,
                req.as_mut_ptr(),
            );
            req.assume_init()
        };
        Irecv {
            req,
            buf: Some(buf),
            done: false,
        }
    }
}

/// One receive in flight.
#[derive(Debug)]
pub(crate) struct Irecv {
    req: ffi::MPI_Request,
    buf: Option<Vec<u8>>,
    done: bool,
}

impl Irecv {
    /// Whether the message has arrived (then [`take`](Self::take) gives it).
    pub(crate) fn test(&mut self) -> bool {
        if !self.done {
            self.done = test(&mut self.req);
        }
        self.done
    }

    /// The message, once it has arrived.
    pub(crate) fn take(&mut self) -> Option<Vec<u8>> {
        if self.test() {
            self.buf.take()
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
