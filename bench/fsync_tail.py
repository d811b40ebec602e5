#!/usr/bin/env python3
"""bench/fsync_tail.py — how long one small append + fdatasync takes on this machine's disk, with
the CPUs idle and with busy-loop processes on one or every CPU, at the probe's own priority
(nice 0, as wrk and nginx are in bench/run.sh) and at nice 19 (so they never hold a CPU the
probe wants). passgate's decision record waits for exactly this before every forward, so its
tail under load is the floor of passgate's added p99 on this disk.

Usage: python3 bench/fsync_tail.py [DIR] (default: the current directory; use the filesystem the
audit log lives on). Writes and removes one scratch file there; starts nothing else.
"""

import os
import sys
import time
import multiprocessing

N = 3000
RECORD = b"x" * 2047 + b"\n"  # about one decision record plus its outcome


def probe(directory):
    path = os.path.join(directory, ".passgate-fsync-probe-%d" % os.getpid())
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_APPEND, 0o600)
    lat = []
    try:
        for _ in range(N):
            os.write(fd, RECORD)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    return sum(lat) / len(lat) * 1000, q(0.5), q(0.99), q(0.999)


def spin(nice):
    os.nice(nice)
    while True:
        pass


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    cpus = os.cpu_count() or 1
    print("fdatasync after a 2 KiB append, %d samples each, in %s (%d CPUs)" % (N, directory, cpus))
    print("%-24s %8s %8s %8s %9s" % ("busy loops", "mean ms", "p50 ms", "p99 ms", "p99.9 ms"))
    rows = [(0, 0)] + [(n, nice) for nice in (19, 0) for n in sorted({1, cpus})]
    for busy, nice in rows:
        spinners = [
            multiprocessing.Process(target=spin, args=(nice,), daemon=True) for _ in range(busy)
        ]
        for s in spinners:
            s.start()
        try:
            mean, p50, p99, p999 = probe(directory)
        finally:
            for s in spinners:
                s.terminate()
                s.join()
        label = "none" if busy == 0 else "%d of %d CPUs, nice %d" % (busy, cpus, nice)
        print("%-24s %8.3f %8.3f %8.3f %9.3f" % (label, mean, p50, p99, p999))


if __name__ == "__main__":
    main()
