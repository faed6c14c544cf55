//! A tour of multiproc: the README's demo. Each section mirrors a Python idiom.

use std::time::{Duration, Instant};

use multiproc::{Connection, ErrorKind, Pipe, Process, StartMethod};

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn main() -> multiproc::Result<()> {
    println!("== Process: a function in a child, its return value back");
    for m in multiproc::all_start_methods() {
        let t = Instant::now();
        let p = Process::builder().start_method(*m).spawn(25u64, fib)?;
        let v = p.join()?;
        println!(
            "  {:<10} fib(25) = {v} in pid {} ({:.2} ms incl. start)",
            m.name(),
            p.pid(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    println!("== Panics come back with their message");
    println!("  (this task panics ON PURPOSE: the panic is the demo, nothing is broken)");
    let p = Process::spawn(-1i64, |x| -> i64 {
        if x < 0 {
            panic!("negative input {x}");
        }
        x
    })?;
    let e = p.join().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked);
    println!(
        "  the deliberate panic, as the parent sees it: {e}\n  exit code {:?}",
        p.exitcode()
    );

    println!("== terminate / kill give Python's negative exit codes");
    let p = Process::spawn(60u64, |s| std::thread::sleep(Duration::from_secs(s)))?;
    p.terminate()?;
    let e = p.join().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Killed);
    println!("  {e}; exitcode {:?}", p.exitcode());

    println!("== Pipe: typed messages, handles are ordinary arguments");
    let (here, there) = Pipe::new::<String>()?;
    let p = Process::builder()
        .name("echo")
        .start_method(StartMethod::ForkServer)
        .spawn(there, |c: Connection<String>| {
            while let Ok(s) = c.recv() {
                c.send(&format!(
                    "{} (from {})",
                    s.to_uppercase(),
                    multiproc::current_process().name
                ))
                .unwrap();
            }
        })?;
    here.send(&"hello".to_string())?;
    println!("  {}", here.recv()?);
    drop(here);
    p.join()?;

    println!("== Queue: many producers, many consumers, in shared memory");
    let q: multiproc::Queue<u64> = multiproc::Queue::bounded(1000)?;
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            Process::spawn((q.clone(), p), |(q, p): (multiproc::Queue<u64>, u64)| {
                for i in 0..50_000u64 {
                    q.put(p * 1_000_000 + i).unwrap();
                }
            })
        })
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..100_000 {
        sum += q.get()?;
    }
    for p in producers {
        p.join()?;
    }
    println!(
        "  100,000 items from 2 producer processes in {:.0} ms (sum {sum})",
        t.elapsed().as_secs_f64() * 1e3
    );

    println!("== Pool: map, imap, apply_async; a crashing task fails alone");
    println!("  (one task below aborts its worker ON PURPOSE, to show the pool survives it)");
    let pool = multiproc::Pool::new(multiproc::cpu_count())?;
    let t = Instant::now();
    let squares = pool.map(|x: u64| x * x, 0..1_000_000u64)?;
    println!(
        "  map of 1,000,000 items: sum {} in {:.0} ms",
        squares.iter().sum::<u64>(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let first: Vec<u64> = pool
        .imap(|x: u64| x + 1, 0..)
        .take(5)
        .collect::<Result<_, _>>()?;
    println!("  imap over an endless input, first five: {first:?}");
    let crash = pool.apply_async(|()| -> u32 { std::process::abort() }, ());
    let fine = pool.apply_async(|x: u32| x * 10, 4);
    println!(
        "  the deliberately aborting task: {}",
        crash.get().unwrap_err()
    );
    println!("  its neighbour: {}", fine.get()?);
    println!(
        "  and the pool goes on: {:?}",
        pool.map(|x: u8| x + 1, [1u8, 2, 3])?
    );
    pool.close();
    pool.join()?;

    println!(
        "== Many children at once: {} CPUs here",
        multiproc::cpu_count()
    );
    let t = Instant::now();
    let ps: Vec<_> = (0..8u64)
        .map(|i| Process::spawn(30 + i % 2, fib))
        .collect::<Result<_, _>>()?;
    let total: u64 = ps.iter().map(|p| p.join()).sum::<Result<u64, _>>()?;
    println!(
        "  8 x fib(30/31) in parallel: sum {total}, {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
