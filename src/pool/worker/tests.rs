//! A real worker process fed forged frames: an entry whose seal does not match is refused
//! (a clear `BadEntry` failure, nothing runs), in an INIT frame and in a TASK frame, and the
//! worker goes on serving well-sealed tasks.

use std::time::{Duration, Instant};

use super::*;
use crate::pool::task::{
    chunk_entry, init_entry, put_init, put_task_header, read_from_worker, FromWorker, FAILED,
};
use crate::process::Process;

fn double(x: u32) -> u32 {
    x * 2
}

fn init_that_panics(_: ()) {
    panic!("the initializer ran")
}

fn chunk_of<F: Fn(u32) -> u32 + Copy + Send + 'static>(_: F) -> SealedEntry {
    SealedEntry::of(chunk_entry::<F, u32, u32>())
}

fn init_of<F: Fn(()) + Copy + Send + 'static>(_: F) -> SealedEntry {
    SealedEntry::of(init_entry::<F, (), ()>())
}

/// A worker process and our end of its channel.
fn start_worker() -> (Channel, Process<()>) {
    let (ours, theirs) = crate::fdreg::socketpair().unwrap();
    let args = WorkerArgs {
        chan: ChanFd(theirs),
        max_tasks: 0,
        tick_us: 1000,
        beat_us: 0,
        ignore_sigint: false,
        max_message: 1 << 20,
    };
    let p = Process::builder()
        .name("forged-frames")
        .daemon(true)
        .spawn(args, worker_main)
        .unwrap();
    let chan = Channel::new(ours);
    chan.set_max_message(1 << 20);
    (chan, p)
}

/// Bytes 1..9 of a record naming an entry are its offset, 9..17 its seal (`task.rs`).
fn forge(record: &mut [u8], offset: u64, seal: u64) {
    record[1..9].copy_from_slice(&offset.to_le_bytes());
    record[9..17].copy_from_slice(&seal.to_le_bytes());
}

/// A TASK record of the elements `xs` (all of them), with `entry` if given.
fn task_record(entry: Option<SealedEntry>, xs: &[u32]) -> Vec<u8> {
    let mut args = Vec::new();
    codec::encode(&xs.to_vec(), &mut args, &mut Vec::new()).unwrap();
    let mut rec = Vec::new();
    put_task_header(&mut rec, entry, 0, args.len(), 0, xs.len() as u32);
    rec.extend_from_slice(&args);
    rec
}

/// What one RESULT said: the values, or the failure of the whole task.
#[derive(Debug)]
enum Answer {
    Values(Vec<Result<u32, Failure>>),
    Failed(Failure),
    InitFailed(Failure),
    Ready,
}

/// The next `n` answers (RUNNING notices skipped), each read within 30 s.
fn answers(chan: &Channel, n: usize) -> Vec<Answer> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n {
        let frame = chan.recv_frame(Some(deadline)).expect("an answer in time");
        let mut cur = Cursor::new(&frame.payload);
        while !cur.is_empty() {
            match read_from_worker(&mut cur).unwrap() {
                FromWorker::Result {
                    status, start, len, ..
                } => {
                    let bytes = &frame.payload[start..start + len];
                    got.push(if status == FAILED {
                        Answer::Failed(codec::decode(bytes, Vec::new()).unwrap())
                    } else {
                        Answer::Values(codec::decode(bytes, Vec::new()).unwrap())
                    });
                }
                FromWorker::InitFailed(f) => got.push(Answer::InitFailed(f)),
                FromWorker::Ready => got.push(Answer::Ready),
                FromWorker::Running { .. } | FromWorker::Alive => {}
            }
        }
    }
    got
}

fn is_refusal(f: &Failure) -> bool {
    matches!(f, Failure::BadEntry(m) if m.contains("not sealed"))
        && f.to_error().kind() == crate::ErrorKind::Protocol
}

#[test]
fn a_forged_entry_in_an_init_frame_is_refused() {
    let good = init_of(init_that_panics);
    for (offset, seal) in [
        (good.offset, good.seal ^ 1),
        (good.offset.wrapping_add(16), good.seal),
        (0x1234_5678, 0),
    ] {
        let (chan, p) = start_worker();
        let mut init = Vec::new();
        put_init(&mut init, Some(good), b"");
        forge(&mut init, offset, seal);
        chan.send_raw(&init, &[]).unwrap();
        // Refused, not run: the initializer would have panicked.
        match &answers(&chan, 1)[..] {
            [Answer::InitFailed(f)] => assert!(is_refusal(f), "{f:?}"),
            other => panic!("{other:?}"),
        }
        // INIT_FAILED ends the worker (the pool breaks), cleanly.
        p.join_timeout(Duration::from_secs(30)).unwrap();
    }
}

#[test]
fn a_forged_entry_in_a_task_frame_fails_its_tasks_and_the_worker_serves_on() {
    let (chan, p) = start_worker();
    let mut init = Vec::new();
    put_init(&mut init, None, b"");
    chan.send_raw(&init, &[]).unwrap();
    assert!(matches!(&answers(&chan, 1)[..], [Answer::Ready]));

    let good = chunk_of(double);
    // One frame: a good task; a forged one (a valid seal of another offset); a task naming
    // no entry, which belongs to the forged one and must not fall back to the good one; a
    // forged seal of the good offset.
    let mut frame = task_record(Some(good), &[1, 2]);
    let mut forged = task_record(Some(good), &[3]);
    forge(&mut forged, good.offset.wrapping_add(16), good.seal);
    frame.extend_from_slice(&forged);
    frame.extend_from_slice(&task_record(None, &[4]));
    let mut forged = task_record(Some(good), &[5]);
    forge(&mut forged, good.offset, good.seal ^ 0x8000);
    frame.extend_from_slice(&forged);
    // Another frame, well sealed: served as usual.
    let next = task_record(Some(good), &[6]);
    chan.send_raw(&frame, &[]).unwrap();
    chan.send_raw(&next, &[]).unwrap();
    let got = answers(&chan, 5);
    match &got[..] {
        [Answer::Values(a), Answer::Failed(b), Answer::Failed(c), Answer::Failed(d), Answer::Values(e)] =>
        {
            assert_eq!(
                a.iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>(),
                [2, 4]
            );
            for f in [b, c, d] {
                assert!(is_refusal(f), "{f:?}");
            }
            assert!(matches!(&e[..], [Ok(12)]), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // End of stream: the worker exits normally.
    drop(chan);
    p.join_timeout(Duration::from_secs(30)).unwrap();
}

#[test]
fn a_frame_whose_first_task_names_no_entry_ends_the_worker() {
    let (chan, p) = start_worker();
    let mut init = Vec::new();
    put_init(&mut init, None, b"");
    chan.send_raw(&init, &[]).unwrap();
    assert!(matches!(&answers(&chan, 1)[..], [Answer::Ready]));
    chan.send_raw(&task_record(None, &[1]), &[]).unwrap();
    let e = p.join_timeout(Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.exit_code(), Some(70), "{e}");
}
