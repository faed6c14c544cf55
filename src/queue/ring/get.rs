//! The consumer side: reading records, and giving memory back (see `README.md`, "Get" and
//! "Memory").

use std::sync::atomic::Ordering::*;
use std::time::Instant;

use super::wait::Waited;
use super::*;

/// The first part of an item whose get timed out before the item was complete, kept for the
/// next get of this process (README "Get").
#[derive(Debug)]
pub(super) struct Stash {
    /// The bytes received so far.
    pub(super) buf: Vec<u8>,
    /// The size the item announced.
    total: u64,
    /// The ring position of its next record.
    head: u64,
}

/// What `unstash` found.
enum Unstashed {
    /// No unfinished item: take the next one.
    Nothing,
    /// This process's unfinished item, of this announced size, is back in the buffer.
    Resumed(u64),
    /// Another live process holds the start of the next item.
    Elsewhere,
}

/// The error for an item this process cannot hold.
fn too_large(total: u64) -> Error {
    Error::msg(
        ErrorKind::TooLarge,
        format!("a queue item of {total} bytes does not fit in memory"),
    )
}

impl Ring {
    /// The producers' position, read fresh (and cached).
    pub(super) fn tail_pos(&self) -> u64 {
        let t = self.u64(at!(prod.tail)).load(Acquire) & POS_MASK;
        self.seen_tail.fetch_max(t, Relaxed);
        t
    }

    /// Whether a record is published at `head`.
    pub(super) fn has_data(&self, head: u64) -> bool {
        self.seen_tail.load(Relaxed) > head || self.tail_pos() > head
    }

    /// Publishes a new `head`; `completes` counts one item taken.
    pub(super) fn publish_head(&self, new: u64, completes: bool) {
        if completes {
            let gets = self.u64(at!(cons.gets)).load(Relaxed) + 1;
            self.u64(at!(cons.jr_head)).store(new, Relaxed);
            self.u64(at!(cons.jr_gets)).store(gets, Relaxed);
            self.u64(at!(cons.jr_active)).store(1, Release);
            self.u64(at!(cons.head)).store(new, Release);
            self.u64(at!(cons.gets)).store(gets, Release);
            self.u64(at!(cons.jr_active)).store(0, Release);
        } else {
            self.u64(at!(cons.head)).store(new, Release);
        }
        self.wake(PRODUCERS);
    }

    /// Takes one item, appending its bytes to `out` (which must be empty).
    ///
    /// The deadline holds throughout, also inside a large item whose producer stalls: then
    /// the part received so far is stashed in this process, and the next get here resumes
    /// it (README "Get").
    pub(crate) fn get(&self, out: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        debug_assert!(out.is_empty());
        loop {
            let guard = self.lock_get(deadline)?;
            match self.unstash(out) {
                Unstashed::Nothing => return self.get_locked(out, None, deadline),
                Unstashed::Resumed(total) => return self.get_locked(out, Some(total), deadline),
                Unstashed::Elsewhere => drop(guard),
            }
            // Another live process holds the start of the next item: only it can take the
            // rest. Look again at each tick.
            let left = crate::wait::remaining(deadline).unwrap_or(LIVENESS_TICK);
            if left.is_zero() {
                return Err(Error::msg(
                    ErrorKind::Timeout,
                    "another process is receiving the next item (its get timed out inside \
                     it, and it resumes the item at its next get)",
                ));
            }
            std::thread::sleep(left.min(LIVENESS_TICK));
        }
    }

    /// Under `get_lock`: whether a get timed out inside the item at `head`, and if that was
    /// this process, puts its first part back into `out`.
    fn unstash(&self, out: &mut Vec<u8>) -> Unstashed {
        let mark = self.u64(at!(cons.stash_owner));
        if mark.load(Relaxed) == 0 {
            return Unstashed::Nothing; // the common case: one load of our own cache line
        }
        let head = self.u64(at!(cons.head)).load(Relaxed);
        if let Some(stash) = self.stash_slot().and_then(|mut s| s.take()) {
            if stash.head == head {
                mark.store(0, Relaxed);
                *out = stash.buf;
                return Unstashed::Resumed(stash.total);
            }
            // Somebody took the rest meanwhile (they thought us gone): the part is stale.
        }
        let owner = mark.load(Relaxed);
        if owner == 0 {
            return Unstashed::Nothing;
        }
        if owner != robust::process_identity() && robust::process_alive(owner) {
            return Unstashed::Elsewhere;
        }
        // Its owner is gone (or it is us, without the part): the rest of that item is
        // dropped as chunks without a start, like those of a consumer that died inside it.
        mark.store(0, Relaxed);
        Unstashed::Nothing
    }

