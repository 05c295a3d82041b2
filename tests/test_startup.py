"""Start-up (issue 15): a command imports only what it uses.

These run the installed ``hsync`` console script in a child interpreter and look at
``sys.modules`` when it ends. They are structure tests, not timed tests: the time a
start-up takes is measured in ``bench/bench_fs.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from treeutil import _MODULES_PROBE, hsync_bin, run_with_modules

# Never needed by --version: the parser, the value types, the whole pipeline.
NOT_FOR_VERSION = {
    "typer", "click", "rich", "attr", "attrs", "typing", "sqlite3", "importlib.metadata",
    "hsync.cli", "hsync.model", "hsync.api", "hsync.options",
}  # fmt: skip
# Never needed by a local sync: the watch, the daemon, the verifier, rich output, the
# plugin registry's entry points (read only for a scheme that is not built in).
NOT_FOR_LOCAL_SYNC = {
    "importlib.metadata", "watchdog", "rich", "pydantic", "multiprocessing", "email",
    "zipfile", "ldap", "hsync_ldap", "secrets", "hsync.api", "hsync.live",
    "hsync.daemon", "hsync.dirty", "hsync.status", "hsync.verifier", "hsync.resume",
    "typer", "typer._click", "click", "shellingham", "hsync.cli",
}  # fmt: skip
NOT_FOR_A_NO_OP = NOT_FOR_LOCAL_SYNC | {"concurrent.futures", "logging"}
"""A no-op starts no thread pool (the first copy may: its files are copied on one)."""


def test_version_imports_neither_the_parser_nor_the_pipeline(tmp_path: Path) -> None:
    import hsync

    proc, modules = run_with_modules(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"hsync {hsync.__version__}\n"
    assert not modules & NOT_FOR_VERSION, sorted(modules & NOT_FOR_VERSION)


def test_version_agrees_with_the_installed_metadata() -> None:
    from importlib.metadata import version

    import hsync

    assert version("hsync") == hsync.__version__


def test_local_sync_imports_only_what_it_uses(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    for i in range(10):
        (src / "d" / f"f{i}").write_text(f"{i}\n")
    state = str(tmp_path / "state")
    for forbidden in (NOT_FOR_LOCAL_SYNC, NOT_FOR_A_NO_OP):  # the first copy, a no-op
        proc, modules = run_with_modules(tmp_path, "sync", str(src), str(dst), "--state", state)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in (dst / "d").iterdir()) == [f"f{i}" for i in range(10)]
        assert "hsync.oneshot" in modules  # the probe saw the real run
        assert not modules & forbidden, sorted(modules & forbidden)


NOT_FOR_A_SMALL_NO_OP = NOT_FOR_A_NO_OP | {
    "typing", "attr", "attrs", "hashlib", "_hashlib", "hsync.apply", "hsync.backends.fs.apply",
    "hsync.remote", "hsync.populate", "<forked>",
}  # fmt: skip
"""A no-op of a small tree: no attrs (the value types are ``hsync._values``), no
OpenSSL, no applier, nothing of the remote part, and no child process (its
destination is scanned in this process: ``compare.SMALL_TREE``)."""


def _ten_files(tmp_path: Path) -> tuple[Path, Path, str]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    for i in range(10):
        (src / "d" / f"f{i}").write_text(f"{i}\n")
    return src, dst, str(tmp_path / "state")


def test_a_no_op_of_a_small_tree_forks_nothing_and_imports_no_attrs(tmp_path: Path) -> None:
    src, dst, state = _ten_files(tmp_path)
    sync = ("sync", str(src), str(dst), "--state", state, "--no-progress", "--json")
    proc, modules = run_with_modules(tmp_path, *sync)  # the first copy
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["create"] == 12  # the root, d, ten files
    proc, modules = run_with_modules(tmp_path, *sync)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)["counts"].values()) == {0}
    assert "hsync.oneshot" in modules and "hsync.digests" in modules  # a digest no-op
    assert not modules & NOT_FOR_A_SMALL_NO_OP, sorted(modules & NOT_FOR_A_SMALL_NO_OP)


NOT_FOR_A_PLAIN_NO_OP = NOT_FOR_A_SMALL_NO_OP | {
    "typing", "re", "json", "enum", "signal", "inspect", "ast", "hsync.remote.early",
}  # fmt: skip
"""A no-op of a small tree without ``--json``: besides, no ``typing`` (the backend
contract's protocols are checked without it), no ``re`` (neither the command's script,
which is not pip's console-script wrapper, nor a filter without patterns, nor a URL
that cannot carry a secret), no ``json``, and neither ``signal``'s Python module nor
the ``enum`` it builds its enums with (``_signal`` has the same functions)."""


def test_a_no_op_of_a_small_tree_imports_neither_typing_nor_re_nor_enum(tmp_path: Path) -> None:
    src, dst, state = _ten_files(tmp_path)
    sync = ("sync", str(src), str(dst), "--state", state, "--no-progress")
    assert run_with_modules(tmp_path, *sync, no_site=True)[0].returncode == 0  # first copy
    proc, modules = run_with_modules(tmp_path, *sync, no_site=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0 created, 0 updated, 0 moved, 0 deleted"), proc.stdout
    assert "hsync.oneshot" in modules and "hsync.digests" in modules  # a digest no-op
    assert not modules & NOT_FOR_A_PLAIN_NO_OP, sorted(modules & NOT_FOR_A_PLAIN_NO_OP)
    # with --json: still no typing
    proc, modules = run_with_modules(tmp_path, *sync, "--json", no_site=True)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)["counts"].values()) == {0}
    assert "typing" not in modules


NOT_FOR_A_LEAN_NO_OP = NOT_FOR_A_PLAIN_NO_OP | {
    "sqlite3", "sqlite3.dbapi2", "datetime", "_datetime", "math", "threading", "contextlib",
    "ctypes", "_ctypes", "struct", "pwd", "grp", "hsync.itemize", "hsync.planner",
}  # fmt: skip
"""A no-op of a small tree, with ``--json`` or without: besides, neither ``sqlite3``'s
Python module (its default date adapters import ``datetime``: the history, the journal
and the session use ``_sqlite3``, which it re-exports), nor ``threading`` (no thread
started, no lock taken), nor ``contextlib``, nor ``ctypes`` (the roots' birth times and
``openat2`` from ``hsync._walk``; a one-shot command leaves its history and journal
open to the process's end, so no ctypes call keeps their WAL at close on Python 3.11),
nor the user and group databases (two local trees
map no names), nor ``hsync.itemize`` (no op, no log file: nothing to describe), nor
``hsync.planner`` (no change to order)."""


def test_a_no_op_of_a_small_tree_imports_neither_sqlite3_nor_threading_nor_ctypes(
    tmp_path: Path,
) -> None:
    src, dst, state = _ten_files(tmp_path)
    sync = ("sync", str(src), str(dst), "--state", state, "--no-progress")
    assert run_with_modules(tmp_path, *sync, no_site=True)[0].returncode == 0  # first copy
    wal = Path(f"{state}-wal").read_bytes()
    for extra in ((), ("--json",)):
        proc, modules = run_with_modules(tmp_path, *sync, *extra, no_site=True)
        assert proc.returncode == 0, proc.stderr
        if extra:
            report = json.loads(proc.stdout)
            assert set(report["counts"].values()) == {0} and report["errors"] == []
        else:
            assert proc.stdout.startswith("0 created, 0 updated, 0 moved, 0 deleted")
        assert "hsync.oneshot" in modules and "hsync.digests" in modules  # a digest no-op
        assert "_sqlite3" in modules and "hsync._walk" in modules
        unwanted = NOT_FOR_A_LEAN_NO_OP - ({"json", "re", "enum"} if extra else set())
        assert not modules & unwanted, sorted(modules & unwanted)  # --json: json's own
        # the history's WAL left as it was (no checkpoint: not closed, nothing written)
        assert Path(f"{state}-wal").read_bytes() == wal
    (src / "d" / "f3").write_text("changed\n")  # and the next run reads it
    proc, _ = run_with_modules(tmp_path, *sync, no_site=True)
    assert proc.stdout.startswith("0 created, 1 updated, 0 moved, 0 deleted"), proc.stdout
    assert (dst / "d" / "f3").read_text() == "changed\n"


def test_a_change_to_a_small_tree_is_synced_without_a_child(tmp_path: Path) -> None:
    src, dst, state = _ten_files(tmp_path)
    sync = ("sync", str(src), str(dst), "--state", state, "--no-progress")
    assert run_with_modules(tmp_path, *sync)[0].returncode == 0
    (src / "d" / "f3").write_text("changed\n")
    (src / "d" / "f4").unlink()
    proc, modules = run_with_modules(tmp_path, *sync)
    assert proc.returncode == 0, proc.stderr
    # f3, and d (its mtime: f4 went)
    assert proc.stdout.startswith("0 created, 2 updated, 0 moved, 1 deleted"), proc.stdout
    assert (dst / "d" / "f3").read_text() == "changed\n" and not (dst / "d" / "f4").exists()
    assert "<forked>" not in modules and "hsync.digests" in modules


def test_a_tree_over_the_small_size_is_scanned_in_a_child(tmp_path: Path) -> None:
    """Beside the source's scan, the destination's runs in a forked child once the
    history says the tree is not small (``compare.SMALL_TREE``)."""
    from hsync.compare import SMALL_TREE

    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in range(SMALL_TREE // 100 + 1):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (src / f"d{d}" / f"f{i}").write_bytes(b"")
    sync = ("sync", str(src), str(dst), "--state", str(tmp_path / "state"), "--no-progress")
    assert run_with_modules(tmp_path, *sync)[0].returncode == 0
    proc, modules = run_with_modules(tmp_path, *sync)
    assert proc.returncode == 0 and proc.stdout.startswith("0 created, 0 updated"), proc
    assert "<forked>" in modules


def test_the_package_api_is_there_on_first_use() -> None:
    code = (
        "import sys, hsync\n"
        "assert 'hsync.api' not in sys.modules\n"
        "from hsync import Options, sync, check_plan\n"
        "assert hsync.sync is sync and 'hsync.api' in sys.modules\n"
        "assert all(hasattr(hsync, name) for name in hsync.__all__)\n"
        "assert not hasattr(hsync, 'nothing')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _since(state: str) -> str:
    import sqlite3

    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        (value,) = db.execute("SELECT value FROM meta WHERE name LIKE 'since:%'").fetchone()
    finally:
        db.close()
    return str(value)


def test_a_no_op_sync_writes_nothing_to_the_history(tmp_path: Path) -> None:
    # the history's mark of "equal since" is kept by a run that changed nothing: no
    # commit, so no WAL and no fsyncs at close (most of a small no-op's wall clock on a
    # busy disk); a run that changes something moves it
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    for i in range(10):
        (src / "d" / f"f{i}").write_text(f"{i}\n")
    state = str(tmp_path / "state.sqlite")
    sync = [hsync_bin(), "sync", str(src), str(dst), "--state", state, "--no-progress"]
    assert subprocess.run(sync, capture_output=True).returncode == 0
    mark = _since(state)
    history = Path(state).read_bytes()
    proc = subprocess.run(sync, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("0 created, 0 updated"), proc
    assert _since(state) == mark
    assert Path(state).read_bytes() == history
    (src / "d" / "new").write_text("new\n")
    assert subprocess.run(sync, capture_output=True).returncode == 0
    assert (dst / "d" / "new").read_text() == "new\n"
    assert _since(state) != mark


NOT_FOR_DELETES = {"typing", "concurrent.futures", "logging", "traceback"}
"""A sync that deletes files and sets its directories' mtimes (on threads, or fsyncs a
few directories on threads) imports no ``typing`` and no ``concurrent.futures`` (whose
``logging`` cost a delete of 50 files in a 5,000-file tree as much as its unlinks):
the applier's threads are ``backends.fs.workers``."""


