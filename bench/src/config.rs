//! Command line and the sizes used in each mode.

use std::path::PathBuf;

const USAGE: &str = "\
multiproc-bench: multiproc side by side with Python multiprocessing, procspawn,
rayon and raw syscall floors, interleaved in one run; prints one Markdown table.

usage: cargo run --release -p multiproc-bench -- [options]

  --quick            smoke run: few rounds, small sizes (well under a minute)
  --out FILE         also write the header and table to FILE
  --rounds N         interleaved rounds per metric group (default 5, quick 2)
  --only G1,G2       run only these groups: start,pipe,bandwidth,queue,pool,cpu,
                     memory,crawl,idle,bytes,net,manager,sync,mpi (feature `mpi`)
  --no-python        skip the Python peers
  --python-dir DIR   where bench_a..bench_f live (default: ../shared/anchors/python
                     next to the repository, or $MULTIPROC_BENCH_PYTHON_DIR)
  --python EXE       Python interpreter (default: python3)
  -h, --help         this text
";

/// Run options and workload sizes. Every competitor of a row uses the same
/// sizes, so a multiproc measurement should read them from here.
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub rounds: usize,
    pub out: Option<PathBuf>,
    pub only: Option<Vec<String>>,
    pub python: Option<String>,
    pub python_dir: Option<PathBuf>,

    /// Internal `--runs` of each Python script per round (their min and
    /// median are then combined over rounds).
    pub py_runs: usize,
    /// Process spawn+join samples per round (Rust jobs).
    pub spawn_reps: usize,
    /// Python `bench_a --runs` per round.
    pub py_spawn_runs: usize,
    /// Messages per timed batch of a ping-pong round trip.
    pub rtt_msgs: usize,
    /// Timed batches per round for round trips and bandwidth.
    pub batches: usize,
    /// Bulk transfer size in bytes (64 MiB in a full run).
    pub bulk_bytes: usize,
    /// Messages per Queue 1→1 / 2→2 throughput run.
    pub queue_msgs: usize,
    /// Messages timed one by one for latency percentiles.
    pub latency_msgs: usize,
    /// Items of `Pool.map` (auto chunks and chunksize=1), as `bench_b --n`.
    pub map_items: usize,
    /// Single round trips (`apply_async().get()`) per round.
    pub apply_reps: usize,
    /// Tasks submitted one per message to procspawn's pool per batch.
    pub procspawn_tasks: usize,
    /// Items of the `bench_c` (ProcessPoolExecutor) runs, smaller than
    /// `map_items` because chunksize=1 runs at only ~10 k tasks/s.
    pub ppe_items: usize,
    /// Heavy items of the CPU scaling row (16).
    pub cpu_items: usize,
    /// Target time of one heavy item in ms (40 in a full run); the Rust
    /// iteration count is calibrated to it at start-up.
    pub cpu_item_ms: f64,
    /// Iterations of `work::heavy` per item, calibrated at start-up to
    /// `cpu_item_ms` (0 until then).
    pub cpu_iters: u64,
    /// `bench_f --work`: pure-Python iterations per item (~40 ms at 600,000).
    pub py_cpu_work: usize,
    /// serial/parallel pairs per round in the CPU row.
    pub cpu_reps: usize,
    /// Items of the imap whose peak RSS is measured (1,000,000 in a full run).
    pub imap_items: usize,
    /// Chunk size of that imap.
    pub imap_chunksize: usize,
    /// Pages of the crawled site (`examples/crawler/site.rs`).
    pub crawl_pages: u32,
    /// Pool size of the crawl rows (network-bound work: more workers than CPUs).
    pub crawl_workers: usize,
    /// Pool sizes of the CPU-while-idle rows.
    pub idle_workers: [usize; 2],
    /// How long each task of the CPU-while-idle rows sleeps, in seconds.
    pub idle_secs: f64,
    /// Size of the byte-buffer rows, in MB (1e6 bytes).
    pub bytes_mb: usize,
    /// Timed transfers per round in the byte-buffer rows.
    pub bytes_reps: usize,
    /// Sync rows: uncontended lock acquire+release pairs per sample.
    pub sync_lock_ops: usize,
    /// Sync rows: hand-offs, event round trips and barrier rounds per sample.
    pub sync_ipc_rounds: usize,
    /// Sync rows: `Value` increments per process (two processes contend).
    pub sync_add_ops: usize,
}

