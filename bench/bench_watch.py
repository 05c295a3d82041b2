#!/usr/bin/env python3
"""Live-sync benchmark: change-to-destination latency of hsync watch, lsyncd and rsync.

For each of two generated trees (default: 10,500 entries = 10,000 files + 500 dirs, and
1,000,000 entries = 950,000 files + 50,000 dirs, mostly empty or tiny files, depth <= 6),
each tool keeps its own destination equal to the shared source while the benchmark makes
single-file writes (a new small file or an overwrite of one it wrote before, in a directory
at depth 4-6, 150-300 ms apart) and measures the time from the write's return (after
close) until the destination file has the expected content, minus the tool's configured
debounce/delay. The tools:

  hsync   ``hsync watch SRC DST --debounce MS --status-file F`` (one daemon per tree)
  lsyncd  ``sync { default.rsync, source=SRC, target=DST, delay=0 }`` (-nodaemon)
  rsync   ``rsync -a --delete SRC/ DST/`` re-run after each write (latency: its wall time)

The disk is shared and noisy, so the tools are interleaved in blocks: all daemons run at
once, each with its own destination, and the ones not being measured are stopped with
SIGSTOP (their inotify events queue in the kernel); a resumed daemon must catch up (a
sentinel file and every file written so far reach its destination) before its block.

Also reported: the daemons' memory (VmRSS after the initial sync, VmHWM at the end, from
/proc/PID/status) in bytes per tree entry. Stdlib only; ``python bench/bench_watch.py -h``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GEN_VERSION = 2  # bump when the generator changes: cached trees are keyed by it
DEPTH = 6
DIR_FRACTION = 0.05  # 1M entries -> 50,000 dirs + 950,000 files
WRITE_DEPTHS = (4, 5, 6)
PREFIX = "hsbench-"  # every file the benchmark writes into a source tree
TOOLS = ("hsync", "lsyncd", "rsync")
TARGET_RATIO = 1.2  # hsync: p50 (and p95) on the big tree within 1.2x of the small tree
TARGET_BYTES_PER_ENTRY = 400
POLL_SLEEP = 0.0005


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class TreeSpec:
    label: str  # "small" / "big"
    entries: int
    seed: int

    @property
    def dirs(self) -> int:
        return max(2, round(self.entries * DIR_FRACTION))

    @property
    def files(self) -> int:
        return self.entries - self.dirs

    @property
    def key(self) -> str:
        return f"watch-v{GEN_VERSION}-s{self.seed}-e{self.entries}-h{DEPTH}"


def dir_layout(dirs: int, seed: int) -> tuple[list[str], list[int]]:
    """Relative paths and depths of `dirs` directories (the root, "", excluded).

    Each directory picks a uniformly random parent among those above the maximum depth: a
    random recursive tree, capped, so most directories sit at depth 5-6 and directories
    hold about the same number of files whatever the size of the tree.
    """
    rng = random.Random(seed)
    rels: list[str] = [""]
    levels: list[int] = [0]
    eligible: list[int] = [0]
    for i in range(1, dirs + 1):
        parent = eligible[rng.randrange(len(eligible))]
        name = f"d{i:06d}"
        rels.append(f"{rels[parent]}/{name}" if rels[parent] else name)
        levels.append(levels[parent] + 1)
        if levels[-1] < DEPTH:
            eligible.append(i)
    return rels[1:], levels[1:]


def _file_dir(i: int, ndirs: int) -> int:
    return (i * 2654435761 + 12345) % ndirs  # multiplicative hash: spread, deterministic


def _file_size(i: int) -> int:
    h = (i * 40503 + 7) % 100
    return 0 if h < 70 else h - 69  # 70% empty, 30% 1..30 bytes


def _make_files(args: tuple[str, list[str], int, int, int]) -> int:
    """Worker: create files worker, worker + step, ... below `root` (os.open loop)."""
    root, rels, start, step, files = args
    ndirs = len(rels)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    payload = b"abcdefghijklmnopqrstuvwxyz0123456789"
    made = 0
    for i in range(start, files, step):
        path = f"{root}/{rels[_file_dir(i, ndirs)]}/f{i:07d}"
        fd = os.open(path, flags, 0o644)
        size = _file_size(i)
        if size:
            os.write(fd, payload[:size])
        os.close(fd)
        made += 1
    return made


def generate_tree(src: Path, spec: TreeSpec, jobs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rels, levels = dir_layout(spec.dirs, spec.seed)
    src.mkdir(parents=True)
    root = str(src)
    for rel in rels:  # parents come before children in `rels`
        os.mkdir(f"{root}/{rel}")
    t_dirs = time.perf_counter() - t0
    jobs = max(1, jobs)
    work = [(root, rels, k, jobs, spec.files) for k in range(jobs)]
    if jobs == 1:
        made = sum(map(_make_files, work))
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            made = sum(pool.map(_make_files, work))
    if made != spec.files:
        raise RuntimeError(f"made {made} files, wanted {spec.files}")
    hist: dict[str, int] = {}
    for lv in levels:
        hist[str(lv)] = hist.get(str(lv), 0) + 1
    # candidates for the benchmark's writes: up to 1,000 directories at each write depth
    rng = random.Random(spec.seed + 1)
    write_dirs: dict[str, list[str]] = {}
    for depth in WRITE_DEPTHS:
        at = [r for r, lv in zip(rels, levels, strict=True) if lv == depth]
        rng.shuffle(at)
        if at:
            write_dirs[str(depth)] = sorted(at[:1000])
    return {
        "entries": spec.entries,
        "files": spec.files,
        "dirs": spec.dirs,
        "depth_histogram": hist,
        "write_dirs": write_dirs,
        "seconds_dirs": round(t_dirs, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "jobs": jobs,
    }


def cached_tree(trees: Path, spec: TreeSpec, regen: bool, jobs: int) -> tuple[Path, dict]:
    """The tree under trees/KEY/src, generated once; manifest.json marks it complete."""
    base = trees / spec.key
    manifest_path = base / "manifest.json"
    if base.exists() and (regen or not manifest_path.exists()):
        log(f"removing {'old' if regen else 'incomplete'} tree {base}")
        rmtree(base)
    if not manifest_path.exists():
        log(
            f"generating {spec.label} tree: {spec.files:,} files + {spec.dirs:,} dirs "
            f"({jobs} processes) in {base} ..."
        )
        manifest = generate_tree(base / "src", spec, jobs)
        manifest_path.write_text(json.dumps(manifest, indent=1))
        log(f"  generated in {manifest['seconds']} s")
    manifest = json.loads(manifest_path.read_text())
    return base / "src", manifest


def rmtree(path: Path) -> None:
    """rm -rf (much faster than shutil.rmtree on a million entries)."""
    if path.exists() or path.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def count_entries(root: Path, skip_prefixes: tuple[str, ...] = ()) -> int:
    """Entries below root (root excluded), names starting with skip_prefixes left out."""
    n = 0
    stack = [str(root)]
    while stack:
        path = stack.pop()
        try:
            it = os.scandir(path)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                if skip_prefixes and e.name.startswith(skip_prefixes):
                    continue
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return n


# --------------------------------------------------------------------------- writes


class Writes:
    """The benchmark's writes into one source tree, journaled so leftovers get removed."""

    def __init__(
        self, src: Path, write_dirs: dict[str, list[str]], journal: Path, seed: int
    ) -> None:
        self.src = src
        self.write_dirs = write_dirs
        self.journal = journal
        self.rng = random.Random(seed)
        self.run_id = f"{os.getpid()}-{int(time.time())}"
        self.serial = 0
        self.files: dict[str, bytes] = {}  # relative path -> current content
        self.deep: list[str] = []  # the files of write(), candidates for overwrites
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(journal, "a")  # noqa: SIM115 (closed in cleanup)

    @staticmethod
    def remove_leftovers(journal: Path) -> None:
        if not journal.exists():
            return
        n = 0
        for line in journal.read_text().splitlines():
            if line.strip():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(line.strip())
                    n += 1
        journal.unlink()
        if n:
            log(f"removed {n} files left by an interrupted run ({journal})")

    def _content(self, avoid: int) -> bytes:
        size = avoid
        while size == avoid:
            size = self.rng.randint(24, 400)
        head = f"{PREFIX}{self.run_id} {self.serial:06d} ".encode()
        return (head + b"." * size)[:size]

    def _put(self, rel: str, data: bytes) -> None:
        path = f"{self.src}/{rel}"
        if rel not in self.files:
            self._fh.write(path + "\n")
            self._fh.flush()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.files[rel] = data

    def write(self) -> tuple[str, bytes, str, float]:
        """One write: (relative path, content, "new"/"overwrite", perf_counter after close)."""
        self.serial += 1
        if self.deep and self.rng.random() < 0.5:
            rel = self.rng.choice(self.deep)
            kind = "overwrite"
        else:
            # the depth first (4, 5 or 6 alike), so both trees get the same mix
            d = self.rng.choice(self.write_dirs[self.rng.choice(sorted(self.write_dirs))])
            rel = f"{d}/{PREFIX}{self.run_id}-{self.serial:06d}"
            kind = "new"
            self.deep.append(rel)
        data = self._content(len(self.files.get(rel, b"")))
        self._put(rel, data)
        return rel, data, kind, time.perf_counter()

    def sentinel(self) -> tuple[str, bytes]:
        """A new file at the top of the tree (for catch-up and initial-sync checks)."""
        self.serial += 1
        rel = f"{PREFIX}sentinel-{self.run_id}-{self.serial:06d}"
        data = self._content(0)
        self._put(rel, data)
        return rel, data

    def cleanup(self) -> None:
        for rel in self.files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.src}/{rel}")
        self.files.clear()
        self.deep.clear()
        self._fh.close()
        self.journal.unlink(missing_ok=True)


