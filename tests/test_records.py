"""A record of every change (issue 12, items 8-11), through the installed ``hsync``
command: ``-i``/``-v`` lines, ``--log-file``, escaped names in every human-readable
output, a watch's per-op log lines naming the pair, the byte progress bar, ``--stats``,
a closed stdout, ``-h`` and one-line usage mistakes."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from treeutil import hsync_bin

NL = "a\nb"
"""A file name with a newline: it must never make two lines of human-readable output."""
NL_SHOWN = "a\\#012b"


class Run:
    def __init__(self, p: subprocess.CompletedProcess[bytes]) -> None:
        self.rc = p.returncode
        self.out = p.stdout.decode("utf-8", "surrogateescape")
        self.err = p.stderr.decode("utf-8", "surrogateescape")


def hsync(*args: Any) -> Run:
    cmd = [hsync_bin(), *(os.fspath(a) for a in args)]
    return Run(subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=120, check=False))


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    root.mkdir(parents=True, exist_ok=True)
    return root


# -- 11: a closed stdout, -h, usage mistakes ---------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--tree"]], ids=["plain", "tree"])
def test_diff_into_a_closed_pipe_ends_quietly(tmp_path: Path, extra: list[str]) -> None:
    """``hsync diff | head``: no "BrokenPipeError" line, and the exit of a tool killed by
    SIGPIPE (what git and rsync do; the shell shows 141), not 1 ("the trees differ")."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20_000):  # far more than a pipe holds
        (src / f"file-{i:05d}").touch()
    p = subprocess.Popen([hsync_bin(), "diff", str(src), str(tmp_path / "dst"), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(60) == -signal.SIGPIPE
    assert err == b""


@pytest.mark.parametrize("args", [["-h"], ["sync", "-h"], ["diff", "-h"]])
def test_dash_h_is_help(args: list[str]) -> None:
    r = hsync(*args)
    assert r.rc == 0, r.err
    assert "Usage: hsync" in r.out and "--help" in r.out


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["sync", "--max-delete", "x", "s", "d"], "--max-delete"),
        (["sync", "--no-such-option", "s", "d"], "--no-such-option"),
        (["diff", "--json", "--tree", "s", "d"], "--json and --tree"),
        (["watch", "--log-format", "xml", "s", "d"], "--log-format"),
        (["nosuchcommand"], "nosuchcommand"),
    ],
    ids=["bad-value", "unknown-option", "exclusive", "bad-choice", "unknown-command"],
)
def test_a_usage_mistake_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], names: str
) -> None:
    r = hsync(*(a if a not in ("s", "d") else str(tmp_path / a) for a in args))
    assert r.rc == 2, r.err
    assert r.out == ""
    assert r.err.count("\n") == 1 and r.err.startswith("hsync: error: "), r.err
    assert names in r.err
    for noise in ("BadParameter", "--debug", "Traceback", "Usage:"):
        assert noise not in r.err


# -- 8: -i / -v, --log-file, escaped names --------------------------------------------------


def test_itemize_prints_one_line_per_applied_op(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"d/f": b"x", NL: b"y", "old": b"z"})
    (src / "d" / "l").symlink_to("f")
    dst = tmp_path / "dst"
    r = hsync("sync", "-i", src, dst)
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[-1].startswith("6 created,")
    assert sorted(lines[:-1]) == sorted([
        "create dir     .", "create dir     d", "create file    d/f",
        "create symlink d/l", f"create file    {NL_SHOWN}", "create file    old",
    ])
    (src / "old").rename(src / "new")
    (src / "d" / "l").unlink()
    r = hsync("sync", "-v", src, dst)
    assert r.rc == 0, r.err
    assert "move   file    old -> new" in r.out.splitlines()
    assert "delete symlink d/l" in r.out.splitlines()
    # without -i nothing but the summary
    (src / "d" / "f").write_bytes(b"changed!")
    r = hsync("sync", src, dst)
    assert r.out.count("\n") == 1


