"""A/B of `hsync watch SRC DST` into an empty DST: seconds from spawn to the log line
"initial copy into an empty destination", interleaved per round (the order reversed every
other round), with `rsync -a; sync -f` beside and, with ONESHOT=1 in the environment, the
first install's `hsync sync` into an empty DST. "children seen" counts the watch's child processes
(its copy workers) while it copies. The last line is JSON (every round, the medians).
The disk is settled as ``bench_fs`` does (the discards of the deletes before quiet).

Usage: python3 bench/watch_initial_ab.py SRC WORK ROUNDS VENV... (each VENV/bin/hsync,
a regular install: `pip install .`, not editable).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_fs


def settle(work: str) -> None:
    """``bench_fs.settle``: flushed, and the device's discards of what was deleted
    before (ext4 mounted ``discard``) quiet for 0.3 s (at most 10 s), then one second."""
    bench_fs.settle(Path(work))
    time.sleep(1.0)


def clean(work: str, name: str) -> None:
    for p in [f"{work}/{name}-dst", *glob.glob(f"{work}/{name}-state*")]:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = {int(c) for c in f.read().split()}
                todo += kids - out
                out |= kids
        except OSError:
            pass
    return out


def watch_once(src: str, work: str, venv: str) -> tuple[float, int]:
    name = os.path.basename(venv)
    clean(work, name)
    settle(work)
    t0 = time.monotonic()
    p = subprocess.Popen([f"{venv}/bin/hsync", "watch", src, f"{work}/{name}-dst",
                          "--state", f"{work}/{name}-state"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    secs = float("nan")
    kids = 0
    assert p.stderr is not None
    for line in p.stderr:
        if "initial copy:" in line:
            kids = max(kids, len(descendants(p.pid)))
        if "initial copy into an empty destination" in line:
            secs = time.monotonic() - t0
            break
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return secs, kids


def sync_once(src: str, work: str, venv: str) -> float:
    name = "sync-" + os.path.basename(venv)
    clean(work, name)
    settle(work)
    t0 = time.monotonic()
    subprocess.run([f"{venv}/bin/hsync", "sync", src, f"{work}/{name}-dst", "--state",
                    f"{work}/{name}-state"], check=True, stdout=subprocess.DEVNULL)
    t = time.monotonic() - t0
    clean(work, name)
    return t


def rsync_once(src: str, work: str) -> float:
    d = f"{work}/rsync-dst"
    if os.path.exists(d):
        shutil.rmtree(d)
    settle(work)
    t0 = time.monotonic()
    subprocess.run(["rsync", "-a", src + "/", d + "/"], check=True)
    subprocess.run(["sync", "-f", d], check=True)
    return time.monotonic() - t0


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> None:
    src, work, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    venvs = sys.argv[4:]
    os.makedirs(work, exist_ok=True)
    res: dict[str, list[float]] = {os.path.basename(v): [] for v in venvs}
    rs: list[float] = []
    one: list[float] = []
    for r in range(rounds):
        for v in venvs if r % 2 == 0 else list(reversed(venvs)):
            s, k = watch_once(src, work, v)
            res[os.path.basename(v)].append(s)
            print(f"round {r} {os.path.basename(v)}: {s:.2f} s (children seen {k}) "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        rs.append(rsync_once(src, work))
        print(f"round {r} rsync -a; sync -f: {rs[-1]:.2f} s", flush=True)
        if os.environ.get("ONESHOT"):
            one.append(sync_once(src, work, venvs[0]))
            print(f"round {r} hsync sync (first install): {one[-1]:.2f} s", flush=True)
    for v in venvs:
        clean(work, os.path.basename(v))
    medians = {k: median(x) for k, x in res.items()}
    medians["rsync"] = median(rs)
    print(json.dumps({"src": src, **res, "rsync": rs, "oneshot": one, "medians": medians}))


if __name__ == "__main__":
    main()
