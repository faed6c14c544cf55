//! Queue, SimpleQueue, JoinableQueue across real processes: delivery, bounds, large items,
//! handles under every start method, crashes (SIGKILL mid-stream and while holding a lock),
//! leaks.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{join, METHODS, WAIT};
use multiproc::{
    Connection, ErrorKind, JoinableQueue, Pipe, Process, Queue, SimpleQueue, StartMethod,
};

/// A cheap pseudo-random sequence (xorshift), seeded from the clock.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn fifo_len_and_timeouts_in_one_process() {
    let q: Queue<u64> = Queue::new().unwrap();
    assert!(q.is_empty());
    for i in 0..1000 {
        q.put(i).unwrap();
    }
    assert_eq!(q.len(), 1000);
    assert!(!q.is_full(), "unbounded is never full");
    for i in 0..1000 {
        assert_eq!(q.get().unwrap(), i);
    }
    assert!(q.try_get().unwrap_err().is_would_block());
    let t = Instant::now();
    let e = q.get_timeout(Duration::from_millis(100)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(t.elapsed() < WAIT);
}

#[test]
fn bounded_queue_blocks_and_times_out() {
    let q: Queue<String> = Queue::bounded(2).unwrap();
    assert_eq!(q.maxsize(), Some(2));
    q.put("a".into()).unwrap();
    q.put("b".into()).unwrap();
    assert!(q.is_full());

    let e = q.try_put("c".into()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    assert!(e.is_full());
    assert_eq!(e.into_inner(), "c");

    let t = Instant::now();
    let e = q
        .put_timeout("d".into(), Duration::from_millis(150))
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(e.into_inner(), "d", "the item comes back");

    // A child makes room after a while; the blocked put then completes.
    let p = Process::spawn(q.clone(), |q| {
        std::thread::sleep(Duration::from_millis(200));
        q.get().unwrap()
    })
    .unwrap();
    let t = Instant::now();
    q.put_timeout("e".into(), WAIT).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "put did not block"
    );
    assert_eq!(join(&p).unwrap(), "a");
    assert_eq!(q.get().unwrap(), "b");
    assert_eq!(q.get().unwrap(), "e");
    assert!(q.is_empty());
    // Python's Queue(0) is unbounded; here that is Queue::new(), and bounded(0) is refused.
    assert_eq!(
        Queue::<u8>::bounded(0).unwrap_err().kind(),
        multiproc::ErrorKind::Unsupported
    );
}

const SENTINEL: u64 = u64::MAX;

fn produce((q, id, n): (Queue<u64>, u64, u64)) {
    for seq in 0..n {
        q.put(id << 32 | seq).unwrap();
    }
}

fn consume(q: Queue<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match q.get_timeout(WAIT).unwrap() {
            SENTINEL => return got,
            v => got.push(v),
        }
    }
}

#[test]
fn mpmc_three_by_three_exactly_once() {
    const N: u64 = 100_000;
    let q: Queue<u64> = Queue::new().unwrap();
    let consumers: Vec<_> = (0..3)
        .map(|_| Process::spawn(q.clone(), consume).unwrap())
        .collect();
    let producers: Vec<_> = (0..3)
        .map(|id| Process::spawn((q.clone(), id, N), produce).unwrap())
        .collect();
    for p in &producers {
        join(p).unwrap();
    }
    for _ in &consumers {
        q.put(SENTINEL).unwrap();
    }
    let mut seen = vec![false; 3 * N as usize];
    let mut total = 0;
    for c in &consumers {
        let got = join(c).unwrap();
        let mut last = [None::<u64>; 3];
        for v in got {
            let (id, seq) = ((v >> 32) as usize, v & 0xffff_ffff);
            assert!(id < 3 && seq < N, "garbage {v:#x}");
            let slot = &mut seen[id * N as usize + seq as usize];
            assert!(!*slot, "item {id}/{seq} delivered twice");
            *slot = true;
            // One producer's items reach each consumer in the order they were put.
            assert!(last[id].is_none_or(|l| l < seq), "reordered");
            last[id] = Some(seq);
            total += 1;
        }
    }
    assert_eq!(total, 3 * N, "items lost");
    assert!(q.is_empty());
}

#[test]
fn handle_passes_under_every_start_method() {
    for m in METHODS {
        let q: Queue<String> = Queue::new().unwrap();
        q.put(format!("to the child under {m:?}")).unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(q.clone(), |q| {
                let got = q.get_timeout(WAIT).unwrap();
                q.put(format!("child got: {got}")).unwrap();
            })
            .unwrap();
        join(&p).unwrap();
        assert_eq!(
            q.get_timeout(WAIT).unwrap(),
            format!("child got: to the child under {m:?}")
        );
    }
}

