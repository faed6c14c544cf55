//! # multiproc
//!
//! Python's `multiprocessing`, in Rust: functions run in real child processes.
#![deny(unsafe_code)]

mod codec;
pub mod connection;
mod context;
mod error;
mod pool;
mod process;
mod spawn;
#[allow(unsafe_code)] // the platform layer: every unsafe block there has a SAFETY comment
mod sys;
mod task;

pub use connection::{Connection, Pipe};
pub use context::{all_start_methods, cpu_count, get_start_method, set_start_method, StartMethod};
pub use error::{Error, ErrorKind, Result};
pub use pool::{with_worker_state, AsyncResult, IMap, Pool, PoolBuilder};
pub use process::{
    active_children, current_process, parent_process, Process, ProcessBuilder, ProcessInfo,
};
