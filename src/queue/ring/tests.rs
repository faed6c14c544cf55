//! The ring against a peer that does not follow the protocol: records forged directly into the
//! segment, as another process mapping it could write them.

use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

use super::*;

/// A 64 KiB ring (records of at most 16 KiB).
fn ring() -> Ring {
    Ring::create(Kind::Queue, 1, MIN_CAPACITY, u64::MAX).unwrap()
}

/// Writes a data record at `pos` (a chunk's payload may start with the item's total) and
/// publishes everything up to its end, as a forger would: without the lock, without `OPEN`.
fn forge(ring: &Ring, pos: u64, flags: u64, total: Option<u64>, payload: &[u8]) -> u64 {
    let prefix = total.map(u64::to_le_bytes);
    let prefix: &[u8] = prefix.as_ref().map_or(&[], |p| p);
    let len = (prefix.len() + payload.len()) as u64;
    ring.write_header(pos, len, flags);
    let at = ring.data_off(pos) + 8;
    ring.map.write(at, prefix);
    ring.map.write(at + prefix.len(), payload);
    let end = pos + 8 + len.next_multiple_of(8);
    ring.u64(at!(prod.tail)).store(end, Release);
    ring.wake(CONSUMERS);
    end
}

fn kind(r: Result<()>) -> ErrorKind {
    r.unwrap_err().kind()
}

#[test]
fn a_forged_first_chunk_does_not_hold_a_timed_get_and_the_rest_is_resumed() {
    let ring = ring();
    let end = forge(&ring, 0, FIRST, Some(1000), &[7; 8]);
    let mut out = Vec::new();
    let t = Instant::now();
    let r = ring.get(&mut out, Some(Instant::now() + Duration::from_millis(200)));
    assert_eq!(kind(r), ErrorKind::Timeout);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(out.is_empty(), "nothing is returned on a timeout");
    // A try_get meanwhile: nothing whole yet, the part stays kept.
    assert_eq!(
        kind(ring.get(&mut out, Some(Instant::now()))),
        ErrorKind::Timeout
    );
    // The rest arrives: the next get resumes the item where it stopped.
    forge(&ring, end, LAST, None, &[9; 992]);
    ring.get(&mut out, Some(Instant::now() + Duration::from_secs(5)))
        .unwrap();
    assert_eq!(out.len(), 1000);
    assert!(out[..8].iter().all(|b| *b == 7) && out[8..].iter().all(|b| *b == 9));
    assert_eq!(ring.u64(at!(cons.stash_owner)).load(Relaxed), 0);
}

