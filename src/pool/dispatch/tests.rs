//! The pool's state machine driven with no processes: workers are fake (a socket pair for a
//! channel, no process), frames are built with the wire writers of `task.rs`, and the
//! assertions look at what `State` asks for (frames to send, workers to kill, starts) and
//! at what reaches the jobs. Every worker-death case of `README.md` has a row here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::connection::channel::{Channel, Frame};
use crate::context::StartMethod;
use crate::pool::task::{
    put_init_failed, put_ready, put_result, put_running, read_task, Cursor, Failure, ALL_OK,
};

fn cfg(task_timeout: Option<Duration>) -> Config {
    Config {
        processes: 2,
        method: StartMethod::Spawn,
        name: "test".into(),
        max_tasks: 0,
        task_timeout,
        init: None,
        tick: Duration::from_millis(1),
        beat: None,
        ignore_sigint: false,
        max_message: crate::codec::frame::DEFAULT_MAX_MESSAGE,
        progress: false,
        #[cfg(feature = "mpi")]
        cluster: None,
    }
}

/// Adds a ready worker with a fake connection.
fn add_worker(st: &mut State, id: u64) {
    let (chan, _peer) = Channel::pair().unwrap();
    let now = Instant::now();
    st.workers.push(Worker {
        id,
        conn: Arc::new(Conn {
            chan,
            process: None,
            #[cfg(feature = "mpi")]
            remote: None,
        }),
        status: Status::Ready,
        since: now,
        inflight: VecDeque::new(),
        bytes: 0,
        seq: 0,
        quota: u64::MAX,
        isolating: false,
        writing: false,
        running: None,
        timed_out: None,
        heard: now,
        exited: false,
    });
}

fn state(workers: u64) -> State {
    let mut st = State::new(crate::codec::frame::DEFAULT_MAX_MESSAGE);
    for id in 1..=workers {
        add_worker(&mut st, id);
    }
    st
}

fn task(job: u64, base: u64, elems: u32, arg_bytes: usize) -> Task {
    Task {
        job,
        base,
        lo: 0,
        hi: elems,
        entry: crate::pool::task::SealedEntry::seal(7),
        args: vec![0; arg_bytes],
        fds: Vec::new(),
        suspect: false,
    }
}

/// Queues `n` one-element tasks of `arg_bytes` for a new job; returns the job.
fn queue(st: &mut State, n: u64, arg_bytes: usize) -> u64 {
    let (job, _) = st.new_job();
    let tasks = (0..n).map(|i| task(job, i, 1, arg_bytes)).collect();
    st.submit(tasks, &mut Actions::default());
    job
}

/// Tasks per frame, by worker id.
fn tasks_per_worker(out: &[Outgoing]) -> Vec<(u64, usize)> {
    out.iter()
        .map(|o| {
            let mut cur = Cursor::new(&o.frame);
            let mut n = 0;
            while !cur.is_empty() {
                read_task(&mut cur).unwrap();
                n += 1;
            }
            (o.worker, n)
        })
        .collect()
}

fn worker(st: &State, id: u64) -> &Worker {
    st.workers.iter().find(|w| w.id == id).unwrap()
}

/// A frame from a worker with one RESULT record of one element.
fn result_frame() -> Frame {
    let mut payload = Vec::new();
    put_result(&mut payload, ALL_OK, 0, 1_000, &[1, 0]);
    Frame {
        payload,
        fds: Vec::new(),
        fds_lost: false,
    }
}

/// What job `job` has received: (first index, count, failure if any).
fn inbox(st: &State, job: u64) -> Vec<(u64, u32, Option<Error>)> {
    st.jobs[&job]
        .inbox
        .iter()
        .map(|d| match d {
            Delivery::Failed { index, count, why } => (*index, *count, Some(why.to_error())),
            Delivery::Data { index, count, .. } => (*index, *count, None),
        })
        .collect()
}

#[test]
fn an_unknown_function_gets_a_window_of_one() {
    let mut st = state(2);
    queue(&mut st, 10, 8);
    let out = st.dispatch();
    let mut per = tasks_per_worker(&out);
    per.sort_unstable();
    assert_eq!(per, vec![(1, 1), (2, 1)]);
    st.sent(out);
    assert!(st.dispatch().is_empty(), "windows are full");
    assert_eq!(st.queue.len(), 8);
}

