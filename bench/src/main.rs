//! multiproc-bench: multiproc measured side by side with Python's
//! multiprocessing and concurrent.futures, procspawn, rayon and raw syscall
//! floors, interleaved in one run; prints one Markdown table of best /
//! median values, ratios and goals.
//!
//! `cargo run --release -p multiproc-bench [-- --quick] [--out FILE]`
//!
//! Modules: `harness` (samples, jobs, interleaving), `metrics` (the rows
//! and goals), `table` (rendering), `floors` (raw syscalls), `python`,
//! `procspawn_peer`, `rayon_peer`, `multiproc_peer` (where multiproc's
//! measurements are registered), `rss` (peak memory), `work` (shared
//! workloads), `machine` (header and contention), `config` (options),
//! `crawl` (the crawler rows, on the site of `examples/crawler/site.rs`),
//! `idle_bytes` (CPU while tasks sleep; byte buffers), `cputime`
//! (per-process CPU clocks), `sync_rows` (Lock, Event, Value, Barrier).

#[path = "../../examples/crawler/client.rs"]
mod client;
mod config;
mod cputime;
mod crawl;
mod floors;
mod harness;
mod idle_bytes;
mod machine;
mod manager;
mod metrics;
#[cfg(feature = "mpi")]
mod mpi_rows;
mod multiproc_peer;
mod net;
mod procspawn_peer;
mod python;
mod rayon_peer;
mod rss;
mod shm_peer;
#[path = "../../examples/crawler/site.rs"]
mod site;
mod sync_rows;
mod table;
mod work;

use config::Config;
use harness::Results;

fn main() {
    // procspawn re-executes this binary for its children and takes over
    // here; it must run before anything else (procspawn's requirement).
    procspawn::init();
    // Rank 0 of one of the MPI rows' `mpirun` jobs (the other ranks are multiproc's agents).
    #[cfg(feature = "mpi")]
    if std::env::var_os(mpi_rows::MEASURE_ENV).is_some() {
        mpi_rows::measure_as_rank0();
    }
    if std::env::var_os(floors::EXIT_AT_ONCE_ENV).is_some() {
        // The "fork+exec of this binary" floor.
        std::process::exit(0);
    }
    // The crawl rows' site server (a separate process, so its CPU time is nobody's).
    crawl::serve_if_asked();

    let mut cfg = Config::from_args();
    let contention = machine::Contention::start();
    let mut results = Results::default();

    let python = python::Python::locate(&cfg);
    let py_desc = match &python {
        Ok(p) => format!("{} (anchors: {})", p.version, p.anchors.display()),
        Err(why) => {
            results.notes.push(format!("Python peers skipped: {why}"));
            "python: skipped".into()
        }
    };
    let header = machine::header(&cfg, &py_desc);
    println!("{header}");

    if cfg.wants("cpu") {
        cfg.cpu_iters = work::calibrate(cfg.cpu_item_ms);
        eprintln!(
            "calibrated heavy item: {} iterations ≈ {} ms",
            cfg.cpu_iters, cfg.cpu_item_ms
        );
    }

    let mut jobs = multiproc_peer::jobs(&cfg);
    jobs.extend(idle_bytes::jobs(&cfg));
    if let Ok(py) = &python {
        jobs.extend(python::jobs(&cfg, py));
    }
    jobs.extend(crawl::jobs(&cfg, python.as_ref().ok()));
    jobs.extend(procspawn_peer::jobs(&cfg));
    jobs.extend(rayon_peer::jobs(&cfg));
    jobs.extend(floors::jobs(&cfg));
    jobs.extend(net::jobs(&cfg, python.as_ref().ok()));
    jobs.extend(manager::jobs(&cfg, python.as_ref().ok()));
    jobs.extend(sync_rows::jobs(&cfg, python.as_ref().ok()));
    jobs.retain(|j| cfg.wants(j.group.name()));

    harness::run_all(jobs, cfg.rounds, &mut results);

    let mut table = table::render(&cfg, &results);
    if cfg.wants("mpi") {
        #[cfg(feature = "mpi")]
        table.push_str(&mpi_rows::run(&cfg));
        #[cfg(not(feature = "mpi"))]
        table.push_str(
            "\n### MPI\n\nnot measured: built without the `mpi` feature \
             (cargo run --release -p multiproc-bench --features mpi)\n",
        );
    }
    let footer = contention.report();
    println!("{table}\n{footer}");
    if let Some(path) = &cfg.out {
        let text = format!("{header}\n{table}\n{footer}\n");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        eprintln!("table written to {}", path.display());
    }
}
