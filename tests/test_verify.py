"""hsync verify: content-level comparison, chunk by chunk, that reports only what
persists (a change in flight is re-checked after it settles)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from treeutil import DIR, File, Link, build, hsync_bin

import hsync
from hsync.oneshot import sync_once
from hsync.options import Options
from hsync.verifier import CONTENT, EXTRA, METADATA, MISSING, TYPE, Difference

T0 = 1_600_000_000 * 10**9
HSYNC = hsync_bin()


def _pair(tmp_path: Path, n: int = 30) -> tuple[Path, Path]:
    spec: dict[str, object] = {
        f"d{i % 4}/f{i:03d}": File(b"%03d" % i * (i + 1), mtime_ns=T0 + i) for i in range(n)
    }
    spec["l"] = Link("d0")
    src = build(tmp_path / "src", spec)
    dst = tmp_path / "dst"
    assert sync_once(str(src), str(dst), Options(state="")).ok
    return src, dst


def _flip(path: Path) -> None:
    """Change one byte, keep size and mtime (what a sync's size+mtime check misses)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def test_a_flipped_byte_with_size_and_mtime_restored_is_found_and_repaired(
    tmp_path: Path,
) -> None:
    src, dst = _pair(tmp_path)
    assert hsync.verify(str(src), str(dst), settle=0).exit_code == 0
    _flip(dst / "d2" / "f010")
    assert subprocess.run([HSYNC, "diff", str(src), str(dst)]).returncode == 0  # blind
    out = subprocess.run([HSYNC, "verify", "--json", "--settle", "0", str(src), str(dst)],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    found = json.loads(out.stdout)
    assert found["differences"] == [
        {"path": "d2/f010", "difference": "content", "detail": "same size, different bytes"}
    ]
    assert found["files"] == 30
    fixed = subprocess.run([HSYNC, "verify", "--repair", "--settle", "0", str(src), str(dst)],
                           capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert (dst / "d2" / "f010").read_bytes() == (src / "d2" / "f010").read_bytes()
    assert hsync.verify(str(src), str(dst), settle=0).exit_code == 0


@pytest.mark.parametrize(
    ("description", "change", "expected"),
    [
        ("a file missing on the destination", lambda d: (d / "d1" / "f001").unlink(),
         [Difference(("d1", "f001"), MISSING, "file missing on the destination")]),
        ("an extra file on the destination", lambda d: (d / "d1" / "extra").write_bytes(b""),
         None),
        ("a mode changed", lambda d: (d / "d1" / "f001").chmod(0o600), None),
        ("a file where a directory was", lambda d: (d / "l").unlink() or
         (d / "l").write_bytes(b""), None),
        ("a size changed", lambda d: (d / "d3" / "f003").write_bytes(b"x"), None),
    ],
)
def test_kinds_of_difference(tmp_path: Path, description: str, change, expected) -> None:  # type: ignore[no-untyped-def]
    src, dst = _pair(tmp_path)
    change(dst)
    report = hsync.verify(str(src), str(dst), settle=0)
    kinds = {d.what for d in report.differences}
    want = {
        "a file missing on the destination": {MISSING},
        "an extra file on the destination": {EXTRA},
        "a mode changed": {METADATA},
        "a file where a directory was": {TYPE},
        "a size changed": {CONTENT},
    }[description]
    assert want <= kinds, (description, report.differences)
    if expected is not None:
        assert set(expected) <= set(report.differences)
    assert report.exit_code == 1


def test_small_chunks_still_find_everything(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, n=50)
    _flip(dst / "d0" / "f000")
    _flip(dst / "d1" / "f049")
    chunks = []
    from hsync.backend import open_endpoint
    from hsync.verifier import Verifier

    v = Verifier(open_endpoint(str(src), role="source"),
                 open_endpoint(str(dst), role="destination"), settle=0, chunk_files=7)
    chunks = list(v.chunks())
    assert len(chunks) > 5
    assert [d.key for d in v.report.differences] == [("d0", "f000"), ("d1", "f049")]


def test_a_file_being_synced_is_not_reported(tmp_path: Path) -> None:
    """The watcher's case: the source changed, the destination is about to be updated
    when verify looks; after the settle delay the two agree: nothing reported."""
    src, dst = _pair(tmp_path)
    (src / "d2" / "f002").write_bytes(b"new content, not synced yet")
    seen: list[Difference] = []
    syncing: list[threading.Thread] = []

    def watcher_catches_up(candidate: Difference) -> None:
        seen.append(candidate)
        t = threading.Timer(0.1, lambda: sync_once(str(src), str(dst), Options(state="")))
        t.start()
        syncing.append(t)

    report = hsync.verify(str(src), str(dst), settle=0.6, on_candidate=watcher_catches_up)
    for t in syncing:
        t.join()
    assert [c.key for c in seen] == [("d2", "f002")]  # it was a mismatch at first
    assert report.differences == [] and report.pending == []
    assert report.exit_code == 0


def test_a_source_that_changes_during_verify_is_pending_not_a_difference(
    tmp_path: Path,
) -> None:
    src, dst = _pair(tmp_path)
    _flip(dst / "d1" / "f005")  # a real difference, reported
    (src / "d3" / "f007").write_bytes(b"being written")  # a change in flight

    def keeps_writing(candidate: Difference) -> None:
        if candidate.key == ("d3", "f007"):
            (src / "d3" / "f007").write_bytes(b"being written, still")

    report = hsync.verify(str(src), str(dst), settle=0.1, on_candidate=keeps_writing)
    assert [d.key for d in report.differences] == [("d1", "f005")]
    assert report.pending == [("d3", "f007")]
    assert report.exit_code == 1


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "dst").mkdir()
    out = subprocess.run([HSYNC, "verify", str(tmp_path / "nope"), str(tmp_path / "dst")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "nope" in out.stderr
    build(tmp_path / "src", {"a": DIR})
    same = subprocess.run([HSYNC, "verify", str(tmp_path / "src"), str(tmp_path / "src")],
                          capture_output=True, text=True)
    assert same.returncode == 2
