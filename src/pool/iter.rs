//! Feeding a job from an iterator, decoding what comes back, and the [`IMap`] iterator.

use std::collections::VecDeque;
use std::fmt;
use std::iter::Fuse;
use std::sync::{Arc, Condvar};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::dispatch::{Actions, Delivery, Shared, Task, Why};
use super::progress::Progress;
use super::task::{Failure, SealedEntry, FAILED};
use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::fdreg::RegisteredFd;
use crate::wait::{deadline_after, wait_until};

/// Chunks larger than this many encoded bytes make later automatic chunks smaller.
const CHUNK_BYTES: usize = 16 << 20;

/// A job's handle: abandons the job when dropped (results that arrive later are dropped;
/// with `cancel_on_drop`, queued tasks are cancelled too).
#[derive(Debug)]
pub(super) struct JobGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) signal: Arc<Condvar>,
    /// `map`/`imap`: dropping the handle cancels the tasks that have not started.
    /// `AsyncResult`: they still run (Python's behaviour).
    pub(super) cancel_on_drop: bool,
}

impl JobGuard {
    pub(super) fn new(shared: &Arc<Shared>, cancel_on_drop: bool) -> Self {
        let (id, signal) = shared.lock().new_job();
        JobGuard {
            shared: shared.clone(),
            id,
            signal,
            cancel_on_drop,
        }
    }

    /// Waits until something was delivered (or nothing is pending any more, or `deadline`)
    /// and takes it all.
    pub(super) fn take(&self, deadline: Option<Instant>) -> VecDeque<Delivery> {
        let (mut st, _) = wait_until(&self.signal, self.shared.lock(), deadline, |st| {
            st.jobs
                .get(&self.id)
                .is_none_or(|j| !j.inbox.is_empty() || j.pending == 0)
        });
        st.jobs
            .get_mut(&self.id)
            .map(|j| std::mem::take(&mut j.inbox))
            .unwrap_or_default()
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.shared.lock().abandon(self.id, self.cancel_on_drop);
    }
}

/// Decodes one delivery into per-element results, calling `emit(index, result)`.
pub(super) fn decode<R: DeserializeOwned>(d: Delivery, mut emit: impl FnMut(u64, Result<R>)) {
    match d {
        Delivery::Failed { index, count, why } => {
            for i in 0..count as u64 {
                emit(index + i, Err(why.to_error()));
            }
        }
        Delivery::Data {
            index,
            count,
            status,
            frame,
            start,
            end,
            fds,
        } => {
            let bytes = &frame[start..end];
            if status == FAILED {
                match codec::decode::<Failure>(bytes, fds) {
                    Ok(f) => (0..count as u64).for_each(|i| emit(index + i, Err(f.to_error()))),
                    Err(e) => (0..count as u64).for_each(|i| emit(index + i, Err(bad(&e)))),
                }
                return;
            }
            match codec::decode::<Vec<std::result::Result<R, Failure>>>(bytes, fds) {
                Ok(v) if v.len() == count as usize => {
                    for (i, r) in v.into_iter().enumerate() {
                        emit(index + i as u64, r.map_err(|f| f.to_error()));
                    }
                }
                Ok(v) => {
                    let e = Error::msg(
                        ErrorKind::Protocol,
                        format!("a worker returned {} results for {count} items", v.len()),
                    );
                    (0..count as u64).for_each(|i| emit(index + i, Err(bad(&e))));
                }
                Err(e) => (0..count as u64).for_each(|i| emit(index + i, Err(bad(&e)))),
            }
        }
    }
}

fn bad(e: &Error) -> Error {
    Error::msg(e.kind(), format!("decoding a task's result: {e}"))
}

/// Pulls input, cuts it into chunks and submits them, keeping at most `max_elems` elements
/// between the input and the consumer.
pub(super) struct Feeder<I: Iterator> {
    input: Option<Fuse<I>>,
    chunk: Vec<I::Item>,
    pub(super) entry: SealedEntry,
    pub(super) chunksize: usize,
    /// Automatic chunks: shrink them if they encode to huge messages.
    pub(super) auto: bool,
    /// Elements pulled from the input so far (= the next element's index).
    pub(super) pulled: u64,
    pub(super) max_elems: u64,
    /// The pool's `max_message_size`: a larger chunk is sent element by element, and a
    /// larger element fails with TooLarge.
    pub(super) max_message: usize,
}

impl<I: Iterator> fmt::Debug for Feeder<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feeder")
            .field("chunksize", &self.chunksize)
            .field("pulled", &self.pulled)
            .field("exhausted", &self.input.is_none())
            .finish()
    }
}

