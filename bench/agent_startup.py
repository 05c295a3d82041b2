#!/usr/bin/env python3
"""The remote agent's start-up: from spawning ``hsync agent`` (as ssh would start it on
the far side, without ssh) to the answers of the hello, the open, ``root_error``,
``root_id`` and ``id_names``: what every remote run pays once. An interleaved A/B of two
installs (regular ones: this machine sets PYTHONDONTWRITEBYTECODE), medians of the
wall time and of the agent's CPU time (user + system: under load, what moves least).

    python3 bench/agent_startup.py TREE VENV_A VENV_B [--rounds 31]

Run it with an interpreter that has hsync's dependencies (either venv's ``python``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import time

from hsync.remote.protocol import MAGIC, PROTOCOL, Framer, hsync_version


def once(venv: str, tree: str) -> float:
    """Seconds from the spawn to the last of the five answers."""
    t0 = time.perf_counter()
    p = subprocess.Popen([f"{venv}/bin/hsync", "agent"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    frames = Framer(p.stdout, p.stdin, compress=True)
    frames.send([0, "hello", [MAGIC, PROTOCOL, hsync_version(), True]])
    frames.send([1, "open", [tree, "destination", []]])
    for rid, method in enumerate(("root_error", "root_id", "id_names"), start=2):
        frames.send([rid, method, []])
    answered: set[int] = set()
    while len(answered) < 5:
        rid, tag, value = frames.recv()
        if tag == "err":
            raise SystemExit(f"{venv}: {value}")
        answered.add(rid)
    elapsed = time.perf_counter() - t0
    p.stdin.close()
    p.wait()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree")
    ap.add_argument("venvs", nargs=2)
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    times: dict[str, list[float]] = {v: [] for v in args.venvs}
    cpu: dict[str, list[float]] = {v: [] for v in args.venvs}
    for r in range(args.rounds):
        for v in args.venvs if r % 2 == 0 else args.venvs[::-1]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[v].append(once(v, args.tree))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[v].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    for v, ts in times.items():
        print(f"{statistics.median(ts) * 1000:7.1f} ms median "
              f"[{min(ts) * 1000:.1f}-{max(ts) * 1000:.1f}], CPU "
              f"{statistics.median(cpu[v]) * 1000:.1f} ms  {v}")


if __name__ == "__main__":
    main()
