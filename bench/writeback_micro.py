#!/usr/bin/env python3
"""Does starting a file's writeback before closing it (``sync_file_range(fd, 0, 0,
SYNC_FILE_RANGE_WRITE)``, hsync's ``posix.start_writeback``) pay for files of a given
size? Writes N files of SIZE bytes (20 a directory) into a new directory under WORKDIR,
with the call after each file's write or without it, then one ``syncfs``; prints the
seconds (and CPU seconds) of the writes and of the flush. Linux only; stdlib only.

    python3 bench/writeback_micro.py N SIZE {0,1} [WORKDIR]     # 1: with the call

Run both variants alternately several times: the disk is shared and noisy."""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import sys
import time


def main() -> None:
    n, size, with_call = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    work = sys.argv[4] if len(sys.argv) > 4 else "/tmp"
    libc = ctypes.CDLL(None, use_errno=True)
    sfr = libc.sync_file_range
    sfr.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    top = os.path.join(work, f"writeback-micro-{os.getpid()}")
    os.mkdir(top)
    data = os.urandom(size)
    os.sync()

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    sub = top
    for i in range(n):
        if i % 20 == 0:
            sub = os.path.join(top, str(i // 20))
            os.mkdir(sub)
        fd = os.open(os.path.join(sub, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        if with_call:
            sfr(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE
        os.close(fd)
    t1, c1 = time.perf_counter(), cpu()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    libc.syncfs(fd)
    os.close(fd)
    t2 = time.perf_counter()
    print(f"n={n} size={size} writeback={int(with_call)}: writes {t1 - t0:.3f} s "
          f"(cpu {c1 - c0:.3f} s), syncfs {t2 - t1:.3f} s, total {t2 - t0:.3f} s")
    shutil.rmtree(top)


if __name__ == "__main__":
    main()
