//! The Linux backend (see `sys/mod.rs` for the contract).

pub(crate) mod exe;
pub(crate) mod futex;
#[cfg(feature = "mpi")]
pub(crate) mod mpi;
pub(crate) mod process;
pub(crate) mod robust;
pub(crate) mod shm;
pub(crate) mod socket;