def test_a_sync_that_deletes_files_imports_neither_typing_nor_concurrent_futures(
    tmp_path: Path,
) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", str(tmp_path / "state")
    for d in range(40):
        (src / f"d{d:02d}").mkdir(parents=True)
        for f in range(3):
            (src / f"d{d:02d}" / f"f{f}").write_text(f"{d}-{f}\n")
    sync = ("sync", str(src), str(dst), "--state", state, "--no-progress")
    assert run_with_modules(tmp_path, *sync, no_site=True)[0].returncode == 0  # first copy
    # a file from each of 40 directories: the unlinks and the 40 mtimes on threads, one
    # syncfs; then 2 from 2 directories: an fsync of each directory, on threads
    for gone in ([f"d{d:02d}/f0" for d in range(40)], ["d00/f1", "d01/f1"]):
        for name in gone:
            (src / name).unlink()
        proc, modules = run_with_modules(tmp_path, *sync, no_site=True)
        assert proc.returncode == 0, proc.stderr
        dirs = len({name.split("/")[0] for name in gone})
        assert proc.stdout.startswith(f"0 created, {dirs} updated, 0 moved, {len(gone)} "
                                      "deleted"), proc.stdout
        assert "hsync.backends.fs.workers" in modules  # the probe saw the threads' module
        assert not modules & NOT_FOR_DELETES, sorted(modules & NOT_FOR_DELETES)
        assert sorted(p.relative_to(dst) for p in dst.rglob("*")) == sorted(
            p.relative_to(src) for p in src.rglob("*"))
        for d in src.iterdir():
            assert (dst / d.name).stat().st_mtime_ns == d.stat().st_mtime_ns


