//! Resource limits: out of descriptors (`RLIMIT_NOFILE` 64) gives clear, typed errors, never a
//! crash or a hang, and everything works again once descriptors are free; under `RLIMIT_AS`
//! a frame or queue item announcing 1 GiB is an error, not an abort.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use multiproc::{Connection, ErrorKind, Pipe, Pool, Process, Queue, QueueBuilder, StartMethod};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::compat::{join_for, recv_for, Waited};
use crate::util::{bounded, check, fail, fd_count, frame, raw_send, row, status_kib};

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// An error whose message says what ran out (descriptors) — not just "operating-system
/// error" with the cause left to its source, and not something misleading.
fn clear_fd_error(e: &multiproc::Error) -> bool {
    let m = e.to_string().to_lowercase();
    !m.contains("more file descriptors than one frame")
        && (m.contains("file descriptors") || m.contains("too many open files"))
}

fn fill_fds() -> Vec<OwnedFd> {
    let mut v = Vec::new();
    let null = std::fs::File::open("/dev/null").ok();
    if let Some(n) = &null {
        while let Ok(fd) = n.as_fd().try_clone_to_owned() {
            v.push(fd);
            if v.len() > 100_000 {
                break;
            }
        }
    }
    v
}

/// `RLIMIT_NOFILE` 64.
pub fn nofile() {
    let lim = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(64),
            maximum: lim.maximum,
        },
    )
    .expect("setrlimit");
    let baseline = fd_count();
    // 1. Processes under every start method until the table is full.
    for m in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        let mut kept = Vec::new();
        let mut err = None;
        // The fork server that served the first child must serve to the end: running out of
        // descriptors never kills it (a restarted one would have a new pid).
        let mut server = None;
        for _ in 0..200 {
            let r = std::panic::catch_unwind(|| {
                Process::builder()
                    .start_method(m)
                    .spawn(60_000u64, sleep_ms)
            });
            match r {
                Ok(Ok(p)) => {
                    kept.push(p);
                    if server.is_none() {
                        server = multiproc::__chaos::fork_server_pid();
                    }
                }
                Ok(Err(e)) => {
                    err = Some(e);
                    break;
                }
                Err(_) => {
                    fail(format!(
                        "{m:?}: Process::spawn panicked when out of descriptors"
                    ));
                    break;
                }
            }
        }
        let n = kept.len();
        let msg = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
        // (A kill fails for a child the fork server refused: there is none.)
        for p in &kept {
            let _ = p.kill();
        }
        let mut hung = 0;
        // A child the fork server could not make (it ran out of descriptors first: it
        // inherited the same limit) must say so at `join`, never look like a hang-up.
        let mut refused = 0;
        let mut unclear = Vec::new();
        let mut joins: std::collections::BTreeMap<String, usize> = Default::default();
        for p in &kept {
            let j = join_for(p, Duration::from_secs(20));
            let kind = match &j {
                Waited::Failed(e) => format!("{:?}({:?})", e.kind(), e.exit_code().or(e.signal())),
                other => format!("{other:?}"),
            };
            *joins.entry(kind).or_default() += 1;
            match j {
                Waited::TimedOut => hung += 1,
                Waited::Failed(e) if e.kind() == ErrorKind::Io && clear_fd_error(&e) => {
                    refused += 1
                }
                Waited::Failed(e) if matches!(e.kind(), ErrorKind::Killed | ErrorKind::Exited) => {}
                Waited::Failed(e) => unclear.push(format!("{:?}: {e}", e.kind())),
                Waited::Got(()) => unclear.push("returned after kill()".into()),
            }
        }
        // Still alive after kill and join: a child we lost track of (say, its Hello was lost
        // when this process ran out of descriptors) runs on.
        let unkillable = kept.iter().filter(|p| p.is_alive()).count();
        drop(kept);
        let recovered = match Process::builder()
            .start_method(m)
            .spawn(20u32, |x: u32| x + 1)
        {
            Ok(p) => match join_for(&p, Duration::from_secs(30)) {
                Waited::Got(v) => Ok(v),
                other => Err(format!("{other:?}")),
            },
            Err(e) => Err(format!(
                "spawn: {e} ({:?})",
                std::error::Error::source(&e).map(|s| s.to_string())
            )),
        };
        let rec = recovered == Ok(21);
        let server_after = multiproc::__chaos::fork_server_pid();
        row(
            "RLIMIT_NOFILE 64",
            &[
                ("what", format!("Process::spawn ({m:?})")),
                ("made before the error", n.to_string()),
                (
                    "error",
                    err.as_ref()
                        .map(crate::util::describe)
                        .unwrap_or_else(|| "none".into()),
                ),
                ("joins hung", hung.to_string()),
                ("refused by the fork server (join)", refused.to_string()),
                (
                    "joins",
                    joins
                        .iter()
                        .map(|(k, n)| format!("{k}:{n}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                ("alive after kill and join", unkillable.to_string()),
                ("works again after", rec.to_string()),
            ],
        );
        check(err.is_some(), || {
            format!("{m:?}: 200 children held at 64 descriptors?")
        });
        if let Some(e) = &err {
            // Every method names the limit, including a fork server that ran out before this
            // process did (it inherited the same 64): its refusal is what `spawn` reports when
            // the server closed the child's stream before the task was sent.
            check(e.kind() == ErrorKind::Io && clear_fd_error(e), || {
                format!(
                    "{m:?}: out of descriptors reported as {:?}: {msg}",
                    e.kind()
                )
            });
        }
        check(unclear.is_empty(), || {
            format!("{m:?}: joins of children made at the limit failed unclearly: {unclear:?}")
        });
        if m == StartMethod::ForkServer {
            check(server.is_some() && server_after == server, || {
                format!(
                    "the fork server did not survive running out of descriptors: pid {server:?} \
                     at the first child, {server_after:?} after"
                )
            });
        }
        check(hung == 0, || {
            format!("{m:?}: {hung} joins of killed children hung")
        });
        check(unkillable == 0, || {
            format!("{m:?}: {unkillable} children are still alive after kill() and join (their pid never reached us?)")
        });
        check(rec, || {
            format!("{m:?}: spawning does not work again once descriptors are free: {recovered:?}")
        });
    }
    // 2. Pipes and queues until the table is full.
    let mut pipes = Vec::new();
    let pipe_err = loop {
        match Pipe::new::<u8>() {
            Ok(p) => pipes.push(p),
            Err(e) => break e,
        }
        if pipes.len() > 1000 {
            break multiproc::Error::from(std::io::Error::other("no limit"));
        }
    };
    let mut queues = Vec::new();
    let queue_err = loop {
        match QueueBuilder::<u8>::new().capacity_bytes(64 << 10).build() {
            Ok(q) => queues.push(q),
            Err(e) => break e,
        }
        if queues.len() > 1000 {
            break multiproc::Error::from(std::io::Error::other("no limit"));
        }
    };
    // 3. A pool while nothing is free.
    let pool = bounded(Duration::from_secs(30), || {
        Pool::new(2).map(|p| {
            let r = p.map(|x: u32| x, 0..10u32);
            drop(p);
            r.map(|v| v.len())
        })
    });
    row(
        "RLIMIT_NOFILE 64",
        &[
            ("what", "Pipe::new / Queue / Pool::new (table full)".into()),
            (
                "made before the error",
                format!("{} pipes, {} queues", pipes.len(), queues.len()),
            ),
            (
                "error",
                format!(
                    "pipe {}; queue {}; pool {:?}",
                    crate::util::describe(&pipe_err),
                    crate::util::describe(&queue_err),
                    pool.as_ref()
                        .map(|r| r.as_ref().map_err(crate::util::describe))
                ),
            ),
        ],
    );
    check(
        pipe_err.kind() == ErrorKind::Io && clear_fd_error(&pipe_err),
        || {
            format!(
                "Pipe::new out of descriptors: {:?} {pipe_err}",
                pipe_err.kind()
            )
        },
    );
    check(queue_err.kind() == ErrorKind::Io, || {
        format!(
            "Queue out of descriptors: {:?} {queue_err}",
            queue_err.kind()
        )
    });
    match &pool {
        None => fail("Pool::new hung with the descriptor table full"),
        Some(Ok(Ok(_))) => {}
        Some(Ok(Err(e))) | Some(Err(e)) => {
            check(
                matches!(e.kind(), ErrorKind::Io | ErrorKind::WorkerLost),
                || format!("Pool with the table full: {:?} {e}", e.kind()),
            );
        }
    }
    drop(pipes);
    drop(queues);
    // 4. Receiving a handle with no descriptor free.
    let (a, b) = Pipe::new::<Connection<u8>>().expect("pipe");
    let (x, y) = Pipe::new::<u8>().expect("pipe");
    a.send(&x).expect("send a handle");
    drop(x);
    let fillers = fill_fds();
    let r = b.recv_timeout(Duration::from_secs(5));
    drop(fillers);
    let msg = match &r {
        Ok(_) => "received".to_string(),
        Err(e) => crate::util::describe(e),
    };
    row(
        "RLIMIT_NOFILE 64",
        &[
            (
                "what",
                "recv of a frame with a descriptor, table full".into(),
            ),
            ("error", msg.clone()),
        ],
    );
    if let Err(e) = &r {
        check(!e.is_timeout() && clear_fd_error(e), || {
            format!(
                "running out of descriptors while receiving is reported as {msg}; issue 9 point 6"
            )
        });
    }
    // The stream goes on: only that message was lost.
    let (x2, _y2) = Pipe::new::<u8>().expect("pipe");
    let again = a
        .send(&x2)
        .and_then(|()| b.recv_timeout(Duration::from_secs(5)));
    row(
        "RLIMIT_NOFILE 64",
        &[
            (
                "what",
                "the next handle on the same stream, table free".into(),
            ),
            (
                "error",
                again
                    .as_ref()
                    .map_or_else(crate::util::describe, |_| "received".into()),
            ),
        ],
    );
    check(again.is_ok(), || {
        format!("after a message whose descriptors were lost, the stream gives {again:?}")
    });
    drop((a, b, y, r, again, x2, _y2));
    // 5. Everything works again, and nothing leaked.
    let works = (|| -> multiproc::Result<bool> {
        let (p, q) = Pipe::new::<u32>()?;
        p.send(&5)?;
        let pipe_ok = q.recv()? == 5;
        let qu: Queue<u32> = QueueBuilder::new().capacity_bytes(64 << 10).build()?;
        qu.put(3).map_err(multiproc::Error::from)?;
        let queue_ok = qu.get()? == 3;
        let pool = Pool::new(2)?;
        let pool_ok = pool.map(|x: u32| x + 1, 0..100u32)?.len() == 100;
        Ok(pipe_ok && queue_ok && pool_ok)
    })();
    std::thread::sleep(Duration::from_millis(300));
    let _ = multiproc::active_children();
    let after = fd_count();
    row(
        "RLIMIT_NOFILE 64",
        &[
            ("what", "after: pipe, queue, pool".into()),
            ("error", format!("{works:?}")),
            ("fds before/after", format!("{baseline} / {after}")),
        ],
    );
    check(matches!(works, Ok(true)), || {
        format!("no recovery once descriptors are free: {works:?}")
    });
    // The fork server's stream and the lifeline stay open by design.
    check(after <= baseline + 4, || {
        format!(
            "descriptors leaked under the limit: {baseline} before, {after} after: {}",
            crate::util::fd_listing()
        )
    });
}

const AS_CASES: [&str; 5] = [
    "duplex: 1 GiB announced, 4 bytes sent, writer open, recv_timeout(300 ms)",
    "duplex: 1 GiB announced, 4 bytes sent, writer closed, recv",
    "duplex: 1 GiB announced, 4 bytes sent, writer closed, recv_bytes",
    "simplex: 1 GiB announced, 4 bytes sent, writer closed, recv",
    "queue: first chunk announces 1 GiB, get_timeout(300 ms)",
];

/// `RLIMIT_AS` a few hundred MiB above what we use: each 1 GiB announcement (one victim
/// process per case) is an error, not an abort (issue 9 point 11).
pub fn address_space() {
    for (i, what) in AS_CASES.iter().enumerate() {
        let run = crate::util::run_role(
            "victim_as",
            &[("CHAOS_CASE", i.to_string())],
            Duration::from_secs(30),
        );
        let said = run
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("AS RESULT "))
            .map(str::to_string);
        let limit = run
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("AS LIMIT "))
            .unwrap_or("")
            .to_string();
        let result = match (&run.status, &said) {
            (Some(st), Some(r)) if st.success() => r.clone(),
            (Some(st), _) => {
                let last = run
                    .stderr_tail
                    .lines()
                    .find(|l| l.contains("memory allocation"))
                    .unwrap_or("")
                    .to_string();
                fail(format!(
                    "{what}: the receiver died ({st}) {last}; issue 9 point 11"
                ));
                format!("died: {st} {last}")
            }
            (None, _) => {
                fail(format!("{what}: the receiver hung"));
                "hung".into()
            }
        };
        row(
            "RLIMIT_AS",
            &[
                ("case", what.to_string()),
                ("limit", limit),
                ("result", result.chars().take(140).collect()),
            ],
        );
        crate::util::sweep_leftovers(Duration::from_millis(500));
    }
}

