//! The crawler example's web site: a generated link graph and a small threaded HTTP/1.1
//! server for it (std only). Shared with the benchmark (`bench/src/crawl.rs` includes this
//! file), so the Rust and Python crawlers there crawl the very same site.
//!
//! Page `i` (`/page/i`, `0 <= i < pages`) links to 3 to 6 pages chosen by a hash of `i`,
//! plus the next page in the chain, so every ordinary page is reachable from `/page/0`.
//! Some links point past the last page (those answer 404), some pages answer slowly, some
//! carry an external link a crawler must not follow, and every tenth page (`i % 10 == 9`) is
//! an *orphan*: only other orphans link to it, so a correct crawl never fetches it.
//! [`Site::truth`] computes what a correct breadth-first crawl from `/page/0` must fetch;
//! the server counts every request ([`Hits`]), so a crawl can be checked from the server's
//! side as well.

#![allow(dead_code)] // the example and the benchmark each use a part of it

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The generated site: only its size and a seed; everything else is computed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Site {
    /// Number of existing pages (`/page/0` .. `/page/{pages-1}`).
    pub(crate) pages: u32,
    /// How long a slow page takes to answer.
    pub(crate) slow: Duration,
}

/// What a correct crawl from `/page/0` fetches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Truth {
    /// Existing pages reachable from `/page/0`: each fetched exactly once, status 200.
    pub(crate) reachable: BTreeSet<u32>,
    /// Missing pages linked from reachable ones: each fetched exactly once, status 404.
    pub(crate) missing: BTreeSet<u32>,
    /// Existing pages no reachable page links to: never fetched.
    pub(crate) unreachable: BTreeSet<u32>,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser: a good 64-bit hash of a counter.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Site {
    /// A site of `pages` pages (at least 1) whose slow pages take 20 ms.
    pub(crate) fn new(pages: u32) -> Site {
        Site {
            pages: pages.max(1),
            slow: Duration::from_millis(20),
        }
    }

    /// Missing pages are numbered `pages .. pages + missing_span()`.
    pub(crate) fn missing_span(&self) -> u32 {
        self.pages / 20 + 1
    }

    /// Whether page `i` is an orphan (linked only from other orphans).
    pub(crate) fn is_orphan(&self, i: u32) -> bool {
        i % 10 == 9
    }

    /// Whether page `i` answers slowly (about 1 in 40 pages).
    pub(crate) fn is_slow(&self, i: u32) -> bool {
        mix(u64::from(i) ^ 0x51_0000_0000) % 40 == 17
    }

    /// The pages that page `i` links to (ids `>= pages` are missing pages).
    pub(crate) fn links(&self, i: u32) -> Vec<u32> {
        let n = self.pages;
        let mut out = Vec::new();
        // The chain: the next ordinary page (orphans chain among themselves too).
        let next = if self.is_orphan(i) {
            i + 10
        } else {
            i + 1 + u32::from(self.is_orphan(i + 1))
        };
        if next < n {
            out.push(next);
        }
        let h = mix(u64::from(i));
        for j in 0..3 + h % 4 {
            let h = mix(u64::from(i) << 8 | j);
            let r = (h >> 40) as u32;
            let target = if h % 100 < 6 {
                n + r % self.missing_span()
            } else {
                let t = r % n;
                if self.is_orphan(t) && !self.is_orphan(i) {
                    t - 1
                } else {
                    t
                }
            };
            out.push(target);
        }
        out
    }

    /// Whether page `i` carries an external link (which a crawler must not follow).
    pub(crate) fn has_external_link(&self, i: u32) -> bool {
        i % 7 == 3
    }

    /// The HTML of page `i`.
    pub(crate) fn body(&self, i: u32) -> String {
        let mut s = format!(
            "<!doctype html><html><head><title>Page {i}</title></head><body>\n<h1>Page {i}</h1>\n\
             <p>Generated page {i} of {}. Lorem ipsum dolor sit amet, consectetur adipiscing \
             elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.</p>\n<ul>\n",
            self.pages
        );
        for t in self.links(i) {
            s.push_str(&format!("<li><a href=\"/page/{t}\">page {t}</a></li>\n"));
        }
        if self.has_external_link(i) {
            s.push_str("<li><a href=\"https://example.org/elsewhere\">elsewhere</a></li>\n");
        }
        s.push_str("</ul>\n</body></html>\n");
        s
    }

    /// Breadth-first search from `/page/0` over the link graph.
    pub(crate) fn truth(&self) -> Truth {
        let mut t = Truth::default();
        let mut seen = BTreeSet::from([0u32]);
        let mut frontier = VecDeque::from([0u32]);
        while let Some(i) = frontier.pop_front() {
            if i >= self.pages {
                t.missing.insert(i);
                continue;
            }
            t.reachable.insert(i);
            for l in self.links(i) {
                if seen.insert(l) {
                    frontier.push_back(l);
                }
            }
        }
        t.unreachable = (0..self.pages)
            .filter(|i| !t.reachable.contains(i))
            .collect();
        t
    }
}

