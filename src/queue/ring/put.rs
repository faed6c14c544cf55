//! The producer side: placing, writing and publishing records (see `README.md`, "Put").

use std::sync::atomic::Ordering::*;
use std::time::Instant;

use super::wait::Waited;
use super::*;

impl Ring {
    /// The consumers' position: the cached lower bound, or (`fresh`) the shared value.
    pub(super) fn head_pos(&self, fresh: bool) -> u64 {
        if !fresh {
            return self.seen_head.load(Relaxed);
        }
        let h = self.u64(at!(cons.head)).load(Acquire) & POS_MASK;
        self.seen_head.fetch_max(h, Relaxed);
        h
    }

    /// Whether the ring has room up to position `end` (exclusive).
    pub(super) fn room_until(&self, end: u64) -> bool {
        // Wrapping: a head written over by another process (ahead of `end`) means no room,
        // never an overflow.
        let fits = |free: u64| end.wrapping_sub(free) <= self.cap;
        fits(self.head_pos(false)) || {
            let head = self.head_pos(true);
            fits(head) || fits(self.free_from(head))
        }
    }

    /// Where the free part of the ring starts, seen from the consumers' position `head`:
    /// `head`, or the end of its lap when the consumers' next record is the last SKIP
    /// written (they take it as a SKIP without reading it, so the producers may use the
    /// whole next lap: README "Memory").
    pub(super) fn free_from(&self, head: u64) -> u64 {
        let tail = self.u64(at!(prod.tail)).load(Relaxed) & POS_MASK;
        if self.is_skip_mark(head, tail) {
            (head | (self.cap - 1)) + 1
        } else {
            head
        }
    }

    /// Whether the record at `head` is the last SKIP written (`tail`: the end of the
    /// published records). A SKIP noted by a producer that died before publishing it is
    /// at `tail`, not before it (and `repair_producer` forgets it).
    pub(super) fn is_skip_mark(&self, head: u64, tail: u64) -> bool {
        head == self.u64(at!(skip.at)).load(Relaxed) && head < tail && tail < POS_LIMIT
    }

    /// Whether the consumers have taken every record before `t` (our tail), asked when
    /// the record at ring offset `off` of `size` bytes could wrap early. The shared head is
    /// read (a look at the consumers' cache line) once per page of records at most.
    fn drained_to(&self, t: u64, off: u64, size: u64) -> bool {
        const EVERY: u64 = 4096;
        self.head_pos(false) == t
            || (off / EVERY != (off + size) / EVERY && self.head_pos(true) == t)
    }

    /// Whether fewer than `max_items` items are queued (bounded queues).
    pub(super) fn below_max_items(&self) -> bool {
        let puts = self.u64(at!(prod.puts)).load(Relaxed);
        let room = |gets: u64| puts.wrapping_sub(gets) < self.max_items;
        room(self.seen_gets.load(Relaxed)) || {
            let gets = self.u64(at!(cons.gets)).load(Acquire);
            self.seen_gets.fetch_max(gets, Relaxed);
            room(gets)
        }
    }

    /// Puts one encoded item. On a timeout nothing of it is delivered.
    pub(crate) fn put(&self, item: &[u8], deadline: Option<Instant>) -> Result<()> {
        let _g = self.lock_put(deadline)?;
        if self.max_items != u64::MAX {
            match self.wait(PRODUCERS, deadline, None, || self.below_max_items())? {
                Waited::Ready => {}
                _ => return Err(Error::msg(ErrorKind::Timeout, "the queue is full")),
            }
        }
        let max_payload = (self.max_record - 8) as usize;
        if item.len() <= max_payload {
            return self.write_record(FIRST | LAST, &[], item, deadline);
        }
        // A large item: chunks, all under this one lock hold so they stay contiguous.
        let total = (item.len() as u64).to_le_bytes();
        let mut done = 0;
        while done < item.len() {
            let first = done == 0;
            let room = if first { max_payload - 8 } else { max_payload };
            let n = room.min(item.len() - done);
            let last = done + n == item.len();
            let flags = if first { FIRST } else { 0 } | if last { LAST } else { 0 };
            let prefix: &[u8] = if first { &total } else { &[] };
            if let Err(e) = self.write_record(flags, prefix, &item[done..done + n], deadline) {
                // Published chunks are cancelled; consumers drop them.
                return Err(self.close_open_item().err().unwrap_or(e));
            }
            done += n;
        }
        Ok(())
    }

