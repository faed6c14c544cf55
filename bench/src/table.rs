//! Rendering the results as one Markdown table, with ratios and goals.

use std::fmt::Write;

use crate::config::Config;
use crate::harness::{Cell, Results, Stats, Who};
use crate::metrics::{Better, Cmp, Goal, Metric, Show, Spec};

/// The peers multiproc is compared with, in column order.
const PEERS: [Who; 5] = [
    Who::PythonMp,
    Who::PythonCf,
    Who::Procspawn,
    Who::Rayon,
    Who::Floor,
];

fn stats(spec: &Spec, cell: &Cell) -> Option<Stats> {
    match spec.show {
        Show::BestMedian => cell.best_median(spec.better == Better::Higher),
        Show::P50P99 => cell.p50_p99(),
    }
}

/// A number with about 3 significant digits, k/M/G suffixes for big ones.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "n/a".into()
    } else if a >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if a >= 1e7 {
        format!("{:.1}M", x / 1e6)
    } else if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// How much better multiproc is than `peer` (> 1 = multiproc better).
pub fn ratio(better: Better, multiproc: f64, peer: f64) -> f64 {
    match better {
        Better::Higher => multiproc / peer,
        Better::Lower => peer / multiproc,
    }
}

/// Evaluates a goal on one statistic (`pick` chooses head or tail).
/// `None` if a value the goal needs is missing.
fn goal_holds(
    goal: &Goal,
    mp: Stats,
    peers: &[(Who, Stats)],
    pick: fn(Stats) -> f64,
) -> Option<bool> {
    let mut all = true;
    for t in &goal.targets {
        let reference = match t.peer {
            None => 1.0,
            Some(w) => pick(peers.iter().find(|(p, _)| *p == w)?.1),
        };
        let bound = t.factor * reference;
        let v = pick(mp);
        all &= match t.cmp {
            Cmp::AtLeast => v >= bound,
            Cmp::AtMost => v <= bound,
        };
    }
    Some(all)
}

/// The `met?` column.
pub fn met(spec: &Spec, mp: Option<Stats>, peers: &[(Who, Stats)]) -> String {
    let (Some(goal), Some(mp)) = (&spec.goal, mp) else {
        return "—".into();
    };
    match goal_holds(goal, mp, peers, |s| s.head) {
        None => "? (peer missing)".into(),
        Some(false) => "**no**".into(),
        Some(true) if spec.show == Show::BestMedian => {
            match goal_holds(goal, mp, peers, |s| s.tail) {
                Some(false) => "yes (best only)".into(),
                _ => "yes".into(),
            }
        }
        Some(true) => "yes".into(),
    }
}