/// Requests the server answered, per page (existing and missing), and the rest.
#[derive(Debug)]
pub(crate) struct Hits {
    /// `per_page[i]`: requests for `/page/i`, for `i < pages + missing_span`.
    pub(crate) per_page: Vec<AtomicU32>,
    /// Requests for any other path, or for a page beyond the missing span.
    pub(crate) other: AtomicU32,
    /// Requests that could not be parsed (answered 400).
    pub(crate) bad: AtomicU32,
}

/// A running server for a [`Site`] on `127.0.0.1`, one thread per connection (keep-alive
/// connections are served until the client closes them). Dropping it stops accepting.
#[derive(Debug)]
pub(crate) struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    /// What was requested so far.
    pub(crate) hits: Arc<Hits>,
    /// Connections currently open.
    pub(crate) open: Arc<AtomicUsize>,
}

/// The longest request line or header line the server (and the client) accept.
pub(crate) const MAX_LINE: u64 = 8 * 1024;

impl Server {
    /// Binds `127.0.0.1:0` and starts serving `site`.
    pub(crate) fn start(site: Site) -> io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let span = (site.pages + site.missing_span()) as usize;
        let hits = Arc::new(Hits {
            per_page: (0..span).map(|_| AtomicU32::new(0)).collect(),
            other: AtomicU32::new(0),
            bad: AtomicU32::new(0),
        });
        let acceptor = {
            let (stop, hits, open) = (stop.clone(), hits.clone(), open.clone());
            std::thread::Builder::new()
                .name("site-acceptor".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let (hits, open) = (hits.clone(), open.clone());
                        open.fetch_add(1, Ordering::AcqRel);
                        let spawned =
                            std::thread::Builder::new()
                                .name("site-conn".into())
                                .spawn(move || {
                                    let _ = serve(site, conn, &hits);
                                    open.fetch_sub(1, Ordering::AcqRel);
                                });
                        if spawned.is_err() {
                            // No thread for it: the connection is dropped (the client sees EOF).
                        }
                    }
                })?
        };
        Ok(Server {
            port,
            stop,
            acceptor: Some(acceptor),
            hits,
            open,
        })
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:{port}`.
    pub(crate) fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the acceptor with one last connection.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Reads one CRLF- or LF-terminated line of at most [`MAX_LINE`] bytes; `Ok(None)` at a clean
/// end of stream.
pub(crate) fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = String::new();
    let n = r.by_ref().take(MAX_LINE).read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or truncated",
        ));
    }
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(Some(line))
}

/// Serves one connection until the client closes it or asks for `Connection: close`.
fn serve(site: Site, conn: TcpStream, hits: &Hits) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let Some(request) = read_line(&mut reader)? else {
            return Ok(());
        };
        let mut close = false;
        let mut headers = 0;
        loop {
            let Some(h) = read_line(&mut reader)? else {
                return Ok(());
            };
            if h.is_empty() {
                break;
            }
            headers += 1;
            if headers > 100 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "too many headers",
                ));
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let mut parts = request.split(' ');
        let (method, path, version) = (parts.next(), parts.next(), parts.next());
        let (status, body) = match (method, path, version) {
            (Some("GET"), Some(path), Some(v)) if v.starts_with("HTTP/1.") => {
                if v == "HTTP/1.0" {
                    close = true;
                }
                answer(site, path, hits)
            }
            _ => {
                hits.bad.fetch_add(1, Ordering::Relaxed);
                close = true;
                (400, "bad request\n".to_string())
            }
        };
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            _ => "Bad Request",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        out.write_all(head.as_bytes())?;
        out.write_all(body.as_bytes())?;
        if close {
            let _ = out.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// Status and body for `path`, counting the request.
fn answer(site: Site, path: &str, hits: &Hits) -> (u16, String) {
    let id = path
        .strip_prefix("/page/")
        .and_then(|s| s.parse::<u32>().ok());
    match id {
        Some(i) if (i as usize) < hits.per_page.len() => {
            hits.per_page[i as usize].fetch_add(1, Ordering::Relaxed);
            if i >= site.pages {
                return (404, format!("<h1>no page {i}</h1>\n"));
            }
            if site.is_slow(i) {
                std::thread::sleep(site.slow);
            }
            (200, site.body(i))
        }
        _ => {
            hits.other.fetch_add(1, Ordering::Relaxed);
            (404, "<h1>not found</h1>\n".to_string())
        }
    }
}
