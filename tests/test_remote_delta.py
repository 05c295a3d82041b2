"""Delta transfer over ssh (issue 14 item 5), against the real sshd on 127.0.0.1: a file
the destination already holds crosses as an rsync delta against its old version, both
ways, and a delta that does not verify falls back to the whole file."""

from __future__ import annotations

import json
import os
import re
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


def test_push_an_appended_file_needs_no_signature(remote: Any, tmp_path: Path) -> None:
    """A file that only grew: its old part's digest equals the far old file's, so the
    far side sends no signature back (about 100 KiB for 64 MiB) and the delta is the
    new bytes; a file that grew and changed at its start is signed and sent as a delta
    as before. Both arrive whole and right."""
    src = build(tmp_path / "src", {"log": os.urandom(BIG), "db": os.urandom(BIG)})
    dst = f"{HOST}:{tmp_path / 'dst'}"
    assert _sent(run("sync", "--json", src, dst), "sent") > 2 * BIG
    _append(src / "log", MiB)
    r = run("sync", "--json", src, dst)
    assert _sent(r, "received") < 32 << 10, r.stdout  # no signature came back
    assert _sent(r, "sent") < MiB + (64 << 10)
    assert_same_tree(src, tmp_path / "dst")

    with open(src / "db", "r+b") as f:  # changed at its start, and grown
        f.write(b"changed")
    _append(src / "db", MiB)
    r = run("sync", "--json", src, dst)
    assert _sent(r, "received") > 64 << 10  # its signature
    assert _sent(r, "sent") < 2 * MiB
    assert_same_tree(src, tmp_path / "dst")


def test_pull_an_appended_file_needs_no_signature(remote: Any, tmp_path: Path) -> None:
    """The same, pulled: the digest of the local old file goes instead of its signature
    (about 100 KiB for 64 MiB), and the far side sends the new bytes; a file that grew
    and changed at its start is asked for again, signed."""
    far = build(tmp_path / "far", {"log": os.urandom(BIG), "db": os.urandom(BIG)})
    here = tmp_path / "here"
    src = f"{HOST}:{far}"
    assert _sent(run("sync", "--json", src, here), "received") > 2 * BIG
    _append(far / "log", MiB)
    r = run("sync", "--json", src, here)
    assert _sent(r, "sent") < 32 << 10, r.stdout  # no signature went
    assert _sent(r, "received") < MiB + (64 << 10)
    assert_same_tree(far, here)

    with open(far / "db", "r+b") as f:  # changed at its start, and grown
        f.write(b"changed")
    _append(far / "db", MiB)
    r = run("sync", "--json", src, here)
    assert _sent(r, "sent") > 64 << 10  # its signature, asked for after the digest
    assert _sent(r, "received") < 2 * MiB
    assert_same_tree(far, here)


def test_pull_appended_file_crosses_as_a_delta(remote: Any, tmp_path: Path) -> None:
    far = build(tmp_path / "far", {"big": os.urandom(BIG), "small": b"s"})
    here = tmp_path / "here"
    src = f"{HOST}:{far}"
    assert _sent(run("sync", "--json", src, here), "received") > BIG
    _append(far / "big", MiB)
    got = _sent(run("sync", "--json", src, here), "received")
    assert got < 2 * MiB, got
    assert_same_tree(far, here)


def _scribble(path: Path) -> None:
    """Change the start of ``path`` in place, keeping its size and mtime (the stat-based
    check that the destination did not change since its scan cannot tell): a stale
    basis only the delta's trailer catches."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(os.urandom(64 << 10))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_push_stale_basis_falls_back_to_the_whole_file(
        remote: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The far side's old file changes between its signature and the patch: the delta
    does not verify there, and the file is sent again whole."""
    import hsync
    from hsync.remote.backend import RemoteBackend

    src = build(tmp_path / "src", {"big": os.urandom(4 * MiB)})
    dst = tmp_path / "dst"
    hsync.sync(str(src), f"{HOST}:{dst}")
    _append(src / "big", MiB)
    signed = RemoteBackend._signatures

    def then_changed(self: RemoteBackend, ops: Any, source: Any) -> Any:
        out = signed(self, ops, source)
        if out:
            _scribble(dst / "big")
        return out

    monkeypatch.setattr(RemoteBackend, "_signatures", then_changed)
    report = hsync.sync(str(src), f"{HOST}:{dst}")
    assert not report.problems, report.problems
    assert (dst / "big").read_bytes() == (src / "big").read_bytes()