#[test]
fn handle_travels_inside_connection_messages() {
    let (a, b) = Pipe::new::<(String, Queue<u64>)>().unwrap();
    let q: Queue<u64> = Queue::new().unwrap();
    let p = Process::spawn(b, |b: Connection<(String, Queue<u64>)>| {
        let (name, q) = b.recv().unwrap();
        assert_eq!(name, "work");
        for i in 0..10 {
            q.put(i).unwrap();
        }
    })
    .unwrap();
    a.send(&("work".to_string(), q.clone())).unwrap();
    join(&p).unwrap();
    let got: Vec<u64> = (0..10).map(|_| q.get_timeout(WAIT).unwrap()).collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());

    // Within one process too: the received handle is the same queue.
    let (c, d) = Pipe::new::<JoinableQueue<u8>>().unwrap();
    let jq = JoinableQueue::new().unwrap();
    c.send(&jq).unwrap();
    let jq2 = d.recv().unwrap();
    jq2.put(7).unwrap();
    assert_eq!(jq.get().unwrap(), 7);
    jq.task_done().unwrap();
    jq2.join_timeout(WAIT).unwrap();
}

#[test]
fn item_containing_a_handle_is_refused_and_given_back() {
    let q: Queue<Connection<u8>> = Queue::new().unwrap();
    let (a, _b) = Pipe::new::<u8>().unwrap();
    let e = q.put(a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Encode);
    assert!(e.to_string().contains("Connection"), "{e}");
    let a = e.into_inner();
    a.send(&1).unwrap();
    assert!(q.is_empty());
}

#[test]
fn close_refuses_further_use_of_that_handle_only() {
    let q: Queue<u32> = Queue::new().unwrap();
    let other = q.clone();
    q.put(1).unwrap();
    q.close();
    assert!(q.is_closed());
    let e = q.put(2).unwrap_err();
    assert!(e.is_closed());
    assert_eq!(e.into_inner(), 2);
    assert_eq!(q.get().unwrap_err().kind(), ErrorKind::Closed);
    assert!(!other.is_closed());
    assert_eq!(other.get().unwrap(), 1);
    q.clone().put(3).unwrap(); // a clone is a fresh, open handle
}

#[test]
fn child_that_put_data_is_joined_without_draining() {
    for m in METHODS {
        let q: Queue<Vec<u8>> = Queue::new().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(q.clone(), |q| {
                for i in 0..1000u32 {
                    q.put(i.to_le_bytes().to_vec()).unwrap();
                }
                q.put(vec![0xab; 1 << 20]).unwrap();
            })
            .unwrap();
        // Python deadlocks here (the child's feeder thread waits for us to read).
        join(&p).unwrap();
        assert_eq!(q.len(), 1001);
        for i in 0..1000u32 {
            assert_eq!(q.get().unwrap(), i.to_le_bytes());
        }
        let big = q.get().unwrap();
        assert!(big.len() == 1 << 20 && big.iter().all(|b| *b == 0xab));
    }
}

