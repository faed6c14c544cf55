//! Spinning, sleeping and waking (see `README.md`, "Sleeping and waking").

use std::sync::atomic::{fence, Ordering::*};
use std::time::{Duration, Instant};

use super::*;
use crate::sys::futex;

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Waited {
    /// The condition holds.
    Ready,
    /// The deadline passed first.
    TimedOut,
    /// A liveness tick passed (only when asked for ticks).
    Tick,
}

/// Spin, then yield, then park: how long a waiter stays on the CPU before it sleeps in the
/// kernel. Spinning covers the gap between two puts of a busy producer (~100 ns) without
/// making that producer pay a futex wake (several microseconds in a VM); giving up the CPU
/// soon matters when processes outnumber cores.
pub(super) struct Backoff {
    start: Option<Instant>,
    yields: u32,
}

/// How long a waiter spins before it gives up the CPU.
const SPIN: Duration = Duration::from_micros(5);
/// How many times it then yields before it sleeps in the kernel (lets a producer that shares
/// its CPU run first, without the cost of a futex wake).
const YIELDS: u32 = 2;

impl Backoff {
    /// A fresh backoff: the spin starts at the first `snooze`.
    pub(super) fn new() -> Self {
        Backoff {
            start: None,
            yields: 0,
        }
    }

    /// Waits a little; `false` when it is time to sleep in the kernel.
    pub(super) fn snooze(&mut self) -> bool {
        let start = *self.start.get_or_insert_with(Instant::now);
        if start.elapsed() < SPIN {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
            return true;
        }
        if self.yields < YIELDS {
            self.yields += 1;
            std::thread::yield_now();
            return true;
        }
        false
    }

    /// A short spin for lock acquisition (holders keep a lock for one copy).
    pub(super) fn spin_lock(&mut self) -> bool {
        let start = *self.start.get_or_insert_with(Instant::now);
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        start.elapsed() < SPIN
    }
}

impl Ring {
    /// Waits until `ready()`, the deadline, or (with `tick`) a liveness tick. Only the lock
    /// holder of `side` calls this, so there is at most one sleeper per side.
    pub(super) fn wait(
        &self,
        side: Side,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Waited> {
        if ready() {
            return Ok(Waited::Ready);
        }
        let expired = |d: Option<Instant>| d.is_some_and(|d| Instant::now() >= d);
        if expired(deadline) {
            return Ok(Waited::TimedOut);
        }
        let mut backoff = Backoff::new();
        while backoff.snooze() {
            if ready() {
                return Ok(Waited::Ready);
            }
        }
        let sleeping = self.u32(side.sleeping);
        let seq = self.u32(side.seq);
        let until = match (deadline, tick.map(|t| Instant::now() + t)) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        loop {
            let s = seq.load(Acquire);
            sleeping.store(1, Relaxed);
            // Pairs with the fence in `wake`: either we see the new state or the waker sees
            // `sleeping` (store-buffer pattern, both sides fenced).
            fence(SeqCst);
            if ready() {
                sleeping.store(0, Relaxed);
                return Ok(Waited::Ready);
            }
            let r = futex::wait(seq, s, until).map_err(Error::io);
            sleeping.store(0, Relaxed);
            if ready() {
                return Ok(Waited::Ready);
            }
            if r? == futex::Woken::TimedOut {
                return Ok(if expired(deadline) {
                    Waited::TimedOut
                } else {
                    Waited::Tick
                });
            }
        }
    }

    /// Wakes the sleeper of `side`, if there is one. Called after publishing.
    pub(super) fn wake(&self, side: Side) {
        fence(SeqCst);
        if self.u32(side.sleeping).load(Relaxed) != 0 {
            self.u32(side.seq).fetch_add(1, Release);
            futex::wake(self.u32(side.seq), 1);
        }
    }
}
