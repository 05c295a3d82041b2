"""Safety rules of SPEC 8, through the installed ``hsync`` command (issue 12, items 1-7)."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import assert_bad_input, hsync, ok
from treeutil import build, read_tree


# -- 1. a destination hsync never synced from this source ----------------------------------
def test_first_sync_into_a_foreign_destination_deletes_nothing(tmp_path: Path) -> None:
    """`hsync sync photos backupdisk/` kept the disk's `taxes/2023.pdf` only with --delete
    absent: it copies the rest, warns once, and keeps withholding on the next run."""
    src, dst, state = tmp_path / "photos", tmp_path / "disk", tmp_path / "h.sqlite"
    build(src, {"a.jpg": b"A", "old": b"new"})
    build(dst, {"taxes/2023.pdf": b"T", "old/x": b"dir", "notes": b"N"})
    r = ok(hsync("sync", "--state", state, "--json", src, dst))
    tree = read_tree(dst)
    assert tree[b"taxes/2023.pdf"][-1] == b"T" and tree[b"notes"][-1] == b"N"
    assert tree[b"a.jpg"][-1] == b"A"
    assert tree[b"old/x"][-1] == b"dir"  # never replaced by the source's file of that name
    report = json.loads(r.out)
    assert report["counts"]["delete"] == 0
    assert report["deletions_withheld"] == 5
    assert sum("taxes" in w for w in report["warnings"]) == 1
    lines = [ln for ln in r.err.splitlines() if "--delete" in ln]
    assert len(lines) == 1 and "5 destination-only nodes" in lines[0] and str(dst) in lines[0]
    # the second run (the pair now has a history) still deletes nothing
    r = ok(hsync("sync", "--state", state, src, dst))
    assert (dst / "taxes" / "2023.pdf").exists() and "--delete" in r.err
    # without a history at all, too
    r = ok(hsync("sync", "--state", "", src, dst))
    assert (dst / "taxes" / "2023.pdf").exists() and "--delete" in r.err
    # --no-delete never deletes; --delete does, and the pair deletes from then on
    ok(hsync("sync", "--state", state, "--no-delete", src, dst))
    assert (dst / "taxes" / "2023.pdf").exists()
    r = ok(hsync("sync", "--state", state, "--delete", src, dst))
    assert sorted(p.name for p in dst.iterdir()) == ["a.jpg", "old"]
    assert (dst / "old").read_bytes() == b"new" and "--delete" not in r.err
    (dst / "stray").write_bytes(b"s")
    ok(hsync("sync", "--state", state, src, dst))
    assert not (dst / "stray").exists()


def test_a_synced_pair_deletes_by_default(tmp_path: Path) -> None:
    """An empty destination is hsync's from the first run: later runs mirror deletions."""
    src, dst, state = tmp_path / "s", tmp_path / "d", tmp_path / "h.sqlite"
    build(src, {"a": b"A", "b": b"B"})
    ok(hsync("sync", "--state", state, src, dst))
    (src / "b").unlink()
    r = ok(hsync("sync", "--state", state, src, dst))
    assert not (dst / "b").exists() and "--delete" not in r.err
