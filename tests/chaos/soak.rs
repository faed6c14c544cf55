//! The soak: thousands of process, pool, worker, queue and pipe lifetimes; descriptors must
//! stay flat and resident memory within a sane margin (issue 9 point 5).

use std::time::{Duration, Instant};

use multiproc::{Connection, Pipe, Pool, Process, Queue, QueueBuilder, StartMethod};

use crate::compat::{join_for, Waited};
use crate::util::{check, fd_count, fd_listing, row, rss_kib, scale, wait_for};

/// Descriptors a phase may leave behind (none; 2 of slack for a lazily started helper).
const FD_SLACK: usize = 2;
/// Memory a phase may add: 8 MiB plus 10 %.
fn rss_limit(before: u64) -> u64 {
    before + 8 * 1024 + before / 10
}

fn plus_one(x: u32) -> u32 {
    x + 1
}

/// Waits (bounded) for dropped, unjoined children to be reaped in the background; returns
/// how many `active_children()` still lists.
fn settle() -> usize {
    wait_for(Duration::from_secs(5), || {
        multiproc::active_children().is_empty()
    });
    std::thread::sleep(Duration::from_millis(100));
    multiproc::active_children().len()
}

fn phase(name: &str, n: u64, mut body: impl FnMut(u64) -> Result<(), String>) {
    // Warm up: lazily started pieces (the fork server, the reaper) are not leaks.
    for i in 0..3 {
        let _ = body(i);
    }
    settle();
    let fds0 = fd_count();
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let mut errors = 0u64;
    let mut first = None;
    for i in 0..n {
        if let Err(e) = body(i) {
            errors += 1;
            first.get_or_insert(format!("#{i}: {e}"));
        }
    }
    let listed = settle();
    let fds1 = fd_count();
    let rss1 = rss_kib();
    row(
        "Soak",
        &[
            ("phase", name.to_string()),
            ("lifetimes", n.to_string()),
            ("seconds", format!("{:.1}", t0.elapsed().as_secs_f64())),
            ("errors", errors.to_string()),
            ("fds before", fds0.to_string()),
            ("fds after", fds1.to_string()),
            ("RSS KiB before", rss0.to_string()),
            ("RSS KiB after", rss1.to_string()),
            ("active_children() after", listed.to_string()),
        ],
    );
    check(errors == 0, || {
        format!(
            "{name}: {errors} of {n} lifetimes failed, first {}",
            first.clone().unwrap_or_default()
        )
    });
    check(fds1 <= fds0 + FD_SLACK, || {
        format!(
            "{name}: descriptors grew from {fds0} to {fds1} over {n} lifetimes; issue 9 point 5 (open: {})",
            fd_listing().chars().take(600).collect::<String>()
        )
    });
    check(rss1 <= rss_limit(rss0), || {
        format!("{name}: RSS grew from {rss0} to {rss1} KiB over {n} lifetimes")
    });
}

fn spawn_with(m: StartMethod, i: u64) -> Result<(), String> {
    let p = Process::builder()
        .start_method(m)
        .spawn(i as u32, plus_one)
        .map_err(|e| e.to_string())?;
    match i % 3 {
        // Joined.
        0 => match join_for(&p, Duration::from_secs(30)) {
            Waited::Got(v) if v == i as u32 + 1 => Ok(()),
            other => Err(format!("join: {other:?}")),
        },
        // Polled with exitcode() until it ended, then dropped.
        1 => {
            if wait_for(Duration::from_secs(30), || p.exitcode().is_some()) {
                Ok(())
            } else {
                Err("exitcode() stayed None".into())
            }
        }
        // Dropped at once, unjoined: reaped in the background.
        _ => Ok(()),
    }
}

fn use_handles((c, q): (Connection<u64>, Queue<u64>)) -> u64 {
    let x = c.recv().unwrap_or(0);
    q.put(x + 1).expect("put");
    x
}

