//! The seed's second program: a pool of four workers runs five tasks; four run at once and
//! the fifth waits for a free worker, as with Python's
//! `Pool(4)` + `apply_async(long_time_task, args=(i,))` + `close()` + `join()`.

use std::time::{Duration, Instant};

use multiproc::Pool;

fn long_time_task(name: u32) -> f64 {
    println!("Run task {name} ({})...", std::process::id());
    let start = Instant::now();
    // A pseudo-random sleep of up to one second (Python's example sleeps up to three).
    let ms = (u64::from(std::process::id()) * 7919 + u64::from(name) * 104_729) % 1000;
    std::thread::sleep(Duration::from_millis(ms));
    let secs = start.elapsed().as_secs_f64();
    println!("Task {name} runs {secs:.2} seconds.");
    secs
}

fn main() -> multiproc::Result<()> {
    println!("Parent process {}.", std::process::id());
    let pool = Pool::new(4)?;
    let results: Vec<_> = (0..5)
        .map(|i| pool.apply_async(long_time_task, i))
        .collect();
    println!("Waiting for all subprocesses done...");
    pool.close();
    pool.join()?;
    let total: f64 = results
        .into_iter()
        .map(|r| r.get())
        .sum::<multiproc::Result<f64>>()?;
    println!("All subprocesses done ({total:.2} s of work).");
    Ok(())
}