def wait_content(path: str, data: bytes, timeout: float) -> float | None:
    """Poll until `path` holds `data`; the perf_counter at that moment, None on timeout."""
    size = len(data)
    deadline = time.perf_counter() + timeout
    while True:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        else:
            if st.st_size == size:
                try:
                    with open(path, "rb") as f:
                        got = f.read(size + 1)
                except FileNotFoundError:
                    got = b""
                if got == data:
                    return time.perf_counter()
        if time.perf_counter() > deadline:
            return None
        time.sleep(POLL_SLEEP)


def wait_until(cond: Callable[[], bool], timeout: float, interval: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of pid in bytes ({} when gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0]) * 1024
    return out


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
                for k in kids:
                    found.append(int(k))
                    stack.append(int(k))
    return found


def tree_rss(pid: int) -> int:
    return sum(proc_status(p).get("VmRSS", 0) for p in [pid, *descendants(pid)])


_LIVE: set[int] = set()  # process groups to kill on the way out


def kill_all() -> None:
    for pgid in list(_LIVE):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        _LIVE.discard(pgid)


class Daemon:
    """A long-running syncer in its own process group (session)."""

    name = ""
    debounce_s = 0.0

    def __init__(self, exe: str, run: Path, src: Path, dst: Path) -> None:
        self.exe = exe
        self.run = run
        self.src = src
        self.dst = dst
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.returncode: int | None = None
        self.stop_seconds: float | None = None
        self.mem: dict[str, int] = {}

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        self.dst.mkdir(parents=True, exist_ok=True)
        with open(self.run / "stdout.log", "wb") as out, open(self.run / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,
            )
        _LIVE.add(self.proc.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            rc = self.proc.returncode if self.proc else None
            raise RuntimeError(f"{self.name} exited ({rc}); see {self.run}/stderr.log")

    def ready(self) -> bool:
        """Tool-specific sign that the initial sync is over (True when there is none)."""
        return True

    def pause(self) -> None:
        if self.alive() and not self.paused:
            os.killpg(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
            self.paused = False

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.alive():
            self.mem.update({f"end_{k}": v for k, v in proc_status(self.pid).items()})
        self.resume()
        t0 = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout)
            self.stop_seconds = round(time.perf_counter() - t0, 3)
        except subprocess.TimeoutExpired:
            log(f"  ! {self.name} did not exit within {timeout} s of SIGTERM: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers (e.g. lsyncd's rsync children)
        if self.returncode is None:
            self.returncode = self.proc.wait(10)
        _LIVE.discard(self.pid)

    def log_tail(self) -> str:
        parts = []
        for name in ("stderr.log", "stdout.log"):
            with contextlib.suppress(OSError):
                parts.append(Path(self.run / name).read_text(errors="replace")[-600:])
        return "\n".join(p for p in parts if p.strip())


class HsyncWatch(Daemon):
    name = "hsync"

    def __init__(
        self, exe: str, run: Path, src: Path, dst: Path, debounce_ms: int, help_text: str
    ) -> None:
        super().__init__(exe, run, src, dst)
        self.debounce_ms = debounce_ms  # < 0: hsync's default (no --debounce; nothing subtracted)
        self.debounce_s = max(0, debounce_ms) / 1000
        self.status_file = run / "status.json"
        self.help_text = help_text

    def argv(self) -> list[str]:
        argv = [self.exe, "watch", str(self.src), str(self.dst)]
        if self.debounce_ms >= 0:
            argv += ["--debounce", str(self.debounce_ms)]
        argv += ["--status-file", str(self.status_file)]
        if "--state" in self.help_text:
            argv += ["--state", str(self.run / "history.sqlite")]
        return argv

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["XDG_STATE_HOME"] = str(self.run / "xdg-state")  # never the user's history
        return env

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def states(self) -> list[str]:
        st = self.status()
        if not st:
            return []
        return [str(p.get("state")) for p in st.get("pairs", []) if isinstance(p, dict)]

    def ready(self) -> bool:
        states = self.states()
        return bool(states) and all(s == "idle" for s in states)


class Lsyncd(Daemon):
    name = "lsyncd"

    def __init__(self, exe: str, run: Path, src: Path, dst: Path, delay: float) -> None:
        super().__init__(exe, run, src, dst)
        self.delay = delay  # < 0: lsyncd's default delay (15 s; nothing subtracted)
        self.debounce_s = max(0.0, delay)
        self.config = run / "lsyncd.conf.lua"
        self.logfile = run / "lsyncd.log"

    def argv(self) -> list[str]:
        self.run.mkdir(parents=True, exist_ok=True)
        delay = repr(self.delay) if self.delay != int(self.delay) else str(int(self.delay))
        self.config.write_text(
            "settings {\n"
            f"    logfile = {json.dumps(str(self.logfile))},\n"
            f"    statusFile = {json.dumps(str(self.run / 'lsyncd.status'))},\n"
            "    statusInterval = 1,\n"
            "    nodaemon = true,\n"
            "}\n"
            "sync {\n"
            "    default.rsync,\n"
            f"    source = {json.dumps(str(self.src))},\n"
            f"    target = {json.dumps(str(self.dst))},\n"
            + (f"    delay = {delay},\n" if self.delay >= 0 else "")
            + "}\n"
        )
        return [self.exe, "-nodaemon", str(self.config)]

    def ready(self) -> bool:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return False
        return "Startup of" in text and "finished" in text


# --------------------------------------------------------------------------- measurement


@dataclass
class Sample:
    tool: str
    tree: str
    block: int
    kind: str  # new / overwrite
    rel: str
    seconds: float | None  # latency, debounce subtracted; None: timed out / failed
    raw_seconds: float | None


@dataclass
class ToolTree:
    """What one tool did on one tree."""

    tool: str
    tree: str
    entries: int
    initial_sync_seconds: float | None = None
    rss_after_initial: int | None = None
    hwm_after_initial: int | None = None  # VmHWM then: the initial sync's share of the peak
    tree_rss_peak_initial: int | None = None  # sampled, daemon + children
    vm_hwm: int | None = None
    vm_rss_end: int | None = None
    exit_code: int | None = None
    stop_seconds: float | None = None
    catchup_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    status_at_ready: Any = None
    status_at_end: Any = None  # hsync: rounds, full comparisons, restarts, warnings


class Bench:
    def __init__(self, args: argparse.Namespace, names: list[str], work: Path) -> None:
        self.args = args
        self.names = names
        self.work = work
        self.samples: list[Sample] = []
        self.results: dict[tuple[str, str], ToolTree] = {}
        self.warnings: list[str] = []
        self.hsync_help = ""
        self.bursts: list[dict[str, Any]] = []

    # --- one tree -------------------------------------------------------------------

    def run_all(self, trees: list[tuple[TreeSpec, Path, dict[str, Any]]]) -> None:
        """Set every tool up on every tree, then measure in blocks rotating over both.

        The trees are interleaved too (not one after the other), so the big/small ratio
        is not skewed by the load of the shared machine changing between two phases.
        """
        args = self.args
        setups: list[tuple[TreeSpec, Path, Path, Writes]] = []
        daemons: dict[tuple[str, str], Daemon] = {}
        try:
            for spec, src, manifest in trees:
                run_dir = self.work / "watch-run" / spec.label
                rmtree(run_dir)
                run_dir.mkdir(parents=True)
                journal = self.work / "watch-journal" / f"{spec.key}.txt"
                Writes.remove_leftovers(journal)
                writes = Writes(src, manifest["write_dirs"], journal, args.seed)
                setups.append((spec, src, run_dir, writes))
                for name in self.names:
                    for other in daemons.values():
                        other.pause()
                    self.setup(name, spec, src, run_dir, writes, daemons)
            units = [(name, i) for name in self.names for i in range(len(setups))]
            blocks = max(1, args.blocks)
            log("os.sync() after the initial copies")
            os.sync()
            for b in range(blocks):
                k = b % len(units)
                for name, i in units[k:] + units[:k]:
                    spec, src, run_dir, writes = setups[i]
                    n = self.block_size(name, b, blocks)
                    if n <= 0:
                        continue
                    for key, other in daemons.items():
                        if key != (name, spec.label):
                            other.pause()
                    os.sync()  # no block pays for the previous one's dirty pages
                    if name == "rsync":
                        self.rsync_block(spec, src, run_dir / "rsync" / "dst", writes, b, n)
                    else:
                        self.daemon_block(spec, daemons[(name, spec.label)], writes, b, n)
            for (name, label), d in daemons.items() if args.burst > 0 else ():
                for key, other in daemons.items():
                    if key != (name, label):
                        other.pause()
                writes = next(w for sp, _, _, w in setups if sp.label == label)
                self.burst(label, d, writes, args.burst)
            for (name, label), d in daemons.items():
                d.resume()
                res = self.results[(name, label)]
                writes = next(w for sp, _, _, w in setups if sp.label == label)
                try:
                    self.catch_up(d, writes, res)
                except RuntimeError as exc:
                    res.failures.append(f"final catch-up: {exc}")
        finally:
            for (name, label), d in daemons.items():
                self.finish(name, label, d)
            for spec, _, run_dir, writes in setups:
                writes.cleanup()
                if not args.keep:
                    log(f"[{spec.label}] removing destinations")
                    rmtree(run_dir)

    def setup(
        self,
        name: str,
        spec: TreeSpec,
        src: Path,
        run_dir: Path,
        writes: Writes,
        daemons: dict[tuple[str, str], Daemon],
    ) -> None:
        """The initial sync of one tool on one tree (a daemon is left running)."""
        args = self.args
        res = ToolTree(name, spec.label, spec.entries)
        self.results[(name, spec.label)] = res
        dst = run_dir / name / "dst"
        if name == "rsync":
            dst.mkdir(parents=True)
            log(f"[{spec.label}] rsync: initial copy")
            rc, secs = self.rsync(src, dst, args.init_timeout)
            res.initial_sync_seconds = round(secs, 2)
            if rc != 0:
                raise RuntimeError(f"initial rsync failed ({rc})")
            log(f"  done in {res.initial_sync_seconds} s")
            return
        d: Daemon
        if name == "hsync":
            d = HsyncWatch(
                args.hsync_exe, run_dir / name, src, dst, args.debounce_ms, self.hsync_help
            )
        else:
            d = Lsyncd(args.lsyncd_exe, run_dir / name, src, dst, args.lsyncd_delay)
        daemons[(name, spec.label)] = d
        self.initial_sync(d, writes, res, spec.entries)

    def finish(self, name: str, label: str, d: Daemon) -> None:
        res = self.results[(name, label)]
        if isinstance(d, HsyncWatch):
            res.status_at_end = d.status()
        try:
            d.stop()
        finally:
            res.exit_code = d.returncode
            res.stop_seconds = d.stop_seconds
            res.vm_hwm = d.mem.get("end_VmHWM")
            res.vm_rss_end = d.mem.get("end_VmRSS")
            # lsyncd's normal exit on SIGTERM is 143; hsync must exit 0
            if d.returncode not in (0, None) and not (
                name == "lsyncd" and d.returncode == 128 + signal.SIGTERM
            ):
                res.failures.append(f"exit code {d.returncode} after SIGTERM")
                self.warnings.append(
                    f"{name} on {label}: exit {d.returncode} after SIGTERM; "
                    f"log tail:\n{d.log_tail()}"
                )

    def block_size(self, name: str, b: int, blocks: int) -> int:
        total = self.args.writes
        if name == "rsync" and self.args.rsync_writes is not None:
            total = min(total, self.args.rsync_writes)
        base, extra = divmod(total, blocks)
        return base + (1 if b < extra else 0)

    # --- daemons --------------------------------------------------------------------

    def initial_sync(self, d: Daemon, writes: Writes, res: ToolTree, src_count: int) -> None:
        args = self.args
        log(f"[{res.tree}] {d.name}: start, initial sync")
        t0 = time.perf_counter()
        d.start()
        peak = 0
        deadline = time.monotonic() + args.init_timeout
        skip = (".",)  # temp names (hsync's .hsync-tmp-*, rsync's .NAME.XXXXXX); none in SRC
        # 1. the tool's own sign (status idle / lsyncd's "Startup ... finished"),
        # 2. the destination has as many entries as the source,
        # 3. a sentinel written now reaches the destination.
        last_count = -1
        next_count = 0.0
        while True:
            d.check_alive()
            peak = max(peak, tree_rss(d.pid))
            if d.ready():
                now = time.monotonic()
                if now >= next_count:
                    last_count = count_entries(d.dst, skip)
                    next_count = time.monotonic() + 2.0
                    if last_count >= src_count + len(writes.files):
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{d.name}: initial sync not done after {args.init_timeout} s "
                    f"(ready={d.ready()}, destination entries {last_count:,} of "
                    f"{src_count + len(writes.files):,})\n{d.log_tail()}"
                )
            time.sleep(0.25)
        res.initial_sync_seconds = round(time.perf_counter() - t0, 2)
        rel, data = writes.sentinel()
        if wait_content(f"{d.dst}/{rel}", data, args.wait_timeout) is None:
            raise RuntimeError(f"{d.name}: sentinel not synced within {args.wait_timeout} s")
        time.sleep(args.settle)
        mem = proc_status(d.pid)
        res.rss_after_initial = mem.get("VmRSS")
        res.hwm_after_initial = mem.get("VmHWM")
        res.tree_rss_peak_initial = peak
        if isinstance(d, HsyncWatch):
            res.status_at_ready = d.status()
        log(
            f"  in sync after {res.initial_sync_seconds} s; RSS {fmt_mib(res.rss_after_initial)}"
            f" ({fmt_bpe(res.rss_after_initial, res.entries)})"
        )

    def catch_up(self, d: Daemon, writes: Writes, res: ToolTree) -> None:
        """After a resume: a sentinel and every file written so far reach the destination."""
        t0 = time.perf_counter()
        d.check_alive()
        rel, data = writes.sentinel()
        if wait_content(f"{d.dst}/{rel}", data, self.args.catchup_timeout) is None:
            raise RuntimeError(f"{d.name}: catch-up sentinel not synced")
        for rel, data in list(writes.files.items()):
            left = self.args.catchup_timeout - (time.perf_counter() - t0)
            if wait_content(f"{d.dst}/{rel}", data, max(1.0, left)) is None:
                raise RuntimeError(f"{d.name}: catch-up: {rel} not synced")
        time.sleep(self.args.settle)
        res.catchup_seconds.append(round(time.perf_counter() - t0, 3))

    def spacing(self) -> None:
        lo, hi = self.args.spacing_ms
        time.sleep(random.uniform(lo, hi) / 1000)

    def daemon_block(self, spec: TreeSpec, d: Daemon, writes: Writes, b: int, n: int) -> None:
        res = self.results[(d.name, spec.label)]
        d.resume()
        try:
            self.catch_up(d, writes, res)
        except RuntimeError as exc:
            res.failures.append(str(exc))
            log(f"  ! {exc}")
            return
        log(f"[{spec.label}] {d.name}: block {b + 1}, {n} writes")
        for i in range(-self.args.warmup, n):
            d.check_alive()
            rel, data, kind, t_write = writes.write()
            t_seen = wait_content(f"{d.dst}/{rel}", data, self.args.wait_timeout)
            if i >= 0:
                raw = None if t_seen is None else t_seen - t_write
                lat = None if raw is None else raw - d.debounce_s
                self.samples.append(Sample(d.name, spec.label, b, kind, rel, lat, raw))
            if t_seen is None:
                res.failures.append(f"block {b}: {rel} not synced in {self.args.wait_timeout} s")
                log(f"  ! {d.name}: {rel} not synced within {self.args.wait_timeout} s")
            self.spacing()

    def burst(self, label: str, d: Daemon, writes: Writes, n: int) -> None:
        """``n`` new files written as fast as possible over 20 directories (a ``git
        checkout``): seconds from the last close until all are at the destination, and
        hsync's rounds for them."""
        res = self.results[(d.name, label)]
        d.resume()
        try:
            self.catch_up(d, writes, res)
        except RuntimeError as exc:
            res.failures.append(f"before the burst: {exc}")
            return
        rounds = _rounds(d)
        rng = random.Random(n)
        dirs = [rng.choice(ds) for ds in writes.write_dirs.values() for _ in range(7)][:20]
        made: list[tuple[str, bytes]] = []
        log(f"[{label}] {d.name}: burst of {n} files")
        os.sync()
        t0 = time.perf_counter()
        for i in range(n):
            writes.serial += 1
            rel = f"{dirs[i % len(dirs)]}/{PREFIX}burst-{d.name}-{writes.run_id}-{i:05d}"
            data = writes._content(0)
            writes._put(rel, data)
            made.append((rel, data))
        t_closed = time.perf_counter()
        done = None
        for rel, data in made:
            done = wait_content(f"{d.dst}/{rel}", data, self.args.catchup_timeout)
            if done is None:
                res.failures.append(f"burst: {rel} not synced")
                return
        assert done is not None
        time.sleep(self.args.settle)  # a round still running would show in the count
        after = _rounds(d)
        entry = {
            "tool": d.name,
            "tree": label,
            "files": n,
            "write_seconds": round(t_closed - t0, 4),
            "after_last_close_seconds": round(max(0.0, done - t_closed), 4),
            "rounds": None if rounds is None or after is None else after - rounds,
        }
        self.bursts.append(entry)
        log(f"  {entry}")

    # --- rsync ----------------------------------------------------------------------

    def rsync(self, src: Path, dst: Path, timeout: float) -> tuple[int, float]:
        argv = [self.args.rsync_exe, "-a", "--delete", f"{src}/", f"{dst}/"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        _LIVE.add(proc.pid)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -9
        finally:
            _LIVE.discard(proc.pid)
        return rc, time.perf_counter() - t0

    def rsync_block(
        self, spec: TreeSpec, src: Path, dst: Path, writes: Writes, b: int, n: int
    ) -> None:
        res = self.results[("rsync", spec.label)]
        log(f"[{spec.label}] rsync: block {b + 1}, {n} writes")
        for i in range(-self.args.warmup, n):
            rel, data, kind, t_write = writes.write()
            rc, _ = self.rsync(src, dst, self.args.rsync_timeout)
            t_done = time.perf_counter()
            ok = rc == 0 and wait_content(f"{dst}/{rel}", data, 0.0) is not None
            if i >= 0:
                raw = t_done - t_write if ok else None
                self.samples.append(Sample("rsync", spec.label, b, kind, rel, raw, raw))
            if not ok:
                res.failures.append(f"block {b}: rsync exit {rc}, {rel} synced: {ok}")
                log(f"  ! rsync exit {rc} ({rel})")
            self.spacing()


# --------------------------------------------------------------------------- report


def _rounds(d: Daemon) -> int | None:
    """hsync's rounds so far (its status file); None for another daemon."""
    if not isinstance(d, HsyncWatch):
        return None
    st = d.status() or {}
    pairs = [p for p in st.get("pairs", []) if isinstance(p, dict)]
    return sum(int(p.get("rounds") or 0) for p in pairs) if pairs else None


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(1, math.ceil(q / 100 * len(s)))
    return s[k - 1]


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.1f}"


def fmt_mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / (1 << 20):,.1f} MiB"