    /// Keeps the first part of an unfinished item for the next get of this process.
    fn stash(&self, out: &mut Vec<u8>, total: u64, head: u64) {
        let Some(mut slot) = self.stash_slot() else {
            return; // see `stash_slot`: the rest of the item will be dropped
        };
        *slot = Some(Stash {
            buf: std::mem::take(out),
            total,
            head,
        });
        self.u64(at!(cons.stash_owner))
            .store(robust::process_identity(), Relaxed);
    }

    /// The stash, locked. Only the holder of `get_lock` (or the last owner, dropping the
    /// ring) touches it, so the mutex is never contended, except in a child forked while a
    /// parent thread held it: there it stays locked, and `None` means "no stash".
    pub(super) fn stash_slot(&self) -> Option<std::sync::MutexGuard<'_, Option<Stash>>> {
        crate::wait::try_lock(&self.stash)
    }

    /// Under `get_lock`: takes one item into `out`; `inside` = the announced size of the item
    /// whose first part `out` already holds.
    fn get_locked(
        &self,
        out: &mut Vec<u8>,
        mut inside: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        loop {
            let head = self.u64(at!(cons.head)).load(Relaxed);
            if !self.has_data(head) {
                // Inside an item, wake at each tick to check that its producer lives.
                let tick = inside.map(|_| LIVENESS_TICK);
                match self.wait(CONSUMERS, deadline, tick, || self.has_data(head))? {
                    Waited::Ready => {}
                    Waited::Tick => {
                        self.check_producer()?;
                        continue;
                    }
                    Waited::TimedOut => {
                        let Some(total) = inside else {
                            return Err(Error::msg(ErrorKind::Timeout, "the queue is empty"));
                        };
                        self.stash(out, total, head);
                        return Err(Error::msg(
                            ErrorKind::Timeout,
                            "the item being received is not complete (its producer is slow or \
                             stopped); the part received is kept, the next get resumes it",
                        ));
                    }
                }
            }
            let tail = self.seen_tail.load(Relaxed);
            if !self.positions_ok(head, tail) {
                return Err(corrupt(format!(
                    "consumer position {head} and producer position {tail} are inconsistent"
                )));
            }
            let (len, flags) = if self.is_skip_mark(head, tail) {
                // The last SKIP written: its bytes may already hold the next lap's records
                // (README "Memory"), so it is known by its position, not read.
                let lap_end = (head | (self.cap - 1)) + 1;
                if lap_end >= tail || tail - lap_end > self.cap {
                    return Err(corrupt(format!(
                        "a SKIP at position {head} followed by records up to {tail}"
                    )));
                }
                (0, SKIP)
            } else {
                self.read_header(head, tail)?
            };
            let size = 8 + len.next_multiple_of(8);
            if flags & SKIP != 0 {
                let next = (head & !(self.cap - 1)) + self.cap;
                self.publish_head(next, false);
                self.maybe_trim(head, next);
                continue;
            }
            if flags & ABORT != 0 {
                out.clear();
                inside = None;
                self.publish_head(head + 8, false);
                continue;
            }
            let first = flags & FIRST != 0;
            let last = flags & LAST != 0;
            if !first && inside.is_none() {
                // The rest of an item whose start a consumer took before dying: drop it.
                self.publish_head(head + size, last);
                continue;
            }
            if first {
                // A FIRST while inside an item means that item was abandoned.
                out.clear();
                inside = None;
            }
            let r = self.take_record(out, head, len, first, last, &mut inside);
            self.publish_head(head + size, last);
            if r.is_err() {
                // The item is dropped; its remaining chunks, if any, are dropped by the next
                // get (they have no FIRST).
                out.clear();
                return r;
            }
            self.maybe_trim(head, head + size);
            if last {
                return Ok(());
            }
        }
    }

    /// Appends the payload of the data record at `head` to `out`, checking it against the
    /// item's announced size: the buffer grows with the bytes that arrived, never beyond the
    /// announced size (a forged size costs nothing until the bytes come).
    fn take_record(
        &self,
        out: &mut Vec<u8>,
        head: u64,
        len: u64,
        first: bool,
        last: bool,
        inside: &mut Option<u64>,
    ) -> Result<()> {
        let mut body = self.data_off(head) + 8;
        let mut body_len = len as usize;
        if first && !last {
            let mut total = [0u8; 8];
            self.map.read(body, &mut total);
            let total = u64::from_le_bytes(total);
            body += 8;
            body_len -= 8;
            // A chunked item is larger than its first chunk (else it would be one record).
            if total <= body_len as u64 {
                return Err(corrupt(format!(
                    "an item announced as {total} bytes starts with a chunk of {body_len}"
                )));
            }
            *inside = Some(total);
        }
        let limit = inside.unwrap_or(body_len as u64);
        let after = out.len() as u64 + body_len as u64;
        if after > limit || (last && after != limit) {
            return Err(corrupt(format!(
                "an item announced as {limit} bytes arrives with {after}"
            )));
        }
        if after > out.capacity() as u64 {
            // Double, as a Vec would, but never past the announced size.
            let want = after.max(2 * out.capacity() as u64).min(limit);
            let want = usize::try_from(want).map_err(|_| too_large(limit))?;
            out.try_reserve_exact(want - out.len())
                .map_err(|_| too_large(limit))?;
            if want >= 4 << 20 {
                // One page fault per 2 MiB instead of per 4 KiB while it fills.
                crate::sys::socket::advise_huge_pages(out);
            }
        }
        self.map
            .read_append(body, body_len, out)
            .map_err(|_| too_large(limit))
    }
    /// Reads and checks the record header at `head` (published up to `tail`).
    pub(super) fn read_header(&self, head: u64, tail: u64) -> Result<(u64, u64)> {
        let mut word = [0u8; 8];
        self.map.read(self.data_off(head), &mut word);
        let word = u64::from_le_bytes(word);
        let (len, flags, tag) = (word & 0xffff_ffff, (word >> 32) & 0xffff, word >> 48);
        let off = head & (self.cap - 1);
        let size = 8 + len.next_multiple_of(8);
        let known = flags & !(FIRST | LAST | SKIP | ABORT) == 0;
        let control = flags & (SKIP | ABORT) != 0;
        let lap_end = (head & !(self.cap - 1)) + self.cap;
        let ok = tag == TAG
            && known
            && if control {
                len == 0
                    && if flags == SKIP {
                        lap_end < tail && tail - head <= self.cap
                    } else {
                        flags == ABORT && tail - head <= self.cap
                    }
            } else {
                size <= self.max_record
                    && off + size <= self.cap
                    && head + size <= tail
                    && tail - head <= self.cap
                    && (flags & (FIRST | LAST) != FIRST || len >= 8)
            };
        if !ok {
            return Err(corrupt(format!(
                "bad record header {word:#018x} at position {head} (tail {tail})"
            )));
        }
        Ok((len, flags))
    }

    /// Gives memory beyond `resident` back to the system when the consumers pass a multiple
    /// of `resident` (see README "Memory"). Needs both locks: we hold `get_lock` and only
    /// try `put_lock`, so a busy producer just postpones the trim.
    pub(super) fn maybe_trim(&self, old_head: u64, new_head: u64) {
        let block = !(self.resident - 1);
        if self.resident == self.cap
            || old_head & block == new_head & block
            || self.u64(at!(prod.ext_hi)).load(Relaxed) == 0
        {
            return;
        }
        let Some(_g) = self.try_lock_repaired(at!(put_lock), false) else {
            return;
        };
        if self.close_open_item().is_err() {
            return;
        }
        let (h, t) = (new_head, self.tail_pos());
        if h / self.cap != t / self.cap {
            return; // live data wraps around the end of the ring: trim another time
        }
        let page = shm::page_size() as u64;
        // Clamped: values written over by another process stay inside the ring.
        let (lo, hi) = (
            self.u64(at!(prod.ext_lo)).load(Relaxed).min(self.cap),
            self.u64(at!(prod.ext_hi)).load(Relaxed).min(self.cap),
        );
        let (h_off, t_off) = (h & (self.cap - 1), t & (self.cap - 1));
        let (h_page, t_page) = (h_off / page * page, t_off.next_multiple_of(page));
        // Live records occupy [h_off, t_off); in this lap every other byte is free, so whole
        // pages of [lo, hi) outside that range can go (`resident` is page-aligned).
        let (lo_page, hi_page) = (
            (lo / page * page).max(self.resident),
            hi.next_multiple_of(page),
        );
        let behind = (lo_page, hi_page.min(h_page));
        let ahead = (lo_page.max(t_page), hi_page);
        for (s, e) in [behind, ahead] {
            if s < e {
                let _ = shm::discard(self.fd.as_fd(), HEADER_LEN as u64 + s, e - s);
            }
        }
        let keep_lo = lo.max(h_page);
        let keep_hi = hi.min(t_page);
        let (lo2, hi2) = if keep_lo < keep_hi {
            (keep_lo, keep_hi)
        } else {
            (0, 0)
        };
        self.u64(at!(prod.ext_lo)).store(lo2, Relaxed);
        self.u64(at!(prod.ext_hi)).store(hi2, Relaxed);
    }
}
