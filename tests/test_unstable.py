"""Files that are being written during a one-shot sync (SPEC 5): a copy whose source
changed while it was read is tried again within the run; a file still changing is
reported (exit 3), or published as read with ``--copy-unstable`` and a warning.

The writer is simulated deterministically: the ``hsync`` command runs in a subprocess
whose content copy (``copy_fd``) first appends to the source file it is copying, the
first N times (N from the environment) when it is a ``.log``; one test also runs a
real writer process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from treeutil import build, hsync_bin

WRAPPER = '''
import os, sys
import hsync.backends.fs.copy as copy
real, left = copy.copy_fd, [int(os.environ["CHANGES"])]
def copy_fd(fd_in, fd_out, size):
    path = os.readlink(f"/proc/self/fd/{fd_in}")
    if left[0] > 0 and path.endswith(".log"):  # a writer appends while the copy reads
        left[0] -= 1
        with open(f"/proc/self/fd/{fd_in}", "ab") as f:
            f.write(b"appended while copied\\n")
    return real(fd_in, fd_out, size)
copy.copy_fd = copy_fd
from hsync.cli import main
sys.argv = ["hsync", *sys.argv[1:]]
main()
'''


def hsync_changing(changes: int, *args: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CHANGES=str(changes))
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *map(os.fspath, args)], capture_output=True,
        text=True, env=env, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )


def hsync(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hsync_bin(), *map(os.fspath, args)], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120, check=False,
    )


def rc(r: subprocess.CompletedProcess[str], want: int) -> dict[str, Any]:
    assert r.returncode == want, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout) if r.stdout.startswith("{") else {}


LOG = b"line\n" * 20_000


def pair(tmp: Path, how: str) -> tuple[Path, Path]:
    """A source with a log and a few files; ``how``: ``create`` (an empty destination,
    the streamed initial copy), ``update`` (an older log there, a planned sync)."""
    src = build(tmp / "src", {"app.log": LOG, "a": b"a", "d/b": b"b"})
    dst = tmp / "dst"
    if how == "update":
        build(dst, {"app.log": b"old\n", "a": b"a", "d/b": b"b"})
    return src, dst


def no_temporaries(dst: Path) -> None:
    left = [n for _, _, fs in os.walk(dst) for n in fs if n.startswith(".hsync-tmp")]
    assert not left


@pytest.mark.parametrize("how", ["create", "update"])
def test_a_file_written_while_copied_is_copied_after_a_retry(tmp_path: Path, how: str) -> None:
    src, dst = pair(tmp_path, how)
    out = rc(hsync_changing(2, "sync", "--json", src, dst), 0)  # two changes, then quiet
    assert out["errors"] == [] and out["warnings"] == []
    assert (dst / "app.log").read_bytes() == (src / "app.log").read_bytes()
    assert (src / "app.log").read_bytes() == LOG + b"appended while copied\n" * 2
    rc(hsync("diff", src, dst), 0)
    no_temporaries(dst)


@pytest.mark.parametrize("how", ["create", "update"])
def test_a_file_that_keeps_changing_is_reported(tmp_path: Path, how: str) -> None:
    src, dst = pair(tmp_path, how)
    r = hsync_changing(1000, "sync", "--json", src, dst)
    out = rc(r, 3)
    [err] = out["errors"]
    assert err["path"] == "app.log" and err["kind"] == "retry"
    assert "--copy-unstable" in err["message"]
    # never a half-written file under the final name: the old one, or none
    if how == "update":
        assert (dst / "app.log").read_bytes() == b"old\n"
    else:
        assert not (dst / "app.log").exists()
    assert (dst / "a").read_bytes() == b"a" and (dst / "d" / "b").read_bytes() == b"b"
    no_temporaries(dst)


@pytest.mark.parametrize("how", ["create", "update"])
def test_copy_unstable_publishes_the_last_complete_copy(tmp_path: Path, how: str) -> None:
    src, dst = pair(tmp_path, how)
    state = tmp_path / "h.sqlite"
    r = hsync_changing(1000, "sync", "--copy-unstable", "--json", "--state", state, src, dst)
    out = rc(r, 0)
    assert out["errors"] == []
    assert any(w.startswith("app.log:") and "copied" in w for w in out["warnings"])
    got, now = (dst / "app.log").read_bytes(), (src / "app.log").read_bytes()
    assert len(got) >= len(LOG) and now.startswith(got) and got.startswith(LOG)
    assert got.endswith(b"\n")  # whole appends only: the content at one stat of it
    no_temporaries(dst)
    # a text run says it too, on stderr
    (src / "app.log").write_bytes(now + b"one more\n")
    r = hsync_changing(1000, "sync", "--copy-unstable", "--state", state, src, dst)
    rc(r, 0)
    assert "warning: app.log: changed while it was copied" in r.stderr
    # once the writer is done, the next run copies the whole file
    rc(hsync("sync", "--state", state, src, dst), 0)
    assert (dst / "app.log").read_bytes() == (src / "app.log").read_bytes()
    rc(hsync("diff", "--state", state, src, dst), 0)


def test_a_growing_log_is_copied_by_copy_unstable(tmp_path: Path) -> None:
    """A real writer process appends to a big log all along: every run copies it (a
    complete earlier content of it), none skips it."""
    src = build(tmp_path / "src", {"small": b"s"})
    log = src / "app.log"
    log.write_bytes(b"x" * (64 << 20))
    dst = tmp_path / "dst"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "f = open(sys.argv[1], 'ab', buffering=0)\n"
        "while True:\n"
        "    f.write(b'y' * 4096); time.sleep(0.0005)\n"
    ), str(log)])
    try:
        time.sleep(0.2)
        for _ in range(2):
            out = rc(hsync("sync", "--copy-unstable", "--json", src, dst), 0)
            assert out["errors"] == []
            got = (dst / "app.log").read_bytes()
            assert len(got) >= 64 << 20 and log.read_bytes().startswith(got)
            no_temporaries(dst)
    finally:
        writer.kill()
        writer.wait()