#[test]
fn a_known_fast_function_gets_a_deep_window() {
    let mut st = state(2);
    st.estimates.insert(7, 1_000.0); // 1 µs per task: a window of 501
    queue(&mut st, 1000, 8);
    let out = st.dispatch();
    let mut per = tasks_per_worker(&out);
    per.sort_unstable();
    assert_eq!(per, vec![(1, 500), (2, 500)]);
    st.sent(out);
    // The window caps it: more work waits.
    queue(&mut st, 10, 8);
    let out = st.dispatch();
    assert_eq!(tasks_per_worker(&out).iter().map(|p| p.1).sum::<usize>(), 2);
}

#[test]
fn the_byte_budget_bounds_bytes_in_flight() {
    let mut st = state(2);
    st.estimates.insert(7, 1_000.0);
    queue(&mut st, 20, 30_000);
    let out = st.dispatch();
    for (_, n) in tasks_per_worker(&out) {
        assert_eq!(n, 3, "three 30 kB tasks fit the 96 KiB budget, not four");
    }
    st.sent(out);
    for w in &st.workers {
        assert!(w.bytes <= BUDGET, "{} bytes in flight", w.bytes);
    }
    assert!(st.dispatch().is_empty());
    // A task bigger than the budget goes alone, and only to an idle worker.
    let mut st = state(1);
    st.estimates.insert(7, 1_000.0);
    let job = queue(&mut st, 1, 8);
    let out = st.dispatch();
    st.sent(out);
    st.submit(vec![task(job, 1, 1, 200_000)], &mut Actions::default());
    assert!(st.dispatch().is_empty(), "the worker is busy");
    st.on_frame(1, result_frame(), Instant::now(), &mut Actions::default())
        .unwrap();
    let out = st.dispatch();
    assert_eq!(tasks_per_worker(&out), vec![(1, 1)]);
    assert!(worker(&st, 1).bytes > BUDGET);
}

#[test]
fn results_go_to_their_job_in_send_order() {
    let mut st = state(1);
    st.estimates.insert(7, 1_000.0);
    let job = queue(&mut st, 3, 8);
    let out = st.dispatch();
    st.sent(out);
    assert_eq!(worker(&st, 1).inflight.len(), 3);
    let mut acts = Actions::default();
    for _ in 0..3 {
        st.on_frame(1, result_frame(), Instant::now(), &mut acts)
            .unwrap();
    }
    let got: Vec<u64> = inbox(&st, job).iter().map(|d| d.0).collect();
    assert_eq!(got, vec![0, 1, 2]);
    assert!(st.jobs[&job].settled());
    assert_eq!(worker(&st, 1).bytes, 0);
    // A result for a task never sent is a protocol error, not a panic.
    assert!(st
        .on_frame(1, result_frame(), Instant::now(), &mut acts)
        .is_err());
}

/// One row of the worker-death table: what the dead worker held, what we knew, and what
/// must fail.
struct Death {
    name: &'static str,
    /// Elements per unanswered task.
    held: &'static [u32],
    /// A RUNNING notice for (task number, element).
    running: Option<(u64, u32)>,
    /// We killed it for a timeout of (task number, element).
    timed_out: Option<(u64, u32)>,
    /// The job index that fails, and how (None: nothing fails, all become suspects).
    fails: Option<(u64, ErrorKind)>,
    /// Tasks queued again (elements), and suspects.
    requeued: usize,
    suspects: usize,
}

const DEATHS: &[Death] = &[
    Death {
        name: "timeout of element 2 of a chunk of 4",
        held: &[4, 1],
        running: Some((0, 2)),
        timed_out: Some((0, 2)),
        fails: Some((2, ErrorKind::Timeout)),
        requeued: 4, // 0..2, 3..4 and the later task
        suspects: 0,
    },
    Death {
        name: "RUNNING notice names element 1",
        held: &[3, 2],
        running: Some((0, 1)),
        timed_out: None,
        fails: Some((1, ErrorKind::WorkerLost)),
        requeued: 4,
        suspects: 0,
    },
    Death {
        name: "a stale RUNNING notice (an earlier task) does not count",
        held: &[1, 1],
        running: Some((9, 0)),
        timed_out: None,
        fails: None,
        requeued: 0,
        suspects: 2,
    },
    Death {
        name: "a lone task of one element",
        held: &[1],
        running: None,
        timed_out: None,
        fails: Some((0, ErrorKind::WorkerLost)),
        requeued: 0,
        suspects: 0,
    },
    Death {
        name: "several small tasks, no notice: all suspects",
        held: &[1, 1, 2],
        running: None,
        timed_out: None,
        fails: None,
        requeued: 0,
        suspects: 4,
    },
];

