//! SharedMemory and SharedVec across real processes: handles under every start method, Pool
//! arguments and results, Connections, queues, named segments and who removes their names,
//! SIGKILLed holders, and no leaks (descriptors, mappings, /dev/shm).

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use common::{join, METHODS, WAIT};
use multiproc::{
    Connection, ErrorKind, Pipe, PoolBuilder, Process, Queue, SharedBytes, SharedMemory, SharedVec,
};

/// The tests count this process's descriptors and mappings: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The descriptor count, after giving back the segments kept for reuse.
fn fd_count() -> usize {
    multiproc::shm::release_cache();
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Descriptors and mappings of this crate's anonymous segments in this process (after giving
/// back the segments kept for reuse).
fn our_segments() -> (usize, usize) {
    multiproc::shm::release_cache();
    let fds = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.to_string_lossy().contains("memfd:multiproc-shm"))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:multiproc-shm"))
        .count();
    (fds, maps)
}

/// The names in /dev/shm that this test binary's process made (they carry its pid).
fn our_names() -> Vec<String> {
    let tag = format!("mp-test-{}-", std::process::id());
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&tag))
        .collect();
    v.sort();
    v
}

/// Everything in /dev/shm now (other programs' files included).
fn dev_shm() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

fn name(what: &str) -> String {
    format!("mp-test-{}-{what}", std::process::id())
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

#[test]
fn an_anonymous_segment_is_shared_under_every_start_method() {
    let _g = serial();
    for m in METHODS {
        let mut shm = SharedMemory::new(10_000).unwrap();
        assert_eq!(shm.size(), 10_000);
        assert_eq!(shm.name(), None);
        shm.as_mut_slice()[9_999] = 42;
        let p = Process::builder()
            .start_method(m)
            .spawn(shm.try_clone().unwrap(), |mut s: SharedMemory| {
                let seen = s.as_slice()[9_999];
                s.as_mut_slice()[0] = 7;
                s.as_atomic_u32().unwrap()[1].fetch_add(3, Ordering::SeqCst);
                (seen, s.size())
            })
            .unwrap();
        assert_eq!(join(&p).unwrap(), (42, 10_000), "{m:?}");
        assert_eq!(
            shm.as_slice()[0],
            7,
            "{m:?}: the child's write is visible here"
        );
        assert_eq!(shm.as_slice_of::<u32>().unwrap()[1], 3, "{m:?}");
    }
}

#[test]
fn a_shared_vec_is_a_pool_argument_and_result() {
    let _g = serial();
    for m in METHODS {
        let pool = PoolBuilder::new()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        let data: Vec<u64> = (0..(1u64 << 18)).collect(); // 2 MiB
        let v = SharedVec::from_slice(&data).unwrap();
        let sums = pool
            .map(
                |(v, k): (SharedVec<u64>, u64)| v.iter().map(|x| x * k).sum::<u64>(),
                (1..=4).map(|k| (v.try_clone().unwrap(), k)),
            )
            .unwrap();
        let s: u64 = data.iter().sum();
        assert_eq!(sums, vec![s, 2 * s, 3 * s, 4 * s], "{m:?}");
        // Filled in place by the worker, returned without a copy.
        let back = pool
            .apply(
                |n: usize| {
                    let mut b = SharedBytes::zeroed(n).unwrap();
                    b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8);
                    b
                },
                3 << 20,
            )
            .unwrap();
        assert_eq!(back.len(), 3 << 20);
        assert!(back.iter().enumerate().all(|(i, x)| *x == i as u8), "{m:?}");
        pool.close();
        pool.join().unwrap();
    }
}

#[test]
fn a_shared_vec_travels_over_a_connection_both_ways() {
    let _g = serial();
    let (here, there) = Pipe::new::<SharedVec<f64>>().unwrap();
    let p = Process::spawn(there, |c: Connection<SharedVec<f64>>| {
        while let Ok(mut v) = c.recv() {
            v.iter_mut().for_each(|x| *x *= 2.0);
            c.send(&v).unwrap();
        }
    })
    .unwrap();
    for n in [0usize, 1, 1000, 1 << 20] {
        let v = SharedVec::from_slice(&vec![1.5f64; n]).unwrap();
        here.send(&v).unwrap();
        let back = here.recv_timeout(WAIT).unwrap();
        assert_eq!(back.len(), n);
        assert!(back.iter().all(|x| *x == 3.0));
        // Sharing, not moving: the sender's handle sees the worker's writes.
        assert!(v.iter().all(|x| *x == 3.0));
    }
    drop(here);
    join(&p).unwrap();
}

