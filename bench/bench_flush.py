#!/usr/bin/env python3
"""How a batch that only deleted files is made durable, measured: one ``syncfs`` of the
filesystem against an ``fsync`` of each directory that lost a file, on 8 threads (what
``hsync.backends.fs.durable.flush_nodes`` does for a batch of at most ``FEW`` nodes).

    python3 bench/bench_flush.py /tmp/somewhere/fsb --rounds 7 --sizes 16,29,132,624

Makes max(sizes) directories of 3 empty files under the given path; each round, for
each size N and each way (the order alternating), removes a file from each of N
directories (and sets the directory's mtime, as the applier does), times the flush,
puts the files back and flushes untimed. Medians [lowest-highest] in ms, and the load
average. ``--writer`` adds a process that dirties 4 MiB every 50 ms beside it (another
program on a shared disk: what a ``syncfs`` also has to write back). Stdlib only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

WRITER = """
import os, sys, time
buf, i = os.urandom(4 << 20), 0
with open(sys.argv[1], "wb") as f:
    while True:
        f.seek((i % 32) * len(buf)); f.write(buf); f.flush(); i += 1; time.sleep(0.05)
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sizes", default="16,29,132,624")
    p.add_argument("--writer", action="store_true")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    libc = ctypes.CDLL(None, use_errno=True)
    dirs = [os.path.join(a.root, f"d{i:04d}") for i in range(max(sizes))]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        for j in range(3):
            open(os.path.join(d, f"f{j}"), "a").close()
    pool = ThreadPoolExecutor(8)

    def syncfs(_: list[str]) -> None:
        fd = os.open(a.root, os.O_RDONLY)
        try:
            libc.syncfs(fd)
        finally:
            os.close(fd)

    def one(d: str) -> None:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsyncs(ds: list[str]) -> None:
        list(pool.map(one, ds))

    ways: dict[str, Callable[[list[str]], None]] = {"syncfs": syncfs, "fsync x8 threads": fsyncs}
    got: dict[tuple[int, str], list[float]] = {(n, w): [] for n in sizes for w in ways}
    writer = None
    if a.writer:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, os.path.join(a.root, "dirty")])
    try:
        syncfs([])
        for r in range(a.rounds):
            for n in sizes:
                for w in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                    ds = dirs[:n]
                    for d in ds:
                        os.unlink(os.path.join(d, "f0"))
                        os.utime(d)
                    t = time.perf_counter()
                    ways[w](ds)
                    got[(n, w)].append(time.perf_counter() - t)
                    for d in ds:
                        open(os.path.join(d, "f0"), "a").close()
                    syncfs([])
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
            os.unlink(os.path.join(a.root, "dirty"))
    for n in sizes:
        print(f"{n} directories: " + "  ".join(
            f"{w} {1000 * statistics.median(got[(n, w)]):.1f} ms "
            f"[{1000 * min(got[(n, w)]):.1f}-{1000 * max(got[(n, w)]):.1f}]" for w in ways))
    print("load average", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