#[test]
fn every_worker_death_case() {
    for d in DEATHS {
        let mut st = state(1);
        st.estimates.insert(7, 1_000.0);
        let (job, _) = st.new_job();
        let mut base = 0;
        let tasks = d
            .held
            .iter()
            .map(|&n| {
                let t = task(job, base, n, 8);
                base += n as u64;
                t
            })
            .collect();
        st.submit(tasks, &mut Actions::default());
        let out = st.dispatch();
        st.sent(out);
        assert_eq!(worker(&st, 1).inflight.len(), d.held.len(), "{}", d.name);
        if let Some((seq, elem)) = d.running {
            let mut payload = Vec::new();
            put_running(&mut payload, seq, elem, 5_000);
            let f = Frame {
                payload,
                fds: Vec::new(),
                fds_lost: false,
            };
            st.on_frame(1, f, Instant::now(), &mut Actions::default())
                .unwrap();
        }
        st.workers[0].timed_out = d.timed_out;
        let limit = Some(Duration::from_millis(300));
        st.on_death(1, Some(-9), limit, &mut Actions::default());
        assert!(st.workers.is_empty(), "{}", d.name);
        let got = inbox(&st, job);
        match d.fails {
            Some((index, kind)) => {
                assert_eq!(got.len(), 1, "{}: {got:?}", d.name);
                let (i, count, e) = &got[0];
                assert_eq!((*i, *count), (index, 1), "{}", d.name);
                let e = e.as_ref().unwrap();
                assert_eq!(e.kind(), kind, "{}: {e}", d.name);
                if kind == ErrorKind::WorkerLost {
                    assert_eq!(e.signal(), Some(9), "{}", d.name);
                }
            }
            None => assert!(got.is_empty(), "{}: {got:?}", d.name),
        }
        let queued: u32 = st.queue.iter().map(|t| t.hi - t.lo).sum();
        assert_eq!(queued as usize, d.requeued, "{}", d.name);
        assert_eq!(st.suspects.len(), d.suspects, "{}", d.name);
        assert!(st.suspects.iter().all(|t| t.suspect && t.hi - t.lo == 1));
        // Every element is accounted for: failed, queued again or suspect.
        let total: u32 = d.held.iter().sum();
        let failed = u32::from(d.fails.is_some());
        assert_eq!(
            queued + st.suspects.len() as u32 + failed,
            total,
            "{}",
            d.name
        );
        let pending = st.jobs[&job].pending;
        assert_eq!(pending, st.queue.len() + st.suspects.len(), "{}", d.name);
    }
}

#[test]
fn suspects_run_alone_on_idle_workers_and_a_repeat_names_the_culprit() {
    let mut st = state(2);
    st.estimates.insert(7, 1_000.0);
    // Worker 1 takes three small tasks (worker 2 is still starting)...
    st.workers[1].status = Status::Starting;
    let (job, _) = st.new_job();
    st.submit(
        (0..3).map(|i| task(job, i, 1, 8)).collect(),
        &mut Actions::default(),
    );
    let out = st.dispatch();
    assert_eq!(tasks_per_worker(&out), vec![(1, 3)]);
    st.sent(out);
    // ...worker 2 gets other work...
    st.workers[1].status = Status::Ready;
    let other = queue(&mut st, 10, 8);
    let out = st.dispatch();
    st.sent(out);
    assert!(!worker(&st, 2).inflight.is_empty());
    // ...and worker 1 dies within a tick: each task it held becomes a suspect.
    let held = worker(&st, 1).inflight.len();
    assert!(held >= 3);
    st.on_death(1, Some(-6), None, &mut Actions::default());
    assert_eq!(st.suspects.len(), held);
    add_worker(&mut st, 3);
    let out = st.dispatch();
    // Only the idle new worker gets a suspect, alone; the busy one gets none.
    let per = tasks_per_worker(&out);
    assert!(per.contains(&(3, 1)), "{per:?}");
    assert!(worker(&st, 3).isolating);
    assert_eq!(worker(&st, 3).inflight.len(), 1);
    assert_eq!(st.suspects.len(), held - 1);
    st.sent(out);
    assert!(st.dispatch().iter().all(|o| o.worker != 3), "isolated");
    // The suspect kills worker 3 too: a lone task, so it is named.
    let suspect_index = worker(&st, 3).inflight[0].task.base;
    let suspect_job = worker(&st, 3).inflight[0].task.job;
    st.on_death(3, Some(-6), None, &mut Actions::default());
    let failed: Vec<_> = inbox(&st, suspect_job)
        .into_iter()
        .filter(|d| d.2.is_some())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, suspect_index);
    assert_eq!(failed[0].2.as_ref().unwrap().signal(), Some(6));
    // Nothing else failed.
    let all_failed = [job, other]
        .iter()
        .flat_map(|&j| inbox(&st, j))
        .filter(|d| d.2.is_some())
        .count();
    assert_eq!(all_failed, 1);
}

