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


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_the_resync_after_a_remote_sync_that_wrote_compares_nothing_it_wrote(
    remote: Any, tmp_path: Path, direction: str
) -> None:
    """The far agent says how far its tree's ctimes lag this host's clock (its
    filesystem's tick and the two clocks' distance, measured over the link), so the
    mark after a sync over ssh is per side, as locally: the first re-sync after a copy
    compares two roots, not every directory the copy wrote into; an attribute changed
    on the destination afterwards is still found."""
    import json
    import time

    files = {f"d{i}/e{j}/f{k}": f"{i}{j}{k}".encode()
             for i in range(3) for j in range(3) for k in range(6)}
    src = build(tmp_path / "src", files)
    for rel in files:
        os.setxattr(src / rel, "user.k", rel.encode())
    time.sleep(2.2)  # the source's ctimes: before the marks of the syncs below
    dst = tmp_path / "dst"
    state = tmp_path / "h.sqlite"
    ends = (src, f"{HOST}:{dst}") if direction == "push" else (f"{HOST}:{src}", dst)

    def sync() -> dict[str, Any]:
        r = run("sync", "--json", "--state", state, *ends)
        assert r.returncode == 0, r.stderr
        report: dict[str, Any] = json.loads(r.stdout)
        return report

    sync()  # the copy wrote every file and directory
    again = sync()
    assert again["compared"] == {"source": 1, "destination": 1}, again["compared"]
    assert not any(again["counts"].values()), again["counts"]
    os.setxattr(dst / "d1/e2/f3", "user.k", b"tampered")
    repaired = sync()
    assert repaired["counts"].get("update") == 1, repaired["counts"]
    assert os.getxattr(dst / "d1/e2/f3", "user.k") == b"d1/e2/f3"


def test_a_big_file_keeps_its_owner_set_id_bit_attributes_and_acl_both_ways(
    remote: Any, tmp_path: Path
) -> None:
    """A file over the size held in memory waits on the receiving side in an unnamed
    file on the destination's filesystem, which is then linked in: it gets its owner
    before its mode (a set-uid file never becomes root's), its attributes, its ACL and
    its mtime as a copied file does."""
    from hsync.remote.protocol import MEMFD_MAX

    data = os.urandom(MEMFD_MAX + 12345)
    src = build(tmp_path / "src", {"d/big": data})
    big = src / "d" / "big"
    os.chown(big, 1234, 5678)
    os.chmod(big, 0o4750)
    os.setxattr(big, "user.origin", b"big one")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:5678:r", big], check=True)
    os.utime(big, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    st = big.stat()
    want = (*_meta(big), st.st_mode, st.st_mtime_ns, data)

    def got(path: Path) -> tuple[object, ...]:
        st = path.stat()
        return (*_meta(path), st.st_mode, st.st_mtime_ns, path.read_bytes())

    r = run("sync", src, f"{HOST}:{tmp_path / 'pushed'}")
    assert r.returncode == 0, r.stderr
    assert got(tmp_path / "pushed" / "d" / "big") == want
    r = run("sync", f"{HOST}:{tmp_path / 'pushed'}", tmp_path / "pulled")
    assert r.returncode == 0, r.stderr
    assert got(tmp_path / "pulled" / "d" / "big") == want
    for side in ("pushed", "pulled"):
        assert sorted(os.listdir(tmp_path / side / "d")) == ["big"]  # no temporary left