@pytest.mark.parametrize("how", ["_digest", "_sign"])
def test_pull_stale_basis_falls_back_to_the_whole_file(
        remote: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The local old file changes between its digest (a file that only grew there) or
    its signature (one also changed at its start) and the patch: the delta does not
    verify here, and the file is read again whole."""
    import hsync
    from hsync.remote.backend import _Deltas

    far = build(tmp_path / "far", {"big": os.urandom(4 * MiB)})
    here = tmp_path / "here"
    hsync.sync(f"{HOST}:{far}", str(here))
    if how == "_sign":
        with open(far / "big", "r+b") as f:
            f.write(b"changed")
    _append(far / "big", MiB)
    taken = getattr(_Deltas, how)
    calls: list[Any] = []

    def then_changed(self: _Deltas, key: Any) -> Any:
        out = taken(self, key)
        calls.append(key)
        _scribble(here / "big")
        return out

    monkeypatch.setattr(_Deltas, how, then_changed)
    report = hsync.sync(f"{HOST}:{far}", str(here))
    assert calls == [("big",)]
    assert not report.problems, report.problems
    assert (here / "big").read_bytes() == (far / "big").read_bytes()


def test_stats_show_bytes_on_the_wire(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"r": os.urandom(MiB)})
    r = run("sync", "--stats", src, f"{HOST}:{tmp_path / 'dst'}")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("Bytes on wire:"))
    m = re.fullmatch(r"Bytes on wire:\s+([\d,]+) sent, ([\d,]+) received", line)
    assert m is not None, line
    sent, received = (int(g.replace(",", "")) for g in m.groups())
    assert MiB < sent < 2 * MiB and 0 < received < MiB, line
    r = run("sync", "--stats", src, tmp_path / "local")
    assert "Bytes on wire" not in r.stdout


def test_pull_deltas_of_a_batch_in_one_request(remote: Any, tmp_path: Path) -> None:
    """Pull: the batch's changed files cross as deltas asked for in one request, not a
    round trip per file (the agent's trace: one line per request)."""
    trace = tmp_path / "trace"
    wrapper = tmp_path / "hsync-traced"
    wrapper.write_text(f"#!/bin/sh\nHSYNC_AGENT_TRACE={trace} exec hsync \"$@\"\n")
    wrapper.chmod(0o755)
    far = build(tmp_path / "far", {f"f{i}": os.urandom(MiB) for i in range(4)})
    here = tmp_path / "here"
    src = f"{HOST}:{far}"
    assert _sent(run("sync", "--json", src, here), "received") > 4 * MiB
    for i in range(4):
        _append(far / f"f{i}", 1000)
    r = run("sync", "--json", "--remote-hsync", wrapper, src, here)
    assert _sent(r, "received") < 256 << 10  # four deltas, not four files
    requests = trace.read_text().split()
    delta_requests = [m for m in requests if m.startswith("read_delta")]
    assert delta_requests == ["read_deltas"], requests
    assert "read" not in requests and "read_many" not in requests, requests
    assert_same_tree(far, here)


def test_push_append_writes_the_file_once_on_the_far_side(remote: Any, tmp_path: Path) -> None:
    """The far side patches the old file straight into the file it then publishes: a
    big file appended to is written there once (its size, plus the small history and
    journal), not patched into a temporary file first and then copied (twice its
    size). Counted as the agent's block output (its ``ru_oublock``, every byte it
    dirtied in a file, an unnamed temporary one included)."""
    counted = tmp_path / "written"
    wrapper = tmp_path / "hsync-counted"
    wrapper.write_text(
        "#!/usr/bin/env python3\n"
        "import resource, subprocess, sys\n"
        "code = subprocess.call(['hsync', *sys.argv[1:]])\n"
        "blocks = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock\n"
        f"open({str(counted)!r}, 'w').write(str(blocks * 512))\n"
        "sys.exit(code)\n"
    )
    wrapper.chmod(0o755)
    src = build(tmp_path / "src", {"big": os.urandom(BIG), "small": b"s"})
    dst = f"{HOST}:{tmp_path / 'dst'}"
    assert _sent(run("sync", "--json", src, dst), "sent") > BIG
    _append(src / "big", MiB)
    sent = _sent(run("sync", "--json", "--remote-hsync", wrapper, src, dst), "sent")
    assert sent < 2 * MiB, sent
    assert_same_tree(src, tmp_path / "dst")
    written = int(counted.read_text())
    assert BIG < written < BIG + 8 * MiB, written


def test_pull_append_writes_the_file_once_here(remote: Any, tmp_path: Path) -> None:
    """Pull: this side patches its old file straight into the file it publishes: a big
    file appended to on the far side is written here once (its size, plus the small
    history and journal), not patched into a temporary file first and then copied
    (twice its size). Counted as the local hsync's block output (``ru_oublock`` of this
    test's children: every byte a child dirtied in a file, an unnamed temporary one
    included; the agent is sshd's child, not counted)."""
    import resource

    far = build(tmp_path / "far", {"big": os.urandom(BIG), "small": b"s"})
    here = tmp_path / "here"
    src = f"{HOST}:{far}"
    assert _sent(run("sync", "--json", src, here), "received") > BIG
    _append(far / "big", MiB)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
    got = _sent(run("sync", "--json", src, here), "received")
    written = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock - before) * 512
    assert got < 2 * MiB, got
    assert_same_tree(far, here)
    assert BIG < written < BIG + 8 * MiB, written
