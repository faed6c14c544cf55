//! A non-blocking MPI send that owns its buffer (feature `mpi`).
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
}

impl Isend {
    /// Starts sending `msg` to `rank` of `comm` (tag 0); never waits for the receiver.
    pub(crate) fn start(comm: &SimpleCommunicator, rank: i32, msg: Vec<u8>) -> Isend {
        let buf = msg.into_boxed_slice();
        let len = buf.len();
        let mut req = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `buf` is a live allocation of `len` bytes that this `Isend` owns and never
        // touches or frees until MPI_Test reports the request complete (or leaks it on drop);
        // the datatype is MPI_UINT8_T, one byte per element; `comm` is a valid communicator
        // for the duration of the call; `req` is written by MPI_Isend before it is read.
        let req = unsafe {
            ffi::MPI_Isend(
                buf.as_ptr().cast(),
                len as std::os::raw::c_int,
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
            buf: Some(buf),
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
        unsafe { ffi::MPI_Test(&mut self.req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
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
