"""``hsync watch`` with a remote endpoint (through a real sshd on 127.0.0.1): either
side remote, and a lost link reconnected with backoff, resumed from the history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_remote import HOST, _children, _cmdline
from treeutil import build, hsync_bin


def wait_for(cond: Callable[[], bool], seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def status(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())["pairs"][0]
        return doc
    except (OSError, ValueError, IndexError, KeyError):
        return {}


@pytest.fixture
def watching(remote: Any, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(src: str, dst: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [hsync_bin(), "watch", "--debounce", "50", "--status-file",
             str(tmp_path / "status.json"), src, dst],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def test_watch_push_and_pull(watching: Callable[..., Any], tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1", "d/b": b"2"})
    pushed, pulled = tmp_path / "pushed", tmp_path / "pulled"
    watching(str(src), f"{HOST}:{pushed}")
    assert wait_for(lambda: (pushed / "d" / "b").exists())
    (src / "new").write_bytes(b"new")
    os.rename(src / "d", src / "e")
    assert wait_for(lambda: (pushed / "new").exists() and (pushed / "e" / "b").exists())
    assert not (pushed / "d").exists()
    # the far side watches (inotify in the agent) and streams the dirty keys
    far = tmp_path / "far"
    build(far, {"x": b"1"})
    watching(f"{HOST}:{far}", str(pulled))
    assert wait_for(lambda: (pulled / "x").exists())
    (far / "y").write_bytes(b"from afar")
    assert wait_for(lambda: (pulled / "y").exists() and (pulled / "y").read_bytes() == b"from afar")
    # a directory renamed on the far side: its watch reports the move, renamed here
    build(far / "dir", {"z": b"z"})
    assert wait_for(lambda: (pulled / "dir" / "z").exists())
    inode = (pulled / "dir" / "z").stat().st_ino
    os.rename(far / "dir", far / "moved")
    assert wait_for(lambda: (pulled / "moved" / "z").exists() and not (pulled / "dir").exists())
    assert (pulled / "moved" / "z").stat().st_ino == inode


def test_watch_reconnects_after_a_lost_link(watching: Callable[..., Any],
                                            tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1"})
    dst = tmp_path / "dst"
    proc = watching(str(src), f"{HOST}:{dst}")
    st_path = tmp_path / "status.json"
    assert wait_for(lambda: (dst / "a").exists() and status(st_path).get("state") == "idle")
    before = status(st_path)
    assert before["link"] == "up"
    ssh = [c for c in _children(proc.pid) if _cmdline(c)[:1] == ["ssh"]]
    assert len(ssh) == 1
    os.kill(ssh[0], signal.SIGKILL)
    assert wait_for(lambda: status(st_path).get("link") == "down", 30), status(st_path)
    (src / "b").write_bytes(b"while the link was down")
    # reconnected (a new ssh), resumed: what changed meanwhile arrives
    assert wait_for(lambda: (dst / "b").exists(), 60), status(st_path)
    assert wait_for(lambda: status(st_path)["rounds"] > before["rounds"], 30)
    st = status(st_path)
    assert st["link"] == "up" and st["state"] in ("idle", "syncing")
    # resumed from the history: the source's metadata against it, both trees not
    # compared whole again
    assert st["quick_passes"] == before["quick_passes"] + 1, st
    assert st["full_comparisons"] == before["full_comparisons"], st
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "reconnecting in 1 s" in out, out


def test_a_pull_watch_reconnects_and_says_since_when(watching: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    """The agent watches the far tree; its link is cut: ``hsync status`` says the link
    is down and since when, the pair reconnects, what changed meanwhile arrives."""
    far = build(tmp_path / "far", {"a": b"1"})
    dst = tmp_path / "dst"
    proc = watching(f"{HOST}:{far}", str(dst))
    st_path = tmp_path / "status.json"
    assert wait_for(lambda: (dst / "a").exists() and status(st_path).get("state") == "idle")
    up = status(st_path)
    assert up["link"] == "up" and up["link_since"]
    ssh = [c for c in _children(proc.pid) if _cmdline(c)[:1] == ["ssh"]]
    assert len(ssh) == 1
    time.sleep(1.1)  # the times are to the second
    os.kill(ssh[0], signal.SIGKILL)
    assert wait_for(lambda: status(st_path).get("link") == "down", 30), status(st_path)
    down = status(st_path)
    assert down["link_since"] > up["link_since"]
    (far / "b").write_bytes(b"written while the link was down")
    # reconnected (a new ssh, a new agent watching), resumed: the change arrives
    assert wait_for(lambda: (dst / "b").exists(), 60), status(st_path)
    assert (dst / "b").read_bytes() == b"written while the link was down"
    assert wait_for(lambda: status(st_path).get("link") == "up", 30), status(st_path)
    assert status(st_path)["link_since"] >= down["link_since"]
    # and the new watch works: a later change is followed live
    (far / "c").write_bytes(b"after")
    assert wait_for(lambda: (dst / "c").exists(), 30), status(st_path)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "reconnecting in 1 s" in out, out


def test_status_of_a_remote_pair_that_never_connected(remote: Any, tmp_path: Path) -> None:
    """A daemon's remote pair whose agent cannot start (no hsync at the path given):
    ``hsync status`` says the pair is in error and why, and that its link is down since
    the first try, exit 1; it printed "last round None (None s, lag None s)" for the
    round it never had."""
    src = build(tmp_path / "src", {"a": b"1"})
    config = tmp_path / "hsync.toml"
    st_path = tmp_path / "status.json"
    config.write_text(
        f'status_file = "{st_path}"\n[[pair]]\nname = "far"\nsource = "{src}"\n'
        f'destination = "{HOST}:{tmp_path / "dst"}"\nremote_hsync = "/nonexistent/hsync"\n'
    )
    proc = subprocess.Popen([hsync_bin(), "daemon", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: status(st_path).get("state") == "error", 60), status(st_path)
        r = subprocess.run([hsync_bin(), "status", "--status-file", str(st_path)],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 1
        assert "None" not in r.stdout, r.stdout
        assert "no round yet" in r.stdout
        assert "hsync not found on the remote host" in r.stdout
        assert "link down since" in r.stdout, r.stdout  # never up: down since the try
        assert not (tmp_path / "dst").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
