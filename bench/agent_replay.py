#!/usr/bin/env python3
"""The far side of a push alone: a push's stream recorded once, then replayed into
``hsync agent`` as often as wanted, with the agent's CPU per thread.

A pinned push over ssh spreads its time over both ends, sshd and the ssh client; this
measures the agent's own work on the same stream every time (its destination should be
a tmpfs, whose system time is steady where a disk's is not):

    python3 bench/agent_replay.py record VENV SRC STREAM DST   # push SRC to DST, keep STREAM
    python3 bench/agent_replay.py replay VENV STREAM DST [--rounds 5] [--cpu 1]

``record`` pushes SRC into DST (removed first) over a real sshd on 127.0.0.1, the far
hsync being ``VENV``'s behind a wrapper that copies what it reads to STREAM. ``replay``
removes DST, feeds STREAM to ``VENV``'s agent (on CPU ``--cpu``) and waits until every
batch is answered, then prints its wall time, its user and system time, the user and
system time of its threads by name (the main thread reads the link, ``hsync-apply``
runs the batches, ``hsync-copy`` publishes the files) and the time it spent in the
cyclic garbage collector. DST must be the record's: the stream names the tree it opens
(replayed into a tree that is there, every create fails). A replay must use an install
that speaks the stream's protocol. The answers go nowhere: nothing waits on them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

AGENT = r'''
import collections, gc, json, os, sys, threading, time
per = collections.defaultdict(lambda: [0.0, 0.0])
collected = [0.0, 0, 0]  # seconds in the cyclic collector, collections, full ones
began = [0.0]

def collector(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        collected[0] += time.perf_counter() - began[0]
        collected[1] += 1
        collected[2] += info["generation"] == 2
gc.callbacks.append(collector)

def times():
    with open(f"/proc/self/task/{threading.get_native_id()}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(v[11]) / tick, int(v[12]) / tick

run = threading.Thread.run
def counted(self):
    before = times()
    try:
        run(self)
    finally:
        after = times()
        name = self.name.split("_")[0].rstrip("0123456789")
        per[name][0] += after[0] - before[0]
        per[name][1] += after[1] - before[1]
threading.Thread.run = counted

from hsync.remote import agent
shutdown = agent.Agent._shutdown
def drained(self):  # the end of the stream: every batch answered first
    while self.applies:
        time.sleep(0.002)
    shutdown(self)
agent.Agent._shutdown = drained
if hasattr(agent, "_collect_rarely"):  # as run_agent sets it (since session 29)
    agent._collect_rarely()
t0, c0 = time.perf_counter(), os.times()
rfile = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
wfile = open(os.devnull, "wb")
agent.Agent(agent.Framer(rfile, wfile, compress=True), None).serve()
c1 = os.times()
per["main"] = list(times())
print(json.dumps({"wall": time.perf_counter() - t0, "user": c1.user - c0.user,
                  "system": c1.system - c0.system, "threads": per, "gc": collected}))
'''


def record(venv: str, src: str, stream: str, dst: str) -> None:
    from sshd import Sshd

    shutil.rmtree(dst, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "hsync"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = agent ]; then tee {stream} | {venv}/bin/hsync "$@"; '
            f'else exec {venv}/bin/hsync "$@"; fi\n')
        wrapper.chmod(0o755)
        server = Sshd(str(Path(tmp) / "sshd"), path=f"{venv}/bin:/usr/bin:/bin")
        try:
            p = subprocess.run(
                [f"{venv}/bin/hsync", "sync", "-e", server.rsh, "--remote-hsync",
                 str(wrapper), "--no-progress", "--state", str(Path(tmp) / "h.sqlite"),
                 src, f"127.0.0.1:{dst}"], capture_output=True, text=True, check=False)
        finally:
            server.stop()
    if p.returncode != 0:
        raise SystemExit(f"the push failed ({p.returncode}): {p.stderr.strip()}")
    print(f"{stream}: {os.path.getsize(stream):,} bytes", file=sys.stderr)


def replay(venv: str, stream: str, dst: str, rounds: int, cpu: int) -> None:
    runs = []
    for _ in range(rounds):
        shutil.rmtree(dst, ignore_errors=True)
        with open(stream, "rb") as f:
            p = subprocess.run(["taskset", "-c", str(cpu), f"{venv}/bin/python", "-c", AGENT],
                               stdin=f, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"the replay failed: {p.stderr.strip()[-500:]}")
        got = json.loads(p.stdout.strip().splitlines()[-1])
        threads = "  ".join(f"{k} {u:.2f}+{s:.2f}" for k, (u, s) in sorted(got["threads"].items()))
        took, times, full = got["gc"]
        print(f"wall {got['wall']:.2f}  user {got['user']:.2f}  system {got['system']:.2f}"
              f"   {threads}   collector {took:.2f} s in {times} ({full} full)",
              file=sys.stderr)
        runs.append(got)
    shutil.rmtree(dst, ignore_errors=True)
    print(f"median of {rounds}: wall {statistics.median(r['wall'] for r in runs):.2f} s, "
          f"user {statistics.median(r['user'] for r in runs):.2f} s, "
          f"system {statistics.median(r['system'] for r in runs):.2f} s, "
          f"in the cyclic collector {statistics.median(r['gc'][0] for r in runs):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("record")
    r.add_argument("venv")
    r.add_argument("src")
    r.add_argument("stream")
    r.add_argument("dst")
    p = sub.add_parser("replay")
    p.add_argument("venv")
    p.add_argument("stream")
    p.add_argument("dst")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu", type=int, default=1)
    args = ap.parse_args()
    if args.what == "record":
        record(os.path.abspath(args.venv), args.src, os.path.abspath(args.stream), args.dst)
    else:
        replay(os.path.abspath(args.venv), args.stream, args.dst, args.rounds, args.cpu)


if __name__ == "__main__":
    main()