#[test]
fn allocation_follows_the_bytes_that_arrived_not_the_announced_size() {
    // An item announcing 1 TiB whose bytes never come: the buffer holds what arrived.
    let ring = ring();
    forge(&ring, 0, FIRST, Some(1 << 40), &[1; 56]);
    let mut out = Vec::new();
    let r = ring.get(&mut out, Some(Instant::now() + Duration::from_millis(50)));
    assert_eq!(kind(r), ErrorKind::Timeout);
    let kept = crate::wait::lock(&ring.stash)
        .as_ref()
        .map(|s| (s.buf.len(), s.buf.capacity()));
    assert_eq!(kept.map(|k| k.0), Some(56));
    assert!(kept.unwrap().1 <= 4096, "reserved {kept:?}");

    // An item announcing 100 bytes followed by more: refused once past 100, and the buffer
    // never grew past the announced size.
    let ring = self::ring();
    let end = forge(&ring, 0, FIRST, Some(100), &[1; 40]);
    forge(&ring, end, 0, None, &[2; 10_000]);
    let mut out = Vec::new();
    let e = ring
        .get(&mut out, Some(Instant::now() + Duration::from_secs(5)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("announced as 100 bytes"), "{e}");
    assert!(out.capacity() <= 100, "grew to {}", out.capacity());

    // Shorter than announced at its LAST chunk: refused too.
    let ring = self::ring();
    let end = forge(&ring, 0, FIRST, Some(100), &[1; 40]);
    forge(&ring, end, LAST, None, &[2; 8]);
    let e = ring.get(&mut Vec::new(), None).unwrap_err();
    assert!(e.to_string().contains("arrives with 48"), "{e}");
    // And a first chunk that already holds the announced size is not a chunked item.
    let ring = self::ring();
    forge(&ring, 0, FIRST, Some(8), &[1; 40]);
    let e = ring.get(&mut Vec::new(), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
}

/// Positions no protocol step produces: `get` reports them, nothing overflows (tests run
/// with overflow checks).
#[test]
fn inconsistent_positions_are_errors_not_overflows() {
    for (head, tail) in [(POS_MASK, POS_MASK), (0, POS_MASK), (4096, 8), (0, 1 << 20)] {
        let ring = ring();
        ring.u64(at!(cons.head)).store(head, Relaxed);
        ring.u64(at!(prod.tail)).store(tail, Relaxed);
        let deadline = Some(Instant::now() + Duration::from_millis(20));
        let got = ring.get(&mut Vec::new(), deadline);
        assert!(got.is_err(), "get with head {head:#x} tail {tail:#x}");
        // A put may even work (it trusts its cached view of the head), but it never
        // overflows or panics.
        let _ = ring.put(&[1; 100], deadline);
        ring.u64(at!(prod.tail)).store(tail | OPEN, Relaxed);
        let _ = ring.put(&[1; 100], deadline);
        let _ = ring.len();
    }
}

/// The payload of item `i` of `len` bytes: its index, then a pattern derived from it.
fn item(i: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|k| (k as u64 * 31 + i) as u8).collect();
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Traffic that leaves the positions where `case` says (a 4 MiB ring, `R` = 1 MiB, records
/// of at most 256 KiB). Items are numbered from 0; returns `(taken, next)`: items
/// `taken..next` (of 24 bytes) are still queued.
fn traffic(ring: &Ring, case: usize) -> (u64, u64) {
    let soon = || Some(Instant::now() + Duration::from_secs(5));
    let (mut next, mut taken) = (0, 0);
    let mut put = |len: usize| {
        ring.put(&item(next, len), soon()).unwrap();
        next += 1;
    };
    let mut get = || {
        ring.get(&mut Vec::new(), soon()).unwrap();
        taken += 1;
    };
    let tail = || ring.u64(at!(prod.tail)).load(Relaxed) & POS_MASK;
    match case {
        // One put, one get.
        0 => {
            put(24);
            get();
        }
        // Steady traffic past the first MiB: the producer wrapped early, the queue is empty
        // at a small offset of the second lap.
        1 => {
            while tail() < ring.cap + 4096 {
                put(24);
                get();
            }
        }
        // The producer has just wrapped early: the consumers' next record is the SKIP, one
        // item waits behind it.
        2 => {
            while tail() < ring.cap {
                put(24);
                if tail() < ring.cap {
                    get();
                }
            }
        }
        // Past the first MiB with one item always queued (so no early wrap).
        3 => {
            put(24);
            while tail() < 2 * ring.resident {
                put(24);
                get();
            }
        }
        // Large chunked items, one at a time, through several laps.
        _ => {
            for _ in 0..40 {
                put(300 << 10);
                get();
            }
        }
    }
    (taken, next)
}

/// After any traffic, a backlog reaches the whole ring (README "Memory"): small items and
/// large chunked ones are accepted until the ring holds about `C` bytes, then all come out
/// intact and in order.
#[test]
fn a_backlog_after_traffic_reaches_the_whole_ring() {
    for case in 0..5 {
        for len in [24usize, 300 << 10] {
            let ring = Ring::create(Kind::Queue, 1, 4 << 20, u64::MAX).unwrap();
            let (taken, first) = traffic(&ring, case);
            let record = 8 + (len as u64).next_multiple_of(8);
            let mut i = first;
            while ring.put(&item(i, len), Some(Instant::now())).is_ok() {
                i += 1;
            }
            let queued = (i - first) * record + (first - taken) * 32;
            // Items fit up to the ring's size, but for the skipped end of one lap and the
            // next item, which did not fit.
            assert!(
                queued + record + ring.max_record >= ring.cap,
                "case {case}, items of {len} bytes: only {queued} bytes queued in a ring of {}",
                ring.cap
            );
            for k in taken..i {
                let mut out = Vec::new();
                ring.get(&mut out, Some(Instant::now() + Duration::from_secs(5)))
                    .unwrap();
                let want = if k < first { 24 } else { len };
                assert!(out == item(k, want), "case {case}: item {k} differs");
            }
            assert_eq!(ring.len(), 0);
            assert_eq!(
                kind(ring.get(&mut Vec::new(), Some(Instant::now()))),
                ErrorKind::Timeout
            );
            // And traffic goes on.
            ring.put(&item(i, 24), None).unwrap();
            let mut out = Vec::new();
            ring.get(&mut out, None).unwrap();
            assert!(out == item(i, 24));
        }
    }
}
