//! The seed's queue program: a writer process and a reader process share one `Queue`, as with
//! `multiprocessing.Queue()`. The writer puts a few values and a sentinel; the reader prints
//! what it gets until the sentinel; the parent joins both.

use multiproc::{Process, Queue};

const DONE: &str = "DONE";

fn write(q: Queue<String>) {
    for value in ["A", "B", "C"] {
        q.put(value.to_string()).unwrap();
    }
    q.put(DONE.to_string()).unwrap();
    // No feeder thread: the items are already in shared memory, so this process may exit
    // (and be joined) before the reader has read anything.
}

fn read(q: Queue<String>) -> usize {
    let mut n = 0;
    loop {
        let value = q.get().unwrap();
        if value == DONE {
            return n;
        }
        println!("reader got {value}");
        n += 1;
    }
}

fn main() -> multiproc::Result<()> {
    let q: Queue<String> = Queue::new()?;
    let writer = Process::builder().name("writer").spawn(q.clone(), write)?;
    let reader = Process::builder().name("reader").spawn(q, read)?;
    writer.join()?;
    let n = reader.join()?;
    println!("reader printed {n} values; both processes joined");
    Ok(())
}