impl Config {
    pub fn full() -> Config {
        Config {
            quick: false,
            rounds: 5,
            out: None,
            only: None,
            python: None,
            python_dir: None,
            py_runs: 1,
            spawn_reps: 20,
            py_spawn_runs: 20,
            rtt_msgs: 10_000,
            batches: 5,
            bulk_bytes: 64 << 20,
            queue_msgs: 200_000,
            latency_msgs: 5_000,
            map_items: 100_000,
            apply_reps: 2_000,
            procspawn_tasks: 5_000,
            ppe_items: 30_000,
            cpu_items: 16,
            cpu_item_ms: 40.0,
            cpu_iters: 0,
            py_cpu_work: 600_000,
            cpu_reps: 2,
            imap_items: 1_000_000,
            imap_chunksize: 1_000,
            crawl_pages: 3_000,
            crawl_workers: 8,
            idle_workers: [16, 64],
            idle_secs: 2.0,
            bytes_mb: 200,
            bytes_reps: 3,
            sync_lock_ops: 1_000_000,
            sync_ipc_rounds: 5_000,
            sync_add_ops: 200_000,
        }
    }

    pub fn quick() -> Config {
        Config {
            quick: true,
            rounds: 2,
            spawn_reps: 5,
            py_spawn_runs: 5,
            rtt_msgs: 2_000,
            batches: 2,
            bulk_bytes: 16 << 20,
            queue_msgs: 20_000,
            latency_msgs: 500,
            map_items: 20_000,
            apply_reps: 200,
            procspawn_tasks: 500,
            ppe_items: 2_000,
            cpu_item_ms: 10.0,
            py_cpu_work: 150_000,
            cpu_reps: 1,
            imap_items: 100_000,
            crawl_pages: 1_000,
            idle_secs: 0.5,
            bytes_mb: 20,
            bytes_reps: 2,
            sync_lock_ops: 200_000,
            sync_ipc_rounds: 500,
            sync_add_ops: 20_000,
            ..Config::full()
        }
    }

    /// Parses `std::env::args()`; prints usage and exits on `--help` or on
    /// a bad option.
    pub fn from_args() -> Config {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut cfg = if quick {
            Config::quick()
        } else {
            Config::full()
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next().unwrap_or_else(|| {
                    eprintln!("{name} needs a value\n\n{USAGE}");
                    std::process::exit(2)
                })
            };
            match a.as_str() {
                "--quick" => {}
                "--out" => cfg.out = Some(value("--out").into()),
                "--rounds" => {
                    cfg.rounds = value("--rounds").parse().unwrap_or_else(|_| {
                        eprintln!("--rounds needs a number");
                        std::process::exit(2)
                    })
                }
                "--only" => {
                    cfg.only = Some(
                        value("--only")
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .collect(),
                    )
                }
                "--no-python" => cfg.python = Some(String::new()),
                "--python" => cfg.python = Some(value("--python")),
                "--python-dir" => cfg.python_dir = Some(value("--python-dir").into()),
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0)
                }
                other => {
                    eprintln!("unknown option {other}\n\n{USAGE}");
                    std::process::exit(2)
                }
            }
        }
        cfg.rounds = cfg.rounds.max(1);
        cfg
    }

    /// Whether group `name` is selected by `--only`.
    pub fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|g| g == name))
    }

    pub fn mode(&self) -> &'static str {
        if self.quick {
            "quick"
        } else {
            "full"
        }
    }

    /// Bulk size in MiB, for row names.
    pub fn bulk_mib(&self) -> usize {
        self.bulk_bytes >> 20
    }
}
