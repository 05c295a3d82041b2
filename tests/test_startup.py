"""Start-up (issue 15): a command imports only what it uses.

These run the installed ``hsync`` console script in a child interpreter and look at
``sys.modules`` when it ends. They are structure tests, not timed tests: the time a
start-up takes is measured in ``bench/bench_fs.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from treeutil import hsync_bin, run_with_modules

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