impl<I> Feeder<I>
where
    I: Iterator,
    I::Item: Serialize,
{
    pub(super) fn new(input: I, entry: SealedEntry, chunksize: usize, max_elems: u64) -> Self {
        Feeder {
            input: Some(input.fuse()),
            chunk: Vec::new(),
            entry,
            chunksize: chunksize.max(1),
            auto: false,
            pulled: 0,
            max_elems: max_elems.max(1),
            max_message: crate::codec::frame::DEFAULT_MAX_MESSAGE,
        }
    }

    pub(super) fn exhausted(&self) -> bool {
        self.input.is_none()
    }

    /// Encodes `self.chunk` (job indices from `base`) as one task, or, if it cannot be
    /// encoded or is too large, element by element so only the culprits fail.
    fn encode_chunk(
        &mut self,
        job: u64,
        base: u64,
        tasks: &mut Vec<Task>,
        failed: &mut Vec<(u64, Why)>,
    ) {
        let n = self.chunk.len();
        let mut args = Vec::with_capacity(n * 2 + 8);
        let mut fds = Vec::new();
        let enc = codec::encode(&self.chunk[..], &mut args, &mut fds);
        if enc.is_ok() && Why::too_large(args.len(), self.max_message).is_none() {
            if self.auto && args.len() > CHUNK_BYTES && self.chunksize > 1 {
                self.chunksize = (self.chunksize / 2).max(1);
            }
            tasks.push(self.task(job, base, n as u32, args, fds));
            return;
        }
        for (k, item) in self.chunk.iter().enumerate() {
            let mut args = Vec::new();
            let mut fds = Vec::new();
            let enc = codec::encode(std::slice::from_ref(item), &mut args, &mut fds)
                .map_err(|e| Why::encode(&e))
                .and_then(|()| match Why::too_large(args.len(), self.max_message) {
                    Some(why) => Err(why),
                    None => Ok(()),
                });
            match enc {
                Ok(()) => tasks.push(self.task(job, base + k as u64, 1, args, fds)),
                Err(why) => failed.push((base + k as u64, why)),
            }
        }
    }

    fn task(&self, job: u64, base: u64, n: u32, args: Vec<u8>, fds: Vec<RegisteredFd>) -> Task {
        Task {
            job,
            base,
            lo: 0,
            hi: n,
            entry: self.entry,
            args,
            fds,
            suspect: false,
        }
    }

    /// Tops the job up if fewer than half of `max_elems` are outstanding (`done` elements of
    /// the `pulled` ones have reached the consumer).
    pub(super) fn top_up(&mut self, job: &JobGuard, done: u64) {
        let outstanding = self.pulled - done.min(self.pulled);
        if self.input.is_none() || outstanding > self.max_elems / 2 {
            return;
        }
        let mut room = self.max_elems - outstanding;
        let mut tasks = Vec::new();
        let mut failed: Vec<(u64, Why)> = Vec::new();
        while room > 0 {
            let Some(input) = self.input.as_mut() else {
                break;
            };
            let want = (self.chunksize as u64).min(room) as usize;
            self.chunk.clear();
            self.chunk.extend(input.by_ref().take(want));
            let n = self.chunk.len();
            if n < want {
                self.input = None;
            }
            if n == 0 {
                break;
            }
            room -= n as u64;
            let base = self.pulled;
            self.pulled += n as u64;
            self.encode_chunk(job.id, base, &mut tasks, &mut failed);
        }
        self.chunk.clear();
        if tasks.is_empty() && failed.is_empty() {
            return;
        }
        let mut wake = Actions::default();
        let mut st = job.shared.lock();
        st.submit(tasks, &mut wake);
        for (index, why) in failed {
            st.deliver_now(
                job.id,
                Delivery::Failed {
                    index,
                    count: 1,
                    why,
                },
                &mut wake,
            );
        }
        job.shared.pump(st, wake);
    }
}

