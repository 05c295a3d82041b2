#!/usr/bin/env python3
"""A/B of two (or more) hsync installs on spread deletes (``bench_fs.py``'s scenario d),
interleaved round by round, with the nodes each run compared.

    python3 bench/ab_deletes.py TREE WORK --deletes 200 --rounds 5 VENV_A VENV_B

``TREE``: a tree directory of ``bench_fs.py``'s cache (``WORKDIR/trees/<key>``: its
``src`` and ``manifest.json``, whose ``delete_files`` pool the deletes are spread over).
Each install syncs into its own destination with its own history under ``WORK`` (two
untimed syncs first: the copy, and a re-sync). Each round moves the files aside, times
each install's ``hsync sync --json`` (wall, CPU of the process and its children, its
``elapsed`` and the nodes it compared), puts the files and their directories' mtimes
back and re-syncs every install (untimed, also printed). Medians at the end. Stdlib
only; ``os.sync()`` before each command. The source tree is changed during the run and
restored after each round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence


def _fmt(r: tuple[float, float, float, int]) -> str:
    return f"wall {r[0]:.3f} cpu {r[1]:.3f} elapsed {r[2]:.3f} compared {r[3]}"


def run(venv: str, src: str, dst: str, state: str) -> tuple[float, float, float, int]:
    """Wall, CPU, hsync's ``elapsed`` and nodes compared (both sides) of one sync."""
    argv = [os.path.join(venv, "bin", "hsync"), "sync", src, dst, "--json", "--no-progress",
            "--state", state]
    os.sync()
    r, w = os.pipe()
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
    os.close(w)
    out = b""
    while chunk := os.read(r, 1 << 16):
        out += chunk
    os.close(r)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]}: exit {os.waitstatus_to_exitcode(status)}")
    rep = json.loads(out)
    compared = rep["compared"]["source"] + rep["compared"]["destination"]
    return wall, ru.ru_utime + ru.ru_stime, float(rep["elapsed"]), compared


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tree")
    p.add_argument("work")
    p.add_argument("venvs", nargs="+")
    p.add_argument("--deletes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    with open(os.path.join(a.tree, "manifest.json")) as f:
        pool = json.load(f)["delete_files"]
    victims = pool[:: max(1, len(pool) // a.deletes)][: a.deletes]
    src = os.path.join(a.tree, "src")
    aside = os.path.join(a.work, "aside")
    os.makedirs(aside, exist_ok=True)
    names = [os.path.basename(os.path.normpath(v)) + f"-{i}" for i, v in enumerate(a.venvs)]
    place = {n: (os.path.join(a.work, f"dst-{n}"), os.path.join(a.work, f"state-{n}.sqlite"))
             for n in names}
    for n, venv in zip(names, a.venvs, strict=True):
        for what in ("copy", "re-sync"):
            print(n, what, _fmt(run(venv, src, *place[n])), flush=True)
    got: dict[str, list[tuple[float, float, float, int]]] = {n: [] for n in names}
    pairs = list(zip(names, a.venvs, strict=True))
    for rnd in range(a.rounds):
        dirs = {os.path.dirname(os.path.join(src, v)) for v in victims}
        mtimes = {d: os.stat(d).st_mtime_ns for d in dirs}
        for i, v in enumerate(victims):
            os.rename(os.path.join(src, v), os.path.join(aside, str(i)))
        try:
            for n, venv in pairs if rnd % 2 == 0 else pairs[::-1]:
                got[n].append(run(venv, src, *place[n]))
                print(rnd + 1, n, "deletes:", _fmt(got[n][-1]), flush=True)
        finally:
            for i, v in enumerate(victims):
                os.rename(os.path.join(aside, str(i)), os.path.join(src, v))
            for d, ns in mtimes.items():
                os.utime(d, ns=(ns, ns))
        for n, venv in pairs:
            print(rnd + 1, n, "restore:", _fmt(run(venv, src, *place[n])), flush=True)
    for n in names:
        wall, cpu, elapsed, compared = (statistics.median(c) for c in zip(*got[n], strict=True))
        print(f"{n}: median wall {wall:.3f} s, cpu {cpu:.3f} s, elapsed {elapsed:.3f} s, "
              f"compared {compared:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
