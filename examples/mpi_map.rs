//! The same `Pool` across the ranks of an MPI job.
//!
//! ```text
//! mpirun -n 3 target/release/examples/mpi_map    # rank 0 runs main, ranks 1-2 serve tasks
//! mpirun --enable-recovery -n 3 target/release/examples/mpi_map   # Open MPI: the job also
//!                                                 # outlives a killed rank 1 or 2
//! cargo run --release --features mpi --example mpi_map   # no mpirun: a single-rank job,
//!                                                       # so an ordinary local pool
//! ```

use multiproc::Pool;

/// Where a task ran: the MPI rank of its agent (0 outside a job) and its own pid.
fn whereabouts(x: u64) -> (u64, u32, u32) {
    (
        x * x,
        multiproc::mpi::rank().unwrap_or(0),
        std::process::id(),
    )
}

fn main() -> multiproc::Result<()> {
    let pool = Pool::builder().mpi().processes(2).build()?;
    println!(
        "ranks (rank, workers): {:?}; {} workers",
        pool.mpi_ranks(),
        pool.processes()
    );
    let out = pool.map(whereabouts, 0..10_000u64)?;
    assert!(out.iter().enumerate().all(|(i, r)| r.0 == (i * i) as u64));
    let mut ranks: Vec<u32> = out.iter().map(|r| r.1).collect();
    ranks.sort_unstable();
    ranks.dedup();
    println!("10000 squares computed on ranks {ranks:?}");
    // A task that aborts takes down its worker only.
    let lost = pool.apply(|()| -> () { std::process::abort() }, ());
    println!("a task that aborts: {}", lost.unwrap_err());
    println!(
        "and the pool goes on: 7 * 7 = {}",
        pool.apply(|x: u64| x * x, 7)?
    );
    pool.close();
    pool.join()
}
