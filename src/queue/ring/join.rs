//! `JoinableQueue`: the unfinished-task count (`puts - done`) and `join`.

use std::sync::atomic::{fence, Ordering::*};
use std::time::Instant;

use super::*;
use crate::sys::futex;

impl Ring {
    /// Marks one task done (`task_done`).
    pub(crate) fn task_done(&self) -> Result<()> {
        let done = self.u64(at!(join.done));
        let puts = self.u64(at!(prod.puts));
        let mut d = done.load(Acquire);
        loop {
            if d >= puts.load(Acquire) {
                return Err(Error::msg(
                    ErrorKind::Protocol,
                    "task_done() called more times than there were items put",
                ));
            }
            match done.compare_exchange_weak(d, d + 1, SeqCst, Acquire) {
                Ok(_) => break,
                Err(now) => d = now,
            }
        }
        fence(SeqCst);
        if d + 1 >= puts.load(Acquire) && self.u32(at!(join.waiters)).load(Relaxed) != 0 {
            self.u32(at!(join.seq)).fetch_add(1, Release);
            futex::wake(self.u32(at!(join.seq)), u32::MAX);
        }
        Ok(())
    }

    /// Unfinished tasks: items put and not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        self.repair_early();
        let d = self.u64(at!(join.done)).load(Acquire);
        self.u64(at!(prod.puts)).load(Acquire).saturating_sub(d)
    }

    /// Waits until every item put has been marked done (`join`).
    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<()> {
        let seq = self.u32(at!(join.seq));
        let waiters = self.u32(at!(join.waiters));
        loop {
            let s = seq.load(Acquire);
            if self.unfinished() == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::msg(
                    ErrorKind::Timeout,
                    format!("{} tasks still unfinished", self.unfinished()),
                ));
            }
            waiters.fetch_add(1, SeqCst);
            let r = if self.unfinished() == 0 {
                Ok(futex::Woken::Maybe)
            } else {
                let tick = Instant::now() + LIVENESS_TICK;
                futex::wait(seq, s, Some(deadline.map_or(tick, |d| d.min(tick))))
            };
            waiters.fetch_sub(1, SeqCst);
            if r.map_err(Error::io)? == futex::Woken::TimedOut {
                // A producer that died between counting an item and publishing it leaves
                // `puts` one too high until someone repairs: do it now.
                self.check_producer()?;
            }
        }
    }
}
