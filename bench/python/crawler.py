#!/usr/bin/env python3
"""Python twin of examples/crawler.rs, for multiproc-bench's crawl rows.

Crawls the generated site that the benchmark serves on 127.0.0.1:PORT (the same Rust
server as the example) breadth-first from /page/0, the way a Python user writes it: a
multiprocessing.Pool whose initializer opens one keep-alive http.client connection per
worker, apply_async with a callback and an error callback feeding a queue, and the main
loop pushing every new same-site link as pages come back.

Timing matches the Rust side: the pool is started before and joined after the timed
region; wall = first submit to last result; cpu = this process's CPU clock (all threads)
plus each worker's CPU clock (clock_getcpuclockid through ctypes) over that interval.

Prints: crawl ok N missing M idsum S wall W s cpu C s

Usage: python3 crawler.py --port PORT [--workers 8]
"""
import argparse
import ctypes
import http.client
import multiprocessing as mp
import queue
import re
import sys
import time

HREF = re.compile(r'href="([^"]*)"')

_conn = None
_origin = None


def init(host, port):
    global _conn, _origin
    _conn = http.client.HTTPConnection(host, port, timeout=30)
    _origin = "http://%s:%d" % (host, port)


def fetch(url):
    """GET url over this worker's keep-alive connection: (url, status, same-site links)."""
    path = url[len(_origin):]
    for attempt in (0, 1):
        try:
            _conn.request("GET", path)
            resp = _conn.getresponse()
            body = resp.read()
            break
        except (http.client.HTTPException, OSError):
            _conn.close()  # reopened by the next request
            if attempt:
                raise
    links = []
    if resp.status == 200:
        for href in HREF.findall(body.decode()):
            if href.startswith("/"):
                links.append(_origin + href)
            elif href.startswith(_origin):
                links.append(href)
    return url, resp.status, links


_libc = ctypes.CDLL(None, use_errno=True)


def cpu_of(pid):
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        raise OSError("clock_getcpuclockid(%d) failed" % pid)
    return time.clock_gettime(clock.value)


def crawl(pool, origin):
    done = queue.SimpleQueue()
    start = origin + "/page/0"
    seen = {start}
    pool.apply_async(fetch, (start,), callback=done.put, error_callback=done.put)
    pending = 1
    ok, missing = set(), 0
    while pending:
        r = done.get()
        pending -= 1
        if isinstance(r, BaseException):
            raise r
        url, status, links = r
        if status == 200:
            ok.add(int(url[len(origin) + len("/page/"):]))
            for link in links:
                if link not in seen:
                    seen.add(link)
                    pending += 1
                    pool.apply_async(fetch, (link,), callback=done.put,
                                     error_callback=done.put)
        elif status == 404:
            missing += 1
        else:
            raise RuntimeError("%s: status %d" % (url, status))
    return ok, missing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    origin = "http://127.0.0.1:%d" % a.port
    pool = mp.Pool(a.workers, initializer=init, initargs=("127.0.0.1", a.port))
    pool.map(len, [()] * (4 * a.workers), chunksize=1)  # the workers are up
    pids = [p.pid for p in pool._pool]
    cpu0, w0 = time.process_time(), sum(cpu_of(p) for p in pids)
    t0 = time.perf_counter()
    ok, missing = crawl(pool, origin)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0 + sum(cpu_of(p) for p in pids) - w0
    pool.close()
    pool.join()
    print("python %s, start method=%s, %d workers" % (
        sys.version.split()[0], mp.get_start_method(), a.workers))
    print("crawl ok %d missing %d idsum %d wall %.4f s cpu %.4f s" % (
        len(ok), missing, sum(ok), wall, cpu), flush=True)


if __name__ == "__main__":
    main()