NOT_FOR_THE_AGENT = {
    "typing", "re", "enum", "signal", "platform", "zstandard", "typer", "click", "attr",
    "attrs", "sqlite3", "hsync.cli", "hsync.remote.backend", "hsync.remote.transport",
    "hsync.filters",
}  # fmt: skip
"""What ``hsync agent`` (the far side of every remote run, started by each: its
start-up is on each run's critical path) does not import to open a tree and answer
what a no-op asks first: not ``typing`` (nor the ``re`` and ``enum`` it brings), not
``signal``'s Python module, and not zstandard's package, whose ``__init__`` imports
``platform`` and ``typing`` to choose the C extension that is loaded by itself
(``protocol._zstd``); sqlite (the journal) only once a batch arrives. Nor the
filters (a scan without excludes is sent None; ``Exclude`` is looked up when one
crosses). (msgpack imports ``datetime`` for its timestamps: 2-3 ms, kept.)"""


def test_the_agent_answers_the_open_without_typing_or_zstandards_package(
    tmp_path: Path,
) -> None:
    import sysconfig

    import hsync
    from hsync.backend import Keep
    from hsync.remote.protocol import MAGIC, PROTOCOL, Framer, hsync_version

    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"x" * 1000)
    out = tmp_path / "modules.txt"
    where = [str(Path(hsync.__file__).parent.parent), sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(where)}
    proc = subprocess.Popen(  # as ssh starts it, without site's .pth hooks (``-S``)
        [sys.executable, "-S", "-c", _MODULES_PROBE, str(out), hsync_bin(), "agent"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    frames = Framer(proc.stdout, proc.stdin, compress=True)
    frames.send([0, "hello", [MAGIC, PROTOCOL, hsync_version(), True]])
    frames.send([1, "open", [str(tree), "destination", []]])
    frames.send([2, "root_id", []])
    frames.send([3, "digest_scan", [None, False]])
    frames.send([4, "configure_scan", [True, False]])
    frames.send([5, "metadata", [Keep(owner=True, group=True)]])  # a value crosses
    frames.send([6, "ctime_clock", []])
    answers = {}
    while len(answers) < 7:
        rid, tag, value = frames.recv()
        answers[rid] = (tag, value)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert answers[0][1]["protocol"] == PROTOCOL
    assert answers[2][0] == "ok" and answers[2][1] is not None  # the tree is there
    assert {tag for tag, _ in answers.values()} == {"ok"}, answers
    assert isinstance(answers[5][1], Keep)
    modules = set(out.read_text().split("\n"))
    assert "hsync.remote.agent" in modules and "hsync.backends.fs" in modules
    assert not modules & NOT_FOR_THE_AGENT, sorted(modules & NOT_FOR_THE_AGENT)