#[test]
fn deadlines_kill_frozen_and_over_time_workers() {
    let limit = Duration::from_millis(500);
    let c = cfg(Some(limit));
    let now = Instant::now();
    let mut st = state(3);
    queue(&mut st, 3, 8);
    let out = st.dispatch();
    st.sent(out);
    // 1: silent for longer than the limit (frozen); 2: heard from recently, element over
    // time; 3: heard from recently, within its limit.
    st.workers[0].heard = now - Duration::from_millis(600);
    let seq2 = st.workers[1].inflight[0].seq;
    st.workers[1].running = Some((seq2, 0, now - Duration::from_millis(700)));
    let mut acts = Actions::default();
    let next = st.check_deadlines(&c, now, &mut acts);
    let killed: Vec<u64> = acts.kill.iter().map(|k| k.0).collect();
    assert_eq!(killed, vec![1, 2]);
    assert!(st.workers[0].timed_out.is_some() && st.workers[1].timed_out.is_some());
    assert!(st.workers[2].timed_out.is_none());
    let next = next.expect("worker 3 has a deadline");
    assert!(next <= now + limit, "{:?}", next - now);
    // The killed frozen worker's task fails with Timeout when its death is seen.
    let job = st.workers[0].inflight[0].task.job;
    st.on_death(1, Some(-9), Some(limit), &mut Actions::default());
    let got = inbox(&st, job);
    assert_eq!(got[0].2.as_ref().unwrap().kind(), ErrorKind::Timeout);
    // Without a task_timeout nobody is killed and nothing wakes the pool thread.
    let mut st = state(1);
    queue(&mut st, 1, 8);
    let out = st.dispatch();
    st.sent(out);
    st.workers[0].heard = now - Duration::from_secs(3600);
    let mut acts = Actions::default();
    assert_eq!(st.check_deadlines(&cfg(None), now, &mut acts), None);
    assert!(acts.kill.is_empty());
}

#[test]
fn stuck_starts_and_exits_are_killed() {
    let now = Instant::now();
    let mut st = state(2);
    st.workers[0].status = Status::Starting;
    st.workers[0].since = now - START_TIMEOUT - Duration::from_secs(1);
    st.workers[1].status = Status::Draining;
    st.workers[1].since = now;
    let mut acts = Actions::default();
    let next = st.check_deadlines(&cfg(None), now, &mut acts);
    assert_eq!(acts.kill.iter().map(|k| k.0).collect::<Vec<_>>(), vec![1]);
    assert_eq!(next, Some(now + EXIT_GRACE));
}

#[test]
fn starts_replace_missing_workers_once() {
    let c = cfg(None);
    let mut st = state(0);
    assert_eq!(st.plan_starts(&c), 2);
    assert_eq!(st.plan_starts(&c), 0, "already launching");
    st.launching = 0;
    add_worker(&mut st, 1);
    st.workers[0].exited = true;
    assert_eq!(st.plan_starts(&c), 2, "an exited worker is being replaced");
    st.phase = Phase::Closed;
    st.launching = 0;
    assert_eq!(st.plan_starts(&c), 0, "closed and idle");
}