def fmt_bpe(x: int | None, entries: int) -> str:
    return "n/a" if x is None or not entries else f"{x / entries:,.0f} B/entry"


def summarize(bench: Bench, labels: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in bench.names:
        per: dict[str, Any] = {}
        for label in labels:
            res = bench.results.get((tool, label))
            if res is None:
                continue
            lats = [s.seconds for s in bench.samples if s.tool == tool and s.tree == label]
            ok = [x for x in lats if x is not None]
            per[label] = {
                "writes": len(lats),
                "failed": len(lats) - len(ok),
                "p50": percentile(ok, 50),
                "p90": percentile(ok, 90),
                "p95": percentile(ok, 95),
                "median": statistics.median(ok) if ok else None,
                "max": max(ok) if ok else None,
                "by_kind": {
                    k: percentile(
                        [
                            s.seconds
                            for s in bench.samples
                            if s.tool == tool
                            and s.tree == label
                            and s.kind == k
                            and s.seconds is not None
                        ],
                        50,
                    )
                    for k in ("new", "overwrite")
                },
                **asdict(res),
            }
        out[tool] = per
    return out


def tool_ratios(bench: Bench, labels: list[str], tool: str, peer: str) -> list[str]:
    """Per tree: ``tool``'s p50 over ``peer``'s, the median of the per-block ratios (the
    blocks are interleaved, so each pair of blocks saw the same phase of the load)."""
    lines = []
    for label in labels:
        ratios = []
        blocks = sorted({s.block for s in bench.samples if s.tree == label})
        for b in blocks:
            med: dict[str, float] = {}
            for name in (tool, peer):
                got = [s.seconds for s in bench.samples if s.tool == name and s.tree == label
                       and s.block == b and s.seconds is not None]
                if got:
                    med[name] = statistics.median(got)
            r = _ratio(med.get(tool), med.get(peer))
            if r is not None:
                ratios.append(r)
        if ratios:
            lines.append(
                f"{tool} / {peer} p50 on {label}: median of {len(ratios)} per-block ratios "
                f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})"
            )
    return lines


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def markdown_table(summary: dict[str, Any], labels: list[str], specs: dict[str, TreeSpec]) -> str:
    head = (
        "| tool | tree | writes (failed) | p50 ms | p90 ms | p95 ms | ratio big/small p50 (p95) "
        "| RSS after initial sync | peak RSS (VmHWM) | target |"
    )
    lines = [head, "|" + " --- |" * 10]
    for tool, per in summary.items():
        small = per.get("small")
        big = per.get("big")
        for label in labels:
            e = per.get(label)
            if e is None:
                continue
            spec = specs[label]
            tree = f"{label} ({spec.entries:,} entries)"
            ratio = ""
            target = ""
            if label == "big" and small and big:
                r50 = _ratio(big["p50"], small["p50"])
                r95 = _ratio(big["p95"], small["p95"])
                ratio = (
                    "n/a"
                    if r50 is None
                    else f"{r50:.2f}x ({'n/a' if r95 is None else f'{r95:.2f}x'})"
                )
                if tool == "hsync":
                    met_r = r50 is not None and r50 <= TARGET_RATIO
                    hwm = e["vm_hwm"]
                    bpe = None if hwm is None else hwm / spec.entries
                    met_m = bpe is not None and bpe <= TARGET_BYTES_PER_ENTRY
                    target = (
                        f"ratio <= {TARGET_RATIO}x: {'met' if met_r else 'NOT met'}; "
                        f"<= {TARGET_BYTES_PER_ENTRY} B/entry: {'met' if met_m else 'NOT met'}"
                    )
            if tool == "rsync":
                mem_init = mem_peak = "-"
            else:
                mem_init = (
                    f"{fmt_mib(e['rss_after_initial'])} "
                    f"({fmt_bpe(e['rss_after_initial'], spec.entries)})"
                )
                mem_peak = f"{fmt_mib(e['vm_hwm'])} ({fmt_bpe(e['vm_hwm'], spec.entries)})"
            cells = [
                tool,
                tree,
                f"{e['writes']} ({e['failed']})",
                fmt_ms(e["p50"]),
                fmt_ms(e["p90"]),
                fmt_ms(e["p95"]),
                ratio,
                mem_init,
                mem_peak,
                target,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def ensure_tool(name: str, exe: str, package: str) -> str:
    found = shutil.which(exe)
    if found:
        return found
    if exe != name:
        raise SystemExit(f"{name} not found: {exe}")
    log(f"{name} missing: apt-get install -y {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", package], env=env, check=False).returncode:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", package], env=env, check=True)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} still not found after apt-get install {package}")
    return found


