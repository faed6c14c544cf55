//! Scheduling: queueing tasks and moving them into worker windows (the window size from
//! the per-function estimate, the byte budget, suspects alone on idle workers).

use std::time::Instant;

use super::{
    Actions, Config, Delivery, InFlight, Outgoing, Phase, State, Status, Task, Worker, BUDGET,
    FRAME_COST, FRAME_MAX, PREFETCH_NS, TASK_COST, WINDOW_MAX,
};
use crate::fdreg::RegisteredFd;
use crate::pool::task::{put_task_header, TASK_HEADER_MAX};
use crate::sys;

impl State {
    /// Queues tasks (or fails them at once if the pool refuses work).
    pub(in crate::pool) fn submit(&mut self, tasks: Vec<Task>, wake: &mut Actions) {
        let refusal = self.refusal();
        for t in tasks {
            match &refusal {
                Some(why) => {
                    let d = Delivery::Failed {
                        index: t.base + t.lo as u64,
                        count: t.hi - t.lo,
                        why: why.clone(),
                    };
                    self.deliver_now(t.job, d, wake);
                }
                None => {
                    if let Some(j) = self.jobs.get_mut(&t.job) {
                        j.pending += 1;
                    }
                    self.queue.push_back(t);
                }
            }
        }
    }

    /// Whether any task is queued or in flight.
    pub(in crate::pool) fn has_work(&self) -> bool {
        !self.queue.is_empty()
            || !self.suspects.is_empty()
            || self.workers.iter().any(|w| !w.inflight.is_empty())
    }

    /// Moves queued tasks into worker windows; returns the frames to send.
    pub(in crate::pool) fn dispatch(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.phase == Phase::Terminated || self.broken.is_some() {
            return out;
        }
        self.dispatch_suspects(&mut out);
        if self.queue.is_empty() {
            return out;
        }
        let n = self.workers.len();
        let candidates = self.workers.iter().filter(|w| w.can_take()).count();
        if candidates == 0 {
            return out;
        }
        let share = self.queue.len().div_ceil(candidates).max(1);
        // Suspects wait for an idle worker: let the least busy one run dry.
        let reserve = if self.suspects.is_empty() || candidates < 2 {
            None
        } else {
            (0..n)
                .filter(|&i| self.workers[i].ready() && !self.workers[i].isolating)
                .min_by_key(|&i| self.workers[i].inflight.len())
        };
        self.rr = (self.rr + 1) % n.max(1);
        for k in 0..n {
            if self.queue.is_empty() {
                break;
            }
            let wi = (self.rr + k) % n;
            if Some(wi) != reserve && self.workers[wi].can_take() {
                if let Some(o) = self.fill(wi, share) {
                    out.push(o);
                }
            }
        }
        out
    }

    /// Suspects go alone to idle workers.
    fn dispatch_suspects(&mut self, out: &mut Vec<Outgoing>) {
        for wi in 0..self.workers.len() {
            if self.suspects.is_empty() {
                break;
            }
            let w = &self.workers[wi];
            if !w.can_take() || !w.inflight.is_empty() {
                continue;
            }
            let t = self.suspects.pop_front().expect("checked non-empty");
            let mut frame = self.spare.pop().unwrap_or_default();
            let w = &mut self.workers[wi];
            w.isolating = true;
            let fds = push_task(w, &mut frame, t, true);
            w.writing = true;
            out.push(Outgoing {
                worker: w.id,
                conn: w.conn.clone(),
                frame,
                fds,
            });
        }
    }