const LEGEND: &str = "
- Cells: `best / median` over all interleaved rounds (best = min time or max rate); \
`p50 / p99` for the latency row. \"not built\" = multiproc has no job for the row yet.
- Ratios use the best values; > 1× means multiproc is better. `met?` is judged on the best \
values; \"best only\" = the medians miss the goal.
- python mp = multiprocessing, python cf = concurrent.futures.ProcessPoolExecutor (its \
\"auto chunks\" cell uses chunksize = items / 8, Pool's default for 2 workers). \
rayon = a 2-thread rayon pool on the same work.
- Floors: fork + `_exit` + waitpid (fork, forkserver, default rows); fork + exec of this \
binary + wait (spawn row); fork + 8 bytes over a pipe (u64 row); 8-byte ping-pong over two \
pipes / one socketpair (round-trip rows, apply_async); one 8-byte write per message over a \
pipe (Queue 1→1); one-way pipe latency (Queue latency); the whole buffer through a \
default-size pipe / socketpair (bulk rows); memcpy (shared memory row).
";

/// Renders the whole table plus its legend and notes.
pub fn render(cfg: &Config, results: &Results) -> String {
    let mut out = String::new();
    let mut header = vec!["metric", "unit"];
    header.push(Who::Multiproc.name());
    header.extend(PEERS.iter().map(|w| w.name()));
    header.extend(["ratio (multiproc vs peer)", "goal", "met?"]);
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let align: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, _)| if (2..8).contains(&i) { "---:" } else { "---" })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));

    for m in Metric::ALL {
        if !cfg.wants(m.group().name()) {
            continue;
        }
        let spec = m.spec(cfg);
        let mp = results
            .cell(m, Who::Multiproc)
            .and_then(|c| stats(&spec, c));
        let peers: Vec<(Who, Stats)> = PEERS
            .iter()
            .filter_map(|w| Some((*w, stats(&spec, results.cell(m, *w)?)?)))
            .collect();
        let show = |s: Option<Stats>, missing: &str| match s {
            Some(s) => format!("{} / {}", fmt_num(s.head), fmt_num(s.tail)),
            None => missing.into(),
        };
        let mut row = vec![spec.name.clone(), unit_label(&spec)];
        row.push(show(mp, "not built"));
        for w in PEERS {
            let s = peers.iter().find(|(p, _)| *p == w).map(|(_, s)| *s);
            row.push(show(s, "—"));
        }
        row.push(match mp {
            None => "—".into(),
            Some(_) if peers.is_empty() => "—".into(),
            Some(mp) => peers
                .iter()
                .map(|(w, s)| {
                    format!(
                        "{} {}×",
                        w.name(),
                        fmt_num(ratio(spec.better, mp.head, s.head))
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        });
        row.push(spec.goal.as_ref().map_or("—".into(), |g| g.text.into()));
        row.push(met(&spec, mp, &peers));
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }

    out.push_str(LEGEND);
    if !results.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in &results.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn unit_label(spec: &Spec) -> String {
    let dir = match spec.better {
        Better::Lower => "↓",
        Better::Higher => "↑",
    };
    format!("{} {dir}", spec.unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Obs;

    fn cell(v: &[f64]) -> Cell {
        Cell {
            obs: vec![Obs::Raw(v.to_vec())],
        }
    }

    #[test]
    fn best_median_and_percentiles() {
        let c = cell(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(
            c.best_median(false),
            Some(Stats {
                head: 1.0,
                tail: 2.5
            })
        );
        assert_eq!(c.best_median(true).unwrap().head, 10.0);
        let s = Cell {
            obs: vec![
                Obs::Summary {
                    best: 5.0,
                    median: 7.0,
                },
                Obs::Summary {
                    best: 4.0,
                    median: 9.0,
                },
            ],
        };
        assert_eq!(
            s.best_median(false),
            Some(Stats {
                head: 4.0,
                tail: 8.0
            })
        );
        let lat = cell(&(1..=100).map(f64::from).collect::<Vec<_>>());
        let p = lat.p50_p99().unwrap();
        assert_eq!((p.head, p.tail), (51.0, 99.0));
    }

    #[test]
    fn ratios_and_goals() {
        let cfg = Config::quick();
        // Lower is better: multiproc 0.3 ms vs floor 0.2 ms -> ratio 0.67, goal ≤ 2× met.
        let spec = Metric::SpawnDefault.spec(&cfg);
        let mp = Stats {
            head: 0.3,
            tail: 0.5,
        };
        let floor = Stats {
            head: 0.2,
            tail: 0.22,
        };
        assert!((ratio(spec.better, mp.head, floor.head) - 0.6667).abs() < 1e-3);
        assert_eq!(
            met(&spec, Some(mp), &[(Who::Floor, floor)]),
            "yes (best only)"
        );
        assert_eq!(met(&spec, None, &[(Who::Floor, floor)]), "—");
        assert_eq!(met(&spec, Some(mp), &[]), "? (peer missing)");
        // Higher is better, several targets.
        let spec = Metric::PoolChunk1.spec(&cfg);
        let mp = Stats {
            head: 2e6,
            tail: 1.5e6,
        };
        let py = Stats {
            head: 5e4,
            tail: 4e4,
        };
        let ps = Stats {
            head: 2e4,
            tail: 1e4,
        };
        let peers = [(Who::PythonMp, py), (Who::Procspawn, ps)];
        assert_eq!(met(&spec, Some(mp), &peers), "yes");
        let slow = Stats {
            head: 9e5,
            tail: 9e5,
        };
        assert_eq!(met(&spec, Some(slow), &peers), "**no**");
    }
}
