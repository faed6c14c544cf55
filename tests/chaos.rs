//! The chaos and soak suite (issue 9 point 14): SIGKILL and SIGSTOP storms on pool workers,
//! queue producers and consumers and the fork server; the parent's death by every signal and
//! by panic; descriptor and address-space limits; hostile peers on every receiving entry
//! point; and a soak over thousands of process, pool and worker lifetimes.
//!
//! Each check runs as a *role*: this binary re-executed with `MULTIPROC_CHAOS_ROLE` set, with a
//! time limit, so a crash, an abort or a hang fails that check and the suite goes on. This
//! process is a child subreaper: whatever a role leaves behind comes back to it, is reported
//! as a failure and is killed. Roles print their figures as `ROW` lines, which are gathered
//! into Markdown tables here, and each broken promise as a `FAIL` line.
//!
//! `cargo test --test chaos [-- FILTER...]` runs the CI size (a few minutes on 2 cores);
//! `MULTIPROC_CHAOS_LONG=1` runs the long one; `MULTIPROC_CHAOS_SEED=n` replays a seed.
#![allow(unreachable_pub)] // helpers shared by the modules of this test binary

#[path = "chaos/compat.rs"]
mod compat;
#[path = "chaos/death.rs"]
mod death;
#[path = "chaos/hostile.rs"]
mod hostile;
#[path = "chaos/limits.rs"]
mod limits;
#[path = "chaos/soak.rs"]
mod soak;
#[path = "chaos/storms.rs"]
mod storms;
#[path = "chaos/util.rs"]
mod util;

use std::time::{Duration, Instant};

use util::{long, run_role, sweep_leftovers, ROLE, SEED};

/// A role: what runs in the re-executed binary.
type Role = fn();

/// One table row: `(column, value)` pairs.
type Row = Vec<(String, String)>;

/// `(name, entry, time limit in CI, time limit in the long run)`.
const ROLES: &[(&str, Role, u64, u64)] = &[
    ("pool_kill_storm_map", storms::pool_kill_map, 120, 1800),
    (
        "pool_kill_storm_imap_unordered",
        storms::pool_kill_imap,
        120,
        1800,
    ),
    (
        "pool_kill_storm_apply_async",
        storms::pool_kill_apply,
        120,
        1800,
    ),
    ("pool_stop_storm", storms::pool_stop_storm, 120, 1800),
    (
        "pool_frozen_worker_task_timeout",
        storms::pool_frozen_worker,
        90,
        300,
    ),
    (
        "pool_frozen_fork_server",
        storms::pool_frozen_server,
        90,
        300,
    ),
    (
        "fork_server_kill_storm",
        storms::server_kill_storm,
        120,
        1800,
    ),
    (
        "fork_server_stop_storm",
        storms::server_stop_storm,
        120,
        1800,
    ),
    ("queue_kill_storm", storms::queue_kill_storm, 120, 1800),
    ("queue_stop_storm", storms::queue_stop_storm, 120, 1800),
    (
        "queue_frozen_producer_large_item",
        storms::queue_frozen_producer,
        60,
        120,
    ),
    ("parent_death_every_signal", death::parent_death, 180, 600),
    ("rlimit_nofile", limits::nofile, 90, 300),
    ("rlimit_as", limits::address_space, 60, 120),
    (
        "hostile_connection_frames",
        hostile::connection_frames,
        150,
        7200,
    ),
    ("hostile_queue_forged_items", hostile::queue_forged, 60, 300),
    (
        "hostile_queue_scribbled",
        hostile::queue_scribbled,
        120,
        3600,
    ),
    (
        "hostile_queue_handle_lock_words",
        hostile::queue_bad_locks,
        60,
        120,
    ),
    (
        "hostile_control_socket_specs",
        hostile::control_specs,
        150,
        7200,
    ),
    (
        "hostile_worker_and_child_frames",
        hostile::hostile_worker,
        90,
        600,
    ),
    ("soak_descriptors_and_memory", soak::soak, 240, 7200),
    ("child_descriptor_counts", soak::child_fds, 60, 120),
];