/// The iterator returned by [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered): results of a function applied to
/// every input item, computed by the pool's workers.
///
/// It is lazy and bounded: input is pulled only as results are consumed, and at most
/// [`buffer`](Self::buffer) items are between the input and the consumer at any time
/// (queued, running, or finished but not yet yielded), so it works over an endless iterator.
/// The input ends at its first `None` (Rust's `Iterator` contract): an input that is empty
/// *for now*, such as a crawler's growing frontier, ends the `IMap`. For a work list that
/// grows while you drain it, submit with [`Pool::apply_async`](crate::Pool::apply_async)
/// and drain an [`AsCompleted`](crate::AsCompleted) set.
///
/// # Dropping
///
/// Dropping the `IMap` stops it: no more input is pulled, items already pulled that have
/// not started are cancelled, and items that are running finish with their results
/// discarded. (Python's `imap` has already queued its whole input and keeps running it; a
/// Rust iterator is often endless or cut short with `take`, so stopping is the useful
/// meaning here.) Items keep running if you merely stop calling `next`.
///
/// Each item is a `Result`: one task's panic, crash, timeout or (de)serialisation failure
/// is that item's error and the iteration goes on.
///
/// ```
/// use multiproc::Pool;
///
/// let pool = Pool::new(2)?;
/// let squares: Vec<u64> = pool
///     .imap(|x: u64| x * x, 0..)      // an endless input
///     .chunksize(16)
///     .take(1000)
///     .collect::<Result<_, _>>()?;
/// assert_eq!(squares[999], 999 * 999);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct IMap<'p, I: Iterator, R> {
    job: Option<JobGuard>,
    feeder: Feeder<I>,
    ordered: bool,
    /// Items yielded so far.
    yielded: u64,
    /// Ordered: slot `k` holds the result of item `yielded + k`.
    reorder: VecDeque<Option<Result<R>>>,
    /// Unordered: results in completion order.
    ready: VecDeque<Result<R>>,
    /// Set before the first `next`: the pool refused the work.
    refused: Option<Error>,
    progress: Progress,
    progress_on: bool,
    _pool: std::marker::PhantomData<&'p ()>,
}

impl<I: Iterator, R> fmt::Debug for IMap<'_, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMap")
            .field("ordered", &self.ordered)
            .field("feeder", &self.feeder)
            .field("yielded", &self.yielded)
            .finish()
    }
}

impl<'p, I, R> IMap<'p, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    pub(super) fn new(
        shared: &Arc<Shared>,
        feeder: Feeder<I>,
        ordered: bool,
        progress_on: bool,
    ) -> Self {
        let refused = shared.lock().refusal().map(|w| w.to_error());
        IMap {
            job: Some(JobGuard::new(shared, true)),
            feeder,
            ordered,
            yielded: 0,
            reorder: VecDeque::new(),
            ready: VecDeque::new(),
            refused,
            progress: Progress::off(),
            progress_on,
            _pool: std::marker::PhantomData,
        }
    }

    /// Items per task (default 1, like Python's `imap`). Bigger chunks cut the per-task
    /// overhead for cheap functions; the buffer grows to at least two chunks per worker.
    ///
    /// Call it before iterating.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.feeder.chunksize = chunksize.max(1);
        let workers = self.job.as_ref().map_or(1, |j| j.shared.cfg.processes) as u64;
        self.feeder.max_elems = self
            .feeder
            .max_elems
            .max(self.feeder.chunksize as u64 * workers * 4);
        self
    }

    /// At most this many items are pulled but not yet yielded (default: 1024 per worker,
    /// or four chunks per worker if that is more). Call it before iterating.
    pub fn buffer(mut self, items: usize) -> Self {
        self.feeder.max_elems = items.max(1) as u64;
        self
    }

    /// Shows a progress bar on standard error while iterating (feature `progress`); the
    /// bar knows its length when the input reports an exact size.
    #[cfg(feature = "progress")]
    pub fn progress(mut self, on: bool) -> Self {
        self.progress_on = on;
        self
    }

    fn store(&mut self, d: Delivery) {
        let yielded = self.yielded;
        let ordered = self.ordered;
        let reorder = &mut self.reorder;
        let ready = &mut self.ready;
        decode::<R>(d, |i, r| {
            if ordered {
                let k = (i - yielded) as usize;
                if reorder.len() <= k {
                    reorder.resize_with(k + 1, || None);
                }
                reorder[k] = Some(r);
            } else {
                ready.push_back(r);
            }
        });
    }

    fn pop_ready(&mut self) -> Option<Result<R>> {
        let r = if self.ordered {
            match self.reorder.front() {
                Some(Some(_)) => self.reorder.pop_front().flatten(),
                _ => None,
            }
        } else {
            self.ready.pop_front()
        }?;
        self.yielded += 1;
        self.progress.inc(1);
        Some(r)
    }
}