/// Item `i` of a backlog: small (16 bytes) or, every 65,536th, a chunked 2 MiB one.
fn backlog_item(i: u32) -> Vec<u8> {
    let len = if i % (1 << 16) == 0 { 2 << 20 } else { 16 };
    let mut v = vec![(i % 251) as u8; len];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

/// A child puts a 16 MiB backlog (small items and chunked ones) into a queue that has already
/// carried traffic, is joined, then the parent drains every item intact. Traffic patterns:
/// one item; steady traffic past the first MiB (the producer wrapped early); the same with one
/// item always queued; large items through several MiB.
#[test]
fn backlog_past_the_first_mib_after_traffic_put_by_a_child_joined_then_drained() {
    const N: u32 = 600_000; // about 16 MiB of small items and 10 of 2 MiB
    for case in 0..4 {
        let q: Queue<Vec<u8>> = Queue::new().unwrap();
        let mut left = 0;
        match case {
            0 => {
                q.put(vec![1; 16]).unwrap();
                q.get().unwrap();
            }
            1 | 2 => {
                if case == 2 {
                    q.put(vec![2; 16]).unwrap();
                    left = 1;
                }
                for i in 0..100_000u32 {
                    q.put(i.to_le_bytes().to_vec()).unwrap();
                    q.get().unwrap();
                }
            }
            _ => {
                for _ in 0..20 {
                    q.put(vec![3; 700 << 10]).unwrap();
                    q.get().unwrap();
                }
            }
        }
        let p = Process::spawn(q.clone(), |q| {
            for i in 0..N {
                // Bounded: a put that cannot go on fails the test instead of hanging it.
                q.put_timeout(backlog_item(i), WAIT / 3)
                    .map_err(|e| format!("put {i}: {}", e.error()))?;
            }
            Ok::<(), String>(())
        })
        .unwrap();
        join(&p)
            .unwrap()
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(q.len(), N as usize + left, "case {case}");
        for _ in 0..left {
            // FIFO: the item left queued is the last one of the traffic.
            assert_eq!(q.get_timeout(WAIT).unwrap(), 99_999u32.to_le_bytes());
        }
        for i in 0..N {
            let got = q.get_timeout(WAIT).unwrap();
            assert!(got == backlog_item(i), "case {case}: item {i} differs");
        }
        assert!(q.is_empty());
    }
}

fn pattern(len: usize, salt: u8) -> String {
    (0..len)
        .map(|i| (b'a' + ((i / 7 + salt as usize) % 26) as u8) as char)
        .collect()
}

#[test]
fn item_of_64_mib_through_a_1_mib_ring() {
    let q: Queue<String> = Queue::builder().capacity_bytes(1 << 20).build().unwrap();
    let p = Process::spawn(q.clone(), |q| {
        q.put(pattern(64 << 20, 3)).unwrap();
        q.put("after".to_string()).unwrap();
    })
    .unwrap();
    let big = q.get_timeout(WAIT).unwrap();
    assert_eq!(big.len(), 64 << 20);
    assert!(big == pattern(64 << 20, 3), "content differs");
    assert_eq!(q.get_timeout(WAIT).unwrap(), "after");
    join(&p).unwrap();
}

/// One producer thread and one consumer thread, random sizes from 0 to 600 KiB (chunked past
/// a quarter of the ring or of its first MiB), through rings that wrap many times, with a
/// backlog past the first MiB in the largest: content and order must survive.
#[test]
fn random_sizes_wrap_chunk_and_skip_correctly() {
    for (capacity, items) in [(64 << 10, 300), (1 << 20, 300), (8 << 20, 1500)] {
        let q: Queue<(u32, String)> = Queue::builder().capacity_bytes(capacity).build().unwrap();
        let seed = Rng::new().next();
        let q2 = q.clone();
        let producer = std::thread::spawn(move || {
            let mut rng = Rng(seed);
            for i in 0..items {
                let len = match rng.below(10) {
                    0 => rng.below(600 << 10),
                    1..=3 => rng.below(4096),
                    _ => rng.below(64),
                } as usize;
                q2.put((i, pattern(len, i as u8))).unwrap();
            }
        });
        let mut rng = Rng(seed);
        for i in 0..items {
            let len = match rng.below(10) {
                0 => rng.below(600 << 10),
                1..=3 => rng.below(4096),
                _ => rng.below(64),
            } as usize;
            let (n, s) = q.get_timeout(WAIT).unwrap();
            assert_eq!(n, i, "capacity {capacity}");
            assert!(s == pattern(len, i as u8), "item {i} corrupted");
        }
        producer.join().unwrap();
        assert!(q.is_empty());
    }
}

fn smaps_rss_kib(name: &str) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.contains(name); // a new mapping starts
        } else if let Some(v) = line.strip_prefix("Rss:").filter(|_| inside) {
            total += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}

/// A burst uses memory beyond the first MiB of the ring; it is given back once the consumer
/// has caught up and traffic goes on.
#[test]
fn memory_used_by_a_burst_is_given_back() {
    let p = Process::spawn((), |()| {
        let q: Queue<Vec<u8>> = Queue::new().unwrap();
        for _ in 0..40 {
            q.put(vec![1; 1 << 20]).unwrap(); // 40 MiB queued
        }
        let peak = smaps_rss_kib("multiproc-queue");
        for _ in 0..40 {
            q.get().unwrap();
        }
        for i in 0..20_000u32 {
            q.put(i.to_le_bytes().to_vec()).unwrap();
            q.get().unwrap();
        }
        (peak, smaps_rss_kib("multiproc-queue"))
    })
    .unwrap();
    let (peak, after) = join(&p).unwrap();
    assert!(peak >= 40 << 10, "peak {peak} KiB");
    assert!(
        after <= 4 << 10,
        "still {after} KiB resident after the burst"
    );
}

