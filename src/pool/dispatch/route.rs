//! Routing: what a worker's frames mean, and handing results to their jobs (settling a
//! job, its `AsCompleted` set and its callback; abandoning and cancelling jobs).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Actions, Delivery, OnSettled, State, Status, Task, Why};
use crate::connection::channel::Frame;
use crate::error::Result;
use crate::pool::task::{protocol, read_from_worker, Cursor, FromWorker, ALL_OK};

impl State {
    /// Hands a delivery to a job without counting a task as resolved.
    pub(in crate::pool) fn deliver_now(&mut self, job: u64, d: Delivery, wake: &mut Actions) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending += 1;
        }
        self.deliver(job, d, wake);
    }

    /// A task of `job` is resolved with `d`.
    pub(super) fn deliver(&mut self, job: u64, d: Delivery, wake: &mut Actions) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.pending = j.pending.saturating_sub(1);
        if j.abandoned {
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
            return;
        }
        j.failed |= match &d {
            Delivery::Failed { .. } => true,
            Delivery::Data { status, .. } => *status != ALL_OK,
        };
        j.inbox.push_back(d);
        if !wake
            .signals
            .last()
            .is_some_and(|s| Arc::ptr_eq(s, &j.signal))
        {
            wake.signals.push(j.signal.clone());
        }
        if let Some(w) = j.waker.take() {
            wake.wakers.push(w);
        }
        if !j.settled() {
            return;
        }
        if let Some(n) = j.notify.take() {
            wake.notify.push(n);
        }
        if let Some(cb) = j.on_settled.take() {
            // The callback owns the result now; whatever arrives later is dropped.
            let inbox = std::mem::take(&mut j.inbox);
            j.taken = true;
            j.abandoned = true;
            wake.callbacks
                .push((self.runner.clone(), Box::new(move || cb(inbox))));
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
        }
    }

    /// The job's handle is gone. Results that arrive later are dropped; with `cancel`, its
    /// queued tasks are dropped too (`map`, `imap`), otherwise they still run (`AsyncResult`,
    /// as in Python). A job with a callback lives on until the callback has its result.
    pub(in crate::pool) fn abandon(&mut self, job: u64, cancel: bool) {
        if self.jobs.get(&job).is_some_and(|j| j.on_settled.is_some()) {
            return;
        }
        let removed = if cancel { self.unqueue(job) } else { 0 };
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending = j.pending.saturating_sub(removed);
            j.inbox.clear();
            j.abandoned = true;
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
        }
    }

    /// `AsyncResult::then`: `cb` gets the job's result once it is settled (at once if it is).
    pub(in crate::pool) fn attach_callback(&mut self, job: u64, cb: OnSettled, wake: &mut Actions) {
        let Some(j) = self.jobs.get_mut(&job) else {
            let runner = self.runner.clone();
            wake.callbacks
                .push((runner, Box::new(move || cb(VecDeque::new()))));
            return;
        };
        if j.taken || j.settled() {
            let inbox = if j.taken {
                VecDeque::new()
            } else {
                std::mem::take(&mut j.inbox)
            };
            j.taken = true;
            j.abandoned = true;
            if j.pending == 0 {
                self.jobs.remove(&job);
            }
            let runner = self.runner.clone();
            wake.callbacks.push((runner, Box::new(move || cb(inbox))));
        } else {
            j.on_settled = Some(cb);
        }
    }

    /// Removes the queued tasks of `job`; returns how many.
    pub(super) fn unqueue(&mut self, job: u64) -> usize {
        let mut removed = 0;
        self.queue.retain(|t| {
            let keep = t.job != job;
            removed += usize::from(!keep);
            keep
        });
        self.suspects.retain(|t| {
            let keep = t.job != job;
            removed += usize::from(!keep);
            keep
        });
        removed
    }

    /// `AsyncResult::cancel`: fails the job with `Cancelled` if none of its tasks has been
    /// sent to a worker yet; returns whether it did.
    pub(in crate::pool) fn cancel(&mut self, job: u64, wake: &mut Actions) -> bool {
        let Some(j) = self.jobs.get(&job) else {
            return false;
        };
        if j.settled() || j.taken {
            return false;
        }
        let queued = self.queue.iter().filter(|t| t.job == job).count()
            + self.suspects.iter().filter(|t| t.job == job).count();
        if queued != j.pending {
            return false; // some task is running, or done
        }
        let mut tasks: Vec<Task> = Vec::new();
        let mut rest = VecDeque::new();
        for t in self.queue.drain(..) {
            if t.job == job {
                tasks.push(t);
            } else {
                rest.push_back(t);
            }
        }
        self.queue = rest;
        self.suspects.retain(|t| t.job != job);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending = 1;
        }
        let total: u32 = tasks.iter().map(|t| t.hi - t.lo).sum();
        let d = Delivery::Failed {
            index: 0,
            count: total,
            why: Why::Cancelled,
        };
        if let Some(j) = self.jobs.get_mut(&job) {
            j.failed = true;
        }
        self.deliver(job, d, wake);
        true
    }

    /// Processes one frame from worker `id`.
    pub(in crate::pool) fn on_frame(
        &mut self,
        id: u64,
        frame: Frame,
        now: Instant,
        wake: &mut Actions,
    ) -> Result<()> {
        let Some(wi) = self.workers.iter().position(|w| w.id == id) else {
            return Ok(());
        };
        self.workers[wi].heard = now;
        let payload = Arc::new(frame.payload);
        let mut fds = frame.fds.into_iter();
        let mut cur = Cursor::new(&payload);
        while !cur.is_empty() {
            match read_from_worker(&mut cur)? {
                FromWorker::Result {
                    status,
                    nfds,
                    busy_ns,
                    start,
                    len,
                } => {
                    let w = &mut self.workers[wi];
                    let f = w
                        .inflight
                        .pop_front()
                        .ok_or_else(|| protocol("a result for a task never sent"))?;
                    w.bytes = w.bytes.saturating_sub(f.cost);
                    if w.running.is_some_and(|r| r.0 == f.seq) {
                        w.running = None;
                    }
                    if f.task.suspect {
                        w.isolating = false;
                    }
                    let busy = busy_ns as f64;
                    let est = self.estimates.entry(f.task.entry.offset).or_insert(busy);
                    *est = *est * 0.7 + busy * 0.3;
                    let d = Delivery::Data {
                        index: f.task.base + f.task.lo as u64,
                        count: f.task.hi - f.task.lo,
                        status,
                        frame: payload.clone(),
                        start,
                        end: start + len,
                        fds: fds.by_ref().take(nfds).collect(),
                    };
                    self.deliver(f.task.job, d, wake);
                }
                FromWorker::Running {
                    seq,
                    elem,
                    running_us,
                } => {
                    let w = &mut self.workers[wi];
                    if w.inflight.front().is_some_and(|f| f.seq == seq) {
                        let start = now
                            .checked_sub(Duration::from_micros(running_us))
                            .unwrap_or(now);
                        w.running = Some((seq, elem, start));
                    }
                }
                // Hearing from it (`heard`, above) is all an ALIVE says.
                FromWorker::Alive => {}
                FromWorker::Ready => {
                    let w = &mut self.workers[wi];
                    if w.status == Status::Starting {
                        w.status = Status::Ready;
                        self.start_failures = 0;
                        self.init_deaths = 0;
                    }
                }
                FromWorker::InitFailed(f) => self.break_pool(Why::Init(f), wake),
            }
        }
        Ok(())
    }
}