impl<I, R> IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    /// The next result, waiting at most `timeout` for it (Python's
    /// `IMapIterator.next(timeout)`); `None` at the end.
    ///
    /// It keeps the iterator's shape, `Option<Result<R>>`, rather than the crate's
    /// `Result<R>` for `_timeout` calls: `None` is the end of the iteration, and running
    /// out of time is `Some(Err(e))` with `e.is_timeout()`, after which the iterator
    /// goes on as if nothing happened. `Duration::MAX` waits as long as `next`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = multiproc::Pool::new(1)?;
    /// let mut it = pool.imap(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), [300u64]);
    /// let e = it.next_timeout(Duration::from_millis(1)).unwrap().unwrap_err();
    /// assert!(e.is_timeout());
    /// assert!(it.next_timeout(Duration::from_secs(30)).unwrap().is_ok());
    /// assert!(it.next().is_none());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// The item `Some(Err(_))` is [`ErrorKind::Timeout`] if no result arrived in time (the
    /// iterator stays usable), or that item's own failure.
    pub fn next_timeout(&mut self, timeout: std::time::Duration) -> Option<Result<R>> {
        self.next_until(deadline_after(timeout))
    }

    /// [`next_timeout`](Self::next_timeout) with a deadline.
    ///
    /// # Errors
    /// As [`next_timeout`](Self::next_timeout).
    pub fn next_deadline(&mut self, deadline: Instant) -> Option<Result<R>> {
        self.next_until(Some(deadline))
    }
}

impl<I, R> Iterator for IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_until(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.feeder.pulled - self.yielded;
        match self.feeder.input.as_ref() {
            None => (left as usize, Some(left as usize)),
            Some(i) => {
                let (lo, hi) = i.size_hint();
                (
                    lo.saturating_add(left as usize),
                    hi.and_then(|h| h.checked_add(left as usize)),
                )
            }
        }
    }
}

impl<I, R> IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    fn next_until(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        if let Some(e) = self.refused.take() {
            self.job = None;
            return Some(Err(e));
        }
        if self.yielded == 0 && self.progress_on {
            self.progress_on = false;
            let (lo, hi) = self
                .feeder
                .input
                .as_ref()
                .map_or((0, None), |i| i.size_hint());
            self.progress = Progress::new(true, (Some(lo) == hi).then_some(lo as u64));
        }
        loop {
            self.feeder.top_up(self.job.as_ref()?, self.yielded);
            if let Some(r) = self.pop_ready() {
                return Some(r);
            }
            if self.feeder.exhausted() && self.yielded >= self.feeder.pulled {
                self.progress.finish();
                self.job = None;
                return None;
            }
            let got = self.job.as_ref()?.take(deadline);
            if got.is_empty() && deadline.is_some_and(|d| Instant::now() >= d) {
                return Some(Err(Error::new(ErrorKind::Timeout)));
            }
            if got.is_empty() {
                // Nothing pending and nothing delivered: the pool lost track (it cannot
                // happen while the accounting holds); end rather than hang.
                debug_assert!(false, "imap: results missing");
                self.job = None;
                return None;
            }
            for d in got {
                self.store(d);
            }
        }
    }
}

/// `map`: all results in input order, or the first error to arrive.
pub(super) fn collect_map<I, R>(
    shared: &Arc<Shared>,
    mut feeder: Feeder<I>,
    total: Option<u64>,
    progress_on: bool,
) -> Result<Vec<R>>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    if let Some(why) = shared.lock().refusal() {
        return Err(why.to_error());
    }
    let progress = Progress::new(progress_on, total);
    let job = JobGuard::new(shared, true);
    let mut parts: Vec<(u64, Vec<R>)> = Vec::new();
    let mut received: u64 = 0;
    loop {
        feeder.top_up(&job, received);
        if feeder.exhausted() && received >= feeder.pulled {
            break;
        }
        let got = job.take(None);
        if got.is_empty() {
            return Err(Error::msg(ErrorKind::Protocol, "map: results went missing"));
        }
        for d in got {
            let count = d.count() as u64;
            let mut v: Vec<R> = Vec::with_capacity(count as usize);
            let mut first = None;
            let mut err = None;
            decode::<R>(d, |i, r| {
                first.get_or_insert(i);
                match r {
                    Ok(x) => v.push(x),
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            received += count;
            progress.inc(count);
            if let Some(i) = first {
                parts.push((i, v));
            }
        }
    }
    progress.finish();
    drop(job);
    parts.sort_unstable_by_key(|p| p.0);
    let mut out = Vec::with_capacity(received as usize);
    for (_, v) in parts {
        out.extend(v);
    }
    Ok(out)
}
