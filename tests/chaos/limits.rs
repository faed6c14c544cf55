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

/// A message that says what ran out, not something misleading.
fn clear_fd_error(msg: &str) -> bool {
    let m = msg.to_lowercase();
    !m.contains("more file descriptors than one frame")
        && (m.contains("descriptor") || m.contains("too many open files") || m.contains("emfile"))
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
        for _ in 0..200 {
            let r = std::panic::catch_unwind(|| {
                Process::builder()
                    .start_method(m)
                    .spawn(60_000u64, sleep_ms)
            });
            match r {
                Ok(Ok(p)) => kept.push(p),
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
        for p in &kept {
            let _ = p.kill();
        }
        let mut hung = 0;
        for p in &kept {
            if matches!(join_for(p, Duration::from_secs(20)), Waited::TimedOut) {
                hung += 1;
            }
        }
        drop(kept);
        let recovered = Process::builder()
            .start_method(m)
            .spawn(20u32, |x: u32| x + 1)
            .ok()
            .map(|p| join_for(&p, Duration::from_secs(30)));
        let rec = matches!(recovered, Some(Waited::Got(21)));
        row(
            "RLIMIT_NOFILE 64",
            &[
                ("what", format!("Process::spawn ({m:?})")),
                ("made before the error", n.to_string()),
                (
                    "error",
                    err.as_ref()
                        .map(|e| format!("{:?}: {}", e.kind(), e))
                        .unwrap_or_else(|| "none".into()),
                ),
                ("joins hung", hung.to_string()),
                ("works again after", rec.to_string()),
            ],
        );
        check(err.is_some(), || {
            format!("{m:?}: 200 children held at 64 descriptors?")
        });
        if let Some(e) = &err {
            check(e.kind() == ErrorKind::Io && clear_fd_error(&msg), || {
                format!(
                    "{m:?}: out of descriptors reported as {:?}: {msg}",
                    e.kind()
                )
            });
        }
        check(hung == 0, || {
            format!("{m:?}: {hung} joins of killed children hung")
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
                    "pipe {:?}: {pipe_err}; queue {:?}: {queue_err}; pool {:?}",
                    pipe_err.kind(),
                    queue_err.kind(),
                    pool.as_ref().map(|r| r.as_ref().map_err(|e| e.kind()))
                ),
            ),
        ],
    );
    check(
        pipe_err.kind() == ErrorKind::Io && clear_fd_error(&pipe_err.to_string()),
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
        Err(e) => format!("{:?}: {e}", e.kind()),
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
        check(!e.is_timeout() && clear_fd_error(&e.to_string()), || {
            format!(
                "running out of descriptors while receiving is reported as {msg}; issue 9 point 6"
            )
        });
    }
    drop((a, b, y, r));
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

/// `RLIMIT_AS` a few hundred MiB above what we use: 1 GiB announcements are errors.
pub fn address_space() {
    let (w, r) = Pipe::new::<Vec<u8>>().expect("pipe");
    let (w2, r2) = Pipe::new::<Vec<u8>>().expect("pipe");
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
    row(
        "RLIMIT_AS",
        &[
            ("case", "limit".into()),
            (
                "result",
                format!("VmSize {} MiB, limit {} MiB", vm >> 20, limit >> 20),
            ),
        ],
    );
    let big = frame(0, 1 << 30, &[1, 2, 3, 4]);
    // Connection::recv_timeout with the writer still open.
    raw_send(w.as_fd(), &big, &[]);
    let res = recv_for(&r, Duration::from_millis(300));
    row(
        "RLIMIT_AS",
        &[
            (
                "case",
                "duplex: 1 GiB announced, 4 bytes sent, recv_timeout(300 ms)".into(),
            ),
            ("result", format!("{res:?}").chars().take(120).collect()),
        ],
    );
    check(!res.is_got(), || "a 4-byte body became a value".into());
    drop(w);
    let res = r.recv();
    row(
        "RLIMIT_AS",
        &[
            ("case", "duplex: then the writer closes, recv".into()),
            (
                "result",
                format!("{:?}", res.as_ref().map_err(|e| e.kind())),
            ),
        ],
    );
    check(res.is_err(), || {
        "a truncated 1 GiB frame became a value".into()
    });
    // recv_bytes
    raw_send(w2.as_fd(), &big, &[]);
    drop(w2);
    let res = r2.recv_bytes();
    row(
        "RLIMIT_AS",
        &[
            (
                "case",
                "duplex: recv_bytes of a truncated 1 GiB frame".into(),
            ),
            (
                "result",
                format!("{:?}", res.as_ref().map(|v| v.len()).map_err(|e| e.kind())),
            ),
        ],
    );
    // One-way pipe.
    raw_send(sw.as_fd(), &big, &[]);
    drop(sw);
    let res = sr.recv();
    row(
        "RLIMIT_AS",
        &[
            ("case", "simplex: recv of a truncated 1 GiB frame".into()),
            (
                "result",
                format!("{:?}", res.as_ref().map(|v| v.len()).map_err(|e| e.kind())),
            ),
        ],
    );
    // A queue item whose first chunk announces 1 GiB.
    match crate::hostile::forge_first_chunk(&q, 1 << 30, true) {
        Ok(()) => {
            let q2 = q.clone();
            let res = bounded(Duration::from_secs(5), move || {
                crate::compat::get_for(&q2, Duration::from_millis(300))
            });
            row(
                "RLIMIT_AS",
                &[
                    (
                        "case",
                        "queue: first chunk announces 1 GiB, get_timeout(300 ms)".into(),
                    ),
                    ("result", format!("{res:?}").chars().take(120).collect()),
                ],
            );
        }
        Err(e) => fail(format!("could not forge the queue item: {e}")),
    }
    println!("NOTE survived every 1 GiB announcement under RLIMIT_AS");
}