    /// One frame of up to `share` queued tasks for worker `wi`, within its window, the byte
    /// budget, the frame size and the descriptor limit (a task alone to an idle worker may
    /// exceed the window and the budget: the worker is reading, so the write completes).
    fn fill(&mut self, wi: usize, share: usize) -> Option<Outgoing> {
        let mut frame = self.spare.pop().unwrap_or_default();
        let mut fds = Vec::new();
        let mut taken = 0;
        let mut last_entry = None;
        while taken < share {
            let Some(t) = self.queue.front() else { break };
            let w = &self.workers[wi];
            let window = target_window(self.estimates.get(&t.entry.offset).copied());
            let cost = t.args.len() + TASK_COST + if frame.is_empty() { FRAME_COST } else { 0 };
            let alone = w.inflight.is_empty() && frame.is_empty();
            if w.quota == 0
                || (w.inflight.len() >= window && !alone)
                || (w.bytes + cost > BUDGET && !alone)
                || frame.len() >= FRAME_MAX
                || (!frame.is_empty()
                    && frame.len() + TASK_HEADER_MAX + t.args.len() > self.max_message)
                || fds.len() + t.fds.len() > sys::socket::MAX_FDS_PER_FRAME
            {
                break;
            }
            let t = self.queue.pop_front().expect("checked non-empty");
            let same = last_entry == Some(t.entry);
            last_entry = Some(t.entry);
            fds.extend(push_task(&mut self.workers[wi], &mut frame, t, !same));
            taken += 1;
        }
        if frame.is_empty() {
            self.spare.push(frame);
            return None;
        }
        let w = &mut self.workers[wi];
        w.writing = true;
        Some(Outgoing {
            worker: w.id,
            conn: w.conn.clone(),
            frame,
            fds,
        })
    }

    /// After the frames of `sent` were written: the workers may be sent more.
    pub(super) fn sent(&mut self, sent: Vec<Outgoing>) {
        let now = Instant::now();
        for o in sent {
            if let Some(w) = self.workers.iter_mut().find(|w| w.id == o.worker) {
                w.writing = false;
                // A long write (a big argument) is not the worker's silence.
                w.heard = now;
            }
            let mut f = o.frame;
            if f.capacity() <= FRAME_MAX * 2 && self.spare.len() < 8 {
                f.clear();
                self.spare.push(f);
            }
        }
    }

    /// How many workers to start now.
    pub(in crate::pool) fn missing(&self, cfg: &Config) -> usize {
        if self.broken.is_some() || self.phase == Phase::Terminated {
            return 0;
        }
        if self.phase == Phase::Closed && !self.has_work() {
            return 0;
        }
        let live = self
            .workers
            .iter()
            .filter(|w| w.status != Status::Draining && !w.exited)
            .count();
        cfg.processes.saturating_sub(live + self.launching)
    }

    /// Workers to start now; counted as launching until `started` reports on them.
    pub(in crate::pool) fn plan_starts(&mut self, cfg: &Config) -> usize {
        let n = self.missing(cfg);
        self.launching += n;
        n
    }

    /// Closed and idle: tell every worker to exit (end of stream).
    pub(in crate::pool) fn drain_if_done(&mut self, acts: &mut Actions) {
        if self.phase != Phase::Closed || self.has_work() {
            return;
        }
        let now = Instant::now();
        for w in &mut self.workers {
            if w.status != Status::Draining && !w.writing && !w.exited {
                acts.shutdown.push((w.id, w.conn.clone()));
                w.status = Status::Draining;
                w.since = now;
            }
        }
    }
}

/// Appends task `t` to `frame` for worker `w` and records it in flight.
fn push_task(w: &mut Worker, frame: &mut Vec<u8>, t: Task, with_entry: bool) -> Vec<RegisteredFd> {
    let first = frame.is_empty();
    if w.inflight.is_empty() {
        w.heard = Instant::now();
    }
    frame.reserve(TASK_HEADER_MAX + t.args.len());
    let entry = (with_entry || first).then_some(t.entry);
    put_task_header(frame, entry, t.fds.len() as u8, t.args.len(), t.lo, t.hi);
    frame.extend_from_slice(&t.args);
    let fds = t.fds.iter().filter_map(|f| f.try_clone().ok()).collect();
    let cost = t.args.len() + TASK_COST + if first { FRAME_COST } else { 0 };
    w.bytes += cost;
    w.quota = w.quota.saturating_sub(1);
    w.inflight.push_back(InFlight {
        task: t,
        seq: w.seq,
        cost,
    });
    w.seq += 1;
    fds
}

fn target_window(est: Option<f64>) -> usize {
    match est {
        None => 1,
        Some(ns) => (1 + (PREFETCH_NS / ns.max(20.0)) as usize).min(WINDOW_MAX),
    }
}
