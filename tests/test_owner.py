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


def test_a_new_file_in_a_set_gid_directory_gets_the_source_group(tmp_path: Path) -> None:
    """A file created in a set-gid directory is born with the directory's group: the
    copy skips its chown only where the ids it is born with are those asked for, so it
    still gets the source's group here."""
    src = build(tmp_path / "src", {"d/old": b"1"})
    os.chown(src / "d", 0, 4321)
    os.chmod(src / "d", 0o2755)
    os.chown(src / "d" / "old", 0, 0)
    dst = tmp_path / "dst"
    state = str(tmp_path / "h")
    for new in ("first", "second"):  # the second lands in the set-gid directory made
        (src / "d" / new).write_bytes(new.encode())
        os.chown(src / "d" / new, 0, 0)
        run = subprocess.run([HSYNC, "sync", str(src), str(dst), "--state", state],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert os.lstat(dst / "d").st_mode & stat.S_ISGID
    assert os.lstat(dst / "d").st_gid == 4321
    for name in ("old", "first", "second"):
        st = os.lstat(dst / "d" / name)
        assert (st.st_uid, st.st_gid) == (0, 0), name
