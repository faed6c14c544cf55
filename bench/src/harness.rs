//! The measuring harness: who is measured, what is measured, and how rounds
//! are interleaved.
//!
//! A [`Job`] is one competitor's measurement routine. Every call of it is one
//! *round* and returns observations ([`Obs`]) for one or more table rows
//! ([`Metric`]). Jobs of the same [`Group`] are interleaved: round 1 runs
//! A, B, C; round 2 runs B, C, A; and so on, so that a burst of load from
//! other processes on this shared machine hits every competitor alike.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Instant;

use crate::metrics::{Group, Metric};

/// Result type of a measurement: any error is reported in the notes under
/// the table and the run goes on.
pub type BenchResult<T> = Result<T, Box<dyn Error>>;

/// Who a measurement belongs to; one column of the table each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    Multiproc,
    PythonMp,
    PythonCf,
    Procspawn,
    Rayon,
    Floor,
}

impl Who {
    /// Column header / label.
    pub fn name(self) -> &'static str {
        match self {
            Who::Multiproc => "multiproc",
            Who::PythonMp => "python mp",
            Who::PythonCf => "python cf",
            Who::Procspawn => "procspawn",
            Who::Rayon => "rayon",
            Who::Floor => "floor",
        }
    }
}

/// One round's observation for one cell.
#[derive(Clone, Debug)]
pub enum Obs {
    /// Individual samples in the row's unit (e.g. one spawn+join time in
    /// ms, one batch's tasks/s, one message's latency in µs).
    Raw(Vec<f64>),
    /// A summary made elsewhere (a Python script's min and median over its
    /// own runs, or a speedup min/min and median/median). `best` is the
    /// min for lower-is-better rows and the max for higher-is-better rows.
    Summary { best: f64, median: f64 },
    /// Percentiles made elsewhere (a Python latency script).
    Percentiles { p50: f64, p99: f64 },
}

/// All observations of one competitor for one row, over all rounds.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub obs: Vec<Obs>,
}

/// What a cell shows: `best / median`, or `p50 / p99` for latency rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Headline value: best (min time / max rate) or p50. Ratios and goals
    /// use this one.
    pub head: f64,
    /// Second value: median, or p99.
    pub tail: f64,
}

impl Cell {
    /// Best and median. Raw samples are pooled over rounds; summaries are
    /// combined as best-of-bests and median-of-medians.
    pub fn best_median(&self, higher_is_better: bool) -> Option<Stats> {
        let mut raw = Vec::new();
        let mut bests = Vec::new();
        let mut medians = Vec::new();
        for o in &self.obs {
            match o {
                Obs::Raw(v) => raw.extend_from_slice(v),
                Obs::Summary { best, median } => {
                    bests.push(*best);
                    medians.push(*median);
                }
                Obs::Percentiles { p50, .. } => {
                    bests.push(*p50);
                    medians.push(*p50);
                }
            }
        }
        if !raw.is_empty() {
            bests.extend(if higher_is_better {
                max(&raw)
            } else {
                min(&raw)
            });
            medians.push(median(&raw));
        }
        let best = if higher_is_better {
            max(&bests)?
        } else {
            min(&bests)?
        };
        Some(Stats {
            head: best,
            tail: median(&medians),
        })
    }

    /// p50 and p99. Raw samples are pooled over rounds; percentile summaries
    /// are combined as the median over rounds of each.
    pub fn p50_p99(&self) -> Option<Stats> {
        let mut raw = Vec::new();
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        for o in &self.obs {
            match o {
                Obs::Raw(v) => raw.extend_from_slice(v),
                Obs::Percentiles { p50, p99 } => {
                    p50s.push(*p50);
                    p99s.push(*p99);
                }
                Obs::Summary { best, median } => {
                    p50s.push(*median);
                    p99s.push(*best);
                }
            }
        }
        if !raw.is_empty() {
            p50s.push(percentile(&raw, 50.0));
            p99s.push(percentile(&raw, 99.0));
        }
        if p50s.is_empty() {
            return None;
        }
        Some(Stats {
            head: median(&p50s),
            tail: median(&p99s),
        })
    }
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

/// Median (mean of the two middle values for even lengths); NaN if empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile, the same rule as the Python scripts' `pct`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[k.min(s.len() - 1)]
}

/// Speedup of `parallel` over `serial` times measured in the same round:
/// best = min/min, median = median/median (as `bench_f_cpu_scaling.py`).
pub fn speedup(serial: &[f64], parallel: &[f64]) -> Obs {
    Obs::Summary {
        best: min(serial).unwrap_or(f64::NAN) / min(parallel).unwrap_or(f64::NAN),
        median: median(serial) / median(parallel),
    }
}

