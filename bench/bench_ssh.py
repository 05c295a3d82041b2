#!/usr/bin/env python3
"""Remote benchmark: hsync over ssh against ``rsync -a --delete -e ssh`` (and ``-z``).

rsync's time includes a ``sync -f DST`` after it (the far side is this machine): hsync
acknowledges a batch only once it is flushed to the far disk (a ``syncfs``, SPEC 5),
rsync exits with its copy in the far page cache. The table gives rsync's own time
beside it.

Starts its own sshd on 127.0.0.1 (``tests/sshd.py``: keys in the work directory,
nothing in ``~/.ssh``), generates a tree, then times each tool on the scenarios below,
interleaved round by round (the first tool rotates), each command a whole process:

  a  initial copy into an empty destination (a push); as root the page cache is
     dropped and the source read back in before each tool's copy (``drop_caches``)
  b1 the first re-sync after the copy (hsync reads back the attributes of the nodes
     it just wrote: their ctime is after the last sync's start)
  b  no-op re-sync (the second)
  c  re-sync after renaming a directory of --batch files (renamed back on odd rounds)
  d  re-sync after renaming a directory of --big files of 1 MiB
  e  re-sync after appending 1 MiB (random) to a file of --append MiB (grows 1 MiB a
     round): the changed file crosses as a delta (rsync's algorithm, both tools); both
     copies of the big file (the source's, the tool's own) are read first, untimed
  f  with --change N: re-sync after rewriting N small files of ``bulk/`` (new content,
     same sizes; a different N each round)

and, once a round, ``ssh 127.0.0.1 true``: the login alone, the floor of both tools.

``--scenarios b,c,d`` runs only those (a, b1, b, c, d, e, f). Without ``a`` the
destinations and states of an earlier run in ``--workdir`` are kept (with ``--reuse``)
and brought up to date, untimed, before the first round (a copy only where one is
missing): the 100,000-file tree's initial copies take minutes per tool.
``--hsync-b PATH`` adds a second hsync install as the tool ``hsync-b`` (its far side
runs ``--remote-hsync`` of the ``hsync`` beside PATH): an A/B of two installs in one
interleaved run. ``--check stat`` compares each destination with the source by
``rsync -a -n -i --delete`` (names, sizes, mtimes, modes, owners) instead of
``diff -r`` (which reads every byte of every copy each round).

``--latency MS`` adds that round-trip time to every tool's link (``latency_relay.py``
as ssh's ``ProxyCommand``: each chunk held MS/2 in each direction, the throughput not
capped), as a link to another site would have.

``--window N`` (repeatable) adds hsync with ``--window N`` as a tool of its own
(``hsync-wN``; plain ``hsync`` runs with the default window): a push keeps that many
batches in flight, and ``--batch-ops`` sets the ops per batch of every hsync.

``--pin`` models two hosts of one core each on a 2-core machine: the sshd, and what
it starts (hsync's agent, rsync's receiver), runs on CPU 1, the local commands on CPU
0. Without it the four busy processes of a copy (both ends and both ssh ends) share
both cores, and the run measures their total CPU more than either end's.

Bytes on the wire: hsync's ``--json`` report (``bytes_on_wire``, counted by hsync on
its link, after compression); rsync's ``--stats`` (total bytes sent + received).
Round trips (hsync only): its ``--json`` report's ``round_trips``, the requests each
run waited on one after the other (the same on any link; each costs a link's round
trip, ``--latency``). Prints a markdown table: per scenario and tool, the median time,
the median ratio to ``rsync -a``, the median bytes on the wire and round trips.

Run it with a regular install (not an editable one: with PYTHONDONTWRITEBYTECODE each
run would recompile hsync): ``python3 -m venv /tmp/venv-b && /tmp/venv-b/bin/pip
install . && /tmp/venv-b/bin/python bench/bench_ssh.py``. The far side runs the
``hsync`` next to that interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_fs import delete_tree, deletes_window, wait_deletes
from sshd import Sshd, available

HOST = "127.0.0.1"
MIB = 1 << 20


def generate(root: Path, files: int, per_dir: int, batch: int, big: int) -> None:
    """``files`` small files (100 B-4 KiB) in directories of ``per_dir``; ``bulk/`` with
    ``batch`` of them; ``big/`` with ``big`` files of 1 MiB."""
    import random

    rng = random.Random(1)
    blob = os.urandom(1 << 16)
    (root / "bulk").mkdir(parents=True)
    for i in range(batch):
        (root / "bulk" / f"f{i}").write_bytes(blob[: rng.randint(100, 4096)])
    made = batch
    d = 0
    while made < files:
        sub = root / f"d{d // 50}" / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(min(per_dir, files - made)):
            start = rng.randint(0, 1 << 15)
            (sub / f"f{i}").write_bytes(blob[start:start + rng.randint(100, 4096)])
        made += per_dir
        d += 1
    (root / "big").mkdir()
    for i in range(big):
        (root / "big" / f"b{i}").write_bytes(os.urandom(MIB))


def generate_append(path: Path, mib: int) -> None:
    """A file of ``mib`` MiB of random bytes (the one that grows in scenario e)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def warm(root: Path) -> float:
    """Every file under ``root`` read once (untimed), so that each tool's initial copy
    reads its source from the page cache: this machine reclaims pages unused for a few
    minutes (``kdamond``), and after the wait before the initial copies the first tool
    read the 2.4 GB source from the disk (session 27: hsync first 48.0 s with 20.5 s of
    CPU on its end, after it 34.7 s with 16.4 s). Returns the seconds it took."""
    t0 = time.perf_counter()
    buf = bytearray(1 << 20)
    for top, _, names in os.walk(root):
        for name in names:
            try:
                fd = os.open(os.path.join(top, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                while os.readv(fd, [buf]):
                    pass
            finally:
                os.close(fd)
    return time.perf_counter() - t0


def drop_caches() -> bool:
    """The page cache emptied (``/proc/sys/vm/drop_caches``; root only), after a sync:
    every tool's initial copy then starts with the same free memory. Without it the
    tools after the first find the memory full of the copies before them and reclaim
    it as they write, on the far core (session 28: the same rsync copy 21.4 s in the
    first place, 31.7 s in the second). False where it cannot be done."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    except OSError:
        return False
    return True


def cpu_busy() -> tuple[float, ...]:
    """Seconds each CPU has spent busy (user, nice, system, interrupts) since boot."""
    out = []
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:8]]
                out.append((v[0] + v[1] + v[2] + v[5] + v[6]) / tick)
    return tuple(out)


class Tool:
    def __init__(self, name: str, argv: list[str], work: Path) -> None:
        self.cpu: tuple[float, ...] = ()
        self.flush = 0.0
        """rsync's last run: the seconds of its ``sync -f DST`` (in its time)."""
        self.name = name
        self.argv = argv
        self.dst = work / f"dst-{name}"
        self.state = work / f"state-{name}.sqlite"

    def reset(self) -> None:
        delete_tree(self.dst)
        for p in self.state.parent.glob(self.state.name + "*"):
            p.unlink()
        for p in self.state.parent.glob(self.state.stem + ".journal*"):
            p.unlink()

    def prepare(self, src: Path) -> None:
        """Untimed: the kept destination brought up to date with ``src`` (twice for
        hsync: the second run finds the nodes the first wrote, as a no-op does)."""
        for _ in range(2 if self.name.startswith("hsync") else 1):
            self.run(src)

    def run(self, src: Path) -> tuple[float, int, int | None]:
        """One sync of ``src``; its wall time, bytes on the wire and (hsync) the round
        trips it waited on. ``self.cpu``: the busy seconds of CPU 0 and CPU 1 while it
        ran (with ``--pin``, this end and the far end: sshd and the agent or rsync's
        receiver)."""
        if self.name.startswith("hsync"):
            argv = [*self.argv, "--json", "--state", str(self.state), f"{src}",
                    f"{HOST}:{self.dst}"]
        else:
            argv = [*self.argv, "--stats", f"{src}/", f"{HOST}:{self.dst}/"]
        os.sync()  # untimed: no tool pays for the previous one's dirty pages
        c0 = cpu_busy()
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - t0
        self.flush = 0.0
        if p.returncode == 0 and not self.name.startswith("hsync"):
            # the same durability as hsync's (a syncfs of the destination's filesystem
            # before each batch is acknowledged, SPEC 5): rsync flushes nothing, its
            # copy is in the far page cache when it exits. The far side is this machine:
            # a local ``sync -f`` is the far one without a second login
            subprocess.run(["sync", "-f", str(self.dst)], check=True)
            self.flush = time.perf_counter() - t0 - elapsed
            elapsed += self.flush
        self.cpu = tuple(b - a for a, b in zip(c0, cpu_busy(), strict=True))
        if p.returncode != 0:
            raise SystemExit(f"{self.name} failed ({p.returncode}): {p.stderr.strip()}")
        if self.name.startswith("hsync"):
            report = json.loads(p.stdout)
            wire = report["bytes_on_wire"]
            return elapsed, wire["sent"] + wire["received"], report.get("round_trips")
        sent = re.search(r"Total bytes sent: ([\d,]+)", p.stdout)
        got = re.search(r"Total bytes received: ([\d,]+)", p.stdout)
        n = sum(int(m.group(1).replace(",", "")) for m in (sent, got) if m)
        return elapsed, n, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--per-dir", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--big", type=int, default=1000, help="files of 1 MiB renamed in d")
    ap.add_argument("--append", type=int, default=1024,
                    help="MiB of the file 1 MiB is appended to in e (0: no scenario e)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, action="append", default=[],
                    help="also run hsync with --window N (tool hsync-wN)")
    ap.add_argument("--batch-ops", type=int, default=0, help="hsync --batch-ops N")
    ap.add_argument("--change", type=int, default=0,
                    help="scenario f: rewrite N files of bulk/ (0: no scenario f)")
    ap.add_argument("--workdir", default="/tmp/hsync-bench-ssh")
    ap.add_argument("--hsync", default=str(Path(sys.executable).with_name("hsync")))
    ap.add_argument("--scenarios", default="a,b1,b,c,d,e,f",
                    help="the scenarios to run (without a: destinations are kept)")
    ap.add_argument("--hsync-b", default="",
                    help="a second hsync install, run as the tool hsync-b")
    ap.add_argument("--check", choices=("content", "stat"), default="content",
                    help="how each destination is compared with the source after a round")
    ap.add_argument("--latency", type=float, default=0.0,
                    help="round-trip time in ms added to the link of every tool "
                         "(bench/latency_relay.py as ssh's ProxyCommand; 0: none)")
    ap.add_argument("--pin", action="store_true",
                    help="two hosts of one core each: the sshd (and what it starts: the "
                         "far hsync agent, rsync's receiver) on CPU 1, this script and "
                         "the local commands on CPU 0 (without it all of them share the "
                         "machine's cores)")
    ap.add_argument("--after-deletes", type=float, default=None,
                    help="seconds to wait after a round's old copies are deleted, before "
                         "its initial copies (a): default 305 on an ext4 without a "
                         "journal, which does not reuse a deleted inode for up to 300 s "
                         "and makes every create scan past them meanwhile; else 0")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the source tree a run with the same sizes generated in "
                         "--workdir (the destinations and states are made again)")
    args = ap.parse_args()
    why = available()
    if why is not None:
        raise SystemExit(why)
    work = Path(args.workdir)
    src = work / "src"
    made = work / "src.params"
    params = json.dumps([args.files, args.per_dir, args.batch, args.big, args.append])
    wanted = args.scenarios.split(",")
    keep = "a" not in wanted
    if args.reuse and made.exists() and made.read_text() == params:
        print(f"reusing {src}", file=sys.stderr)  # a tree of 100,000 takes a while
        for p in work.iterdir():
            if p.name not in ("src", "src.params") and not (
                keep and p.name.startswith(("dst-", "state-"))
            ):
                delete_tree(p) if p.is_dir() else p.unlink()
        for name in ("bulk", "big"):  # as generated (a run may end with them renamed)
            if (src / f"{name}-renamed").exists() and not keep:
                os.rename(src / f"{name}-renamed", src / name)
    else:
        delete_tree(work)
        work.mkdir(parents=True)
        print(f"generating {args.files} files + {args.big} x 1 MiB in {src}", file=sys.stderr)
        generate(src, args.files, args.per_dir, args.batch, args.big)
        if args.append:
            generate_append(src / "append" / "huge", args.append)
        made.write_text(params)
    scenarios = ["a", "b1", "b", "c", "d", "e"] if args.append else ["a", "b1", "b", "c", "d"]
    if args.change:
        scenarios.append("f")
    scenarios = [s for s in scenarios if s in wanted]
    if keep and "b1" in scenarios:
        scenarios.remove("b1")  # the first re-sync after a copy: there is no copy
    if args.pin:  # the sshd and its sessions inherit CPU 1; the rest of us CPU 0
        os.sched_setaffinity(0, {1})
    server = Sshd(str(work / "sshd"))
    if args.pin:
        os.sched_setaffinity(0, {0})
    rsh = server.rsh
    if args.latency:
        relay = Path(__file__).resolve().with_name("latency_relay.py")
        rsh += " " + shlex.join(
            ["-o", f"ProxyCommand={sys.executable} {relay} {args.latency:g} %h %p"])
    hsync = [args.hsync, "sync", "-e", rsh]
    if args.batch_ops:
        hsync += ["--batch-ops", str(args.batch_ops)]
    tools = [
        Tool("hsync", hsync, work),
        *([Tool("hsync-b", [args.hsync_b, "sync", "-e", rsh, "--remote-hsync",
                            str(Path(args.hsync_b).with_name("hsync"))], work)]
          if args.hsync_b else []),
        *(Tool(f"hsync-w{w}", [*hsync, "--window", str(w)], work) for w in args.window),
        Tool("rsync", ["rsync", "-a", "--delete", "-e", rsh], work),
        Tool("rsync-z", ["rsync", "-a", "-z", "--delete", "-e", rsh], work),
    ]
    times: dict[tuple[str, str], list[float]] = {}
    wire: dict[tuple[str, str], list[int]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    trips: dict[tuple[str, str], list[int]] = {}
    cpus: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    flushes: dict[tuple[str, str], list[float]] = {}

    def record(scenario: str, tool: Tool, result: tuple[float, int, int | None]) -> None:
        times.setdefault((scenario, tool.name), []).append(result[0])
        flushes.setdefault((scenario, tool.name), []).append(tool.flush)
        wire.setdefault((scenario, tool.name), []).append(result[1])
        cpus.setdefault((scenario, tool.name), []).append(tool.cpu[:2])
        said = f"  cpu {tool.cpu[0]:.2f} + {tool.cpu[1]:.2f} s" if len(tool.cpu) > 1 else ""
        if not tool.name.startswith("hsync"):
            said += f"  (sync -f {tool.flush:.2f} s)"
        if result[2] is not None:
            trips.setdefault((scenario, tool.name), []).append(result[2])
            said += f"  {result[2]:>3} round trips"
        print(f"  {scenario} {tool.name:8} {result[0]:8.2f} s  {result[1]:>12,} B{said}",
              file=sys.stderr)

    def renamed(name: str) -> tuple[str, str]:
        """The rename of a round: ``name`` to ``name-renamed``, or back."""
        return (name, f"{name}-renamed") if (src / name).exists() else (f"{name}-renamed",
                                                                        name)

    try:
        if keep:
            for t in tools:
                print(f"bringing {t.dst} up to date (untimed)", file=sys.stderr)
                t.prepare(src)
        for r in range(args.rounds):
            order = tools[r % len(tools):] + tools[:r % len(tools)]
            print(f"round {r + 1}", file=sys.stderr)
            if "a" in scenarios:  # every tool's old copy deleted, then their inodes
                for t in order:  # reusable (bench_fs.RECENTLY_DELETED) before any copy
                    t.reset()
                slept = wait_deletes(deletes_window(work, args.after_deletes))
                if slept:
                    print(f"  waited {slept:.0f} s for the deleted copies' inodes to be "
                          "reusable", file=sys.stderr)
            for t in order:
                if "a" in scenarios:
                    dropped = drop_caches()
                    warmed = warm(src)
                    if not dropped and r == 0 and t is order[0]:
                        print("  could not drop the page cache (not root): each copy "
                              "starts with the memory the ones before it left",
                              file=sys.stderr)
                    if warmed > 5:
                        print(f"  read the source again first ({warmed:.0f} s): it had "
                              "left the page cache", file=sys.stderr)
                    record("a", t, t.run(src))
                if "b1" in scenarios:
                    record("b1", t, t.run(src))
                if "b" in scenarios:
                    record("b", t, t.run(src))
            if "c" in scenarios:
                os.rename(*(src / n for n in renamed("bulk")))
                for t in order:
                    record("c", t, t.run(src))
            if "d" in scenarios:
                os.rename(*(src / n for n in renamed("big")))
                for t in order:
                    record("d", t, t.run(src))
            # the floor of every tool: an ssh login that runs nothing
            t0 = time.perf_counter()
            subprocess.run([*shlex.split(rsh), HOST, "true"], check=True)
            times.setdefault(("0", "ssh true"), []).append(time.perf_counter() - t0)
            if "e" in scenarios:
                with open(src / "append" / "huge", "ab") as f:
                    f.write(os.urandom(MIB))
                for t in order:  # both copies of the big file read back in: the
                    # machine pages out what a minute left unused, and the tool after
                    # a long scenario would read them from the disk
                    warm(src / "append")
                    warm(t.dst / "append")
                    record("e", t, t.run(src))
            if "f" in scenarios:
                bulk = src / ("bulk" if (src / "bulk").exists() else "bulk-renamed")
                for n in sorted(os.listdir(bulk))[:args.change]:
                    data = (bulk / n).read_bytes()
                    (bulk / n).write_bytes(bytes([(r + 1) % 256]) + data[1:])
                for t in order:
                    record("f", t, t.run(src))
            for t in order:  # every tool's copy equals the source
                if args.check == "stat":
                    p = subprocess.run(["rsync", "-a", "-n", "-i", "--delete", f"{src}/",
                                        f"{t.dst}/"], capture_output=True, check=False)
                    differs = p.returncode != 0 or bool(p.stdout.strip())
                else:
                    p = subprocess.run(["diff", "-r", "-q", str(src), str(t.dst)],
                                       capture_output=True, check=False)
                    differs = p.returncode != 0
                if differs:
                    raise SystemExit(f"{t.name}: destination differs: {p.stdout[:300]!r}")
            for s in scenarios:
                base = times[(s, "rsync")][-1]
                for t in tools:
                    ratios.setdefault((s, t.name), []).append(times[(s, t.name)][-1] / base)
    finally:
        server.stop()
    names = {"a": f"initial copy ({args.files:,} files + {args.big} x 1 MiB)",
             "b1": "first re-sync after the copy",
             "b": "no-op re-sync", "c": f"rename of a directory of {args.batch} files",
             "d": f"rename of a directory of {args.big} x 1 MiB",
             "e": f"1 MiB appended to a file of {args.append:,} MiB",
             "f": f"{args.change:,} files rewritten"}
    print(f"\n{args.rounds} rounds, medians; ratio: the median of the per-round ratios "
          "to rsync -a; sync -f DST (rsync's time includes the flush hsync makes itself; "
          "the column after it: rsync's own time, without it)\n")
    ends = "CPU 0 / CPU 1 (s)" if args.pin else "CPU s, both cores"
    print("| scenario | tool | time (s) | ratio to rsync -a; sync -f | without the flush "
          f"| bytes on the wire | round trips | {ends} |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    floor = times[("0", "ssh true")]
    print(f"| `ssh {HOST} true` (the floor of both tools) | ssh | "
          f"{statistics.median(floor):.2f} | | | | | |")
    for s in scenarios:
        for t in tools:
            key = (s, t.name)
            rt = f"{statistics.median(trips[key]):g}" if key in trips else ""
            used = cpus.get(key, [])
            cpu = (" / ".join(f"{statistics.median(c[i] for c in used):.2f}" for i in (0, 1))
                   if args.pin else f"{statistics.median(sum(c) for c in used):.2f}"
                   ) if used and len(used[0]) > 1 else ""
            own = "" if t.name.startswith("hsync") else "{:.2f}".format(statistics.median(
                a - b for a, b in zip(times[key], flushes[key], strict=True)))
            print(f"| {names[s]} | {t.name} | {statistics.median(times[key]):.2f} | "
                  f"{statistics.median(ratios[key]):.2f} | {own} | "
                  f"{int(statistics.median(wire[key])):,} | {rt} | {cpu} |")




if __name__ == "__main__":
    main()