def test_log_file_appends_timestamped_lines_per_run(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {NL: b"y", "f": b"x"})
    dst, log = tmp_path / "dst", tmp_path / "sync.log"
    assert hsync("sync", "--log-file", log, src, dst).rc == 0
    (src / "f").write_bytes(b"new content")
    r = hsync("sync", "--log-file", log, src, dst)
    assert r.rc == 0 and r.out.count("\n") == 1  # the log file does not imply -i
    lines = log.read_text().splitlines()
    stamp = r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\d+\] "
    assert all(re.match(stamp, line) for line in lines), lines
    body = [re.sub(stamp, "", line) for line in lines]
    assert [b for b in body if b.startswith("sync ")] == [f"sync {src} -> {dst}"] * 2
    footers = [b for b in body if b.startswith("done: ")]
    assert len(footers) == 2 and footers[1].startswith("done: 0 created, 1 updated")
    assert footers[1].endswith("; exit 0")
    assert f"create file    {NL_SHOWN}" in body
    assert "update file    f" in body


def test_a_newline_in_a_name_never_makes_two_lines(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {f"d/{NL}": b"y", "x": b"x"})
    dst = tmp_path / "dst"
    shown = f"d/{NL_SHOWN}"
    r = hsync("diff", src, dst)
    assert r.rc == 1
    assert f"create file    {shown}" in r.out.splitlines()
    r = hsync("diff", "--tree", src, dst)
    assert any(line.endswith(f"{NL_SHOWN}  [3: create file]") for line in r.out.splitlines())
    assert "\nb" not in r.out
    r = hsync("sync", "-n", src, dst)
    assert f"create file    {shown}" in r.out.splitlines()
    # --json keeps the name as it is
    r = hsync("diff", "--json", src, dst)
    assert {"op": "create", "kind": "file", "path": f"d/{NL}"} in json.loads(r.out)
    # error lines: one line, the name escaped
    r = hsync("sync", tmp_path / f"no{NL}such", dst)
    assert r.rc == 2 and r.err.count("\n") == 1 and f"no{NL_SHOWN}such" in r.err, r.err
    r = hsync("sync", "--log-file", tmp_path / f"no{NL}dir" / "log", src, dst)
    assert r.rc == 2 and r.err.count("\n") == 1 and f"no{NL_SHOWN}dir" in r.err, r.err
    # a backslash before '#' is escaped too: the escaping reads back unambiguously
    tree(src, {"p\\#012q": b""})
    r = hsync("diff", src, dst)
    assert "create file    p\\#134#012q" in r.out.splitlines()


# -- 10: --stats, the byte progress bar ------------------------------------------------------


def test_stats_summarises_the_run(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"a": b"1234", "d/b": b"567"})
    dst = tmp_path / "dst"
    r = hsync("sync", "--stats", src, dst)
    assert r.rc == 0, r.err
    stats = dict(
        (k.strip(), v.strip()) for k, v in
        (line.split(":", 1) for line in r.out.splitlines()[1:])
    )
    assert stats["Created"] in ("3", "4")  # with the root when hsync made it
    assert stats["Bytes copied"] == "7"
    assert stats["Failures"] == "0"
    assert stats["Deleted"] == "0"
    (src / "a").unlink()
    (src / "d" / "b").write_bytes(b"56789")
    r = hsync("sync", "--stats", src, dst)
    stats = dict(
        (k.strip(), v.strip()) for k, v in
        (line.split(":", 1) for line in r.out.splitlines()[1:])
    )
    assert stats["Deleted"] == "1" and stats["Updated"] in ("1", "2", "3")
    assert stats["Bytes copied"] == "5"
    assert stats["Bytes examined"] == "5 source, 7 destination"
    assert stats["Nodes examined"] == "3 source, 4 destination"


def _on_a_terminal(args: list[Any], timeout: float = 60) -> tuple[int, str]:
    """Run hsync with stderr on a pseudo-terminal (where the bar shows); what it drew."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "150", "TERM": "xterm"}
    p = subprocess.Popen([hsync_bin(), *map(os.fspath, args)], stdout=subprocess.DEVNULL,
                         stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    os.close(master)
    return p.wait(timeout), b"".join(chunks).decode("utf-8", "replace")


def test_the_progress_bar_counts_bytes_for_a_small_plan(tmp_path: Path) -> None:
    """Three ops, 24 MiB to copy: a bar in bytes (with a throughput), not no bar at all
    (it used to show only for plans of 200 ops or more)."""
    src = tree(tmp_path / "src", {"big.bin": os.urandom(24 << 20), "small": b"x"})
    dst = tmp_path / "dst"
    dst.mkdir()
    rc, drawn = _on_a_terminal(["sync", "--progress", src, dst])
    assert rc == 0, drawn
    assert "MiB" in drawn and "/s" in drawn, drawn
    assert "big.bin" in drawn, drawn  # the big file in flight is named


# -- 9: watch and daemon logs ----------------------------------------------------------------


def _wait(cond: Any, timeout: float = 15.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _watch_log(cmd: list[str], src: Path, dst: Path) -> str:
    """Run a watch (or daemon), add a file named with a newline once it has copied the
    tree, stop it; its log."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: (dst / "first").exists())
        (src / NL).write_bytes(b"late")
        _wait(lambda: (dst / NL).exists())
        time.sleep(0.3)  # the round's own log line
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.stderr is not None
    return p.stderr.read().decode("utf-8", "surrogateescape")