/// The soak itself.
pub fn soak() {
    let t_all = Instant::now();
    let fds_start = fd_count();
    let rss_start = rss_kib();
    for (m, n) in [
        (StartMethod::ForkServer, scale(1200, 60_000)),
        (StartMethod::Spawn, scale(150, 6_000)),
        (StartMethod::Fork, scale(1200, 60_000)),
    ] {
        phase(
            &format!("Process spawn/join/exitcode/drop ({m:?})"),
            n,
            |i| spawn_with(m, i),
        );
    }
    phase("Pool created, used and dropped", scale(40, 2_000), |i| {
        let pool = Pool::new(2).map_err(|e| e.to_string())?;
        let v = pool.map(plus_one, 0..64u32).map_err(|e| e.to_string())?;
        if i % 2 == 0 {
            pool.close();
            pool.join().map_err(|e| e.to_string())?;
        }
        if v.len() == 64 {
            Ok(())
        } else {
            Err("short map".into())
        }
    });
    let recycled = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .build()
        .expect("pool");
    phase(
        "max_tasks_per_child(1): recycled workers",
        scale(300, 20_000),
        |i| match recycled.apply(plus_one, i as u32) {
            Ok(v) if v == i as u32 + 1 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    drop(recycled);
    phase(
        "Queue and Pipe created and dropped",
        scale(2000, 100_000),
        |i| {
            let q: Queue<u64> = if i % 2 == 0 {
                Queue::new().map_err(|e| e.to_string())?
            } else {
                QueueBuilder::new()
                    .capacity_bytes(64 << 10)
                    .build()
                    .map_err(|e| e.to_string())?
            };
            q.put(i).map_err(|e| e.to_string())?;
            let (a, b) = Pipe::new::<u64>().map_err(|e| e.to_string())?;
            let (r, w) = Pipe::simplex::<u64>().map_err(|e| e.to_string())?;
            a.send(&i).map_err(|e| e.to_string())?;
            w.send(&i).map_err(|e| e.to_string())?;
            let ok = q.get().map_err(|e| e.to_string())? == i
                && b.recv().map_err(|e| e.to_string())? == i
                && r.recv().map_err(|e| e.to_string())? == i;
            if ok {
                Ok(())
            } else {
                Err("wrong value".into())
            }
        },
    );
    phase(
        "Handles (pipe + queue) passed to children",
        scale(200, 10_000),
        |i| {
            let (here, there) = Pipe::new::<u64>().map_err(|e| e.to_string())?;
            let q: Queue<u64> = QueueBuilder::new()
                .capacity_bytes(64 << 10)
                .build()
                .map_err(|e| e.to_string())?;
            let m = [
                StartMethod::ForkServer,
                StartMethod::Fork,
                StartMethod::ForkServer,
            ][i as usize % 3];
            let p = Process::builder()
                .start_method(m)
                .spawn((there, q.clone()), use_handles)
                .map_err(|e| e.to_string())?;
            here.send(&i).map_err(|e| e.to_string())?;
            let got = crate::compat::get_for(&q, Duration::from_secs(30));
            let joined = join_for(&p, Duration::from_secs(30));
            match (got, joined) {
                (Waited::Got(v), Waited::Got(x)) if v == i + 1 && x == i => Ok(()),
                (g, j) => Err(format!("{g:?} / {j:?}")),
            }
        },
    );
    settle();
    let fds_end = fd_count();
    let rss_end = rss_kib();
    row(
        "Soak",
        &[
            ("phase", "whole soak".into()),
            ("lifetimes", "-".into()),
            ("seconds", format!("{:.1}", t_all.elapsed().as_secs_f64())),
            ("errors", "-".into()),
            ("fds before", fds_start.to_string()),
            ("fds after", fds_end.to_string()),
            ("RSS KiB before", rss_start.to_string()),
            ("RSS KiB after", rss_end.to_string()),
        ],
    );
}

fn my_fds(_: ()) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// Children started the same way hold the same descriptors: fork-server children forked on
/// demand hold no extra status socket (ARCHITECTURE.md; issue 9 saw `[9, 10, 10, ...]`).
pub fn child_fds() {
    for m in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        // Several at once, so the fork server runs out of its spare and forks on demand.
        let ps: Vec<_> = (0..6)
            .filter_map(|_| Process::builder().start_method(m).spawn((), my_fds).ok())
            .collect();
        let counts: Vec<String> = ps
            .iter()
            .map(|p| match join_for(p, Duration::from_secs(30)) {
                Waited::Got(n) => n.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        row(
            "Descriptors in a child",
            &[("method", format!("{m:?}")), ("counts", counts.join(", "))],
        );
        // A Fork child inherits its running siblings' handles, neutralised but open (by
        // design, ARCHITECTURE.md "Fork"): its count grows with them; not compared.
        if m == StartMethod::Fork {
            continue;
        }
        let first = counts.first().cloned();
        check(counts.iter().all(|c| Some(c) == first.as_ref()), || {
            format!("{m:?}: children started the same way hold different descriptor counts {counts:?}; issue 9 point 5")
        });
    }
}
