//! The consumer side: reading records, and giving memory back (see `README.md`, "Get" and
//! "Memory").

use std::sync::atomic::Ordering::*;
use std::time::Instant;

use super::wait::Waited;
use super::*;

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
    /// The deadline applies until the first chunk of an item is taken; from then on the
    /// item is finished (or found abandoned by a dead producer) so that it is not lost.
    pub(crate) fn get(&self, out: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        debug_assert!(out.is_empty());
        let _g = self.lock_get(deadline)?;
        let mut mid_item = false;
        loop {
            let head = self.u64(at!(cons.head)).load(Relaxed);
            debug_assert_eq!(head & !POS_MASK, 0);
            if !self.has_data(head) {
                let (limit, tick) = if mid_item {
                    (None, Some(LIVENESS_TICK))
                } else {
                    (deadline, None)
                };
                match self.wait(CONSUMERS, limit, tick, || self.has_data(head))? {
                    Waited::Ready => {}
                    Waited::Tick => {
                        self.check_producer()?;
                        continue;
                    }
                    Waited::TimedOut => {
                        return Err(Error::msg(ErrorKind::Timeout, "the queue is empty"))
                    }
                }
            }
            let tail = self.seen_tail.load(Relaxed);
            let (len, flags) = self.read_header(head, tail)?;
            let at = self.data_off(head);
            let size = 8 + len.next_multiple_of(8);
            if flags & SKIP != 0 {
                let next = (head & !(self.cap - 1)) + self.cap;
                self.publish_head(next, false);
                self.maybe_trim(head, next);
                continue;
            }
            if flags & ABORT != 0 {
                out.clear();
                mid_item = false;
                self.publish_head(head + 8, false);
                continue;
            }
            let first = flags & FIRST != 0;
            let last = flags & LAST != 0;
            if !first && !mid_item {
                // The rest of an item whose start a consumer took before dying: drop it.
                self.publish_head(head + size, last);
                continue;
            }
            if first {
                // A FIRST while mid-item means the previous item was abandoned.
                out.clear();
            }
            let mut body = at + 8;
            let mut body_len = len as usize;
            if first && !last {
                let mut total = [0u8; 8];
                self.map.read(body, &mut total);
                let total = u64::from_le_bytes(total);
                body += 8;
                body_len -= 8;
                let fits = usize::try_from(total).is_ok_and(|t| out.try_reserve_exact(t).is_ok());
                if fits && total >= 4 << 20 {
                    // One page fault per 2 MiB instead of per 4 KiB while it fills.
                    crate::sys::socket::advise_huge_pages(out);
                }
                if !fits {
                    // Give up on this item; its remaining chunks are dropped by the next get.
                    self.publish_head(head + size, false);
                    return Err(Error::msg(
                        ErrorKind::TooLarge,
                        format!("a queue item of {total} bytes does not fit in memory"),
                    ));
                }
            }
            if let Err(e) = self.map.read_append(body, body_len, out) {
                self.publish_head(head + size, last);
                return Err(Error::io(e).context("receiving a queue item"));
            }
            self.publish_head(head + size, last);
            self.maybe_trim(head, head + size);
            if last {
                return Ok(());
            }
            mid_item = true;
        }
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
                len == 0 && (flags == ABORT || (flags == SKIP && lap_end < tail))
            } else {
                size <= self.max_record
                    && off + size <= self.cap
                    && head + size <= tail
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
        let Some(a) = robust::try_lock(&self.map, at!(put_lock)) else {
            return;
        };
        let _g = Guard {
            ring: self,
            off: at!(put_lock),
        };
        if a == robust::Acquired::OwnerDied {
            self.repair_producer();
        }
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
