//! Workloads shared by every competitor, so that rows compare like with
//! like. A multiproc measurement should use these too.

use std::hint::black_box;
use std::time::Instant;

/// The trivial task of the Pool rows (`double(x)` in the Python scripts).
pub fn double(x: u64) -> u64 {
    x * 2
}

/// The heavy task of the CPU scaling row: `iters` rounds of integer
/// hashing (multiply-xorshift), seeded by `seed`. The iteration count is
/// calibrated at start-up ([`calibrate`]) so that one item takes about
/// `Config::cpu_item_ms`.
pub fn heavy(iters: u64, seed: u64) -> u64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for i in 0..iters {
        h = (h ^ i).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    h
}

/// Iterations of [`heavy`] that take about `target_ms` on this machine
/// (best of 3 timings of a probe run, scaled).
pub fn calibrate(target_ms: f64) -> u64 {
    let probe = 2_000_000u64;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        black_box(heavy(black_box(probe), 1));
        best = best.min(t0.elapsed().as_secs_f64());
    }
    ((probe as f64) * target_ms / 1e3 / best).max(1.0) as u64
}
