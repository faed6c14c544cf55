//! Settling: dead workers (which element failed, what runs again), deadlines (timeouts,
//! frozen workers, stuck starts and exits), breaking and terminating the pool.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    Actions, Config, Delivery, InFlight, Phase, State, Status, Task, Why, Worker, EXIT_GRACE,
    START_TIMEOUT,
};

impl State {
    /// The pool cannot go on: fail everything with `why`, stop the workers.
    pub(in crate::pool) fn break_pool(&mut self, why: Why, wake: &mut Actions) {
        if self.broken.is_none() {
            self.broken = Some(why.clone());
        }
        self.fail_all(&why, wake);
    }

    /// Fails every queued and in-flight task with `why` and kills every worker.
    pub(in crate::pool) fn fail_all(&mut self, why: &Why, wake: &mut Actions) {
        let mut tasks: Vec<Task> = self.queue.drain(..).collect();
        tasks.extend(self.suspects.drain(..));
        for w in &mut self.workers {
            tasks.extend(w.inflight.drain(..).map(|f| f.task));
            w.bytes = 0;
            wake.kill.push((w.id, w.conn.clone()));
        }
        for t in tasks {
            let d = Delivery::Failed {
                index: t.base + t.lo as u64,
                count: t.hi - t.lo,
                why: why.clone(),
            };
            self.deliver(t.job, d, wake);
        }
    }

    /// Worker `id` has exited with `code`: settle the tasks it held.
    pub(in crate::pool) fn on_death(
        &mut self,
        id: u64,
        code: Option<i32>,
        limit: Option<Duration>,
        wake: &mut Actions,
    ) {
        let Some(wi) = self.workers.iter().position(|w| w.id == id) else {
            return;
        };
        let w = self.workers.swap_remove(wi);
        if w.status == Status::Starting {
            // No INIT_FAILED came (that breaks the pool in `on_frame`): the worker was killed
            // from outside, or crashed, while starting. Replace it, backing off (as Python).
            self.init_deaths += 1;
        }
        let held: VecDeque<InFlight> = w.inflight;
        let Some(front) = held.front() else {
            return;
        };
        let (front_seq, single) = (
            front.seq,
            held.len() == 1 && front.task.hi - front.task.lo == 1,
        );
        let culprit = match (w.timed_out, w.running) {
            (Some((seq, elem)), _) if seq == front_seq => {
                Some((elem, Why::Timeout(limit.unwrap_or_default())))
            }
            (_, Some((seq, elem, _))) if seq == front_seq => Some((elem, Why::Lost(code))),
            _ if single => Some((front.task.lo, Why::Lost(code))),
            _ => None,
        };
        match culprit {
            Some((elem, why)) => self.fail_culprit(held, elem, why, wake),
            None => self.suspect_all(held),
        }
    }

    /// Worker `id` was lost with its host (an MPI rank that stopped answering): no task of
    /// its caused that, so every unanswered one goes back to the front of the queue, in
    /// order, as it was (at least once: some may have run already).
    #[cfg(feature = "mpi")]
    pub(in crate::pool) fn on_host_lost(&mut self, id: u64) {
        let Some(wi) = self.workers.iter().position(|w| w.id == id) else {
            return;
        };
        let w = self.workers.swap_remove(wi);
        for f in w.inflight.into_iter().rev() {
            if f.task.suspect {
                self.suspects.push_front(f.task);
            } else {
                self.queue.push_front(f.task);
            }
        }
    }

