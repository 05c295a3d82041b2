#!/usr/bin/env python3
"""Live sync over ssh: ``hsync watch SRC 127.0.0.1:DST`` beside lsyncd's
``default.rsyncssh``, both pushing the same source to their own destination through a
private sshd on 127.0.0.1 (``tests/sshd.py``).

Both daemons run at once. Each round writes one new file (random bytes, in one of the
tree's directories) and polls both destinations until each holds it with its content:
a tool's latency is the time from the write's close to that moment, its debounce or
delay included (hsync ``--debounce``, lsyncd ``delay``: both ``--delay`` ms). Prints
p50 and p90 per tool. lsyncd is Debian's (``apt-get install lsyncd``).

``--renames N`` adds N rounds that each rename a directory of ``--rename-files`` files
of ``--rename-size`` bytes (issue 14's "rename of a directory of 1,000 files" and "of
1,000 x 1 MiB files", as a watch sees them): a tool's latency is the time from the
rename to the moment its destination holds the new name with every file and no longer
the old one. Whether the destination renamed its copy (the files keep their inode
numbers there) or copied it anew is printed beside the latency: lsyncd's
``default.rsyncssh`` runs ``mv`` over ssh for a move, hsync renames on the far side.

Run it with a regular install (``python3 -m venv /tmp/venv-b && /tmp/venv-b/bin/pip
install . && /tmp/venv-b/bin/python bench/bench_ssh_live.py``). ``--hsync-b PATH`` runs a
second install beside the first (each with its own agent, ``--remote-hsync``): an A/B
of two versions in one run, under the same load.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sshd import Sshd, available
from watching import ino, stop, wait_renamed

HOST = "127.0.0.1"


def lsyncd_config(work: Path, src: Path, dst: Path, server: Sshd, delay: float) -> Path:
    conf = work / "lsyncd.lua"
    conf.write_text(f"""
settings {{ nodaemon = true, logfile = "{work}/lsyncd.log",
            statusFile = "{work}/lsyncd.status", insist = true }}