def default_hsync() -> str | None:
    beside = Path(sys.executable).parent / "hsync"  # the venv's console script
    if beside.exists():
        return str(beside)
    here = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "hsync"
    if here.exists():
        return str(here)
    return shutil.which("hsync")


def first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else f"exit {p.returncode}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/hsync-bench"))
    p.add_argument(
        "--entries",
        type=int,
        default=1_000_000,
        help="entries of the big tree (5%% dirs; default %(default)s; 0: no big tree)",
    )
    p.add_argument(
        "--small-entries",
        type=int,
        default=10_500,
        help="entries of the small tree (default %(default)s = 10,000 files + 500 dirs)",
    )
    p.add_argument("--writes", type=int, default=100, help="measured writes per tool and tree")
    p.add_argument(
        "--rsync-writes",
        type=int,
        default=None,
        help="measured writes for rsync (default: --writes; each costs a whole rsync run)",
    )
    p.add_argument("--blocks", type=int, default=4, help="interleaved blocks per tool and tree")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured writes opening each block")
    p.add_argument("--tools", default=",".join(TOOLS), help="subset of hsync,lsyncd,rsync")
    p.add_argument(
        "--debounce-ms",
        type=int,
        default=0,
        help="hsync watch --debounce; -1: hsync's default (no flag, nothing subtracted)",
    )
    p.add_argument(
        "--lsyncd-delay",
        type=float,
        default=0.0,
        help="lsyncd delay (seconds); -1: lsyncd's default (15 s, nothing subtracted)",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=0,
        help="then, per daemon and tree, write this many files at once (a git checkout) "
        "and report the time to the destination and hsync's rounds (0: no burst)",
    )
    p.add_argument(
        "--spacing-ms",
        type=lambda s: tuple(float(x) for x in s.split(",")),
        default=(150.0, 300.0),
        help="pause after a write has arrived, uniform in LO,HI ms (default 150,300)",
    )
    p.add_argument("--settle", type=float, default=0.5, help="pause after a catch-up (s)")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="per write (s)")
    p.add_argument(
        "--rsync-timeout", type=float, default=600.0, help="per rsync run after a write (s)"
    )
    p.add_argument("--catchup-timeout", type=float, default=300.0, help="after a resume (s)")
    p.add_argument("--init-timeout", type=float, default=3600.0, help="initial sync (s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="generator processes")
    p.add_argument("--hsync", default=None, help="hsync executable (default: the venv's)")
    p.add_argument("--lsyncd", default="lsyncd")
    p.add_argument("--rsync", default="rsync")
    p.add_argument("--out", type=Path, default=None, help="JSON (default WORKDIR/watch.json)")
    p.add_argument("--regen", action="store_true", help="regenerate the cached trees")
    p.add_argument("--keep", action="store_true", help="keep destinations and logs")
    args = p.parse_args(argv)
    if len(args.spacing_ms) != 2 or args.spacing_ms[0] > args.spacing_ms[1]:
        p.error("--spacing-ms LO,HI")
    return args


@contextlib.contextmanager
def killing_children() -> Iterator[None]:
    """Kill every started process group on the way out, also on SIGTERM/SIGHUP."""

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        kill_all()
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not names or set(names) - set(TOOLS):
        raise SystemExit("--tools: choose from hsync,lsyncd,rsync")
    names = [t for t in TOOLS if t in names]
    work: Path = args.workdir.resolve()
    here = Path(__file__).resolve().parent.parent
    if work == here or here in work.parents:
        raise SystemExit(f"--workdir must be outside the repository ({here})")
    work.mkdir(parents=True, exist_ok=True)

    hsync_help = ""
    if "hsync" in names:
        exe = args.hsync or default_hsync()
        if not exe:
            raise SystemExit("hsync not found (use --hsync, or --tools lsyncd,rsync)")
        args.hsync_exe = str(Path(exe).absolute())
        p = subprocess.run(
            [args.hsync_exe, "watch", "--help"], capture_output=True, text=True, check=False
        )
        if p.returncode != 0 or "--status-file" not in p.stdout:
            raise SystemExit(
                f"{args.hsync_exe} has no 'watch' command with --status-file yet "
                "(use --tools lsyncd,rsync)"
            )
        hsync_help = p.stdout
    if "lsyncd" in names:
        args.lsyncd_exe = ensure_tool("lsyncd", args.lsyncd, "lsyncd")
    args.rsync_exe = ensure_tool("rsync", args.rsync, "rsync")

    specs: dict[str, TreeSpec] = {"small": TreeSpec("small", args.small_entries, args.seed)}
    if args.entries:
        specs["big"] = TreeSpec("big", args.entries, args.seed)
        if args.entries < 1_000_000:
            log(f"NOTE: big tree scaled down to {args.entries:,} entries (--entries)")
    watches = sum(s.dirs + 1 for s in specs.values() if s.label == "big") * sum(
        1 for n in names if n != "rsync"
    )
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
        if watches > limit:
            log(f"WARNING: {watches:,} inotify watches needed, max_user_watches is {limit:,}")
    except OSError:
        limit = 0

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "repo_commit": first_line(["git", "-C", str(here), "describe", "--always", "--dirty"]),
        "hsync": first_line([args.hsync_exe, "--version"]) if "hsync" in names else None,
        "lsyncd": first_line([args.lsyncd_exe, "-version"]) if "lsyncd" in names else None,
        "rsync": first_line([args.rsync_exe, "--version"]),
        "max_user_watches": limit,
    }
    bench = Bench(args, names, work)
    bench.hsync_help = hsync_help
    started = time.time()
    manifests: dict[str, Any] = {}
    with killing_children():
        trees = []
        for label, spec in specs.items():
            src, manifest = cached_tree(work / "trees", spec, args.regen, args.jobs)
            manifests[label] = {k: v for k, v in manifest.items() if k != "write_dirs"}
            trees.append((spec, src, manifest))
        bench.run_all(trees)

    labels = list(specs)
    summary = summarize(bench, labels)
    table = markdown_table(summary, labels, specs)
    notes = [
        f"Latency: write's return (after close) -> destination file has the new content "
        f"(os.stat poll every {POLL_SLEEP * 1000:g} ms), minus the configured debounce "
        f"(hsync --debounce {args.debounce_ms} ms, lsyncd delay {args.lsyncd_delay:g} s; "
        "-1 is the tool's default, nothing subtracted); "
        "rsync: wall time of `rsync -a --delete SRC/ DST/` started right after the write. "
        f"p50/p95: nearest rank. {args.blocks} blocks per tool and tree, interleaved over "
        "tools and trees (all daemons of both trees running, those not measured paused "
        "with SIGSTOP).",
        "Memory: VmRSS after the initial sync and VmHWM at the end, daemon main process "
        "(not its children), per tree entry (files + dirs).",
    ]
    if "big" in specs and specs["big"].entries < 1_000_000:
        notes.append(f"The big tree is scaled down to {specs['big'].entries:,} entries.")
    if args.rsync_writes is not None and args.rsync_writes < args.writes:
        notes.append(f"rsync: {args.rsync_writes} writes per tree instead of {args.writes}.")
    results = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "argv": sys.argv,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "env": env,
        "trees": manifests,
        "summary": summary,
        "samples": [asdict(s) for s in bench.samples],
        "bursts": bench.bursts,
        "warnings": bench.warnings,
        "table": table,
    }
    out_path: Path = args.out or work / "watch.json"
    out_path.write_text(json.dumps(results, indent=1, default=str))
    print(table)
    print()
    for n in notes:
        print(f"- {n}")
    if "hsync" in names and "lsyncd" in names:
        for line in tool_ratios(bench, labels, "hsync", "lsyncd"):
            print(f"- {line}")
    for tool, per in summary.items():
        for label, e in per.items():
            if e["failures"]:
                print(f"- {tool} on {label}: {len(e['failures'])} failures: {e['failures'][:3]}")
            if tool != "rsync":
                print(
                    f"- {tool} on {label}: initial sync {e['initial_sync_seconds']} s, "
                    f"catch-ups {e['catchup_seconds']} s, peak RSS incl. children during "
                    f"initial sync (sampled) {fmt_mib(e['tree_rss_peak_initial'])}, "
                    f"VmHWM right after it {fmt_mib(e['hwm_after_initial'])}, "
                    f"exit {e['exit_code']} in {e['stop_seconds']} s after SIGTERM"
                )
    for label in labels:
        st = summary.get("hsync", {}).get(label, {}).get("status_at_end") or {}
        for pair in st.get("pairs", []):
            keys = ("rounds", "full_comparisons", "restarts", "problems", "warnings")
            print(
                f"- hsync status at the end ({label}): "
                + ", ".join(f"{k} {pair.get(k)}" for k in keys)
            )
    if bench.bursts:
        print(
            "\n| burst | tree | files | written in | last close -> all at destination "
            "| hsync rounds |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for e in bench.bursts:
            rounds = "-" if e["rounds"] is None else e["rounds"]
            print(
                f"| {e['tool']} | {e['tree']} | {e['files']:,} "
                f"| {e['write_seconds'] * 1000:.0f} ms "
                f"| {e['after_last_close_seconds'] * 1000:.0f} ms | {rounds} |"
            )
    if bench.warnings:
        print("\nwarnings:\n" + "\n".join(f"- {w}" for w in bench.warnings))
    print(f"\nresults: {out_path}")
    failed = any(e["failures"] for per in summary.values() for e in per.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
