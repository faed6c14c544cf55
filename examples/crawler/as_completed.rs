//! TEMP until `multiproc::AsCompleted` lands: a private stand-in with the API the pool is
//! adding (`AsCompleted::{new, push, len, is_empty, next_timeout}`, `Iterator`,
//! `as_completed`), used by `examples/crawler.rs` and by the benchmark's crawl rows. Delete
//! this file then. It waits on the results' wakers (an `AsyncResult` is a `Future`) rather
//! than polling them, so a frontier of thousands of pending pages costs nothing while it
//! waits (the benchmark measures the crawler's CPU time).

#![allow(dead_code, unreachable_pub)] // the real API is public; each user needs a part

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use multiproc::{AsyncResult, Result};
use serde::de::DeserializeOwned;

/// A dynamic set of pending results, yielded as they finish.
pub struct AsCompleted<R> {
    pending: HashMap<u64, AsyncResult<R>>,
    done: VecDeque<Result<R>>,
    next_id: u64,
    tx: Sender<u64>,
    rx: Receiver<u64>,
}

/// Wakes the set by sending the id of the result that became ready.
struct Ping(u64, Mutex<Sender<u64>>);

impl Wake for Ping {
    fn wake(self: Arc<Self>) {
        let tx = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(self.0);
    }
}

/// All of `results`, yielded as they finish.
pub fn as_completed<R: DeserializeOwned>(
    results: impl IntoIterator<Item = AsyncResult<R>>,
) -> AsCompleted<R> {
    let mut set = AsCompleted::new();
    for r in results {
        set.push(r);
    }
    set
}

impl<R: DeserializeOwned> Default for AsCompleted<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: DeserializeOwned> AsCompleted<R> {
    /// An empty set.
    pub fn new() -> Self {
        let (tx, rx) = channel();
        AsCompleted {
            pending: HashMap::new(),
            done: VecDeque::new(),
            next_id: 0,
            tx,
            rx,
        }
    }

    /// Adds a pending result.
    pub fn push(&mut self, r: AsyncResult<R>) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, r);
        self.poll(id);
    }

    /// Results not yielded yet.
    pub fn len(&self) -> usize {
        self.pending.len() + self.done.len()
    }

    /// Whether every result was yielded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next result to finish, waiting at most `d`; `None` if none finished in time
    /// or the set is empty.
    pub fn next_timeout(&mut self, d: Duration) -> Option<Result<R>> {
        self.next_until(Instant::now().checked_add(d))
    }

    fn poll(&mut self, id: u64) {
        let Some(r) = self.pending.get_mut(&id) else {
            return;
        };
        let waker = Waker::from(Arc::new(Ping(id, Mutex::new(self.tx.clone()))));
        if let Poll::Ready(v) = Pin::new(r).poll(&mut Context::from_waker(&waker)) {
            self.pending.remove(&id);
            self.done.push_back(v);
        }
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        loop {
            if let Some(v) = self.done.pop_front() {
                return Some(v);
            }
            if self.pending.is_empty() {
                return None;
            }
            // A bounded wait, then a sweep over every pending result (a safety net: a
            // wake-up is never expected to go missing).
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if d <= now => return None,
                Some(d) => (d - now).min(Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            match self.rx.recv_timeout(wait) {
                Ok(id) => self.poll(id),
                Err(RecvTimeoutError::Timeout) => {
                    let ids: Vec<u64> = self.pending.keys().copied().collect();
                    for id in ids {
                        self.poll(id);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
            }
        }
    }
}

impl<R: DeserializeOwned> Iterator for AsCompleted<R> {
    type Item = Result<R>;

    /// Blocks until any pending result finishes; `None` once the set is empty.
    fn next(&mut self) -> Option<Result<R>> {
        self.next_until(None)
    }
}