/// A queue that never empties does not wrap early, so its producer walks the whole ring;
/// the memory behind the consumers is given back as they go (README "Memory").
#[test]
fn memory_of_a_queue_that_never_empties_is_given_back_behind_the_consumers() {
    let p = Process::spawn((), |()| {
        let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(64 << 20).build().unwrap();
        q.put(vec![0; 16]).unwrap();
        let mut peak = 0;
        // 32-byte records: 16 MiB of ring, one item always queued.
        for i in 0..(1u32 << 19) {
            q.put(i.to_le_bytes().to_vec()).unwrap();
            q.get().unwrap();
            if i % (1 << 15) == 0 {
                peak = peak.max(smaps_rss_kib("multiproc-queue"));
            }
        }
        (peak, smaps_rss_kib("multiproc-queue"), q.len())
    })
    .unwrap();
    let (peak, after, len) = join(&p).unwrap();
    assert_eq!(len, 1);
    assert!(peak <= 4 << 10, "{peak} KiB resident during the traffic");
    assert!(after <= 4 << 10, "{after} KiB resident after the traffic");
}

#[test]
fn joinable_queue_task_done_and_join() {
    let q: JoinableQueue<u64> = JoinableQueue::new().unwrap();
    for i in 0..100 {
        q.put(i).unwrap();
    }
    assert_eq!(q.unfinished_tasks(), 100);
    let e = q.join_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(e.is_timeout());
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Process::spawn(q.clone(), |q| {
                let mut n = 0u64;
                while let Ok(v) = q.get_timeout(Duration::from_millis(300)) {
                    std::thread::sleep(Duration::from_micros(v % 3 * 100));
                    q.task_done().unwrap();
                    n += 1;
                }
                n
            })
            .unwrap()
        })
        .collect();
    q.join_timeout(WAIT).unwrap();
    assert_eq!(q.unfinished_tasks(), 0);
    let done: u64 = workers.iter().map(|w| join(w).unwrap()).sum();
    assert_eq!(done, 100);
    let e = q.task_done().unwrap_err();
    assert!(e.to_string().contains("task_done"), "{e}");
    q.join().unwrap(); // nothing unfinished: returns at once
}

#[test]
fn simple_queue_across_processes() {
    let q: SimpleQueue<String> = SimpleQueue::new().unwrap();
    let p = Process::builder()
        .start_method(StartMethod::Spawn)
        .spawn(q.clone(), |q| {
            let s = q.get().unwrap();
            q.put(s.to_uppercase()).unwrap();
        })
        .unwrap();
    q.put("shout".into()).unwrap();
    join(&p).unwrap();
    assert_eq!(q.get().unwrap(), "SHOUT");
    assert!(q.is_empty());
    q.close();
    assert!(q.put("x".into()).unwrap_err().is_closed());
}

// ---------------------------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------------------------

fn reporting_producer((q, report, id, n): (Queue<u64>, Connection<u64>, u64, u64)) {
    for seq in 0..n {
        q.put(id << 32 | seq).unwrap();
        report.send(&seq).unwrap();
    }
}

fn reporting_consumer((q, report): (Queue<u64>, Connection<u64>)) {
    loop {
        match q.get_timeout(WAIT).unwrap() {
            SENTINEL => return,
            v => report.send(&v).unwrap(),
        }
    }
}

/// Collects everything a child reports until its end closes (or a half-written frame).
fn collect(conn: Connection<u64>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        while let Ok(x) = conn.recv_timeout(WAIT) {
            v.push(x);
        }
        v
    })
}

/// SIGKILL one producer and one consumer at random moments while 3 + 3 stream: the
/// survivors finish, nothing is duplicated, and at most one item per killed process is lost.
#[test]
fn killing_a_producer_and_a_consumer_mid_stream() {
    const N: u64 = 20_000;
    let mut rng = Rng::new();
    for round in 0..4 {
        let q: Queue<u64> = Queue::new().unwrap();
        let mut consumers = Vec::new();
        for _ in 0..3 {
            let (mine, theirs) = Pipe::simplex::<u64>().unwrap();
            let p = Process::spawn((q.clone(), theirs), reporting_consumer).unwrap();
            consumers.push((p, collect(mine)));
        }
        let mut producers = Vec::new();
        for id in 0..3 {
            let (mine, theirs) = Pipe::simplex::<u64>().unwrap();
            let p = Process::spawn((q.clone(), theirs, id, N), reporting_producer).unwrap();
            producers.push((p, collect(mine)));
        }
        std::thread::sleep(Duration::from_millis(5 + rng.below(60)));
        producers[0].0.kill().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(20)));
        consumers[0].0.kill().unwrap();

        let mut put_ok: Vec<HashSet<u64>> = Vec::new();
        for (i, (p, reports)) in producers.into_iter().enumerate() {
            let r = p.join_timeout(WAIT);
            if i == 0 {
                assert!(p.exitcode().is_some(), "killed producer not reaped");
            } else {
                assert!(matches!(r, Ok(())), "surviving producer {i}: {r:?}");
            }
            put_ok.push(reports.join().unwrap().into_iter().collect());
        }
        for _ in 1..3 {
            q.put(SENTINEL).unwrap();
        }
        let mut received: Vec<HashSet<u64>> = vec![HashSet::new(); 3];
        for (i, (p, reports)) in consumers.into_iter().enumerate() {
            let r = p.join_timeout(WAIT);
            assert!(
                i == 0 || matches!(r, Ok(())),
                "surviving consumer {i}: {r:?}"
            );
            for v in reports.join().unwrap() {
                let (id, seq) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert!(received[id].insert(seq), "round {round}: {id}/{seq} twice");
            }
        }
        assert!(q.is_empty(), "round {round}: {} items left", q.len());
        let missing: usize = (0..3)
            .map(|id| put_ok[id].difference(&received[id]).count())
            .sum();
        let unreported: usize = (0..3)
            .map(|id| received[id].difference(&put_ok[id]).count())
            .sum();
        assert!(missing <= 1, "round {round}: {missing} items lost");
        assert!(
            unreported <= 1,
            "round {round}: {unreported} items nobody put"
        );
        for survivor in &put_ok[1..] {
            assert_eq!(survivor.len() as u64, N);
        }
    }
}

