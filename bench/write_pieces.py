#!/usr/bin/env python3
"""What one ``write`` of how many bytes costs in the page cache (hsync's
``posix.WRITE_PIECE``): writes N files of SIZE bytes into a new directory under WORKDIR
in writes of STEP bytes each, for every STEP given, interleaved ROUNDS times, and prints
each run's wall and system seconds, then the median per STEP. Linux only; stdlib only.

    python3 bench/write_pieces.py N SIZE WORKDIR ROUNDS STEP [STEP ...]
    python3 bench/write_pieces.py 1000 1048576 /var/tmp 3 1048576 262144 65536

The kernel gives a buffered write a folio as large as the write (ext4, xfs). On a
virtual machine whose balloon reports free pages to its host, the high-order free
blocks such folios come from have been handed back, and the copy into a new folio
faults every page back in from the host: there the system time grows with the write's
size (session 28: 1,000 x 1 MiB took 6.7-8.1 s in 1 MiB writes, 0.3-0.5 s in 64 KiB).
On bare metal the steps cost about the same. The directories are removed at the end
(each run writes new files: no file is rewritten)."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import time


def run(top: str, n: int, size: int, step: int, data: memoryview) -> tuple[float, float]:
    """Wall and system seconds of writing ``n`` new files in ``top``."""
    os.mkdir(top)
    dfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t0 = time.perf_counter()
    try:
        for i in range(n):
            fd = os.open(f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=dfd)
            try:
                for off in range(0, size, step):
                    piece = data[off:off + step]
                    while piece:
                        piece = piece[os.write(fd, piece):]
            finally:
                os.close(fd)
    finally:
        os.close(dfd)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0


def main() -> None:
    n, size, work, rounds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    steps = [int(s) for s in sys.argv[5:]]
    data = memoryview(os.urandom(size))
    base = os.path.join(work, f"write-pieces-{os.getpid()}")
    os.mkdir(base)
    got: dict[int, list[tuple[float, float]]] = {s: [] for s in steps}
    try:
        for r in range(rounds):
            for step in steps:
                os.sync()  # no run pays for the one before
                wall, system = run(os.path.join(base, f"{r}-{step}"), n, size, step, data)
                got[step].append((wall, system))
                print(f"round {r + 1}  writes of {step:>8} B  wall {wall:6.2f} s  "
                      f"system {system:6.2f} s", flush=True)
        print(f"\n{n} files of {size:,} B, medians of {rounds} rounds")
        for step, runs in got.items():
            print(f"writes of {step:>8} B: wall {statistics.median(w for w, _ in runs):6.2f} s"
                  f"  system {statistics.median(s for _, s in runs):6.2f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