#[test]
fn init_failure_breaks_the_pool_and_ready_resets_the_back_off() {
    let mut st = state(1);
    st.workers[0].status = Status::Starting;
    st.init_deaths = 3;
    let mut payload = Vec::new();
    put_ready(&mut payload);
    let ready = Frame {
        payload,
        fds: Vec::new(),
        fds_lost: false,
    };
    st.on_frame(1, ready, Instant::now(), &mut Actions::default())
        .unwrap();
    assert_eq!(st.workers[0].status, Status::Ready);
    assert_eq!(st.init_deaths, 0);
    // A worker killed while starting counts for the back-off, and breaks nothing.
    add_worker(&mut st, 2);
    st.workers[1].status = Status::Starting;
    st.on_death(2, Some(-9), None, &mut Actions::default());
    assert_eq!(st.init_deaths, 1);
    assert!(st.broken.is_none());
    // An initializer that fails breaks the pool.
    add_worker(&mut st, 3);
    let job = queue(&mut st, 2, 8);
    let mut payload = Vec::new();
    let f = Failure::Panicked {
        message: "no db".into(),
        location: None,
    };
    put_init_failed(&mut payload, &f);
    let failed = Frame {
        payload,
        fds: Vec::new(),
        fds_lost: false,
    };
    let mut acts = Actions::default();
    st.on_frame(3, failed, Instant::now(), &mut acts).unwrap();
    assert!(st.broken.is_some());
    assert_eq!(acts.kill.len(), 2, "every worker is to be killed");
    assert!(inbox(&st, job).iter().all(|d| d
        .2
        .as_ref()
        .is_some_and(|e| e.kind() == ErrorKind::Panicked)));
}

#[test]
fn dropping_and_cancelling_jobs() {
    let mut st = state(1);
    // A dropped AsyncResult: its queued task still runs.
    let kept = queue(&mut st, 1, 8);
    st.abandon(kept, false);
    assert_eq!(st.queue.len(), 1);
    // A dropped IMap: its queued tasks are cancelled.
    let gone = queue(&mut st, 3, 8);
    st.abandon(gone, true);
    assert_eq!(st.queue.len(), 1);
    assert!(!st.jobs.contains_key(&gone));
    // cancel: only while every task is queued.
    let out = st.dispatch();
    st.sent(out);
    assert!(!st.cancel(kept, &mut Actions::default()), "it was sent");
    let queued = queue(&mut st, 2, 8);
    assert!(st.cancel(queued, &mut Actions::default()));
    assert!(st.queue.iter().all(|t| t.job != queued));
    let got = inbox(&st, queued);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, 2);
    assert_eq!(got[0].2.as_ref().unwrap().kind(), ErrorKind::Cancelled);
    assert!(!st.cancel(queued, &mut Actions::default()), "once");
}

#[test]
fn frames_stay_under_max_message_size() {
    let mut st = State::new(100_000);
    add_worker(&mut st, 1);
    st.estimates.insert(7, 1_000.0);
    queue(&mut st, 3, 40_000);
    let out = st.dispatch();
    assert_eq!(tasks_per_worker(&out), vec![(1, 2)]);
    assert!(out[0].frame.len() <= 100_000);
    assert_eq!(
        Why::too_large(100_000, 100_000).map(|w| w.to_error().kind()),
        Some(ErrorKind::TooLarge)
    );
    assert!(Why::too_large(1_000, 100_000).is_none());
}

/// A worker lost with its MPI rank: every unanswered task runs again, none fails, and a
/// lone one-element task (which a local death would blame) is not blamed.
#[cfg(feature = "mpi")]
#[test]
fn a_worker_lost_with_its_host_gives_every_task_back() {
    for held in [vec![1u32], vec![3, 1, 2]] {
        let mut st = state(1);
        st.estimates.insert(7, 1_000.0);
        let (job, _) = st.new_job();
        let mut base = 0;
        let tasks = held
            .iter()
            .map(|&n| {
                let t = task(job, base, n, 8);
                base += n as u64;
                t
            })
            .collect();
        st.submit(tasks, &mut Actions::default());
        let out = st.dispatch();
        st.sent(out);
        assert_eq!(worker(&st, 1).inflight.len(), held.len());
        st.on_host_lost(1);
        st.on_death(1, None, None, &mut Actions::default());
        assert!(st.workers.is_empty());
        assert!(inbox(&st, job).is_empty(), "{held:?}");
        let queued: Vec<(u64, u32, u32)> = st.queue.iter().map(|t| (t.base, t.lo, t.hi)).collect();
        let want: Vec<(u64, u32, u32)> = {
            let mut b = 0;
            held.iter()
                .map(|&n| {
                    let r = (b, 0, n);
                    b += n as u64;
                    r
                })
                .collect()
        };
        assert_eq!(queued, want, "in order, whole");
        assert_eq!(st.jobs[&job].pending, held.len());
    }
}
