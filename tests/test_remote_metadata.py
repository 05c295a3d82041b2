"""Owner, group, xattrs and ACLs over ssh (issue 14 item 7, issue 11): the far backend's
``Metadata`` capability is forwarded, so a remote tree keeps them as a local one does.
Against the real sshd on 127.0.0.1, as root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_remote import HOST, run
from treeutil import build

from hsync.backend import open_endpoint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

ACL = "system.posix_acl_access"


def _meta(path: Path) -> tuple[int, int, bytes, bytes]:
    st = path.stat()
    return st.st_uid, st.st_gid, os.getxattr(path, "user.origin"), os.getxattr(path, ACL)


def test_owner_group_xattrs_and_acls_are_kept_both_ways(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a.txt": b"hello\n", "d/b": b"b"})
    os.chown(src / "a.txt", 1234, 5678)
    os.setxattr(src / "a.txt", "user.origin", b"\x00from src")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:5678:r", src / "a.txt"], check=True)
    want = _meta(src / "a.txt")

    r = run("sync", src, f"{HOST}:{tmp_path / 'pushed'}")
    assert r.returncode == 0, r.stderr
    assert _meta(tmp_path / "pushed" / "a.txt") == want

    r = run("sync", f"{HOST}:{tmp_path / 'pushed'}", tmp_path / "pulled")
    assert r.returncode == 0, r.stderr
    assert _meta(tmp_path / "pulled" / "a.txt") == want

    # a change of the xattr alone is synced, and a second run has nothing to do
    os.setxattr(src / "a.txt", "user.origin", b"changed")
    r = run("sync", src, f"{HOST}:{tmp_path / 'pushed'}")
    assert r.returncode == 0, r.stderr
    assert os.getxattr(tmp_path / "pushed" / "a.txt", "user.origin") == b"changed"
    r = run("diff", src, f"{HOST}:{tmp_path / 'pushed'}")
    assert r.returncode == 0 and r.stdout.strip() == "in sync", (r.stdout, r.stderr)


def test_remote_endpoint_offers_metadata(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1"})
    ep = open_endpoint(f"{HOST}:{src}", role="source")
    try:
        assert ep.features.metadata is not None
        users, groups = ep.features.metadata.id_names()
        assert users.get(0) == "root" and groups.get(0) == "root"
    finally:
        ep.close()
