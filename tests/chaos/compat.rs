//! The few calls whose result shape is changing (issue 10 point 5: one result shape), in one
//! place, so the rest of the suite does not care which shape the library has today.

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

fn from_err<T>(e: Error) -> Waited<T> {
    if e.is_timeout() || e.is_would_block() {
        Waited::TimedOut
    } else {
        Waited::Failed(e)
    }
}

/// `Process::join_timeout`.
pub fn join_for<R: DeserializeOwned>(p: &Process<R>, d: Duration) -> Waited<R> {
    match p.join_timeout(d) {
        Ok(Some(v)) => Waited::Got(v),
        Ok(None) => Waited::TimedOut,
        Err(e) => from_err(e),
    }
}

/// `Queue::try_get`.
pub fn try_get<T: DeserializeOwned>(q: &Queue<T>) -> Waited<T> {
    match q.try_get() {
        Ok(Some(v)) => Waited::Got(v),
        Ok(None) => Waited::TimedOut,
        Err(e) => from_err(e),
    }
}

/// `Queue::get_timeout`.
pub fn get_for<T: DeserializeOwned>(q: &Queue<T>, d: Duration) -> Waited<T> {
    match q.get_timeout(d) {
        Ok(v) => Waited::Got(v),
        Err(e) => from_err(e),
    }
}

/// `Connection::try_recv`.
pub fn try_recv<T: DeserializeOwned>(c: &Connection<T>) -> Waited<T> {
    match c.try_recv() {
        Ok(Some(v)) => Waited::Got(v),
        Ok(None) => Waited::TimedOut,
        Err(e) => from_err(e),
    }
}

/// `Connection::recv_timeout`.
pub fn recv_for<T: DeserializeOwned>(c: &Connection<T>, d: Duration) -> Waited<T> {
    match c.recv_timeout(d) {
        Ok(v) => Waited::Got(v),
        Err(e) => from_err(e),
    }
}
