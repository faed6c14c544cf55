#!/usr/bin/env python3
"""Python multiprocessing peers that shared/anchors/python does not measure,
printed in the same line format so that multiproc-bench parses them alike.

Subcommands:
  pipe_rtt       ping-pong of a pickled int with a child, every round trip
                 timed: over two Pipe(duplex=False) (os.pipe) and over one
                 Pipe() (duplex, socketpair)
  queue_latency  one-way Queue put -> get latency: the parent puts
                 time.perf_counter(), the child subtracts it from its own
                 clock (CLOCK_MONOTONIC is system-wide on Linux) and acks
                 over a pipe before the next put (unloaded latency)
  queue22        2 producer processes -> one Queue -> 2 consumer processes,
                 N ints in total; timed from the barrier to the last sentinel
  imap_rss       sum(Pool(2).imap(double, range(N), chunksize=C)): peak RSS
                 (VmHWM) of the parent and of the two workers
  idle           Pool(N).map(sleep, [T] * N, chunksize=1): the CPU seconds the N
                 workers use meanwhile (their CPU clocks, clock_getcpuclockid)
  bytes          Pool(1).apply returning an M MB bytes object, and taking one

Usage: python3 extra.py pipe_rtt [--n 20000]
       python3 extra.py queue_latency [--n 5000]
       python3 extra.py queue22 [--n 200000] [--runs 3]
       python3 extra.py imap_rss [--n 1000000] [--chunksize 1000]
       python3 extra.py idle [--n 16] [--secs 2.0]
       python3 extra.py bytes [--mb 200] [--runs 3]
"""
import argparse
import ctypes
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time


def double(x):
    return x * 2


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))]


def lat_line(label, xs):
    print("  %-44s min %8.1f us  median %8.1f us  p50 %8.1f us  p99 %8.1f us" % (
        label, min(xs) * 1e6, statistics.median(xs) * 1e6, pct(xs, 50) * 1e6,
        pct(xs, 99) * 1e6), flush=True)


# --- pipe_rtt ---------------------------------------------------------------
def echo_child(rx, tx):
    while True:
        x = rx.recv()
        if x is None:
            break
        tx.send(x)


def rtt(ctx, rx, tx, child_rx, child_tx, n):
    p = ctx.Process(target=echo_child, args=(child_rx, child_tx))
    p.start()
    for i in range(200):
        tx.send(i)
        rx.recv()
    xs = []
    for i in range(n):
        t0 = time.perf_counter()
        tx.send(i)
        rx.recv()
        xs.append(time.perf_counter() - t0)
    tx.send(None)
    p.join()
    assert p.exitcode == 0
    return xs


def pipe_rtt(ctx, a):
    c_rx, p_tx = ctx.Pipe(duplex=False)
    p_rx, c_tx = ctx.Pipe(duplex=False)
    lat_line("Pipe(duplex=False) x2 ping-pong RTT",
             rtt(ctx, p_rx, p_tx, c_rx, c_tx, a.n))
    c1, c2 = ctx.Pipe()
    lat_line("Pipe() duplex ping-pong RTT", rtt(ctx, c1, c1, c2, c2, a.n))


# --- queue_latency ----------------------------------------------------------
def latency_child(q, ack, out, warm):
    xs = []
    while True:
        ts = q.get()
        if ts is None:
            break
        xs.append(time.perf_counter() - ts)
        ack.send_bytes(b"k")
    out.send(xs[warm:])


def queue_latency(ctx, a):
    q = ctx.Queue()
    ack_r, ack_w = ctx.Pipe(duplex=False)
    out_r, out_w = ctx.Pipe(duplex=False)
    warm = 200
    p = ctx.Process(target=latency_child, args=(q, ack_w, out_w, warm))
    p.start()
    for _ in range(warm + a.n):
        q.put(time.perf_counter())
        ack_r.recv_bytes()
    q.put(None)
    xs = out_r.recv()
    p.join()
    assert p.exitcode == 0 and len(xs) == a.n
    lat_line("Queue put->get latency", xs)


# --- queue22 ----------------------------------------------------------------
def q_producer(q, lo, hi, barrier, out):
    barrier.wait()
    t0 = time.perf_counter()
    put = q.put
    for i in range(lo, hi):
        put(i)
    put(None)
    out.send(("t0", t0, 0))


def q_consumer(q, barrier, out):
    barrier.wait()
    get = q.get
    cnt = 0
    while get() is not None:
        cnt += 1
    out.send(("t1", time.perf_counter(), cnt))


