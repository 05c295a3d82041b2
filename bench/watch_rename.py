#!/usr/bin/env python3
"""A directory renamed on a local source while it is watched (issue 15 item 2, "a moved
subtree at no cost ... the same for the watch"): ``hsync watch SRC DST`` beside lsyncd's
``default.rsync`` (delay ``--delay`` ms) and a one-shot ``rsync -a --delete`` run after
each rename, all on their own destinations of the same source.

Each round renames a directory of ``--rename-files`` files of ``--rename-size`` bytes
(``moved/rN`` -> ``moved/rN+1``) and times, for each daemon, the rename to the moment
its destination holds the new name with every file and no longer the old one (polled
every ms); then, the daemons done, it times ``rsync -a --delete SRC/ DST/`` (after an
``os.sync()``), which brings its destination up to date with the same rename. Whether
each destination renamed its copy (the last file keeps its inode number) or copied it
is printed beside each figure. The source also holds ``--files`` small files in 20
directories, which every tool's one-shot pass walks.

Run it with a regular install (``python3 -m venv /tmp/v && /tmp/v/bin/pip install .``;
``--hsync /tmp/v/bin/hsync``); lsyncd is Debian's (``apt-get install lsyncd``), left out
when missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from watching import ino, stop, wait_renamed


def _lsyncd_config(work: Path, src: Path, dst: Path, delay: float) -> Path:
    conf = work / "lsyncd.lua"
    conf.write_text(f"""
settings {{ nodaemon = true, logfile = "{work}/lsyncd.log", insist = true }}
sync {{ default.rsync, source = "{src}", target = "{dst}", delay = {delay},
       rsync = {{ archive = true }} }}
""")
    return conf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--rename-files", type=int, default=300)
    ap.add_argument("--rename-size", type=int, default=1 << 20, help="bytes per file")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--delay", type=int, default=100, help="lsyncd's delay, ms")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between rounds")
    ap.add_argument("--workdir", default="/tmp/hsync-bench-watch-rename")
    ap.add_argument("--hsync", default=str(Path(sys.executable).with_name("hsync")))
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    for i in range(args.files):
        d = src / f"d{i % 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(512))
    moved = src / "moved" / "r0"
    moved.mkdir(parents=True)
    for i in range(args.rename_files):
        (moved / f"m{i}").write_bytes(os.urandom(args.rename_size))
    dst = {"hsync watch": work / "dst-hsync"}
    lsyncd = shutil.which("lsyncd") is not None
    if lsyncd:
        dst["lsyncd"] = work / "dst-lsyncd"
    rsync_dst = work / "dst-rsync"
    subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{rsync_dst}/"], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    lat: dict[str, list[float]] = {n: [] for n in (*dst, "rsync -a --delete")}
    kept: dict[str, list[bool]] = {n: [] for n in lat}
    last = f"m{args.rename_files - 1}"
    try:
        procs.append(subprocess.Popen(
            [args.hsync, "watch", str(src), str(dst["hsync watch"])],
            env=dict(os.environ, XDG_STATE_HOME=str(work / "state")),
            stdout=open(work / "hsync.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True))
        if lsyncd:
            conf = _lsyncd_config(work, src, dst["lsyncd"], args.delay / 1000)
            procs.append(subprocess.Popen(
                ["lsyncd", str(conf)], stdout=open(work / "lsyncd.out", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT, start_new_session=True))
        t0 = time.perf_counter()
        rel = Path("moved") / "r0" / last
        while not all((d / rel).exists() for d in dst.values()):
            if time.perf_counter() - t0 > 900:
                raise SystemExit("the initial copies did not finish")
            time.sleep(0.05)
        time.sleep(2.0)
        for r in range(args.rounds):
            time.sleep(args.gap)
            old, new = Path("moved") / f"r{r}", Path("moved") / f"r{r + 1}"
            inos = {n: ino(d / old / last) for n, d in (*dst.items(), ("rsync -a --delete",
                                                                          rsync_dst))}
            os.rename(src / old, src / new)
            t0 = time.perf_counter()
            got = wait_renamed({n: (d / old, d / new) for n, d in dst.items()}, args.rename_files,
                        last, t0, 300)
            os.sync()
            t1 = time.perf_counter()
            subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{rsync_dst}/"], check=True)
            got["rsync -a --delete"] = time.perf_counter() - t1
            for n, d in (*dst.items(), ("rsync -a --delete", rsync_dst)):
                lat[n].append(got.get(n, float("inf")))
                kept[n].append(inos[n] is not None and ino(d / new / last) == inos[n])
            print(f"  round {r + 1}: " + "  ".join(
                f"{n} {got.get(n, -1) * 1000:8.1f} ms ({'renamed' if kept[n][-1] else 'copied'})"
                for n in lat), file=sys.stderr)
    finally:
        stop(procs)

    base = statistics.median(lat["rsync -a --delete"])
    print(f"\n{args.rounds} renames of a directory of {args.rename_files} x "
          f"{args.rename_size} B in a tree of {args.files} more files; lsyncd delay "
          f"{args.delay} ms; hsync watch at its defaults\n")
    print("| tool | p50 (ms) | max (ms) | / rsync's p50 | renamed (not copied) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for n, v in lat.items():
        med = statistics.median(v)
        print(f"| {n} | {med * 1000:.0f} | {max(v) * 1000:.0f} | {med / base:.3f} | "
              f"{sum(kept[n])}/{len(kept[n])} |")


if __name__ == "__main__":
    main()