/// Kill processes while they *hold* the locks (blocked inside put or get): the others go on.
#[test]
fn killing_lock_holders_never_blocks_the_others() {
    // A producer stuck in the middle of a large item (ring full, nobody reading).
    let q: Queue<String> = Queue::builder().capacity_bytes(64 << 10).build().unwrap();
    let p = Process::spawn(q.clone(), |q| {
        q.put(pattern(1 << 20, 1)).unwrap();
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(p.is_alive(), "the put should be blocked");
    p.kill().unwrap();
    let _ = p.join_timeout(WAIT);
    q.put_timeout("next".into(), WAIT).unwrap();
    assert_eq!(
        q.get_timeout(WAIT).unwrap(),
        "next",
        "partial item not dropped"
    );
    assert!(q.is_empty());

    // A consumer asleep in get on an empty queue.
    let q: Queue<u32> = Queue::new().unwrap();
    let c = Process::spawn(q.clone(), |q| q.get().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.kill().unwrap();
    let _ = c.join_timeout(WAIT);
    q.put(5).unwrap();
    assert_eq!(q.get_timeout(WAIT).unwrap(), 5);

    // A producer asleep in put on a full bounded queue.
    let q: Queue<u32> = Queue::bounded(1).unwrap();
    q.put(1).unwrap();
    let p = Process::spawn(q.clone(), |q| q.put(2).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    p.kill().unwrap();
    let _ = p.join_timeout(WAIT);
    assert_eq!(q.get_timeout(WAIT).unwrap(), 1);
    q.put_timeout(3, WAIT).unwrap();
    assert_eq!(q.get_timeout(WAIT).unwrap(), 3);
    assert_eq!(q.len(), 0);
}

/// A consumer killed while it reads a large item: the rest of that item is dropped, the
/// next item arrives intact.
#[test]
fn consumer_killed_in_the_middle_of_a_large_item() {
    let mut rng = Rng::new();
    for _ in 0..3 {
        let q: Queue<String> = Queue::builder().capacity_bytes(64 << 10).build().unwrap();
        let producer = Process::spawn(q.clone(), |q| {
            q.put(pattern(16 << 20, 2)).unwrap();
            q.put("after".to_string()).unwrap();
        })
        .unwrap();
        let consumer = Process::spawn(q.clone(), |q| q.get().unwrap().len()).unwrap();
        std::thread::sleep(Duration::from_millis(1 + rng.below(30)));
        consumer.kill().unwrap();
        let consumer_got = consumer.join_timeout(WAIT).ok();
        let first = q.get_timeout(WAIT).unwrap();
        if first != "after" {
            // The consumer had not started (or had finished) the large item.
            assert!(first == pattern(16 << 20, 2) || consumer_got.is_some());
            if first != "after" && first.len() == 16 << 20 {
                assert_eq!(q.get_timeout(WAIT).unwrap(), "after");
            }
        }
        join(&producer).unwrap();
        assert!(q.is_empty());
    }
}

/// No descriptor, mapping or process outlives the queues: checked in a fresh child, where
/// no other test creates queues concurrently.
#[test]
fn no_descriptors_or_mappings_leak() {
    fn fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }
    fn maps() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.contains("multiproc-queue"))
            .count()
    }
    let p = Process::spawn((), |()| {
        let before = (fds(), maps());
        {
            let q: Queue<u64> = Queue::new().unwrap();
            let q2 = q.clone();
            let (a, b) = Pipe::new::<Queue<u64>>().unwrap();
            a.send(&q2).unwrap();
            let q3 = b.recv().unwrap();
            q3.put(1).unwrap();
            assert_eq!(q.get().unwrap(), 1);
            let big: Queue<String> = Queue::builder().capacity_bytes(4 << 20).build().unwrap();
            big.put("x".repeat(1 << 20)).unwrap();
            let s = SimpleQueue::<u8>::new().unwrap();
            let j = JoinableQueue::<u8>::new().unwrap();
            s.put(1).unwrap();
            j.put(1).unwrap();
            assert!(maps() >= 4);
        }
        (before, (fds(), maps()))
    })
    .unwrap();
    let (before, after) = join(&p).unwrap();
    assert_eq!(before, after, "(fds, queue mappings) before and after");
    assert_eq!(before.1, 0);
    assert!(std::fs::read_dir("/dev/shm")
        .map(|d| d
            .filter_map(|e| e.ok())
            .all(|e| !e.file_name().to_string_lossy().contains("multiproc")))
        .unwrap_or(true));
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Queue<std::rc::Rc<u8>>>();
    assert_send_sync::<SimpleQueue<u8>>();
    assert_send_sync::<JoinableQueue<u8>>();
    assert_send_sync::<multiproc::PutError<u8>>();
}

/// A producer killed at random moments of a tight put loop (so mostly inside `put`): the
/// items delivered are exactly 0..k in order, and the counts agree with what is there.
#[test]
fn producer_killed_inside_put_loses_at_most_its_item() {
    let mut rng = Rng::new();
    for round in 0..8 {
        let q: JoinableQueue<u64> = JoinableQueue::new().unwrap();
        let p = Process::spawn(q.clone(), |q| -> () {
            for i in 0.. {
                q.put(i).unwrap();
            }
        })
        .unwrap();
        wait_until(|| !q.is_empty()); // it is putting
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        p.kill().unwrap();
        let _ = p.join_timeout(WAIT);
        let (len, unfinished) = (q.len(), q.unfinished_tasks());
        assert_eq!(len, unfinished, "round {round}");
        for i in 0..len as u64 {
            assert_eq!(q.try_get().unwrap(), i, "round {round}");
        }
        let e = q.try_get().unwrap_err();
        assert!(e.is_would_block(), "round {round}: more than counted: {e}");
        q.put(u64::MAX).unwrap();
        assert_eq!(q.get().unwrap(), u64::MAX);
        for _ in 0..=len {
            q.task_done().unwrap();
        }
        q.join_timeout(WAIT).unwrap();
    }
}

/// A consumer killed at random moments of a tight get loop: what is left is exactly the
/// tail of the sequence (the item it was taking is either still there or gone), and `len`
/// agrees.
#[test]
fn consumer_killed_inside_get_loses_at_most_its_item() {
    const N: u64 = 200_000;
    let mut rng = Rng::new();
    for round in 0..8 {
        let q: Queue<u64> = Queue::new().unwrap();
        for i in 0..N {
            q.put(i).unwrap();
        }
        let c = Process::spawn(q.clone(), |q| -> () {
            loop {
                q.get().unwrap();
            }
        })
        .unwrap();
        wait_until(|| q.len() < N as usize); // it is getting
        std::thread::sleep(Duration::from_millis(rng.below(30)));
        c.kill().unwrap();
        let _ = c.join_timeout(WAIT);
        let len = q.len() as u64;
        assert!(
            len > 0 && len < N,
            "round {round}: kill too early/late ({len})"
        );
        for i in N - len..N {
            assert_eq!(q.try_get().unwrap(), i, "round {round}");
        }
        let e = q.try_get().unwrap_err();
        assert!(e.is_would_block(), "round {round}: {e}");
    }
}

/// A producer killed while a consumer is receiving its large item: the consumer notices (its
/// wait checks the producer's liveness), drops the partial item and goes on.
#[test]
fn producer_killed_while_its_large_item_is_being_read() {
    let mut rng = Rng::new();
    for _ in 0..4 {
        let q: Queue<String> = Queue::builder().capacity_bytes(64 << 10).build().unwrap();
        let p = Process::spawn(q.clone(), |q| {
            for i in 0..4u8 {
                q.put(char::from(b'a' + i).to_string().repeat(8 << 20))
                    .unwrap();
            }
        })
        .unwrap();
        let delay = Duration::from_millis(1 + rng.below(40));
        let (_got, elapsed) = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(delay);
                p.kill().unwrap();
            });
            let mut got = 0;
            let t = Instant::now();
            while let Ok(item) = q.get_timeout(Duration::from_millis(500)) {
                let c = b'a' + got as u8;
                assert!(
                    item.len() == 8 << 20 && item.bytes().all(|b| b == c),
                    "item {got}"
                );
                got += 1;
            }
            (got, t.elapsed())
        });
        assert!(elapsed < WAIT);
        let _ = p.join_timeout(WAIT);
        q.put("next".into()).unwrap();
        assert_eq!(q.get_timeout(WAIT).unwrap(), "next");
    }
}

