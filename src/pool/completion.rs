//! Waiting for whichever result finishes first ([`AsCompleted`]) and running callbacks
//! ([`AsyncResult::then`]) on the pool's callback thread.
//!
//! Both hang off the job's settle step in `dispatch/route.rs` (`State::deliver`): a settled job
//! pushes its key to the [`Notifier`] of the `AsCompleted` set it belongs to, or hands its
//! deliveries to the [`Runner`]. Both happen after the pool lock is released (`Actions`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::dispatch::Callback;
use super::AsyncResult;
use crate::error::{Error, ErrorKind, Result};
use crate::wait::{deadline_after, lock, wait_until};

/// The shared wake-up of one [`AsCompleted`] set: keys of settled members, in the order
/// they settled.
#[derive(Debug, Default)]
pub(super) struct Notifier {
    done: Mutex<VecDeque<u64>>,
    cv: Condvar,
}

impl Notifier {
    pub(super) fn push(&self, key: u64) {
        lock(&self.done).push_back(key);
        self.cv.notify_all();
    }

    /// The next settled key, waiting until `deadline`.
    fn pop(&self, deadline: Option<Instant>) -> Option<u64> {
        let (mut q, _) = wait_until(&self.cv, lock(&self.done), deadline, |q| !q.is_empty());
        q.pop_front()
    }
}

/// A dynamic set of pending [`AsyncResult`]s that yields each result as it finishes, like
/// Python's `concurrent.futures.as_completed`, but a set you may add to while draining it.
///
/// Results come in completion order. Waiting costs nothing: every member tells the set
/// when it settles (no polling of [`AsyncResult::ready`]). Members may come from different
/// pools. The set suits a growing work list, such as a crawler's frontier: push the
/// results of new submissions while you drain the old ones. (`imap_unordered` cannot grow:
/// its input is an `Iterator`, and an iterator that returns `None` has ended.)
///
/// ```
/// use multiproc::{AsCompleted, Pool};
///
/// fn children(n: u32) -> Vec<u32> { if n < 40 { vec![2 * n + 1, 2 * n + 2] } else { vec![] } }
///
/// let pool = Pool::new(2)?;
/// let mut frontier = AsCompleted::new();
/// frontier.push(pool.apply_async(children, 0));
/// let mut seen = 1;
/// while let Some(next) = frontier.next() {
///     for c in next? {
///         seen += 1;
///         frontier.push(pool.apply_async(children, c));
///     }
/// }
/// assert_eq!(seen, 81); // nodes 0..=80 of a binary tree
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Dropping
///
/// Dropping the set drops the `AsyncResult`s still in it: their tasks still run, and their
/// results are discarded.
pub struct AsCompleted<R> {
    notifier: Arc<Notifier>,
    members: HashMap<u64, AsyncResult<R>>,
    next_key: u64,
}

impl<R> fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("len", &self.members.len())
            .finish()
    }
}

impl<R> Default for AsCompleted<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> AsCompleted<R> {
    /// An empty set.
    pub fn new() -> Self {
        AsCompleted {
            notifier: Arc::new(Notifier::default()),
            members: HashMap::new(),
            next_key: 0,
        }
    }

    /// Adds a pending result (one that already finished comes out first thing).
    pub fn push(&mut self, r: AsyncResult<R>) {
        let key = self.next_key;
        self.next_key += 1;
        let settled = {
            let mut st = r.job.shared.lock();
            match st.jobs.get_mut(&r.job.id) {
                Some(j) if !j.settled() && !j.taken => {
                    j.notify = Some((self.notifier.clone(), key));
                    false
                }
                _ => true,
            }
        };
        if settled {
            self.notifier.push(key);
        }
        self.members.insert(key, r);
    }

    /// How many results have not come out yet.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether every result has come out.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl<R: serde::de::DeserializeOwned> AsCompleted<R> {
    /// The next result to finish, waiting at most `timeout`; `None` once the set is empty.
    ///
    /// `Some(Err(e))` with `e.is_timeout()` when none finished in time (the set stays
    /// usable); otherwise the result, or that task's own failure.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_deadline(deadline_after(timeout))
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        if self.members.is_empty() {
            return None;
        }
        let Some(key) = self.notifier.pop(deadline) else {
            return Some(Err(Error::msg(
                ErrorKind::Timeout,
                "no result finished in time",
            )));
        };
        let r = self.members.remove(&key)?;
        Some(r.take_settled())
    }
}

impl<R: serde::de::DeserializeOwned> Iterator for AsCompleted<R> {
    type Item = Result<R>;

    /// Blocks until any member finishes; `None` once the set is empty.
    fn next(&mut self) -> Option<Result<R>> {
        self.next_deadline(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.members.len(), Some(self.members.len()))
    }
}

/// Puts `results` in an [`AsCompleted`] set, to take them in completion order.
///
/// ```
/// use std::time::Duration;
/// let pool = multiproc::Pool::new(2)?;
/// let nap = |ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms };
/// let all = multiproc::as_completed([pool.apply_async(nap, 300), pool.apply_async(nap, 1)]);
/// let order: Vec<u64> = all.map(Result::unwrap).collect();
/// assert_eq!(order.len(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn as_completed<R>(results: impl IntoIterator<Item = AsyncResult<R>>) -> AsCompleted<R> {
    let mut set = AsCompleted::new();
    for r in results {
        set.push(r);
    }
    set
}

/// Runs callbacks one at a time on the pool's callback thread, started on first use.
#[derive(Default)]
pub(super) struct Runner {
    inner: Mutex<RunnerState>,
    cv: Condvar,
}

#[derive(Default)]
struct RunnerState {
    queue: VecDeque<Callback>,
    /// Queued or running.
    pending: usize,
    started: bool,
    /// The pool is gone: the thread exits once the queue is empty.
    closed: bool,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("pending", &lock(&self.inner).pending)
            .finish()
    }
}

impl Runner {
    /// Queues `cb` for the callback thread.
    pub(super) fn run(self: &Arc<Self>, cb: Callback) {
        let mut st = lock(&self.inner);
        st.queue.push_back(cb);
        st.pending += 1;
        if !st.started {
            st.started = true;
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("multiproc-pool-callbacks".into())
                .spawn(move || me.serve());
            if spawned.is_err() {
                // No thread: run the callbacks here rather than never.
                st.started = false;
                let q = std::mem::take(&mut st.queue);
                st.pending -= q.len();
                drop(st);
                for cb in q {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cb));
                }
                self.cv.notify_all();
                return;
            }
        }
        drop(st);
        self.cv.notify_all();
    }

    fn serve(&self) {
        loop {
            let (mut st, _) = wait_until(&self.cv, lock(&self.inner), None, |s| {
                !s.queue.is_empty() || s.closed
            });
            let Some(cb) = st.queue.pop_front() else {
                st.started = false;
                return;
            };
            drop(st);
            // A panicking callback is reported by the panic hook; the thread goes on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cb));
            lock(&self.inner).pending -= 1;
            self.cv.notify_all();
        }
    }

    /// Waits until every queued callback has run; `false` at the deadline.
    pub(super) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        wait_until(&self.cv, lock(&self.inner), deadline, |s| s.pending == 0).1
    }

    /// The pool is gone: the thread ends after the callbacks already queued.
    pub(super) fn close(&self) {
        lock(&self.inner).closed = true;
        self.cv.notify_all();
    }
}