def test_watch_logs_each_applied_op_with_its_pair_json(tmp_path: Path) -> None:
    src, dst = tree(tmp_path / "src", {"first": b"1"}), tmp_path / "dst"
    err = _watch_log([hsync_bin(), "watch", str(src), str(dst), "--debounce", "20",
                      "--log-format", "json"], src, dst)
    lines = [json.loads(line) for line in err.splitlines()]
    pair_lines = [x for x in lines if x["logger"] == "hsync.watch"]
    assert pair_lines and all(x.get("pair") == str(src) for x in pair_lines), pair_lines
    ops = [x for x in lines if "op" in x]
    assert {"op": "create", "kind": "file", "path": "first"}.items() <= next(
        x for x in ops if x["path"] == "first").items()
    late = next(x for x in ops if x["path"] == NL)
    assert late["level"] == "info" and late["op"] == "create" and late["pair"] == str(src)


def _initial_copy_log(tmp_path: Path, n: int, *extra: str) -> list[dict[str, Any]]:
    """The JSON log of a watch whose first round copies ``n`` files (in 3 directories)
    into an empty destination, stopped once the copy's summary is logged."""
    src = tree(tmp_path / "src", {f"d{i % 3}/f{i:05}": b"x" for i in range(n)})
    err = tmp_path / "err"
    with open(err, "wb") as out:
        p = subprocess.Popen([hsync_bin(), "watch", str(src), str(tmp_path / "dst"),
                              "--log-format", "json", "--state", str(tmp_path / "h"),
                              *extra], stdout=subprocess.DEVNULL, stderr=out)
        try:
            _wait(lambda: "initial copy into an empty destination" in err.read_text(), 120)
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(list((tmp_path / "dst").rglob("f*"))) == n
    return [json.loads(line) for line in err.read_text().splitlines()]


def test_a_big_initial_copy_under_watch_logs_a_summary_not_a_line_per_op(
        tmp_path: Path) -> None:
    """A watch that fills an empty destination with 3,000 files logs its first ops,
    then a summary with what was copied: not 3,000 info lines (a million files were
    a million lines and most of an hour)."""
    lines = _initial_copy_log(tmp_path, 3000)
    info = [x for x in lines if x["level"] == "info"]
    assert len(info) <= 120, len(info)
    assert len([x for x in info if "op" in x]) == 100
    summary = next(x for x in info if "initial copy into an empty destination" in x["message"])
    assert "3004 node(s)" in summary["message"], summary  # the files, 3 dirs, the root


def test_a_watch_with_v_logs_every_op_of_its_initial_copy(tmp_path: Path) -> None:
    lines = _initial_copy_log(tmp_path, 300, "-v")
    created = {x["path"] for x in lines if x.get("op") == "create" and x["level"] == "info"}
    assert {f"d{i % 3}/f{i:05}" for i in range(300)} <= created


def test_daemon_text_log_names_the_pair_on_every_line(tmp_path: Path) -> None:
    src, dst = tree(tmp_path / "src", {"first": b"1"}), tmp_path / "dst"
    config = tmp_path / "hsync.toml"
    config.write_text(
        f'[defaults]\ndebounce_ms = 20\nstate = "{tmp_path / "history.sqlite"}"\n'
        f'[[pair]]\nname = "photos"\nsource = "{src}"\ndestination = "{dst}"\n'
    )
    err = _watch_log([hsync_bin(), "daemon", "--config", str(config)], src, dst)
    lines = err.splitlines()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} hsync [A-Z]+ "
    assert all(re.match(stamp, line) for line in lines), lines  # no line was split
    body = [re.sub(stamp, "", line) for line in lines]
    assert "photos: create file    first" in body
    assert f"photos: create file    {NL_SHOWN}" in body
    pair_lines = [b for b in body if not b.startswith("signal ")]
    assert all(b.startswith("photos: ") for b in pair_lines), pair_lines