sync {{
  default.rsyncssh,
  source = "{src}", host = "{HOST}", targetdir = "{dst}", delay = {delay},
  rsync = {{ archive = true }},
  ssh = {{
    port = {server.port}, identityFile = "{server.dir}/user_ed25519",
    options = {{ StrictHostKeyChecking = "no", UserKnownHostsFile = "/dev/null",
                BatchMode = "yes", LogLevel = "ERROR", IdentitiesOnly = "yes" }},
  }},
}}
""")
    return conf


def wait_for(paths: dict[str, Path], data: bytes, t0: float, timeout: float
             ) -> dict[str, float]:
    """The time each path came to hold ``data`` (after ``t0``), polling all together."""
    got: dict[str, float] = {}
    deadline = t0 + timeout
    while len(got) < len(paths) and time.perf_counter() < deadline:
        for name, p in paths.items():
            if name in got:
                continue
            try:
                if p.read_bytes() == data:
                    got[name] = time.perf_counter() - t0
            except OSError:
                pass
        time.sleep(0.001)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--delay", type=int, default=100, help="debounce / delay, ms")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between writes")
    ap.add_argument("--renames", type=int, default=0,
                    help="rounds that rename a directory (after the writes)")
    ap.add_argument("--rename-files", type=int, default=1000)
    ap.add_argument("--rename-size", type=int, default=512, help="bytes per file")
    ap.add_argument("--workdir", default="/tmp/hsync-bench-ssh-live")
    ap.add_argument("--hsync", default=str(Path(sys.executable).with_name("hsync")))
    ap.add_argument("--hsync-b", metavar="PATH",
                    help="a second hsync (another regular install) run beside the first, "
                         "to its own destination: an A/B in one run")
    args = ap.parse_args()
    why = available()
    if why is not None:
        raise SystemExit(why)
    if shutil.which("lsyncd") is None:
        raise SystemExit("lsyncd is not installed (apt-get install lsyncd)")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    for i in range(args.files):
        d = src / f"d{i % 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(512))
    moved = src / "moved" / "r0"
    if args.renames:
        moved.mkdir(parents=True)
        for i in range(args.rename_files):
            (moved / f"m{i}").write_bytes(os.urandom(args.rename_size))
    hsyncs = {"hsync": args.hsync}
    if args.hsync_b:
        hsyncs["hsync-b"] = args.hsync_b
    dst = {**{n: work / f"dst-{n}" for n in hsyncs}, "lsyncd": work / "dst-lsyncd"}
    server = Sshd(str(work / "sshd"))
    env = dict(os.environ, XDG_STATE_HOME=str(work / "state"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n, exe in hsyncs.items():
            procs.append(subprocess.Popen(
                # each its own agent on the far side (else the sshd's PATH picks one)
                [exe, "watch", "-e", server.rsh, "--remote-hsync", exe,
                 "--debounce", str(args.delay), str(src), f"{HOST}:{dst[n]}"],
                env=dict(env, XDG_STATE_HOME=str(work / f"state-{n}")),
                stdout=open(work / f"{n}.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                start_new_session=True))
        conf = lsyncd_config(work, src, dst["lsyncd"], server, args.delay / 1000)
        procs.append(subprocess.Popen(
            ["lsyncd", str(conf)], stdout=open(work / "lsyncd.out", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True))
        # both caught up: a first file reaches both destinations
        warm = os.urandom(64)
        (src / "d0" / "warm").write_bytes(warm)
        t0 = time.perf_counter()
        got = wait_for({n: d / "d0" / "warm" for n, d in dst.items()}, warm, t0, 600)
        if len(got) < len(dst):
            raise SystemExit(f"the initial syncs did not finish: {got}")
        print(f"initial sync done: {got}", file=sys.stderr)
        lat: dict[str, list[float]] = {n: [] for n in dst}
        for r in range(args.rounds):
            time.sleep(args.gap)
            rel = Path(f"d{r % 20}") / f"new{r}"
            data = os.urandom(2048)
            with open(src / rel, "wb") as f:
                f.write(data)
            t0 = time.perf_counter()
            got = wait_for({n: d / rel for n, d in dst.items()}, data, t0, 60)
            for n in dst:
                lat[n].append(got.get(n, float("inf")))
            print(f"  round {r + 1}: " + "  ".join(f"{n} {got.get(n, -1) * 1000:7.1f} ms"
                                                   for n in dst), file=sys.stderr)
        ren: dict[str, list[float]] = {n: [] for n in dst}
        kept: dict[str, list[bool]] = {n: [] for n in dst}
        last = f"m{args.rename_files - 1}"
        for r in range(args.renames):
            time.sleep(args.gap)
            old, new = Path("moved") / f"r{r}", Path("moved") / f"r{r + 1}"
            inos = {n: ino(d / old / last) for n, d in dst.items()}
            os.rename(src / old, src / new)
            t0 = time.perf_counter()
            got = wait_renamed({n: (d / old, d / new) for n, d in dst.items()},
                               args.rename_files, last, t0, 120)
            for n, d in dst.items():
                ren[n].append(got.get(n, float("inf")))
                kept[n].append(inos[n] is not None and ino(d / new / last) == inos[n])
            print(f"  rename {r + 1}: " + "  ".join(
                f"{n} {got.get(n, -1) * 1000:7.1f} ms"
                f" ({'renamed' if kept[n][-1] else 'copied'})" for n in dst), file=sys.stderr)
    finally:
        stop(procs)
        server.stop()

    def q(v: list[float], p: float) -> float:
        v = sorted(v)
        return v[min(len(v) - 1, round(p * (len(v) - 1)))] * 1000

    print(f"\n{args.rounds} writes, {args.files} files, debounce/delay {args.delay} ms"
          + (f"\nhsync: {args.hsync}\nhsync-b: {args.hsync_b}" if args.hsync_b else "") + "\n")
    print("| tool | p50 (ms) | p90 (ms) |")
    print("| --- | ---: | ---: |")
    for n, v in lat.items():
        print(f"| {n} | {statistics.median(v) * 1000:.0f} | {q(v, 0.9):.0f} |")
    if args.renames:
        print(f"\n{args.renames} renames of a directory of {args.rename_files} files of "
              f"{args.rename_size} B\n")
        print("| tool | p50 (ms) | p90 (ms) | renamed on the far side (not copied) |")
        print("| --- | ---: | ---: | ---: |")
        for n, v in ren.items():
            print(f"| {n} | {statistics.median(v) * 1000:.0f} | {q(v, 0.9):.0f} | "
                  f"{sum(kept[n])}/{len(kept[n])} |")


if __name__ == "__main__":
    main()
