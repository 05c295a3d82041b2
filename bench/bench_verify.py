#!/usr/bin/env python3
"""Benchmark: ``hsync verify`` against ``rsync -a -c -n``, and the cost of the journal.

Uses the same seeded tree as bench_fs.py (default: 100,000 files in 5,000 directories,
about 450 MB; cached under WORKDIR/trees), interleaved round by round because the disk
is shared and noisy, medians quoted:

  verify   ``hsync verify --settle 0 SRC DST`` vs ``rsync -a -c -n --delete SRC/ DST/``
           on a synced pair: both read and hash every file on both sides. Throughput
           is the source tree's bytes and files per second of wall time.
  journal  an initial ``hsync sync`` into an empty destination with the journal
           (default) and without it (``HSYNC_JOURNAL=0``); then a re-sync after
           rewriting 1,000 files, with and without.

Both trees fit in the page cache of the machine it was written for (24 GiB): after the
first round the verify figures are warm-cache figures for both tools.
Run ``python bench/bench_verify.py --help``. Stdlib only (plus bench_fs.py beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_fs import GEN_VERSION, cached_tree, default_hsync, generate_main


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(argv: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if done.returncode not in ok:
        raise SystemExit(f"{argv[0]} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return dt


def rm(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    os.sync()


def rewrite(src: Path, n: int, seed: int) -> None:
    """Rewrite ``n`` files (same size, new bytes, new mtime): a re-sync copies them."""
    files = [Path(d) / f for d, _, fs in os.walk(src) for f in fs]
    rng = random.Random(seed)
    for p in rng.sample(sorted(files), n):
        size = p.stat().st_size
        p.write_bytes(rng.randbytes(size))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/hsync-bench-safe"),
                   help="trees, destinations, state (default %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=5_000)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hsync", default=None)
    p.add_argument("--rsync", default="rsync")
    p.add_argument("--skip", default="", help="comma-separated: verify, journal")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    hsync = args.hsync or default_hsync() or "hsync"
    batch = min(1000, args.files // 10)
    key = f"main-v{GEN_VERSION}-s{args.seed}-f{args.files}-d{args.dirs}-h{args.depth}-b{batch}"
    tree, manifest = cached_tree(
        args.workdir / "trees", key,
        lambda root: generate_main(root, args.files, args.dirs, args.depth, batch, args.seed),
        False,
    )
    src = tree / "src"
    work = args.workdir / "verify-bench"
    work.mkdir(parents=True, exist_ok=True)
    dst = work / "dst"
    state = work / "state"
    files, total = manifest["files"], manifest["total_bytes"]
    log(f"tree: {files} files, {total / 1e6:.0f} MB")
    results: dict[str, Any] = {"files": files, "bytes": total, "rounds": args.rounds}
    skip = set(args.skip.split(","))

    if "verify" not in skip:
        timed([hsync, "sync", str(src), str(dst), "--state", ""])  # a synced pair
        hv, rv = [], []
        for r in range(args.rounds):
            hv.append(timed([hsync, "verify", "--settle", "0", str(src), str(dst)]))
            rv.append(timed([args.rsync, "-a", "-c", "-n", "--delete", f"{src}/", f"{dst}/"]))
            log(f"round {r + 1}: hsync verify {hv[-1]:.2f} s, rsync -c -n {rv[-1]:.2f} s")
        ratios = [h / r for h, r in zip(hv, rv, strict=True)]
        results["verify"] = {
            "hsync_s": med(hv), "rsync_s": med(rv), "ratio_median": med(ratios),
            "hsync_MBps": total / 1e6 / med(hv), "rsync_MBps": total / 1e6 / med(rv),
            "hsync_files_per_s": files / med(hv), "rsync_files_per_s": files / med(rv),
            "all_hsync": hv, "all_rsync": rv,
        }

    if "journal" not in skip:
        # the re-syncs rewrite files: work on a copy, never on the cached tree
        src_copy = work / "src"
        if not src_copy.exists():
            subprocess.run(["cp", "-a", str(src), str(src_copy)], check=True)
        src, dst = src_copy, work / "dst-journal"
        on, off, on2, off2 = [], [], [], []
        env_off = {**os.environ, "HSYNC_JOURNAL": "0"}
        for r in range(args.rounds):
            order = [("on", None), ("off", env_off)]
            if r % 2:
                order.reverse()
            for name, env in order:
                rm(dst)
                rm(state)
                st = str(state / "h.sqlite")
                t = timed([hsync, "sync", str(src), str(dst), "--state", st], env=env)
                (on if name == "on" else off).append(t)
                rewrite(src, batch, args.seed + r)
                t2 = timed([hsync, "sync", str(src), str(dst), "--state", st], env=env)
                (on2 if name == "on" else off2).append(t2)
                log(f"round {r + 1} journal {name}: initial {t:.2f} s, "
                    f"after {batch} rewrites {t2:.2f} s")
        results["journal"] = {
            "initial_on_s": med(on), "initial_off_s": med(off),
            "initial_ratio_median": med([a / b for a, b in zip(on, off, strict=True)]),
            "resync_on_s": med(on2), "resync_off_s": med(off2),
            "resync_ratio_median": med([a / b for a, b in zip(on2, off2, strict=True)]),
            "all": {"on": on, "off": off, "resync_on": on2, "resync_off": off2},
        }

    if "journal" not in skip:
        # the bookkeeping alone, without the disk noise of a whole sync: one batch of as
        # many ops as the tree has nodes, begun and marked done (two durable commits)
        sys.path.insert(0, str(Path(__file__).parent.parent))
        from hsync.journal import Journal
        from hsync.model import Op

        ops = [Op(op="create", kind="file", key=("d", f"f{i:06d}")) for i in range(files)]
        jdir = work / "journal-micro"
        shutil.rmtree(jdir, ignore_errors=True)
        j = Journal(str(jdir / "j.sqlite"), "pair")
        costs = []
        for _ in range(5):
            t0 = time.perf_counter()
            j.begin(ops)
            j.done()
            costs.append(time.perf_counter() - t0)
        j.close()
        results["journal"]["bookkeeping_s_per_batch"] = med(costs)
        log(f"journal bookkeeping for one {files}-op batch: {med(costs) * 1000:.0f} ms")

    out = args.out or (work / "results.json")
    out.write_text(json.dumps(results, indent=1))
    v = results.get("verify")
    if v:
        print(f"| tool | median s | MB/s | files/s |\n| --- | --- | --- | --- |\n"
              f"| hsync verify | {v['hsync_s']:.2f} | {v['hsync_MBps']:.0f} | "
              f"{v['hsync_files_per_s']:.0f} |\n"
              f"| rsync -a -c -n | {v['rsync_s']:.2f} | {v['rsync_MBps']:.0f} | "
              f"{v['rsync_files_per_s']:.0f} |\n"
              f"hsync/rsync median of per-round ratios: {v['ratio_median']:.2f}")
    j = results.get("journal")
    if j:
        print(f"journal: initial sync {j['initial_on_s']:.2f} s with, {j['initial_off_s']:.2f} s "
              f"without (ratio {j['initial_ratio_median']:.3f}); re-sync after {batch} rewrites "
              f"{j['resync_on_s']:.2f} s with, {j['resync_off_s']:.2f} s without "
              f"(ratio {j['resync_ratio_median']:.3f}); bookkeeping per {files}-op batch "
              f"{j['bookkeeping_s_per_batch'] * 1000:.0f} ms")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
