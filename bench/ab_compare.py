#!/usr/bin/env python3
"""A/B of two (or more) hsync installs on one pair of trees, interleaved round by round.

    python3 bench/ab_compare.py memory SRC DST --rounds 4 VENV_A VENV_B
    python3 bench/ab_compare.py startup SRC DST --state STATE --rounds 21 VENV_A VENV_B
    python3 bench/ab_compare.py noop SRC DST --state STATE --rounds 5 VENV_A VENV_B
    python3 bench/ab_compare.py initial SRC DST --rounds 3 VENV_A VENV_B

``startup``: per install, ``python -c pass`` (its interpreter), ``hsync --version`` and
``hsync sync SRC DST --state STATE --no-progress --json`` (a no-op of a small tree:
sync it once first) and the same without ``--json`` (its one line of text), plus
``rsync -a --delete`` of the same trees; the ratios to
``python -c pass`` are printed too (the start-up target of issue 15). ``memory``:
``hsync diff SRC DST`` with a new, empty history each time (a full
comparison: both trees scanned and compared whole). ``noop``: ``hsync sync SRC DST
--state STATE`` (a no-op re-sync with a complete history: sync once first), plus
``rsync -a --delete`` of the same trees. ``initial``: ``hsync sync SRC DST.N --state
DST.N.state`` into a new destination each time, beside ``rsync -a SRC/ DST.N/; sync -f
DST.N`` as one command (the same durability), the source read whole (untimed) before
each command; the previous command's destination is deleted before it and the disk
flushed and settled (``bench_fs.settle``), so a command pays only for its own writes
and one destination at a time exists. Each command is spawned directly and reaped
with ``os.wait4``: wall clock, CPU (user + system, its children included) and peak RSS
(``ru_maxrss``: the largest single process, the run or its scan child). Medians.
Stdlib only; ``os.sync()`` before each command.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench_fs import settle


def run(argv: Sequence[str]) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, peak RSS (KiB), exit code of ``argv``."""
    os.sync()
    devnull = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], list(argv), os.environ, file_actions=devnull)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, os.waitstatus_to_exitcode(status)


def warm(root: str) -> None:
    """Read every file under ``root`` (untimed; ``bench_fs.warm``)."""
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("memory", "noop", "initial", "startup"))
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("venvs", nargs="+", help="virtual environments with hsync installed")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--state", help="history file (noop)")
    p.add_argument("--rsync", default="/usr/bin/rsync")
    args = p.parse_args(argv)
    tools: dict[str, list[str]] = {}
    for v in args.venvs:
        hsync = os.path.join(v, "bin", "hsync")
        if args.what == "noop":
            if not args.state:
                p.error("noop needs --state")
            tools[v] = [hsync, "sync", args.src, args.dst, "--state", args.state,
                        "--no-progress"]
        elif args.what == "startup":
            if not args.state:
                p.error("startup needs --state")
            tools[f"{v}: python -c pass"] = [os.path.join(v, "bin", "python"), "-c", "pass"]
            tools[f"{v}: hsync --version"] = [hsync, "--version"]
            tools[f"{v}: hsync sync (no-op)"] = [hsync, "sync", args.src, args.dst, "--state",
                                                 args.state, "--no-progress", "--json"]
            tools[f"{v}: hsync sync (no-op, text)"] = [
                hsync, "sync", args.src, args.dst, "--state", args.state, "--no-progress"]
        elif args.what == "initial":
            tools[v] = [hsync, "sync", args.src, "{dst}", "--state", "{dst}.state",
                        "--no-progress"]
        else:
            tools[v] = [hsync, "diff", args.src, args.dst, "--state"]
    if args.what == "initial":
        tools["rsync; sync -f"] = ["/bin/sh", "-c", f"{args.rsync} -a \"$1\"/ \"$2\"/ && "
                                   "sync -f \"$2\"", "sh", args.src, "{dst}"]
    if args.what in ("noop", "startup"):
        tools["rsync"] = [args.rsync, "-a", "--delete", args.src + "/", args.dst + "/"]
    results: dict[str, list[tuple[float, float, int, int]]] = {k: [] for k in tools}
    names = list(tools)
    made: list[str] = []
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            cmd = list(tools[name])
            if args.what == "initial":
                _remove(made)
                dst = f"{args.dst}.{len(made)}"
                made.append(dst)
                cmd = [c.replace("{dst}", dst) for c in cmd]
                settle(Path(os.path.dirname(os.path.abspath(dst))))
            state = None
            if args.what == "memory":
                state = tempfile.mktemp(prefix="ab-state-", dir=tempfile.gettempdir())
                cmd.append(state)
            if args.what == "initial":
                warm(args.src)  # every command starts with the source in the page cache
            results[name].append(run(cmd))
            if state is not None:
                for suffix in ("", "-journal", "-wal", "-shm", ".lock"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(state + suffix)
    for name, xs in results.items():
        print(
            f"{name}: wall {statistics.median(x[0] for x in xs):.3f} s, "
            f"cpu {statistics.median(x[1] for x in xs):.3f} s, "
            f"peak rss {statistics.median(x[2] for x in xs) / 1024:.1f} MiB, "
            f"exit codes {sorted({x[3] for x in xs})}, walls {[round(x[0], 2) for x in xs]}"
        )
    if args.what == "startup":  # medians of the per-round ratios to the same round's pass
        for v in args.venvs:
            base = results[f"{v}: python -c pass"]
            for name in (f"{v}: hsync --version", f"{v}: hsync sync (no-op)",
                         f"{v}: hsync sync (no-op, text)", "rsync"):
                walls = [x[0] / b[0] for x, b in zip(results[name], base, strict=True)]
                cpus = [x[1] / b[1] for x, b in zip(results[name], base, strict=True) if b[1]]
                print(f"{name} / {v}: python -c pass: wall {statistics.median(walls):.2f}x, "
                      f"cpu {statistics.median(cpus):.2f}x" if cpus else "")
    sys.stdout.flush()
    _remove(made)
    return 0


def _remove(made: list[str]) -> None:
    """Delete the destinations (and their histories) made so far."""
    for dst in made:
        shutil.rmtree(dst, ignore_errors=True)
        for f in glob.glob(glob.escape(dst) + ".state*"):
            os.unlink(f)


if __name__ == "__main__":
    raise SystemExit(main())
