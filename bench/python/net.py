"""multiprocessing.connection Listener/Client: connect + authkey over TCP, and u64-sized
round trips over TCP loopback and a Unix socket (server in a thread, as the Rust rows).

Usage: net.py CONNECTS RTT_MSGS
Prints: "connect_ms: v v ...", "tcp_rtt_us: ...", "unix_rtt_us: ..." (one value per sample).
"""
import os
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Client, Listener

KEY = b"multiproc-bench authkey, 32 byte"


def serve(listener, n_conns):
    for _ in range(n_conns):
        c = listener.accept()
        try:
            while True:
                c.send(c.recv())
        except EOFError:
            pass
        c.close()


def main():
    connects, msgs = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    with Listener(("127.0.0.1", 0), authkey=KEY) as l:
        t = threading.Thread(target=serve, args=(l, connects + 1), daemon=True)
        t.start()
        v = []
        for _ in range(connects):
            t0 = time.perf_counter()
            c = Client(l.address, authkey=KEY)
            v.append((time.perf_counter() - t0) * 1e3)
            c.close()
        out["connect_ms"] = v
        c = Client(l.address, authkey=KEY)
        v = []
        for i in range(200 + msgs):
            t0 = time.perf_counter()
            c.send(i)
            c.recv()
            if i >= 200:
                v.append((time.perf_counter() - t0) * 1e6)
        c.close()
        out["tcp_rtt_us"] = v
        t.join(30)
    path = os.path.join(tempfile.mkdtemp(), "s")
    with Listener(path, family="AF_UNIX", authkey=KEY) as l:
        t = threading.Thread(target=serve, args=(l, 1), daemon=True)
        t.start()
        c = Client(path, family="AF_UNIX", authkey=KEY)
        v = []
        for i in range(200 + msgs):
            t0 = time.perf_counter()
            c.send(i)
            c.recv()
            if i >= 200:
                v.append((time.perf_counter() - t0) * 1e6)
        c.close()
        out["unix_rtt_us"] = v
        t.join(30)
    os.rmdir(os.path.dirname(path))
    for k, v in out.items():
        print(k + ": " + " ".join("%.3f" % x for x in v))


main()
