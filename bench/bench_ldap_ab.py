#!/usr/bin/env python3
"""A/B of the LDAP initial load: two hsync installs and ``ldapadd -c``, interleaved.

Scenario A of ``bench_ldap.py --size`` (N inetOrgPerson entries into an empty suffix,
each run on a fresh slapd whose source suffix is loaded offline), for two hsync
executables (regular installs: see bench/README.md) and ``ldapadd -c``, the first
tool rotating per round. Prints each tool's median wall clock and CPU time, its
median ratio to ``ldapadd -c``, and the median per-round ratio B/A.

    .venv/bin/python bench/bench_ldap_ab.py --a /tmp/venv-main/bin/hsync \\
        --b /tmp/venv-X/bin/hsync [--entries 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import bench_ldap as bench
from ldap_fixtures import DST_ADMIN, DST_BASE, PASSWORD, SRC_BASE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the first hsync executable")
    ap.add_argument("--b", required=True, help="the second hsync executable")
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.entries
    tools: dict[str, str | None] = {"A": args.a, "B": args.b, "ldapadd": None}
    work = Path(tempfile.mkdtemp(prefix="hsync-bench-ldap-ab-"))
    source = work / "source.ldif"
    source.write_text(bench.people_ldif(SRC_BASE, n))
    dst_ldif = bench.people_ldif(DST_BASE, n)
    pwfile = work / "pw"
    pwfile.write_text(PASSWORD)
    pwfile.chmod(0o600)
    rows: list[dict[str, float]] = []
    names = list(tools)
    for r in range(args.rounds):
        order = names[r % 3:] + names[: r % 3]
        row: dict[str, float] = {}
        for tool in order:
            server = bench.fresh_server(work, source)
            env = {**os.environ, **server.env(), "XDG_STATE_HOME": str(work / f"s{r}{tool}")}
            try:
                exe = tools[tool]
                if exe is None:
                    cmd = ["ldapadd", "-x", "-c", "-H", server.url, "-D", DST_ADMIN, "-y",
                           str(pwfile)]
                    row[tool], _, _ = bench.measured(cmd, env, dst_ldif, key=tool)
                else:
                    cmd = [exe, "sync", "--json", "--no-progress", server.endpoint(SRC_BASE),
                           server.endpoint(DST_BASE)]
                    row[tool], _, out = bench.measured(cmd, env, key=tool)
                    created = json.loads(out)["counts"]["create"]
                    if created < n:
                        raise SystemExit(f"{exe}: created {created} of {n} entries")
                row[f"{tool}_cpu"] = bench.CPU.get(tool, 0.0)
            finally:
                server.stop()
                shutil.rmtree(server.root, ignore_errors=True)
        rows.append(row)
        print(f"round {r + 1} ({', '.join(order)}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)

    def med(k: str) -> float:
        return statistics.median(row[k] for row in rows)

    print(f"\n{n:,} entries, {args.rounds} interleaved rounds, load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print("| tool | initial load (median) | CPU (median) | ratio to ldapadd -c (min-max) |")
    print("| --- | --- | --- | --- |")
    for tool in ("A", "B"):
        ratios = [row[tool] / row["ldapadd"] for row in rows]
        print(f"| {tool}: {tools[tool]} | {med(tool):.2f} s | {med(tool + '_cpu'):.1f} s | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
    print(f"| ldapadd -c | {med('ldapadd'):.2f} s | {med('ldapadd_cpu'):.1f} s | |")
    ab = [row["B"] / row["A"] for row in rows]
    print(f"\nB/A per round: median {statistics.median(ab):.2f} ({min(ab):.2f}-{max(ab):.2f})")


if __name__ == "__main__":
    main()
