//! Taking the two locks, and repairing what a holder that died left half done (see
//! `README.md`, "Crash repair").

use std::sync::atomic::Ordering::*;
use std::time::Instant;

use super::wait::Backoff;
use super::*;

impl Ring {
    /// Takes the lock at `off` (spinning briefly first); `true` if its owner had died.
    pub(super) fn lock(&self, off: usize, deadline: Option<Instant>) -> Result<(Guard<'_>, bool)> {
        let mut backoff = Backoff::new();
        let got = loop {
            match robust::try_lock(&self.map, off) {
                Some(a) => break a,
                None if backoff.spin_lock() => {}
                None => break robust::lock(&self.map, off, deadline).map_err(lock_error)?,
            }
        };
        Ok((
            Guard { ring: self, off },
            got == robust::Acquired::OwnerDied,
        ))
    }

    /// Takes `put_lock`, repairing after a producer that died holding it, and terminates an
    /// item a previous holder left unfinished.
    pub(super) fn lock_put(&self, deadline: Option<Instant>) -> Result<Guard<'_>> {
        let (g, died) = self.lock(at!(put_lock), deadline)?;
        if died {
            self.repair_producer();
        }
        self.close_open_item()?;
        Ok(g)
    }

    /// Undoes or completes what a dead producer left half done. Idempotent: if we die here
    /// the next locker is told the owner died again and redoes it.
    pub(super) fn repair_producer(&self) {
        // The dead holder may have been the one sleeping for space.
        self.u32(PRODUCERS.sleeping).store(0, Relaxed);
        if self.u64(at!(prod.jr_active)).load(Acquire) != 0 {
            // `puts` is raised before `tail` moves: if the tail never moved, take it back.
            if self.u64(at!(prod.tail)).load(Acquire) != self.u64(at!(prod.jr_tail)).load(Relaxed) {
                let old = self.u64(at!(prod.jr_old_puts)).load(Relaxed);
                self.u64(at!(prod.puts)).store(old, Release);
            }
            self.u64(at!(prod.jr_active)).store(0, Release);
        }
        // A SKIP noted but never published: forget it, the next record there is no SKIP.
        let tail = self.u64(at!(prod.tail)).load(Relaxed) & POS_MASK;
        if self.u64(at!(skip.at)).load(Relaxed) >= tail {
            self.u64(at!(skip.at)).store(NO_SKIP, Relaxed);
        }
    }

    /// If the last published record is a chunk of an unfinished item (its producer died or
    /// gave up), publishes an ABORT record so consumers drop the partial item. The producer
    /// reserved 8 free bytes for exactly this when it published the chunk.
    pub(super) fn close_open_item(&self) -> Result<()> {
        let tail = self.u64(at!(prod.tail)).load(Relaxed);
        if tail & OPEN == 0 {
            return Ok(());
        }
        let pos = tail & POS_MASK;
        let head = self.head_pos(true);
        if !self.positions_ok(head, pos) || (pos + 8).wrapping_sub(self.free_from(head)) > self.cap
        {
            return Err(corrupt(format!(
                "an open item ends at {pos} with no room for its ABORT (head {head})"
            )));
        }
        self.write_header(pos, 0, ABORT);
        self.note_ext(pos, pos + 8);
        self.u64(at!(prod.tail)).store(pos + 8, Release);
        self.wake(CONSUMERS);
        Ok(())
    }

    /// Takes `get_lock`, repairing after a consumer that died holding it.
    pub(super) fn lock_get(&self, deadline: Option<Instant>) -> Result<Guard<'_>> {
        let (g, died) = self.lock(at!(get_lock), deadline)?;
        if died {
            self.repair_consumer();
        }
        Ok(g)
    }

    /// Completes what a dead consumer left half done (idempotent, like `repair_producer`).
    pub(super) fn repair_consumer(&self) {
        self.u32(CONSUMERS.sleeping).store(0, Relaxed);
        if self.u64(at!(cons.jr_active)).load(Acquire) != 0 {
            // `gets` is raised after `head` moves: if the head moved, finish the job.
            if self.u64(at!(cons.head)).load(Acquire) == self.u64(at!(cons.jr_head)).load(Relaxed) {
                let gets = self.u64(at!(cons.jr_gets)).load(Relaxed);
                self.u64(at!(cons.gets)).store(gets, Release);
            }
            self.u64(at!(cons.jr_active)).store(0, Release);
        }
        // Chunks of an item the dead consumer had started are recognised by their flags
        // (no FIRST) and dropped by the normal get path: nothing else to repair.
    }

    /// Repairs now if a lock's owner died (cheap when the locks are free: a read of each
    /// lock word; a held lock costs a look at its owner in `/proc`).
    pub(super) fn repair_early(&self) {
        if robust::owner_died(&self.map, at!(put_lock)) {
            let _ = self.check_producer();
        }
        if robust::owner_died(&self.map, at!(get_lock)) {
            self.check_consumer();
        }
    }

    /// Takes the lock at `off` if it is free (with `take_over`, also from a dead owner, which
    /// costs a look at the owner in `/proc`), repairing its side after a dead owner.
    pub(super) fn try_lock_repaired(&self, off: usize, take_over: bool) -> Option<Guard<'_>> {
        let got = if take_over {
            robust::try_lock_or_take_over(&self.map, off)
        } else {
            robust::try_lock(&self.map, off)
        }?;
        let guard = Guard { ring: self, off };
        if got == robust::Acquired::OwnerDied {
            if off == at!(put_lock) {
                self.repair_producer();
            } else {
                self.repair_consumer();
            }
        }
        Some(guard)
    }

    /// As `check_producer`, for the consumers' lock (so counts are right after a crash even
    /// before the next get).
    pub(super) fn check_consumer(&self) {
        drop(self.try_lock_repaired(at!(get_lock), true));
    }

    /// Called by waiters that depend on producers (a consumer in the middle of an item, a
    /// joiner): if the producer holding `put_lock` died, repair now rather than waiting for
    /// the next producer to come along.
    pub(super) fn check_producer(&self) -> Result<()> {
        match self.try_lock_repaired(at!(put_lock), true) {
            Some(_g) => self.close_open_item(),
            None => Ok(()),
        }
    }
}
