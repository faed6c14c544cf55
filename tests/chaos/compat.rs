//! The bounded calls the suite makes, in one place, following the crate's one result shape
//! (`src/lib.rs`, "Blocking calls, `try_`, `_timeout` and `_deadline`"): a `try_` call that
//! finds nothing gives `Err(WouldBlock)`, a `_timeout` call that runs out of time gives
//! `Err(Timeout)`. Any other kind (a `Timeout` from a `try_`, say) is a failure, so a call
//! that drifts from the shape shows up in the tables.

use std::time::Duration;

use multiproc::{Connection, Error, Process, Queue};
use serde::de::DeserializeOwned;

/// What a bounded wait gave.
#[derive(Debug)]
pub enum Waited<T> {
    /// The value.
    Got(T),
    /// The operation failed (not a timeout / nothing-now).
    Failed(Error),
    /// Time ran out (or, for `try_`, nothing was there).
    TimedOut,
}

/// A `try_` call's error: `WouldBlock` is "nothing now".
fn from_try<T>(e: Error) -> Waited<T> {
    if e.is_would_block() {
        Waited::TimedOut
    } else {
        Waited::Failed(e)
    }
}

/// A `_timeout` call's error: `Timeout` is "time ran out".
fn from_timed<T>(e: Error) -> Waited<T> {
    if e.is_timeout() {
        Waited::TimedOut
    } else {
        Waited::Failed(e)
    }
}

/// `Process::join_timeout`.
pub fn join_for<R: DeserializeOwned>(p: &Process<R>, d: Duration) -> Waited<R> {
    match p.join_timeout(d) {
        Ok(v) => Waited::Got(v),
        Err(e) => from_timed(e),
    }
}

/// `Queue::try_get`.
pub fn try_get<T: DeserializeOwned>(q: &Queue<T>) -> Waited<T> {
    match q.try_get() {
        Ok(v) => Waited::Got(v),
        Err(e) => from_try(e),
    }
}

/// `Queue::get_timeout`.
pub fn get_for<T: DeserializeOwned>(q: &Queue<T>, d: Duration) -> Waited<T> {
    match q.get_timeout(d) {
        Ok(v) => Waited::Got(v),
        Err(e) => from_timed(e),
    }
}

/// `Connection::try_recv`.
pub fn try_recv<T: DeserializeOwned>(c: &Connection<T>) -> Waited<T> {
    match c.try_recv() {
        Ok(v) => Waited::Got(v),
        Err(e) => from_try(e),
    }
}

/// `Connection::recv_timeout`.
pub fn recv_for<T: DeserializeOwned>(c: &Connection<T>, d: Duration) -> Waited<T> {
    match c.recv_timeout(d) {
        Ok(v) => Waited::Got(v),
        Err(e) => from_timed(e),
    }
}