/// One `RLIMIT_AS` case (`CHAOS_CASE`), in its own process.
pub fn victim_as() {
    let case: usize = std::env::var("CHAOS_CASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (w, r) = Pipe::new::<Vec<u8>>().expect("pipe");
    let (sr, sw) = Pipe::simplex::<Vec<u8>>().expect("simplex");
    let q: Queue<Vec<u8>> = QueueBuilder::new()
        .capacity_bytes(64 << 10)
        .build()
        .expect("queue");
    let vm = status_kib("VmSize") * 1024;
    let limit = vm + (384 << 20);
    setrlimit(
        Resource::As,
        Rlimit {
            current: Some(limit),
            maximum: getrlimit(Resource::As).maximum,
        },
    )
    .expect("setrlimit AS");
    println!("AS LIMIT VmSize {} MiB + 384 MiB", vm >> 20);
    let big = frame(0, 1 << 30, &[1, 2, 3, 4]);
    let result = match case {
        0 => {
            raw_send(w.as_fd(), &big, &[]);
            format!("{:?}", recv_for(&r, Duration::from_millis(300)))
        }
        1 => {
            raw_send(w.as_fd(), &big, &[]);
            drop(w);
            format!("{:?}", r.recv().map(|v| v.len()).map_err(|e| e.kind()))
        }
        2 => {
            raw_send(w.as_fd(), &big, &[]);
            drop(w);
            format!(
                "{:?}",
                r.recv_bytes().map(|v| v.len()).map_err(|e| e.kind())
            )
        }
        3 => {
            raw_send(sw.as_fd(), &big, &[]);
            drop(sw);
            format!("{:?}", sr.recv().map(|v| v.len()).map_err(|e| e.kind()))
        }
        _ => match crate::hostile::forge_first_chunk(&q, 1 << 30, true) {
            Ok(()) => {
                let q2 = q.clone();
                bounded(Duration::from_secs(5), move || {
                    format!(
                        "{:?}",
                        crate::compat::get_for(&q2, Duration::from_millis(300))
                    )
                })
                .unwrap_or_else(|| "get_timeout(300 ms) did not return within 5 s".into())
            }
            Err(e) => format!("could not forge the item: {e}"),
        },
    };
    println!("AS RESULT {}", result.replace('\n', " "));
}
