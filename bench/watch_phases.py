#!/usr/bin/env python3
"""Where a watch round's time goes, phase by phase, at the default settings.

Runs ``hsync.live.PairWatch`` in this process on a tree of ``bench_watch.py``'s shape
(generated once under WORKDIR), writes lone files (a new file in a directory at depth
4-6, then its delete, each 0.3 s apart), and for each write prints, from the write's
close (``time.perf_counter``), when: the close reached the dirty set (``event``), the
loop woke up (``wake``), the region was compared (``compared``), the journal record
was written (``journal``), the destination's apply returned, the file published
(``applied``), the journal record was flushed (``journal_sync``), the history was
recorded (``history``), the destination's flush ended (``flushed``), the round ended
(``round_end``), and when a poller saw the file's content at the destination
(``visible``). The phases are taken by wrapping the functions that run them (no change
to the code measured). Medians and p90 over the writes.

    python bench/watch_phases.py /tmp/hw-phases --writes 30
    python bench/watch_phases.py /tmp/hw-phases-1m --entries 1000000 --writes 30
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_watch

import hsync.apply as apply_mod
import hsync.backends.fs as fs_mod
import hsync.dirty as dirty_mod
import hsync.history as history_mod
import hsync.journal as journal_mod
import hsync.live as live
from hsync.options import Options

MARKS: dict[str, float] = {}
PREFIX = "phase-"
ORDER = ("event", "wake", "compared", "journal", "applied", "journal_sync", "history",
         "flushed", "round_end", "visible")


def mark(name: str) -> None:
    MARKS.setdefault(name, time.perf_counter())


def wrap(owner: Any, name: str, after: str, before: str | None = None) -> None:
    real = getattr(owner, name, None)
    if real is None:  # an older hsync (no such phase): measured without it
        return

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            mark(before)
        out = real(*args, **kwargs)
        mark(after)
        return out

    setattr(owner, name, wrapped)


def instrument() -> None:
    real_dirty = dirty_mod.Dirty.dirty

    def dirty(self: Any, key: Any, *, deep: bool = True, writing: bool = False) -> None:
        if key and key[-1].startswith(PREFIX) and not deep and not writing:
            mark("event")  # the close
        real_dirty(self, key, deep=deep, writing=writing)

    dirty_mod.Dirty.dirty = dirty  # type: ignore[method-assign]
    real_wait = dirty_mod.Dirty.wait

    def wait(self: Any, *args: Any) -> bool:
        out = real_wait(self, *args)
        if "event" in MARKS:
            mark("wake")
        return out

    dirty_mod.Dirty.wait = wait  # type: ignore[method-assign]
    wrap(live, "compare_region", "compared")
    wrap(journal_mod.Journal, "begin", "journal")
    wrap(journal_mod.Journal, "sync", "journal_sync")
    wrap(history_mod.History, "record", "history")
    wrap(fs_mod.FsBackend, "apply_batch", "applied")
    real_run_batch = apply_mod.run_batch

    def run_batch(*args: Any, **kwargs: Any) -> Any:
        out = real_run_batch(*args, **kwargs)
        mark("flushed")  # run_batch returns once the flush ended
        return out

    apply_mod.run_batch = run_batch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--entries", type=int, default=10_500)
    p.add_argument("--writes", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    spec = bench_watch.TreeSpec("tree", args.entries, args.seed)
    tree, _manifest = bench_watch.cached_tree(args.workdir / "trees", spec, False,
                                              os.cpu_count() or 1)
    src, dst = args.workdir / "src", args.workdir / "dst"
    if not src.exists():
        print(f"copying {tree} to {src}", file=sys.stderr)
        shutil.copytree(tree, src, symlinks=True)
    instrument()
    ended: list[float] = []

    def on_round(_r: live.RoundResult) -> None:
        mark("round_end")
        ended.append(time.perf_counter())

    pw = live.PairWatch(str(src), str(dst), Options(state=str(args.workdir / "h.sqlite")),
                        on_round=on_round)
    loop = threading.Thread(target=pw.run, name="phases-loop")
    loop.start()
    try:
        while pw.status.state != "idle" or pw.status.rounds < 1:
            time.sleep(0.1)
        time.sleep(1)
        root_depth = str(src).count("/")
        dirs = [d for d, _, _ in os.walk(src) if d.count("/") - root_depth >= 4][:2000]
        rng = random.Random(args.seed)
        rows = []
        for i in range(args.writes):
            d = rng.choice(dirs)
            name = f"{PREFIX}{os.getpid()}-{i}"
            data = os.urandom(rng.randint(24, 400))
            target = dst / os.path.relpath(d, src) / name
            MARKS.clear()
            fd = os.open(f"{d}/{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
            t0 = time.perf_counter()
            while True:
                try:
                    if target.read_bytes() == data:
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.0005)
            MARKS["visible"] = time.perf_counter()
            time.sleep(0.3)
            rows.append({k: v - t0 for k, v in MARKS.items()})
            os.unlink(f"{d}/{name}")
            time.sleep(0.3)
    finally:
        pw.stop()
        loop.join()
    print(f"{args.writes} lone writes, tree of {args.entries:,} entries; ms after the close")
    print("| phase | p50 ms | p90 ms |")
    print("| --- | --- | --- |")
    for k in ORDER:
        v = sorted(r[k] * 1000 for r in rows if k in r)
        if v:
            p90 = v[min(len(v) - 1, round(0.9 * len(v)) - 1)]
            print(f"| {k} | {statistics.median(v):.1f} | {p90:.1f} |")
    print(f"rounds {pw.status.rounds}, restarts {pw.status.restarts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
