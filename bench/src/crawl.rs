//! The crawl rows: `examples/crawler.rs`'s crawl (a pool fetching a generated site over
//! keep-alive HTTP, the frontier growing as pages come back) against its Python twin
//! (`bench/python/crawler.py`: `Pool.apply_async` with callbacks, `http.client`), both
//! crawling the same site served by the same Rust server (`examples/crawler/site.rs`).
//!
//! The server runs in a separate process (this binary, started with [`SITE_ENV`]), so its
//! CPU time is nobody's. Both crawlers are timed the same way: the pool is built before
//! and joined after the timed region; wall = first submit to last result; CPU = this
//! process's CPU clock (all threads) plus every worker's CPU clock over that interval.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::{with_worker_state, Pool};

use crate::client::{self, Client};
use crate::config::Config;
use crate::cputime;
use crate::harness::{BenchResult, Job, Obs, Who};
use crate::metrics::{Group, Metric};
use crate::python::Python;
use crate::site::{Server, Site};
use multiproc::AsCompleted;

/// Set to a page count, this binary serves that site: it prints `port N` and serves until
/// its standard input closes.
pub const SITE_ENV: &str = "MULTIPROC_BENCH_SITE";

/// Serves the site if [`SITE_ENV`] asks for it (then never returns).
pub fn serve_if_asked() {
    let Some(pages) = std::env::var_os(SITE_ENV) else {
        return;
    };
    let pages: u32 = pages
        .to_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("{SITE_ENV} must be a page count");
            std::process::exit(2)
        });
    let server = match Server::start(Site::new(pages)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("site server: {e}");
            std::process::exit(1)
        }
    };
    println!("port {}", server.port());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0)
}

/// The site server process; stopped (stdin closed, then waited for) when dropped.
struct SiteProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl SiteProcess {
    fn start(pages: u32) -> BenchResult<SiteProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(SITE_ENV, pages.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("site server said {line:?}").into());
        };
        Ok(SiteProcess { child, stdin, port })
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example's task: one page over the worker's keep-alive connection.
fn fetch(url: String) -> (String, u16, Vec<String>) {
    let (addr, path) = client::split_url(&url).expect("only http:// URLs are queued");
    let origin = format!("http://{addr}");
    let answer = with_worker_state(|c: &mut Client| c.get(path)).expect("initializer ran");
    match answer {
        Ok((200, body)) => {
            let links = client::links(&origin, &body);
            (url, 200, links)
        }
        Ok((status, _)) => (url, status, Vec::new()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Checks the crawl's counts against the site's ground truth.
fn check(site: Site, ok: usize, missing: usize, idsum: u64) -> BenchResult<()> {
    let t = site.truth();
    let want_sum: u64 = t.reachable.iter().map(|&i| u64::from(i)).sum();
    if ok != t.reachable.len() || missing != t.missing.len() || idsum != want_sum {
        return Err(format!(
            "crawl mismatch: {ok} pages (want {}), {missing} not found (want {}), id sum {idsum} \
             (want {want_sum})",
            t.reachable.len(),
            t.missing.len()
        )
        .into());
    }
    Ok(())
}

fn page_id(origin: &str, url: &str) -> Option<u32> {
    url.strip_prefix(origin)?
        .strip_prefix("/page/")?
        .parse()
        .ok()
}

/// One multiproc crawl (s, CPU s).
fn crawl_multiproc(cfg: &Config, port: u16) -> BenchResult<Vec<(Metric, Obs)>> {
    let origin = format!("http://127.0.0.1:{port}");
    let pool = Pool::builder()
        .processes(cfg.crawl_workers)
        .initializer(Client::new, format!("127.0.0.1:{port}"))
        .build()?;
    let pids = pool.pids();
    let (cpu0, workers0) = (cputime::own(), cputime::sum(&pids)?);
    let t = Instant::now();

    let start = format!("{origin}/page/0");
    let mut seen = HashSet::from([start.clone()]);
    let mut pending = AsCompleted::new();
    pending.push(pool.apply_async(fetch, start));
    let (mut ok, mut missing) = (BTreeSet::new(), 0usize);
    while let Some(page) = pending.next() {
        match page? {
            (url, 200, links) => {
                ok.insert(page_id(&origin, &url).ok_or("not a page")?);
                for link in links {
                    if seen.insert(link.clone()) {
                        pending.push(pool.apply_async(fetch, link));
                    }
                }
            }
            (_, 404, _) => missing += 1,
            (url, status, _) => return Err(format!("{url}: status {status}").into()),
        }
    }

    let wall = t.elapsed().as_secs_f64();
    let cpu = cputime::own() - cpu0 + cputime::sum(&pids)? - workers0;
    pool.close();
    pool.join()?;
    let idsum = ok.iter().map(|&i| u64::from(i)).sum();
    check(Site::new(cfg.crawl_pages), ok.len(), missing, idsum)?;
    Ok(vec![
        (Metric::CrawlWall, Obs::Raw(vec![wall])),
        (Metric::CrawlCpu, Obs::Raw(vec![cpu])),
    ])
}

/// One crawl by `bench/python/crawler.py`. Its last line reads
/// `crawl ok N missing M idsum S wall W s cpu C s`.
fn crawl_python(cfg: &Config, py: &Python, port: u16) -> BenchResult<Vec<(Metric, Obs)>> {
    let args = [
        "--port".to_string(),
        port.to_string(),
        "--workers".into(),
        cfg.crawl_workers.to_string(),
    ];
    let out = py.run(&py.script("crawler.py"), &args)?;
    let l = out
        .lines()
        .find(|l| l.starts_with("crawl ok "))
        .ok_or("crawler.py printed no result line")?;
    let toks: Vec<&str> = l.split_whitespace().collect();
    let field = |key: &str| -> BenchResult<f64> {
        let i = toks
            .iter()
            .position(|t| *t == key)
            .ok_or_else(|| format!("no {key} in {l:?}"))?;
        Ok(toks.get(i + 1).ok_or("truncated")?.parse()?)
    };
    check(
        Site::new(cfg.crawl_pages),
        field("ok")? as usize,
        field("missing")? as usize,
        field("idsum")? as u64,
    )?;
    Ok(vec![
        (Metric::CrawlWall, Obs::Raw(vec![field("wall")?])),
        (Metric::CrawlCpu, Obs::Raw(vec![field("cpu")?])),
    ])
}

/// The crawl jobs: multiproc and, if Python is there, its twin. Each job starts its own
/// site server on its first round and stops it when the run ends.
pub fn jobs(cfg: &Config, py: Option<&Python>) -> Vec<Job> {
    let mut jobs = Vec::new();
    let c = cfg.clone();
    let mut server: Option<SiteProcess> = None;
    jobs.push(Job::many(
        Who::Multiproc,
        Group::Crawl,
        "crawl",
        move || {
            if server.is_none() {
                server = Some(SiteProcess::start(c.crawl_pages)?);
            }
            crawl_multiproc(&c, server.as_ref().map_or(0, |s| s.port))
        },
    ));
    if let Some(py) = py {
        let (c, py) = (cfg.clone(), py.clone());
        let mut server: Option<SiteProcess> = None;
        jobs.push(Job::many(
            Who::PythonMp,
            Group::Crawl,
            "crawler.py",
            move || {
                if server.is_none() {
                    server = Some(SiteProcess::start(c.crawl_pages)?);
                }
                crawl_python(&c, &py, server.as_ref().map_or(0, |s| s.port))
            },
        ));
    }
    jobs
}
