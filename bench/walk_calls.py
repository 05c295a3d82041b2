#!/usr/bin/env python3
"""The C helper's two per-file calls, one install against another: ``_walk.list`` of
every directory of a tree with its extended attributes asked for (a push's scan of its
source), and ``_walk.create`` of small files (a push's far side publishing them).

    python3 bench/walk_calls.py TREE DIR VENV_A VENV_B [--rounds 5] [--files 20000]

TREE is listed whole (it should be in the page cache: one untimed pass first); the
files are created in a fresh directory under DIR each round (removed after). Each
round runs both installs, in turn, in processes of their own (pinned to CPU 0), and
prints the microseconds per name; then the medians and their ratio. Session 29 used it
for the calls by ``/proc/self/fd`` paths against ``listxattrat`` and ``linkat`` of the
descriptor itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

CHILD = r'''
import json, os, sys, time
from hsync import _walk
tree, where, files = sys.argv[1], sys.argv[2], int(sys.argv[3])
dirs = []
for top, subdirs, _ in os.walk(tree):
    dirs.append(top)
names = 0
t = time.perf_counter()
for d in dirs:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names += len(_walk.list(fd, True))
    finally:
        os.close(fd)
listed = time.perf_counter() - t
os.makedirs(where)
dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
data = b"x" * 2000
t = time.perf_counter()
for i in range(files):
    err, stage = _walk.create(dfd, f"f{i}", data, 0o644, -1, 1_700_000_000_000_000_000)
    if err:
        raise SystemExit(f"create failed: {os.strerror(err)} at stage {stage}")
created = time.perf_counter() - t
os.close(dfd)
print(json.dumps({"list_us": listed / names * 1e6, "create_us": created / files * 1e6,
                  "names": names}))
'''


def one(venv: str, tree: str, where: str, files: int) -> dict[str, float]:
    p = subprocess.run(["taskset", "-c", "0", f"{venv}/bin/python", "-c", CHILD, tree, where,
                        str(files)], capture_output=True, text=True, check=False)
    shutil.rmtree(where, ignore_errors=True)
    if p.returncode != 0:
        raise SystemExit(f"{venv}: {p.stderr.strip()[-400:]}")
    got: dict[str, float] = json.loads(p.stdout.strip().splitlines()[-1])
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree")
    ap.add_argument("dir")
    ap.add_argument("venv_a")
    ap.add_argument("venv_b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=20000)
    args = ap.parse_args()
    for top, _, names in os.walk(args.tree):  # into the page cache, untimed
        for name in names:
            os.lstat(os.path.join(top, name))
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for r in range(args.rounds):
        order = [("a", args.venv_a), ("b", args.venv_b)]
        if r % 2:
            order.reverse()
        for tag, venv in order:
            got = one(venv, args.tree, os.path.join(args.dir, f"walk-calls-{tag}-{r}"),
                      args.files)
            runs[tag].append(got)
            print(f"round {r} {tag} ({venv}): list {got['list_us']:.2f} us a name "
                  f"({int(got['names'])} names), create {got['create_us']:.2f} us a file",
                  file=sys.stderr)
    for what in ("list_us", "create_us"):
        a = statistics.median(x[what] for x in runs["a"])
        b = statistics.median(x[what] for x in runs["b"])
        print(f"{what[:-3]}: a {a:.2f} us, b {b:.2f} us, a/b {a / b:.2f}x")


if __name__ == "__main__":
    main()