/// Polls `cond` until it holds (at most [`WAIT`]).
fn wait_until(mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < WAIT, "condition not reached within {WAIT:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The one result shape on every flavour: `try_` is `WouldBlock`, `_timeout`/`_deadline` are
/// `Timeout`, and a timeout of `Duration::MAX` means no deadline.
#[test]
fn every_flavour_has_the_one_result_shape() {
    let s: SimpleQueue<u32> = SimpleQueue::new().unwrap();
    assert!(s.try_get().unwrap_err().is_would_block());
    assert!(s
        .get_timeout(Duration::from_millis(20))
        .unwrap_err()
        .is_timeout());
    assert!(s.get_deadline(Instant::now()).unwrap_err().is_timeout());
    s.try_put(1).unwrap();
    s.put_timeout(2, Duration::MAX).unwrap();
    s.put_deadline(3, Instant::now() + WAIT).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s.maxsize(), None);
    assert_eq!(s.get_timeout(Duration::MAX).unwrap(), 1);
    assert_eq!(s.try_get().unwrap(), 2);
    assert_eq!(s.get_deadline(Instant::now() + WAIT).unwrap(), 3);

    let q: Queue<u32> = Queue::bounded(1).unwrap();
    q.put(1).unwrap();
    let e = q.try_put(2).unwrap_err();
    assert!(e.error().is_would_block() && e.is_full());
    assert!(q.put_timeout(2, Duration::ZERO).unwrap_err().is_timeout());
    assert_eq!(q.try_get().unwrap(), 1);
    assert!(q.try_get().unwrap_err().is_would_block());

    // Duration::MAX waits (no deadline, no overflow) until the item or the last task arrives.
    let j: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    let j2 = j.clone();
    let t = std::thread::spawn(move || {
        let v = j2.get_timeout(Duration::MAX).unwrap();
        j2.task_done().unwrap();
        v
    });
    j.put_timeout(7, Duration::MAX).unwrap();
    j.join_timeout(Duration::MAX).unwrap();
    assert_eq!(t.join().unwrap(), 7);
    assert_eq!(j.unfinished_tasks(), 0);
    assert!(j.join_timeout(Duration::ZERO).is_ok());
    j.put(8).unwrap();
    assert!(j.join_timeout(Duration::ZERO).unwrap_err().is_timeout());
    assert!(j.join_deadline(Instant::now()).unwrap_err().is_timeout());
}