def queue22_once(ctx, n):
    q = ctx.Queue()
    barrier = ctx.Barrier(5)
    res_r, res_w = ctx.Pipe(duplex=False)
    half = n // 2
    procs = [ctx.Process(target=q_consumer, args=(q, barrier, res_w)) for _ in range(2)]
    procs += [ctx.Process(target=q_producer, args=(q, lo, hi, barrier, res_w))
              for lo, hi in ((0, half), (half, n))]
    for p in procs:
        p.start()
    barrier.wait()
    msgs = [res_r.recv() for _ in range(4)]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    t0 = min(m[1] for m in msgs if m[0] == "t0")
    t1 = max(m[1] for m in msgs if m[0] == "t1")
    assert sum(m[2] for m in msgs) == n
    return t1 - t0


def queue22(ctx, a):
    queue22_once(ctx, 1000)  # warm-up
    times = [queue22_once(ctx, a.n) for _ in range(a.runs)]
    print("  %-20s min %7.3f s  median %7.3f s  -> %10.0f msgs/s (best)  %10.0f msgs/s (median)" % (
        "Queue 2->2", min(times), statistics.median(times), a.n / min(times),
        a.n / statistics.median(times)), flush=True)


# --- imap_rss ---------------------------------------------------------------
def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def imap_rss(ctx, a):
    with ctx.Pool(2) as pool:
        s = 0
        for x in pool.imap(double, range(a.n), chunksize=a.chunksize):
            s += x
        assert s == a.n * (a.n - 1)
        workers = sum(vm_hwm_kib(p.pid) for p in pool._pool)
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print("  %-44s value %8.1f MiB" % ("imap peak RSS parent", parent / 1024.0))
    print("  %-44s value %8.1f MiB" % ("imap peak RSS workers (sum)", workers / 1024.0),
          flush=True)


# --- idle -------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def cpu_of(pid):
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        raise OSError("clock_getcpuclockid(%d) failed" % pid)
    return time.clock_gettime(clock.value)


def sleep_then_pid(secs):
    time.sleep(secs)
    return os.getpid()


def idle(ctx, a):
    with ctx.Pool(a.n) as pool:
        pool.map(len, [()] * (4 * a.n), chunksize=1)  # the workers are up
        pids = [p.pid for p in pool._pool]
        before = sum(cpu_of(p) for p in pids)
        ran = pool.map(sleep_then_pid, [a.secs] * a.n, chunksize=1)
        used = sum(cpu_of(p) for p in pids) - before
        assert len(set(ran)) == a.n, "%d sleeping tasks ran on %d workers" % (a.n, len(set(ran)))
    print("  %-44s value %8.4f cpu s" % ("idle %d workers sleeping" % a.n, used), flush=True)


# --- bytes ------------------------------------------------------------------
def make_bytes(n):
    return b"\x07" * n


def bytes_rows(ctx, a):
    n = a.mb * 1000000
    res, arg = [], []
    with ctx.Pool(1) as pool:
        pool.apply(make_bytes, (16,))  # warm-up
        for _ in range(a.runs):
            t0 = time.perf_counter()
            b = pool.apply(make_bytes, (n,))
            res.append(time.perf_counter() - t0)
            assert len(b) == n and b[-1] == 7
            t0 = time.perf_counter()
            assert pool.apply(len, (b,)) == n
            arg.append(time.perf_counter() - t0)
            del b
    for label, xs in (("bytes result Pool.apply", res), ("bytes argument Pool.apply", arg)):
        print("  %-44s min %8.1f ms  median %8.1f ms" % (
            label, min(xs) * 1e3, statistics.median(xs) * 1e3), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["pipe_rtt", "queue_latency", "queue22", "imap_rss",
                                     "idle", "bytes"])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunksize", type=int, default=1000)
    ap.add_argument("--secs", type=float, default=2.0)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--start-method", default=None)
    a = ap.parse_args()
    if a.n is None:
        a.n = {"pipe_rtt": 20000, "queue_latency": 5000, "queue22": 200000,
               "imap_rss": 1000000, "idle": 16, "bytes": 0}[a.what]
    ctx = mp.get_context(a.start_method)
    print("python %s, start method=%s, %s n=%d" % (
        platform.python_version(), ctx.get_start_method(), a.what, a.n))
    {"bytes": bytes_rows}.get(a.what, globals().get(a.what))(ctx, a)


if __name__ == "__main__":
    main()
