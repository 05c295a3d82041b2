#!/usr/bin/env python3
"""``hsync verify`` of a far destination that differs in a few files, over ssh with a
link's latency: an interleaved A/B of two installs (regular ones), medians.

    python3 bench/verify_ssh.py VENV_A VENV_B [--files 2000] [--diffs 10] \\
        [--latency 40] [--rounds 5] [--settle 0] [--workdir DIR]

The far side is this machine through a private sshd per install (``tests/sshd.py``,
its ``PATH`` that install's ``bin``: each runs its own agent), the latency
``bench/latency_relay.py`` as ssh's ProxyCommand. ``--diffs`` files on the far side
get other bytes of the same size and mtime (only a hash tells). Prints per install
the median time and the round trips verify waited on (``--json``'s ``round_trips``,
where the install reports it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from sshd import Sshd  # noqa: E402


def build(work: Path, files: int, diffs: int) -> tuple[Path, Path]:
    src, dst = work / "src", work / "dst"
    if not src.exists():
        for i in range(files):
            d = src / f"d{i // 100:03d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:05d}").write_bytes(os.urandom(1024))
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    step = max(1, files // max(1, diffs))
    for i in range(0, step * diffs, step):
        far = dst / f"d{i // 100:03d}" / f"f{i:05d}"
        st = far.stat()
        far.write_bytes(os.urandom(1024))
        os.utime(far, ns=(st.st_atime_ns, st.st_mtime_ns))
    return src, dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("venvs", nargs=2)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--diffs", type=int, default=10)
    ap.add_argument("--latency", type=float, default=40.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settle", default="0")
    ap.add_argument("--workdir", default="/tmp/hsync-verify-ssh")
    args = ap.parse_args()
    work = Path(args.workdir)
    src, dst = build(work, args.files, args.diffs)
    relay = HERE / "latency_relay.py"
    servers: dict[str, Sshd] = {}
    rsh: dict[str, str] = {}
    try:
        for n, venv in enumerate(args.venvs):
            bindir = str(Path(venv).resolve() / "bin")
            servers[venv] = Sshd(str(work / f"sshd{n}"),
                                 path=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
            rsh[venv] = servers[venv].rsh + (" " + shlex.join(
                ["-o", f"ProxyCommand={sys.executable} {relay} {args.latency:g} %h %p"])
                if args.latency else "")
        times: dict[str, list[float]] = {v: [] for v in args.venvs}
        trips: dict[str, list[int]] = {v: [] for v in args.venvs}
        for r in range(args.rounds):
            for v in args.venvs if r % 2 == 0 else args.venvs[::-1]:
                env = {**os.environ, "HSYNC_RSH": rsh[v]}
                t0 = time.perf_counter()
                p = subprocess.run([f"{v}/bin/hsync", "verify", "--json", "--settle",
                                    args.settle, str(src), f"127.0.0.1:{dst}"],
                                   capture_output=True, text=True, env=env, check=False)
                times[v].append(time.perf_counter() - t0)
                if p.returncode != 1:
                    raise SystemExit(f"{v}: exit {p.returncode}: {p.stderr}")
                report = json.loads(p.stdout)
                assert len(report["differences"]) == args.diffs, report["differences"]
                if "round_trips" in report:
                    trips[v].append(report["round_trips"])
        for v in args.venvs:
            ts = times[v]
            rt = statistics.median(trips[v]) if trips[v] else "-"
            print(f"{statistics.median(ts):6.3f} s median [{min(ts):.3f}-{max(ts):.3f}]  "
                  f"round trips {rt}  {v}")
    finally:
        for s in servers.values():
            s.stop()


if __name__ == "__main__":
    main()