    /// Element `elem` of the front task of the dead worker's `held` tasks failed with `why`;
    /// the rest runs again.
    fn fail_culprit(
        &mut self,
        mut held: VecDeque<InFlight>,
        elem: u32,
        why: Why,
        acts: &mut Actions,
    ) {
        let t = held.pop_front().expect("front exists").task;
        let elem = elem.clamp(t.lo, t.hi.saturating_sub(1));
        // The tasks behind it never started: back to the front of the queue, in order.
        for later in held.into_iter().rev() {
            self.queue.push_front(later.task);
        }
        // Elements after the culprit never started; those before it finished but their
        // results died with the worker: both run again.
        let mut pieces = Vec::new();
        if elem + 1 < t.hi {
            pieces.push(t.piece(elem + 1, t.hi, false));
        }
        if t.lo < elem {
            pieces.push(t.piece(t.lo, elem, false));
        }
        if let Some(j) = self.jobs.get_mut(&t.job) {
            j.pending += pieces.len();
        }
        for p in pieces {
            self.queue.push_front(p);
        }
        let d = Delivery::Failed {
            index: t.base + elem as u64,
            count: 1,
            why,
        };
        self.deliver(t.job, d, acts);
    }

    /// We cannot tell which task was running: every element becomes a suspect and runs
    /// alone, so the one that kills a worker again is identified exactly.
    fn suspect_all(&mut self, held: VecDeque<InFlight>) {
        for f in held {
            let t = f.task;
            let n = (t.hi - t.lo) as usize;
            if let Some(j) = self.jobs.get_mut(&t.job) {
                j.pending += n - 1;
            }
            if n == 1 {
                let mut t = t;
                t.suspect = true;
                self.suspects.push_back(t);
            } else {
                for e in t.lo..t.hi {
                    self.suspects.push_back(t.piece(e, e + 1, true));
                }
            }
        }
    }

    /// Kills workers whose running element is over the limit, that are frozen, or that are
    /// stuck starting or exiting; returns the next deadline.
    pub(in crate::pool) fn check_deadlines(
        &mut self,
        cfg: &Config,
        now: Instant,
        acts: &mut Actions,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for w in self.workers.iter_mut().filter(|w| !w.exited) {
            let d = match lifecycle_deadline(w, now, acts) {
                Some(d) => Some(d),
                None => task_deadline(w, cfg, now, acts),
            };
            next = match (next, d) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    /// `terminate`: fail everything with `Cancelled`, kill every worker.
    pub(in crate::pool) fn terminate(&mut self, wake: &mut Actions) {
        if self.phase == Phase::Terminated {
            return;
        }
        self.phase = Phase::Terminated;
        self.fail_all(&Why::Cancelled, wake);
    }
}

/// A worker starting or exiting for too long is killed; otherwise its deadline for that.
fn lifecycle_deadline(w: &Worker, now: Instant, acts: &mut Actions) -> Option<Instant> {
    let d = match w.status {
        Status::Starting => w.since + START_TIMEOUT,
        Status::Draining => w.since + EXIT_GRACE,
        Status::Ready => return None,
    };
    if now >= d {
        acts.kill.push((w.id, w.conn.clone()));
        return None;
    }
    Some(d)
}

/// With a `task_timeout`: kills a busy worker that is over time (by its RUNNING notice) or
/// silent for a whole limit; otherwise returns when to look again.
fn task_deadline(
    w: &mut Worker,
    cfg: &Config,
    now: Instant,
    acts: &mut Actions,
) -> Option<Instant> {
    let limit = cfg.task_timeout?;
    if w.status != Status::Ready || w.timed_out.is_some() {
        return None;
    }
    let front = w.inflight.front()?;
    // A busy worker sends ALIVE every beat: silence for a whole limit means it is frozen
    // (SIGSTOP) or stuck; our own dispatch time bounds the task.
    let silent = w.heard + limit;
    let running = w.running.filter(|r| r.0 == front.seq);
    if now >= silent {
        let elem = running.map_or(front.task.lo, |r| r.1);
        w.timed_out = Some((front.seq, elem));
        acts.kill.push((w.id, w.conn.clone()));
        return None;
    }
    let Some((seq, elem, start)) = running else {
        w.running = None;
        // The watchdog reports a long element within a tick; look again then.
        return Some(silent.min(now + cfg.tick * 2));
    };
    let over = start + limit;
    if now >= over {
        w.timed_out = Some((seq, elem));
        acts.kill.push((w.id, w.conn.clone()));
        return None;
    }
    Some(over.min(silent))
}
