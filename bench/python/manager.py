"""multiprocessing.managers.SyncManager: one dict operation (alternately d[k] = i and d[k])
over a Unix socket and over TCP loopback, and the ops/s of N concurrent client threads (each
thread gets its own connection, as SyncManager proxies do). The server runs in a child
process, as Manager() starts it; the Rust rows do the same.

Usage: manager.py OPS CLIENTS
Prints: "unix_op_us: v v ...", "tcp_op_us: ...", "concurrent_ops_s: v".
"""
import os
import sys
import tempfile
import threading
import time
from multiprocessing.managers import SyncManager

KEY = b"multiproc-bench manager authkey!"
WARMUP = 200


def dict_ops(m, n):
    d = m.dict()
    v = []
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        if i % 2 == 0:
            d["k"] = i
        else:
            d["k"]
        if i >= WARMUP:
            v.append((time.perf_counter() - t0) * 1e6)
    return v


def concurrent(m, n, clients):
    per = max(n // clients, 100)
    dicts = [m.dict() for _ in range(clients)]

    def run(d):
        for i in range(per):
            if i % 2 == 0:
                d[1] = i
            else:
                d[1]

    threads = [threading.Thread(target=run, args=(d,)) for d in dicts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * clients / (time.perf_counter() - t0)


def main():
    n, clients = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    d = tempfile.mkdtemp()
    path = os.path.join(d, "m")
    with SyncManager(address=path, authkey=KEY) as m:
        out["unix_op_us"] = dict_ops(m, n)
        out["concurrent_ops_s"] = [concurrent(m, n * 2, clients)]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.rmdir(d)
    with SyncManager(address=("127.0.0.1", 0), authkey=KEY) as m:
        out["tcp_op_us"] = dict_ops(m, n)
    for k, v in out.items():
        print(k + ": " + " ".join("%.3f" % x for x in v))


main()