/// Seconds taken by `f`.
pub fn time<R>(f: impl FnOnce() -> R) -> (f64, R) {
    let t0 = Instant::now();
    let r = f();
    (t0.elapsed().as_secs_f64(), r)
}

type RunFn = Box<dyn FnMut() -> BenchResult<Vec<(Metric, Who, Obs)>>>;

/// One competitor's measurement routine; each call is one round.
pub struct Job {
    pub group: Group,
    pub label: String,
    run: RunFn,
}

impl Job {
    /// A job that feeds one row. `f` measures one round.
    pub fn one(who: Who, metric: Metric, mut f: impl FnMut() -> BenchResult<Obs> + 'static) -> Job {
        Job {
            group: metric.group(),
            label: format!("{} / {}", who.name(), metric.id()),
            run: Box::new(move || Ok(vec![(metric, who, f()?)])),
        }
    }

    /// A job that feeds the same observation to several rows (e.g. fork +
    /// waitpid is the floor of every start-method row). The job belongs to
    /// the group of the first metric.
    pub fn same_for(
        who: Who,
        metrics: &[Metric],
        mut f: impl FnMut() -> BenchResult<Obs> + 'static,
    ) -> Job {
        let metrics = metrics.to_vec();
        Job {
            group: metrics[0].group(),
            label: format!("{} / {}", who.name(), metrics[0].id()),
            run: Box::new(move || {
                let o = f()?;
                Ok(metrics.iter().map(|m| (*m, who, o.clone())).collect())
            }),
        }
    }

    /// A job that feeds several rows with different observations (e.g. one
    /// Python script that prints many metrics).
    pub fn many(
        who: Who,
        group: Group,
        label: &str,
        mut f: impl FnMut() -> BenchResult<Vec<(Metric, Obs)>> + 'static,
    ) -> Job {
        Job {
            group,
            label: format!("{} / {}", who.name(), label),
            run: Box::new(move || Ok(f()?.into_iter().map(|(m, o)| (m, who, o)).collect())),
        }
    }

    /// Like [`Job::many`], for a routine that feeds several columns (e.g.
    /// one Python script measuring both multiprocessing and
    /// concurrent.futures).
    pub fn many_who(
        who: Who,
        group: Group,
        label: &str,
        f: impl FnMut() -> BenchResult<Vec<(Metric, Who, Obs)>> + 'static,
    ) -> Job {
        Job {
            group,
            label: format!("{} / {}", who.name(), label),
            run: Box::new(f),
        }
    }
}

/// Everything measured in a run.
#[derive(Default)]
pub struct Results {
    pub cells: BTreeMap<(Metric, Who), Cell>,
    /// Errors and skips, printed under the table.
    pub notes: Vec<String>,
}

impl Results {
    pub fn cell(&self, m: Metric, w: Who) -> Option<&Cell> {
        self.cells.get(&(m, w)).filter(|c| !c.obs.is_empty())
    }
}

/// Runs every group's jobs for `rounds` rounds (the group may ask for
/// fewer), interleaved, rotating the starting job each round. A job that
/// fails or panics is dropped from the following rounds of this run.
pub fn run_all(jobs: Vec<Job>, rounds: usize, results: &mut Results) {
    let mut by_group: BTreeMap<Group, Vec<Job>> = BTreeMap::new();
    for j in jobs {
        by_group.entry(j.group).or_default().push(j);
    }
    for (group, mut gjobs) in by_group {
        let rounds = group.rounds(rounds);
        let t0 = Instant::now();
        eprintln!(
            "[{}] {} jobs x {} rounds (interleaved)",
            group.name(),
            gjobs.len(),
            rounds
        );
        let mut failed = vec![false; gjobs.len()];
        for round in 0..rounds {
            let n = gjobs.len();
            for k in 0..n {
                let i = (round + k) % n;
                if failed[i] {
                    continue;
                }
                let job = &mut gjobs[i];
                // A panicking job (e.g. a peer's assertion) becomes a note.
                let (dt, r) = time(|| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut job.run))
                        .unwrap_or_else(|_| Err("panicked".into()))
                });
                match r {
                    Ok(obs) => {
                        eprintln!("  round {} {:<40} {:6.2} s", round + 1, job.label, dt);
                        for (m, who, o) in obs {
                            results.cells.entry((m, who)).or_default().obs.push(o);
                        }
                    }
                    Err(e) => {
                        eprintln!("  round {} {:<40} FAILED: {e}", round + 1, job.label);
                        results.notes.push(format!("{}: {}", job.label, e));
                        failed[i] = true;
                    }
                }
            }
        }
        eprintln!(
            "[{}] done in {:.1} s",
            group.name(),
            t0.elapsed().as_secs_f64()
        );
    }
}