#[test]
fn queue_items_refuse_descriptors_but_carry_named_segments() {
    let _g = serial();
    let q: Queue<SharedBytes> = Queue::new().unwrap();
    let e = q.put(SharedBytes::zeroed(10).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Encode, "{e:?}");
    let q: Queue<SharedMemory> = Queue::new().unwrap();
    let e = q.put(SharedMemory::new(10).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Encode);
    // A named segment travels by name.
    let n = name("queue");
    let mut shm = SharedMemory::create_named(&n, 100).unwrap();
    shm.as_mut_slice()[5] = 5;
    let p = Process::spawn(q.clone(), |q: Queue<SharedMemory>| {
        let mut s = q.get().unwrap();
        s.as_mut_slice()[6] = s.as_slice()[5] + 1;
        s.removes_name_on_drop()
    })
    .unwrap();
    q.put(shm.try_clone().unwrap()).unwrap();
    assert!(!join(&p).unwrap(), "a receiver is an attacher");
    assert_eq!(shm.as_slice()[6], 6);
    assert!(exists(&n), "the attacher left the name alone");
    drop(shm);
    assert!(!exists(&n), "the creator's drop removed the name");
}

#[test]
fn named_segments_only_their_creator_removes() {
    let _g = serial();
    let n = name("named");
    let mut shm = SharedMemory::create_named(&n, 5000).unwrap();
    assert_eq!(shm.name(), Some(n.as_str()));
    assert!(shm.removes_name_on_drop());
    let e = SharedMemory::create_named(&n, 10).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(
        std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(|e| e.kind()),
        Some(std::io::ErrorKind::AlreadyExists)
    );
    shm.as_mut_slice_of::<u64>().unwrap()[0] = 0xfeed;
    // An unrelated process opens it by name; its drop does not remove the name.
    let p = Process::spawn(n.clone(), |n: String| {
        let s = SharedMemory::open_named(&n).unwrap();
        (
            s.size(),
            s.as_slice_of::<u64>().unwrap()[0],
            s.removes_name_on_drop(),
        )
    })
    .unwrap();
    assert_eq!(join(&p).unwrap(), (5000, 0xfeed, false));
    assert!(exists(&n));
    // A clone never removes it either.
    drop(shm.try_clone().unwrap());
    assert!(exists(&n));
    // Persisted: it outlives the creator's handle, until someone unlinks it.
    shm.persist();
    drop(shm);
    assert!(exists(&n));
    let again = SharedMemory::open_named(&format!("/{n}")).unwrap();
    assert_eq!(again.as_slice_of::<u64>().unwrap()[0], 0xfeed);
    again.unlink().unwrap();
    assert!(!exists(&n));
    assert_eq!(
        again.as_slice_of::<u64>().unwrap()[0],
        0xfeed,
        "mapping stays valid"
    );
    let e = SharedMemory::open_named(&n).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(SharedMemory::unlink_named(&n).is_err());
    assert_eq!(our_names(), Vec::<String>::new());
}

