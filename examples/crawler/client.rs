//! A minimal HTTP/1.1 client in std: `GET` over one keep-alive `TcpStream`, reconnecting
//! when the server closed it. Enough for the crawler example's own server (and bounded, so
//! a misbehaving server gives an error, never an unbounded allocation).

#![allow(dead_code)] // the example and the benchmark each use a part of it

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::site::read_line;

/// The largest body the client accepts.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// A keep-alive connection to one `host:port`.
#[derive(Debug)]
pub(crate) struct Client {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

/// `http://host:port/path` → (`host:port`, `/path`).
pub(crate) fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Client {
    /// A client for `addr` (`host:port`); connects on first use.
    pub(crate) fn new(addr: String) -> Client {
        Client { addr, conn: None }
    }

    /// `GET path`: the status and the body. A keep-alive connection the server has closed
    /// meanwhile is reopened once.
    pub(crate) fn get(&mut self, path: &str) -> io::Result<(u16, String)> {
        let reused = self.conn.is_some();
        match self.try_get(path) {
            Err(_) if reused => {
                self.conn = None;
                self.try_get(path)
            }
            r => r,
        }
    }

    fn try_get(&mut self, path: &str) -> io::Result<(u16, String)> {
        let r = self.exchange(path);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn exchange(&mut self, path: &str) -> io::Result<(u16, String)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: multiproc-crawler\r\n\r\n",
            self.addr
        );
        conn.get_mut().write_all(request.as_bytes())?;
        let status_line = read_line(conn)?.ok_or_else(|| bad("connection closed"))?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed status line"))?;
        let (mut length, mut close) = (None, false);
        for _ in 0..100 {
            let h = read_line(conn)?.ok_or_else(|| bad("connection closed in the headers"))?;
            if h.is_empty() {
                let n: usize = length.ok_or_else(|| bad("no Content-Length"))?;
                if n > MAX_BODY {
                    return Err(bad("body too large"));
                }
                let mut body = vec![0; n];
                conn.read_exact(&mut body)?;
                if close {
                    self.conn = None;
                }
                let body = String::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?;
                return Ok((status, body));
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|_| bad("bad Content-Length"))?,
                    );
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        Err(bad("too many headers"))
    }
}

/// The same-origin links of an HTML page: every `href="/..."`, made absolute with `origin`
/// (`http://host:port`); links to other sites are left out.
pub(crate) fn links(origin: &str, html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("href=\"") {
        rest = &rest[i + 6..];
        let Some(end) = rest.find('"') else { break };
        let href = &rest[..end];
        rest = &rest[end..];
        if href.starts_with('/') {
            out.push(format!("{origin}{href}"));
        } else if href.starts_with(origin) {
            out.push(href.to_string());
        }
    }
    out
}
