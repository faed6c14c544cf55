//! The master half of the classic distributed program: serve a `tasks` queue and a `results`
//! queue on a TCP port with an authkey, let workers (on this host or others) connect, and
//! collect every result.
//!
//! ```text
//! cargo run --example distributed_master -- 0.0.0.0:5000 secret 1000   # then start workers:
//! cargo run --example distributed_worker -- <master-host>:5000 secret
//! ```
//!
//! With no arguments it serves on a free port of 127.0.0.1 and starts two worker processes
//! itself (the `distributed_worker` binary next to this one when it was built, otherwise the
//! same worker code through `Process::spawn`), then checks every result and exits 0.

#[path = "distributed_worker.rs"]
mod worker;

use std::time::Duration;

use multiproc::{Manager, Process};

fn spawned_worker((address, authkey): (String, Vec<u8>)) -> usize {
    worker::work(&address.parse().unwrap(), &authkey).unwrap()
}

fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (address, authkey, count, standalone) = match &args[..] {
        [a, k, n] => (a.clone(), k.clone(), n.parse().unwrap_or(1000), false),
        [a, k] => (a.clone(), k.clone(), 1000, false),
        _ => (
            "127.0.0.1:0".to_string(),
            "example-key".to_string(),
            200u64,
            true,
        ),
    };
    let master = Manager::serve(&address.parse()?, authkey.as_bytes())?;
    let tasks = master.queue::<Option<u64>>("tasks")?;
    let results = master.queue::<(u64, u64)>("results")?;
    println!("master serving on {} ({count} tasks)", master.address());
    for n in 0..count {
        tasks.put(Some(n))?;
    }

    let workers = 2;
    let mut children = Vec::new();
    let mut processes = Vec::new();
    if standalone {
        let addr = master.address().to_string();
        let sibling = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("distributed_worker")))
            .filter(|p| p.exists());
        for _ in 0..workers {
            match &sibling {
                Some(bin) => children.push(
                    std::process::Command::new(bin)
                        .args([&addr, &authkey])
                        .spawn()
                        .map_err(multiproc::Error::from)?,
                ),
                None => processes.push(Process::spawn(
                    (addr.clone(), authkey.clone().into_bytes()),
                    spawned_worker,
                )?),
            }
        }
        for _ in 0..workers {
            tasks.put(None)?;
        }
    }

    let mut got: Vec<(u64, u64)> = (0..count)
        .map(|_| results.get_timeout(Duration::from_secs(300)))
        .collect::<Result<_, _>>()?;
    got.sort();
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &(n, sq))| n == i as u64 && sq == n * n));
    for mut c in children {
        assert!(c.wait().map_err(multiproc::Error::from)?.success());
    }
    for p in processes {
        p.join()?;
    }
    println!("master: all {count} results checked");
    Ok(())
}
