//! Workers filling one shared array, as with Python's `shared_memory.SharedMemory` (or
//! `multiprocessing.Array`): each process writes its own slice, the parent reads them all.
//! Then the other direction: a large array handed to pool workers without copying it.

use multiproc::{Pool, Process, SharedMemory, SharedVec};

const N: usize = 1_000_000;
const WORKERS: usize = 4;

fn main() -> multiproc::Result<()> {
    // An anonymous segment: no name, freed with its last handle, even if a worker is killed.
    let shm = SharedMemory::new(N * std::mem::size_of::<f64>())?;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (lo, hi) = (w * N / WORKERS, (w + 1) * N / WORKERS);
        let args = (shm.try_clone()?, lo, hi);
        workers.push(Process::spawn(
            args,
            |(mut shm, lo, hi): (SharedMemory, usize, usize)| {
                // Disjoint ranges: no lock needed. Overlapping writers would need one.
                let a = shm.as_mut_slice_of::<f64>().unwrap();
                for (i, x) in a[lo..hi].iter_mut().enumerate() {
                    *x = ((lo + i) as f64).sqrt();
                }
            },
        )?);
    }
    for p in workers {
        p.join()?; // after join, the worker's writes are visible here
    }
    let a = shm.as_slice_of::<f64>()?;
    println!(
        "a[0..4] = {:?}, sum = {:.1}",
        &a[..4],
        a.iter().sum::<f64>()
    );

    // A SharedVec travels to pool workers as a handle: 8 MB, no copy per task.
    let pool = Pool::new(2)?;
    let data = SharedVec::from_slice(a)?;
    let halves = pool.map(
        |(v, half): (SharedVec<f64>, usize)| {
            v[half * N / 2..(half + 1) * N / 2].iter().sum::<f64>()
        },
        [(data.try_clone()?, 0), (data.try_clone()?, 1)],
    )?;
    println!("sums of the halves: {halves:?}");
    Ok(())
}
