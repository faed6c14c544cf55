//! multiproc's "via shared memory" bandwidth row: a `SharedVec` made from the payload (the
//! one copy), sent to a child over a Connection as a handle; the child maps it, reads its
//! last element and acks. A fresh segment per transfer, so the time includes creating and
//! allocating the segment, the copy, passing the descriptor and the child's mapping: what a
//! program pays to hand a 64 MiB array to a worker.

use std::time::Instant;

use multiproc::{Connection, Pipe, Process, SharedBytes};

use crate::config::Config;
use crate::harness::{BenchResult, Obs};

fn child(c: Connection<SharedBytes>) {
    while let Ok(v) = c.recv() {
        let last = v.last().copied().unwrap_or(0);
        // Done with it: dropped before the ack, so the parent can reuse the segment.
        drop(v);
        // The reply carries the last byte back, so the child really read the mapping.
        let ack = SharedBytes::from_slice(&[last]).expect("a one-byte segment");
        if c.send(&ack).is_err() {
            break;
        }
    }
}

/// `bulk_bytes` handed to a child as a `SharedVec<u8>` per transfer (GB/s).
pub fn bulk_shared_vec(cfg: &Config) -> BenchResult<Obs> {
    let size = cfg.bulk_bytes;
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let (here, there) = Pipe::new::<SharedBytes>()?;
    let p = Process::spawn(there, child)?;
    let mut v = Vec::with_capacity(cfg.batches);
    for b in 0..=cfg.batches {
        let t = Instant::now();
        let payload = SharedBytes::from_slice(&src)?;
        here.send(&payload)?;
        let ack = here.recv()?;
        let dt = t.elapsed().as_secs_f64();
        if ack.first().copied() != Some((size - 1) as u8) {
            return Err("bulk shm: wrong data".into());
        }
        if b > 0 {
            v.push(size as f64 / dt / 1e9);
        }
    }
    drop(here);
    p.join()?;
    Ok(Obs::Raw(v))
}