// ---------------------------------------------------------------------------------------------
// Stalled and hostile peers
// ---------------------------------------------------------------------------------------------

/// The state letter of process `pid` (`R`, `S`, `T`, ...) from `/proc/<pid>/stat`.
fn proc_state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rfind(')')
        .and_then(|i| s[i + 2..].chars().next())
        .unwrap_or('?')
}

/// Sends `SIGSTOP`/`SIGCONT`/... to `pid` with kill(1) (the tests have no libc).
fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// A producer frozen (SIGSTOP) in the middle of a 4 MiB item: the consumer's `get_timeout`
/// returns `Timeout` at its deadline, another consumer neither takes nor drops the rest, and
/// once the producer runs again the next get returns the item whole.
#[test]
fn producer_stopped_inside_a_large_item_does_not_hold_a_timed_get() {
    let q: Queue<String> = Queue::builder().capacity_bytes(64 << 10).build().unwrap();
    let (ready, ready_tx) = Pipe::simplex::<u8>().unwrap();
    let p = Process::spawn(
        (q.clone(), ready_tx),
        |(q, ready): (Queue<String>, Connection<u8>)| {
            let item = pattern(4 << 20, 5);
            ready.send(&1).unwrap();
            q.put(item).unwrap();
            q.put("after".to_string()).unwrap();
        },
    )
    .unwrap();
    ready.recv_timeout(WAIT).unwrap();
    // The ring holds 64 KiB: the put sleeps inside the item until somebody reads.
    wait_until(|| proc_state(p.pid()) == 'S');
    signal(p.pid(), "STOP");
    wait_until(|| proc_state(p.pid()) == 'T');
    // The get runs in a thread so that a get that overruns fails the test instead of hanging
    // it: after WAIT the producer is resumed (which ends such a get) and the test fails.
    let (tx, rx) = std::sync::mpsc::channel();
    let getter = {
        let q = q.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = q.get_timeout(Duration::from_millis(300));
            tx.send(()).unwrap();
            (r.map(|s| s.len()), t.elapsed())
        })
    };
    let on_time = rx.recv_timeout(WAIT).is_ok();
    if !on_time {
        signal(p.pid(), "CONT");
    }
    let (r, took) = getter.join().unwrap();
    assert!(
        on_time,
        "get_timeout(300 ms) did not return within {WAIT:?}"
    );
    let e = r.unwrap_err();
    assert!(e.is_timeout(), "{e} after {took:?}");
    // Another consumer process: it times out too, without taking or dropping our part.
    let other = Process::spawn(q.clone(), |q| {
        q.get_timeout(Duration::from_millis(200))
            .map_err(|e| e.is_timeout())
    })
    .unwrap();
    assert_eq!(join(&other).unwrap(), Err(true));
    signal(p.pid(), "CONT");
    let big = q.get_timeout(WAIT).unwrap();
    assert!(big == pattern(4 << 20, 5), "the item arrived damaged");
    assert_eq!(q.get_timeout(WAIT).unwrap(), "after");
    join(&p).unwrap();
    assert!(q.is_empty());
}

