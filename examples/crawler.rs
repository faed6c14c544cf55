//! A web crawler on a process pool: the program a Python user writes with
//! `Pool.apply_async` and a growing frontier.
//!
//! `cargo run --release --features progress --example crawler [PAGES] [WORKERS]`
//! (default 3,000 pages, 8 workers).
//!
//! A threaded HTTP/1.1 server on `127.0.0.1` (std only, `crawler/site.rs`) serves a generated
//! site: thousands of linked pages, some slow, some links to missing pages (404), some external
//! links, and orphan pages nothing reachable links to. The pool crawls it breadth-first from
//! `/page/0` (pages are queued in the order they are found): each page is one task, `fetch(url)
//! -> (url, status, links)`, run in a worker that keeps one keep-alive connection (its
//! per-worker state, made by the pool's initializer). New links go into the pool as pages come
//! back, and a progress bar shows the crawl. At the end the crawl is checked against the site's
//! ground truth, from the crawler's side and from the server's request counts: every reachable
//! page fetched exactly once, every missing page answered 404 once, no orphan fetched. The
//! program exits with status 1 on any mismatch.

#[path = "crawler/client.rs"]
mod client;
#[path = "crawler/site.rs"]
mod site;

use std::collections::{BTreeSet, HashSet};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use multiproc::{with_worker_state, AsCompleted, Pool};

use client::Client;
use site::{Server, Site};

/// Fetches one page in a pool worker over the worker's keep-alive connection; returns the
/// URL, the status and the same-site links of the page.
fn fetch(url: String) -> (String, u16, Vec<String>) {
    let (addr, path) = client::split_url(&url).expect("the crawler queues only http:// URLs");
    let origin = format!("http://{addr}");
    let answer = with_worker_state(|c: &mut Client| c.get(path))
        .expect("the pool's initializer gives every worker a client");
    match answer {
        Ok((200, body)) => {
            let links = client::links(&origin, &body);
            (url, 200, links)
        }
        Ok((status, _)) => (url, status, Vec::new()),
        // Comes back to the crawler as an `ErrorKind::Panicked` error with this message.
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn arg(n: usize, default: u32) -> u32 {
    match std::env::args().nth(n) {
        None => default,
        Some(a) => a.parse().unwrap_or_else(|_| {
            eprintln!("usage: crawler [PAGES] [WORKERS] (got {a:?})");
            std::process::exit(2)
        }),
    }
}

fn main() -> multiproc::Result<ExitCode> {
    let (pages, workers) = (arg(1, 3000), arg(2, 8));
    let site = Site::new(pages);
    let server = Server::start(site)?;
    let origin = server.origin();

    // Network-bound work: more workers than CPUs. Each worker's initializer makes its client,
    // which connects on first use and keeps the connection for the worker's later pages.
    let pool = Pool::builder()
        .processes(workers as usize)
        .name("crawler")
        .initializer(Client::new, format!("127.0.0.1:{}", server.port()))
        .build()?;

    let bar = ProgressBar::new(1);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} pages {per_sec} {msg}") {
        bar.set_style(style);
    }

    let t = Instant::now();
    let start = format!("{origin}/page/0");
    let mut seen = HashSet::from([start.clone()]);
    let mut pending = AsCompleted::new();
    pending.push(pool.apply_async(fetch, start));
    let (mut fetched, mut not_found, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(page) = pending.next() {
        bar.inc(1);
        match page {
            Ok((url, 200, links)) => {
                fetched.push(url);
                for link in links {
                    if seen.insert(link.clone()) {
                        pending.push(pool.apply_async(fetch, link));
                    }
                }
                bar.set_length(seen.len() as u64);
            }
            Ok((url, 404, _)) => not_found.push(url),
            Ok((url, status, _)) => problems.push(format!("{url}: status {status}")),
            Err(e) => problems.push(format!("a fetch failed: {e}")),
        }
    }
    let elapsed = t.elapsed();
    bar.finish_and_clear();
    pool.close();
    pool.join()?;

    println!(
        "crawled {} pages with {workers} workers in {:.2} s ({:.0} pages/s): {} OK, {} not found",
        fetched.len() + not_found.len(),
        elapsed.as_secs_f64(),
        (fetched.len() + not_found.len()) as f64 / elapsed.as_secs_f64(),
        fetched.len(),
        not_found.len(),
    );

    problems.extend(check(site, &server, &origin, &fetched, &not_found));
    if problems.is_empty() {
        let truth = site.truth();
        println!(
            "matches the site: {} reachable pages fetched once each, {} missing pages answered \
             404 once each, {} unreachable pages never fetched",
            truth.reachable.len(),
            truth.missing.len(),
            truth.unreachable.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "the crawl does not match the site ({} problems):",
            problems.len()
        );
        for p in problems.iter().take(20) {
            eprintln!("  {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Compares the crawl with the site's ground truth, from the crawler's results and from
/// the server's request counts.
fn check(
    site: Site,
    server: &Server,
    origin: &str,
    fetched: &[String],
    not_found: &[String],
) -> Vec<String> {
    let truth = site.truth();
    let mut problems = Vec::new();
    let ids = |urls: &[String], what: &str, problems: &mut Vec<String>| -> BTreeSet<u32> {
        let mut set = BTreeSet::new();
        for u in urls {
            match u
                .strip_prefix(origin)
                .and_then(|p| p.strip_prefix("/page/"))
                .and_then(|i| i.parse().ok())
            {
                Some(i) if set.insert(i) => {}
                Some(_) => problems.push(format!("{u} {what} twice")),
                None => problems.push(format!("{u} {what}, but it is not a page of the site")),
            }
        }
        set
    };
    let ok = ids(fetched, "fetched", &mut problems);
    let missing = ids(not_found, "answered 404", &mut problems);
    if ok != truth.reachable {
        problems.push(format!(
            "fetched {} pages, the site has {} reachable ones (first differences: {:?})",
            ok.len(),
            truth.reachable.len(),
            ok.symmetric_difference(&truth.reachable)
                .take(5)
                .collect::<Vec<_>>()
        ));
    }
    if missing != truth.missing {
        problems.push(format!(
            "{} pages answered 404, the site links to {} missing ones",
            missing.len(),
            truth.missing.len()
        ));
    }
    // The server's view: how often each page was requested.
    for (i, n) in server.hits.per_page.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        let i = i as u32;
        let expected = u32::from(truth.reachable.contains(&i) || truth.missing.contains(&i));
        if n != expected {
            let what = if truth.unreachable.contains(&i) {
                " (unreachable)"
            } else {
                ""
            };
            problems.push(format!(
                "the server got {n} requests for /page/{i}{what}, expected {expected}"
            ));
        }
    }
    let (other, bad) = (
        server.hits.other.load(Ordering::Relaxed),
        server.hits.bad.load(Ordering::Relaxed),
    );
    if other + bad > 0 {
        problems.push(format!(
            "the server got {other} requests for other paths and {bad} malformed ones"
        ));
    }
    problems
}
