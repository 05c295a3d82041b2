"""A root-run sync keeps a copied file's owner and group (rsync -o -g), so a user's
set-uid file never becomes a set-uid-root binary on the destination.

Regression (issue "A faithful replica", section 2): copies were owned by the user who
ran hsync, and the set-uid bit was copied over: run as root, a user's set-uid program
became set-uid root (a privilege escalation)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from treeutil import build, hsync_bin

HSYNC = hsync_bin()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")


def test_a_users_set_uid_file_stays_the_users(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"bin/tool": b"#!/bin/sh\n", "bin/plain": b"x"})
    for name in ("tool", "plain"):
        os.chown(src / "bin" / name, 1234, 5678)
    os.chmod(src / "bin" / "tool", 0o6755)  # set-uid and set-gid
    dst = tmp_path / "dst"
    run = subprocess.run([HSYNC, "sync", str(src), str(dst), "--state", str(tmp_path / "h")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    st = os.lstat(dst / "bin" / "tool")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o6755  # the bits stay, on the user's own file
    plain = os.lstat(dst / "bin" / "plain")
    assert (plain.st_uid, plain.st_gid) == (1234, 5678)
    assert (dst / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