/// Helper roles started by checks (victims), not checks themselves.
const HELPERS: &[(&str, Role)] = &[
    ("victim_tree", death::victim_tree),
    ("victim_scribble", hostile::victim_scribble),
    ("victim_as", limits::victim_as),
    ("victim_bad_locks", hostile::victim_bad_locks),
];

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let f = ROLES
            .iter()
            .map(|(n, f, _, _)| (*n, *f))
            .chain(HELPERS.iter().copied())
            .find(|(n, _)| *n == role)
            .map(|(_, f)| f);
        match f {
            Some(f) => {
                f();
                println!("DONE");
                std::process::exit(0);
            }
            None => {
                eprintln!("unknown chaos role {role:?}");
                std::process::exit(2);
            }
        }
    }
    // Orphans of our roles are re-parented to us, so we can see, kill and reap them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("becoming a child subreaper");
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let seed: u64 = std::env::var(SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_201);
    println!(
        "chaos suite: seed {seed} ({} run; replay with {SEED}={seed})",
        if long() { "long" } else { "CI" }
    );
    let mut tables: Vec<(String, Vec<Row>)> = Vec::new();
    let mut results: Vec<(&str, bool, f64, Vec<String>)> = Vec::new();
    let t_all = Instant::now();
    for &(name, _, ci, long_s) in ROLES {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let limit = Duration::from_secs(if long() { long_s } else { ci });
        let run = run_role(name, &[(SEED, seed.to_string())], limit);
        let mut fails: Vec<String> = Vec::new();
        let mut done = false;
        for l in &run.lines {
            if let Some(rest) = l.strip_prefix("ROW ") {
                let mut parts = rest.split('|');
                let title = parts.next().unwrap_or("").to_string();
                let cells: Vec<(String, String)> = parts
                    .filter_map(|c| c.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                match tables.iter_mut().find(|(t, _)| *t == title) {
                    Some((_, rows)) => rows.push(cells),
                    None => tables.push((title, vec![cells])),
                }
            } else if let Some(rest) = l.strip_prefix("FAIL ") {
                fails.push(rest.to_string());
            } else if l == "DONE" {
                done = true;
            } else if let Some(rest) = l.strip_prefix("NOTE ") {
                println!("  note ({name}): {rest}");
            }
        }
        match run.status {
            None => fails.push(format!("hung: killed after its limit of {limit:?}")),
            Some(s) if !s.success() || !done => fails.push(format!(
                "the role died {}: {s} (stderr: {})",
                if done {
                    "at exit, after finishing"
                } else {
                    "before finishing"
                },
                run.stderr_tail.replace('\n', " / ")
            )),
            Some(_) => {}
        }
        let left = sweep_leftovers(Duration::from_secs(2));
        if !left.is_empty() {
            fails.push(format!("left processes behind (killed now): {left:?}"));
        }
        let ok = fails.is_empty();
        let secs = run.elapsed.as_secs_f64();
        println!(
            "test {name} ... {} ({secs:.1} s)",
            if ok { "ok" } else { "FAILED" }
        );
        for f in &fails {
            println!("    {f}");
        }
        results.push((name, ok, secs, fails));
    }
    println!();
    for (title, rows) in &tables {
        let mut cols: Vec<String> = Vec::new();
        for r in rows {
            for (k, _) in r {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        println!("### {title}\n");
        println!("| {} |", cols.join(" | "));
        println!("|{}", "---|".repeat(cols.len()));
        for r in rows {
            let cells: Vec<&str> = cols
                .iter()
                .map(|c| {
                    r.iter()
                        .find(|(k, _)| k == c)
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("")
                })
                .collect();
            println!("| {} |", cells.join(" | "));
        }
        println!();
    }
    println!("### Checks (seed {seed})\n");
    println!("| check | result | seconds |\n|---|---|---|");
    for (name, ok, secs, _) in &results {
        println!(
            "| {name} | {} | {secs:.1} |",
            if *ok { "PASS" } else { "FAIL" }
        );
    }
    let failed = results.iter().filter(|r| !r.1).count();
    let passed = results.len() - failed;
    println!(
        "\nchaos suite finished in {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
