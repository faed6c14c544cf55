//! A shared counter with a lock, as a Python user writes it:
//!
//! ```python
//! def work(counter, n):
//!     for _ in range(n):
//!         with counter.get_lock():
//!             counter.value += 1
//!
//! counter = multiprocessing.Value("q", 0)
//! procs = [multiprocessing.Process(target=work, args=(counter, 10_000)) for _ in range(4)]
//! ...
//! ```
//!
//! Four processes add 10 000 each to a `Value<u64>` under its lock; one more is killed while
//! it holds the lock, and the next process to take it is told (`owner_died`), where Python's
//! would hang forever. Prints the total, which is exact.

use multiproc::sync::Event;
use multiproc::{Process, Value};

const N: u64 = 10_000;

fn work((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        // `counter.lock()` is `with counter.get_lock():`; the guard derefs to the value.
        let mut value = counter.lock().unwrap();
        if value.owner_died() {
            println!(
                "a process died holding the lock; the count it left is {}",
                *value
            );
        }
        *value += 1;
    }
}

/// Takes the lock and never lets go (until it is killed).
fn hog((counter, holding): (Value<u64>, Event)) {
    let _value = counter.lock().unwrap();
    holding.set();
    loop {
        std::thread::park();
    }
}

fn main() -> multiproc::Result<()> {
    let counter = Value::new(0u64)?;

    // A process that dies holding the lock (SIGKILL): nobody hangs.
    let holding = Event::new()?;
    let hog = Process::spawn((counter.clone(), holding.clone()), hog)?;
    holding.wait();
    hog.kill()?;

    let procs: Vec<_> = (0..4)
        .map(|_| Process::spawn((counter.clone(), N), work))
        .collect::<multiproc::Result<_>>()?;
    for p in &procs {
        p.join()?;
    }
    let _ = hog.join();
    let total = counter.get()?;
    println!("counter = {total} (expected {})", 4 * N);
    assert_eq!(total, 4 * N);
    Ok(())
}