    /// Writes one record and publishes it. A record that ends an item (`LAST`) counts the
    /// item; any other leaves `OPEN` set and 8 bytes reserved for an ABORT.
    pub(super) fn write_record(
        &self,
        flags: u64,
        prefix: &[u8],
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let len = (prefix.len() + payload.len()) as u64;
        let size = 8 + len.next_multiple_of(8);
        debug_assert!(size <= self.max_record);
        let reserve = if flags & LAST != 0 { 0 } else { 8 };
        let tail = self.u64(at!(prod.tail)).load(Relaxed);
        let t = tail & POS_MASK;
        // The cached head (a lower bound: reading the shared one would bounce the consumers'
        // cache line on every put).
        let head = self.head_pos(false);
        if tail & OPEN != u64::from(flags & FIRST == 0) || head > t || t >= POS_LIMIT {
            // We hold `put_lock`, and wrote `tail` last: another process wrote over it.
            return Err(corrupt(format!(
                "the producers' position {tail:#x} changed under the lock (head {head})"
            )));
        }
        let off = t & (self.cap - 1);
        let lap_end = t - off + self.cap;
        // Where the record goes: here, or at the start of the next lap behind a SKIP record.
        // Records never straddle the end of the ring, and past `resident` we wrap early when
        // the queue is empty, so that the SKIP is the consumers' next record and the whole
        // next lap is free for a backlog (see README "Memory").
        let must_wrap = off + size > self.cap;
        let may_wrap =
            !must_wrap && off + size > self.resident && off != 0 && self.drained_to(t, off, size);
        let pos = loop {
            if (must_wrap || may_wrap) && self.room_until(lap_end + size + reserve) {
                break lap_end;
            }
            if !must_wrap && self.room_until(t + size + reserve) {
                break t;
            }
            let need = if must_wrap { lap_end } else { t } + size + reserve;
            if self.wait(PRODUCERS, deadline, None, || self.room_until(need))? != Waited::Ready {
                return Err(Error::msg(ErrorKind::Timeout, "the queue is full"));
            }
        };
        if pos != t {
            self.write_header(t, 0, SKIP);
            self.note_ext(t, t + 8);
            self.u64(at!(skip.at)).store(t, Relaxed);
        }
        let at = self.data_off(pos);
        self.write_header(pos, len, flags);
        self.map.write(at + 8, prefix);
        self.map.write(at + 8 + prefix.len(), payload);
        self.note_ext(pos, pos + size);
        let end = pos + size;
        if flags & LAST != 0 {
            // Journal, then count, then publish: a repairer can tell whether the tail moved.
            let puts = self.u64(at!(prod.puts)).load(Relaxed);
            self.u64(at!(prod.jr_tail)).store(end, Relaxed);
            self.u64(at!(prod.jr_old_puts)).store(puts, Relaxed);
            self.u64(at!(prod.jr_active)).store(1, Release);
            self.u64(at!(prod.puts)).store(puts + 1, Release);
            self.u64(at!(prod.tail)).store(end, Release);
            self.u64(at!(prod.jr_active)).store(0, Release);
        } else {
            self.u64(at!(prod.tail)).store(end | OPEN, Release);
        }
        self.wake(CONSUMERS);
        Ok(())
    }

    /// Writes a record header (length, flags, tag) at ring position `pos`.
    pub(super) fn write_header(&self, pos: u64, len: u64, flags: u64) {
        debug_assert!(pos % 8 == 0 && len < 1 << 32);
        let word = len | flags << 32 | TAG << 48;
        self.map.write(self.data_off(pos), &word.to_le_bytes());
    }

    /// Records that ring bytes `[start, end)` (positions) were written, for trimming.
    pub(super) fn note_ext(&self, start: u64, end: u64) {
        let (s, e) = (start & (self.cap - 1), (end - 1) & (self.cap - 1));
        if e < self.resident {
            return;
        }
        let (lo, hi) = (self.u64(at!(prod.ext_lo)), self.u64(at!(prod.ext_hi)));
        let s = s.max(self.resident);
        if hi.load(Relaxed) == 0 {
            lo.store(s, Relaxed);
            hi.store(e + 1, Relaxed);
        } else {
            lo.fetch_min(s, Relaxed);
            hi.fetch_max(e + 1, Relaxed);
        }
    }
}
