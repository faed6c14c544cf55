#!/usr/bin/env python3
"""Python twins of multiproc-bench's sync rows (bench/src/sync_rows.rs), same workloads:

  lock uncontended   mp.Lock acquire + release in one process, ns per pair
  lock hand-off      two processes take turns: with lock: if turn == me: turn = other
                     (a RawValue guarded by an mp.Lock), us per turn
  event ping-pong    two mp.Events, parent sets a / waits b, child waits a / sets b,
                     us per round trip
  value add          two processes each do N times: with v.get_lock(): v.value += 1
                     (an mp.Value('q')), increments per second in total
  barrier round      mp.Barrier(2), both processes wait N times, us per round

Each prints one line "  <label>: <number> <unit>", parsed by sync_rows.rs.

Usage: python3 sync.py [--n-lock 1000000] [--n-ipc 2000] [--n-add 100000]
"""
import argparse
import multiprocessing as mp
import platform
import time


def lock_uncontended(n):
    lock = mp.Lock()
    acq, rel = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acq()
        rel()
    return (time.perf_counter() - t0) / n * 1e9


def turns(lock, turn, me, n):
    done = 0
    while done < n:
        with lock:
            if turn.value == me:
                turn.value = 1 - me
                done += 1


def lock_handoff(ctx, n):
    lock, turn = ctx.Lock(), ctx.RawValue("q", 0)
    p = ctx.Process(target=turns, args=(lock, turn, 1, n))
    p.start()
    t0 = time.perf_counter()
    turns(lock, turn, 0, n)
    p.join()
    return (time.perf_counter() - t0) / (2 * n) * 1e6


def pong(a, b, n):
    for _ in range(n):
        a.wait()
        a.clear()
        b.set()


def event_ping_pong(ctx, n):
    a, b = ctx.Event(), ctx.Event()
    p = ctx.Process(target=pong, args=(a, b, n))
    p.start()
    t0 = time.perf_counter()
    for _ in range(n):
        a.set()
        b.wait()
        b.clear()
    dt = time.perf_counter() - t0
    p.join()
    return dt / n * 1e6


def adder(v, n, go):
    go.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def value_add(ctx, n):
    v, go = ctx.Value("q", 0), ctx.Event()
    ps = [ctx.Process(target=adder, args=(v, n, go)) for _ in range(2)]
    for p in ps:
        p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t0
    assert v.value == 2 * n, v.value
    return 2 * n / dt


def rounds(b, n):
    for _ in range(n):
        b.wait()


def barrier_round(ctx, n):
    b = ctx.Barrier(2)
    p = ctx.Process(target=rounds, args=(b, n))
    p.start()
    b.wait()
    t0 = time.perf_counter()
    rounds(b, n - 1)
    dt = time.perf_counter() - t0
    p.join()
    return dt / (n - 1) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-lock", type=int, default=1000000)
    ap.add_argument("--n-ipc", type=int, default=2000)
    ap.add_argument("--n-add", type=int, default=100000)
    a = ap.parse_args()
    ctx = mp.get_context("fork")
    print("python %s, sync rows" % platform.python_version())
    print("  lock uncontended: %.2f ns" % lock_uncontended(a.n_lock), flush=True)
    print("  lock hand-off: %.3f us" % lock_handoff(ctx, a.n_ipc), flush=True)
    print("  event ping-pong: %.3f us" % event_ping_pong(ctx, a.n_ipc), flush=True)
    print("  value add: %.0f ops/s" % value_add(ctx, a.n_add), flush=True)
    print("  barrier round: %.3f us" % barrier_round(ctx, a.n_ipc), flush=True)


if __name__ == "__main__":
    main()
