//! The worker half of the classic distributed program (Python's "distributed processes"
//! recipe with `BaseManager`): connect to a master's manager over TCP with its authkey, take
//! numbers from the `tasks` queue, put `(n, n²)` on the `results` queue until a `None`.
//!
//! ```text
//! cargo run --example distributed_worker -- 127.0.0.1:5000 secret
//! ```
//!
//! With no arguments it runs standalone: it serves its own master on a free port, puts some
//! tasks, works through them and checks every result.

use std::time::Duration;

use multiproc::connection::Address;
use multiproc::Manager;

/// Takes tasks until the `None` sentinel; returns how many it did.
pub(crate) fn work(address: &Address, authkey: &[u8]) -> multiproc::Result<usize> {
    let manager = Manager::connect(address, authkey)?;
    let tasks = manager.queue::<Option<u64>>("tasks")?;
    let results = manager.queue::<(u64, u64)>("results")?;
    let mut done = 0;
    while let Some(n) = tasks.get_timeout(Duration::from_secs(60))? {
        results.put((n, n * n))?;
        done += 1;
    }
    Ok(done)
}

#[allow(dead_code)] // also compiled into the master example, which has its own `main`
fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [address, authkey] = &args[..] {
        let done = work(&address.parse()?, authkey.as_bytes())?;
        println!("worker {} did {done} tasks", std::process::id());
        return Ok(());
    }
    // Standalone: our own master, the same queues, one worker (this process).
    let master = Manager::serve(&"127.0.0.1:0".parse()?, b"standalone")?;
    let tasks = master.queue::<Option<u64>>("tasks")?;
    let results = master.queue::<(u64, u64)>("results")?;
    for n in 0..10 {
        tasks.put(Some(n))?;
    }
    tasks.put(None)?;
    let done = work(master.address(), b"standalone")?;
    let mut got: Vec<(u64, u64)> = (0..done).map(|_| results.get()).collect::<Result<_, _>>()?;
    got.sort();
    assert_eq!(got, (0..10).map(|n| (n, n * n)).collect::<Vec<_>>());
    println!("standalone worker: {done} tasks, every result checked");
    Ok(())
}