/// Waits (bounded) until `name` is gone from /dev/shm.
fn gone_within_wait(name: &str) -> bool {
    let t = Instant::now();
    while exists(name) {
        if t.elapsed() > WAIT {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

#[test]
fn a_sigkilled_creator_s_name_is_removed_unless_persisted() {
    let _g = serial();
    for persist in [false, true] {
        let n = name(if persist { "killed-kept" } else { "killed" });
        let (here, there) = Pipe::new::<()>().unwrap();
        let p = Process::spawn(
            (n.clone(), persist, there),
            |(n, persist, c): (String, bool, Connection<()>)| {
                let s = SharedMemory::create_named(&n, 4096).unwrap();
                if persist {
                    s.persist();
                }
                c.send(&()).unwrap();
                let _ = c.recv(); // until killed
            },
        )
        .unwrap();
        here.recv_timeout(WAIT).unwrap();
        assert!(exists(&n));
        p.kill().unwrap();
        assert!(join(&p).is_err());
        if persist {
            // A persisted segment is meant to outlive its creator.
            assert!(exists(&n), "a persisted segment lost its name");
            SharedMemory::unlink_named(&n).unwrap();
        } else {
            assert!(gone_within_wait(&n), "the watcher did not remove {n}");
            let t = Instant::now();
            while watchers_of(&n) > 0 {
                assert!(t.elapsed() < WAIT, "the watcher did not exit after its job");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    // A normal drop stops the watcher first: a name created again afterwards stays.
    let n = name("reused");
    drop(SharedMemory::create_named(&n, 10).unwrap());
    let again = SharedMemory::create_named(&n, 10).unwrap();
    again.persist();
    assert_eq!(watchers_of(&n), 0, "persist() stops the watcher");
    drop(again);
    assert!(exists(&n), "a stopped watcher removed a reused name");
    SharedMemory::unlink_named(&n).unwrap();
    let live = SharedMemory::create_named(&n, 10).unwrap();
    // The watcher's command line is in place once its exec completes, which may be a moment
    // after `create_named` returns.
    let t = Instant::now();
    while watchers_of(&n) != 1 {
        assert!(t.elapsed() < WAIT, "no watcher for {n}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(live);
    assert_eq!(
        watchers_of(&n),
        0,
        "a normal drop stops (and reaps) the watcher"
    );
    assert!(!exists(&n));
}

/// Live (not zombie) watcher processes for the segment `name`.
fn watchers_of(name: &str) -> usize {
    let needle = format!("multiproc-shm-watch\0/dev/shm/{name}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (String::from_utf8_lossy(&cmd).contains(&needle) && !common::is_gone(pid)).then_some(())
        })
        .count()
}

#[test]
fn segments_held_by_sigkilled_processes_leave_nothing_behind() {
    let _g = serial();
    // Start the fork server (and whatever else the first spawn per method opens) first.
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((), |()| ())
            .unwrap();
        join(&p).unwrap();
    }
    let base = (fd_count(), our_segments());
    let dev_shm_before = dev_shm();
    for m in METHODS {
        let mut kids = Vec::new();
        let mut ready = Vec::new();
        let v = SharedVec::from_slice(&vec![9u32; 1 << 18]).unwrap();
        let s = SharedMemory::new(1 << 16).unwrap();
        for _ in 0..3 {
            let (here, there) = Pipe::new::<u32>().unwrap();
            let p = Process::builder()
                .start_method(m)
                .spawn(
                    (v.try_clone().unwrap(), s.try_clone().unwrap(), there),
                    |(v, s, c): (SharedVec<u32>, SharedMemory, Connection<u32>)| {
                        s.as_atomic_u64().unwrap()[0].fetch_add(1, Ordering::SeqCst);
                        c.send(&v[12345]).unwrap();
                        let _ = c.recv(); // until killed
                    },
                )
                .unwrap();
            kids.push(p);
            ready.push(here);
        }
        for r in &ready {
            assert_eq!(r.recv_timeout(WAIT).unwrap(), 9);
        }
        assert_eq!(s.as_atomic_u64().unwrap()[0].load(Ordering::SeqCst), 3);
        drop((v, s));
        for p in &kids {
            p.kill().unwrap();
        }
        for p in &kids {
            let e = join(p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Killed, "{m:?}: {e}");
        }
        drop(ready);
    }
    assert_eq!(
        (fd_count(), our_segments()),
        base,
        "descriptors or mappings left"
    );
    let new: Vec<String> = dev_shm()
        .into_iter()
        .filter(|n| !dev_shm_before.contains(n) && n.contains("multiproc"))
        .collect();
    assert!(
        new.is_empty(),
        "anonymous segments appeared in /dev/shm: {new:?}"
    );
}

#[test]
fn descriptors_stay_flat_over_hundreds_of_segments() {
    let _g = serial();
    let (here, there) = Pipe::new::<(SharedBytes, SharedMemory)>().unwrap();
    let p = Process::spawn(there, |c: Connection<(SharedBytes, SharedMemory)>| {
        while let Ok((mut b, s)) = c.recv() {
            b[0] = s.as_slice()[0];
            c.send(&(b, s)).unwrap();
        }
    })
    .unwrap();
    // Warm up (the connection's buffers, the child).
    let round = |i: usize| {
        let b = SharedBytes::zeroed(1 + i % 5000).unwrap();
        let mut s = SharedMemory::new(1 + i % 300).unwrap();
        s.as_mut_slice()[0] = i as u8;
        here.send(&(b, s)).unwrap();
        let (b, _s) = here.recv_timeout(WAIT).unwrap();
        assert_eq!(b[0], i as u8);
    };
    round(0);
    let base = (fd_count(), our_segments());
    let t = Instant::now();
    for i in 0..400 {
        round(i);
    }
    assert!(t.elapsed() < WAIT);
    assert_eq!((fd_count(), our_segments()), base);
    drop(here);
    join(&p).unwrap();
    assert_eq!(our_segments(), (0, 0));
    assert!(our_names().is_empty());
}

#[test]
fn a_segment_is_reused_only_when_nobody_holds_it() {
    let _g = serial();
    const N: usize = 1 << 20; // large enough to be kept for reuse
                              // In one process: a clone keeps the segment busy.
    let v = SharedBytes::from_slice(&vec![1u8; N]).unwrap();
    let keep = v.try_clone().unwrap();
    drop(v);
    let w = SharedBytes::from_slice(&vec![2u8; N]).unwrap();
    assert!(keep.iter().all(|x| *x == 1), "a held segment was reused");
    drop(w);
    // Across processes: a handle held by a child, and one in flight, keep it busy too.
    let (here, there) = Pipe::new::<SharedBytes>().unwrap();
    let (ok_here, ok_there) = Pipe::new::<bool>().unwrap();
    let p = Process::spawn(
        (there, ok_there),
        |(c, ok): (Connection<SharedBytes>, Connection<bool>)| {
            let held = c.recv().unwrap(); // held until the parent says so
            ok.send(&true).unwrap();
            let _ = c.recv();
            ok.send(&held.iter().all(|x| *x == 3)).unwrap();
            drop(held);
            // Received and dropped at once: the parent may reuse it.
            while let Ok(v) = c.recv() {
                let first = v[0];
                drop(v);
                ok.send(&(first == 9)).unwrap();
            }
        },
    )
    .unwrap();
    let v = SharedBytes::from_slice(&vec![3u8; N]).unwrap();
    here.send(&v).unwrap();
    drop(v); // in flight or held by the child: not reusable
    assert!(ok_here.recv_timeout(WAIT).unwrap());
    for fill in 4..8u8 {
        let w = SharedBytes::from_slice(&vec![fill; N]).unwrap();
        assert!(w.iter().all(|x| *x == fill));
    }
    here.send(&SharedBytes::zeroed(1).unwrap()).unwrap();
    assert!(
        ok_here.recv_timeout(WAIT).unwrap(),
        "the child's segment was overwritten"
    );
    let before = our_segments_now();
    for _ in 0..50 {
        let w = SharedBytes::from_slice(&vec![9u8; N]).unwrap();
        here.send(&w).unwrap();
        drop(w);
        assert!(ok_here.recv_timeout(WAIT).unwrap());
        let z = SharedBytes::zeroed(N).unwrap();
        assert!(
            z.iter().all(|x| *x == 0),
            "a reused segment must come back zeroed"
        );
    }
    // Reuse: 100 large buffers made, a handful of segments mapped.
    assert!(
        our_segments_now().1 <= before.1 + 4,
        "{before:?} {:?}",
        our_segments_now()
    );
    drop(here);
    join(&p).unwrap();
}

/// As `our_segments`, without giving back the kept segments.
fn our_segments_now() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.to_string_lossy().contains("memfd:multiproc-shm"))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:multiproc-shm"))
        .count();
    (fds, maps)
}

/// Runs `python3 -c code`; `None` when there is no Python here (the test then checks nothing
/// more and says so).
fn python(code: &str) -> Option<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", code])
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn python_opens_our_named_segments_and_we_open_its() {
    let _g = serial();
    let n = name("py");
    let mut shm = SharedMemory::create_named(&n, 4096).unwrap();
    shm.as_mut_slice()[..5].copy_from_slice(b"hello");
    // Python 3.8-3.12 would unlink a segment it merely attached to at exit (bpo-38119);
    // unregistering from its resource tracker is the standard workaround.
    let code = format!(
        "from multiprocessing import shared_memory, resource_tracker\n\
         m = shared_memory.SharedMemory(name={n:?})\n\
         resource_tracker.unregister(m._name, 'shared_memory')\n\
         print(bytes(m.buf[:5]).decode(), m.size)\n\
         m.buf[:5] = b'HELLO'\n\
         m.close()\n"
    );
    let Some(out) = python(&code) else {
        eprintln!("no python3: interoperability not checked");
        return;
    };
    assert_eq!(out.trim(), "hello 4096");
    assert_eq!(&shm.as_slice()[..5], b"HELLO");
    drop(shm);
    assert!(!exists(&n));
    // The other way: Python creates, we open (and, as an attacher, leave the name), Python
    // unlinks.
    let n2 = name("from-py");
    let code = format!(
        "import sys\n\
         from multiprocessing import shared_memory\n\
         m = shared_memory.SharedMemory(name={n2:?}, create=True, size=100)\n\
         m.buf[:3] = b'abc'\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n\
         print(bytes(m.buf[3:6]).decode(), flush=True)\n\
         m.close(); m.unlink()\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut ours = SharedMemory::open_named(&n2).unwrap();
    assert!(ours.size() >= 100);
    assert_eq!(&ours.as_slice()[..3], b"abc");
    ours.as_mut_slice()[3..6].copy_from_slice(b"xyz");
    drop(ours);
    assert!(exists(&n2), "an attacher never removes the name");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "xyz");
    assert!(child.wait().unwrap().success());
    assert!(!exists(&n2));
}

#[test]
fn the_reuse_cache_is_bounded() {
    let _g = serial();
    multiproc::shm::release_cache();
    let base = our_segments_now();
    let held: Vec<SharedBytes> = (0..8)
        .map(|i| SharedBytes::zeroed((1 << 20) + i * 4096).unwrap())
        .collect();
    assert_eq!(our_segments_now().1, base.1 + 8);
    drop(held);
    assert_eq!(
        our_segments_now(),
        (base.0 + 4, base.1 + 4),
        "at most 4 kept"
    );
    multiproc::shm::release_cache();
    assert_eq!(our_segments_now(), base);
    // A receiver keeps the mapping of a segment it dropped, and uses it when the same
    // segment arrives again (as it does when its creator reuses it).
    let (a, b) = Pipe::new::<SharedBytes>().unwrap();
    let mut v = SharedBytes::zeroed(1 << 20).unwrap();
    a.send(&v).unwrap();
    let got = b.recv_timeout(WAIT).unwrap();
    assert_eq!(our_segments_now().1, base.1 + 2);
    drop(got);
    assert_eq!(
        our_segments_now().1,
        base.1 + 2,
        "the receiver's mapping is kept"
    );
    v[5] = 55;
    a.send(&v).unwrap();
    let got = b.recv_timeout(WAIT).unwrap();
    assert_eq!(
        our_segments_now().1,
        base.1 + 2,
        "the kept mapping was not used"
    );
    assert_eq!(got[5], 55);
    drop((got, v));
    multiproc::shm::release_cache();
    assert_eq!(our_segments_now(), base);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SharedMemory>();
    check::<SharedVec<u64>>();
    check::<SharedBytes>();
}

#[test]
fn a_fork_child_never_reuses_its_parent_s_kept_segments() {
    let _g = serial();
    multiproc::shm::release_cache();
    // Kept for reuse here: a Fork child inherits the cache (with a neutralised descriptor).
    drop(SharedBytes::zeroed(1 << 20).unwrap());
    let p = Process::builder()
        .start_method(multiproc::StartMethod::Fork)
        .spawn((), |()| {
            SharedBytes::from_slice(&vec![7u8; 1 << 20]).unwrap()
        })
        .unwrap();
    let v = join(&p).expect("the child's buffer arrives (a reused inherited entry would not)");
    assert!(v.iter().all(|x| *x == 7));
    // And the parent's kept segment is still its own to reuse (no new mapping appears).
    let before = our_segments_now();
    let w = SharedBytes::from_slice(&vec![8u8; 1 << 20]).unwrap();
    assert_eq!(
        our_segments_now(),
        before,
        "the kept segment was not reused"
    );
    assert!(
        v.iter().all(|x| *x == 7),
        "the child's segment was reused while held"
    );
    assert!(w.iter().all(|x| *x == 8));
}