/// Writes random garbage over the control page of the one queue segment this process holds,
/// through `/proc/self/fd` (a write to the memfd is a write to every mapping of it).
fn scribble((_q, seed, ms): (Queue<u64>, u64, u64)) -> u64 {
    use std::os::unix::fs::FileExt;
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("memfd:multiproc-queue"))
        })
        .expect("the queue's memfd");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(fd.path())
        .unwrap();
    let mut rng = Rng(seed | 1);
    let t = Instant::now();
    let mut writes = 0;
    while t.elapsed() < Duration::from_millis(ms) {
        let (off, len) = if rng.below(20) == 0 {
            (0, 4096) // now and then the whole page
        } else {
            let off = rng.below(4096 / 8) * 8;
            (off, (8 * (1 + rng.below(4))).min(4096 - off))
        };
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        file.write_at(&bytes, off).unwrap();
        writes += 1;
        std::thread::sleep(Duration::from_micros(200 + rng.below(800)));
    }
    writes
}

/// Uses the queue with every kind of call for `ms`; returns how many calls worked and failed.
fn victim((q, ms, ready): (Queue<u64>, u64, Connection<u8>)) -> (u64, u64) {
    ready.send(&1).unwrap(); // the handle is open: scribbling may start
    let (mut ok, mut failed) = (0, 0);
    let mut count = |worked: bool| {
        if worked {
            ok += 1
        } else {
            failed += 1
        }
    };
    let short = Duration::from_millis(5);
    let t = Instant::now();
    let mut i = 0u64;
    while t.elapsed() < Duration::from_millis(ms) {
        count(q.put_timeout(i, short).is_ok());
        count(q.try_put(i + 1).is_ok());
        count(q.get_timeout(short).is_ok());
        count(q.try_get().is_ok());
        count(q.get_deadline(Instant::now() + short).is_ok());
        let _ = (q.len(), q.is_empty(), q.is_full(), format!("{q:?}"));
        i += 2;
    }
    (ok, failed)
}

/// Random garbage over the control page of a live queue (lock words, positions, counters),
/// written by another process while a victim process uses the queue: every call of the victim
/// returns, with a value or an error, and the victim exits normally.
#[test]
fn garbage_over_the_control_page_is_an_error_never_a_crash() {
    let mut rng = Rng::new();
    for round in 0..3 {
        let q: Queue<u64> = Queue::builder().capacity_bytes(64 << 10).build().unwrap();
        for i in 0..50 {
            q.put(i).unwrap();
        }
        let victims: Vec<_> = (0..2)
            .map(|_| {
                let (ready, ready_tx) = Pipe::simplex::<u8>().unwrap();
                let p = Process::spawn((q.clone(), 1500, ready_tx), victim).unwrap();
                ready.recv_timeout(WAIT).unwrap();
                p
            })
            .collect();
        let scribbler = Process::spawn((q.clone(), rng.next(), 1200), scribble).unwrap();
        assert!(
            join(&scribbler).unwrap() > 100,
            "round {round}: too few writes"
        );
        for v in &victims {
            let r = join(v);
            let (ok, failed) = r.unwrap_or_else(|e| panic!("round {round}: victim crashed: {e}"));
            assert!(ok + failed > 0, "round {round}");
        }
    }
}
