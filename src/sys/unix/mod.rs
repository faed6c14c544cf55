//! The Linux backend (see `sys/mod.rs` for the contract).

pub(crate) mod exe;
pub(crate) mod process;
pub(crate) mod socket;
