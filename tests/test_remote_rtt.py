"""The round trips a remote run waits on (issue 14: on a link with 40 ms of round
trip, each one is 40 ms of every run), against a real sshd on 127.0.0.1.

``hsync sync --json`` says ``round_trips``: the requests the run waited on one after
the other (a request sent before the answers it depends on is in the same round trip
as they are; the count does not depend on timing, so it is the same on loopback as on
a slow link). A no-op re-sync waits on the open (with the hello, the roots' state, the
owners' names and the far clock pipelined behind it; its answer says what metadata
the far tree can keep) and the far digest scan's summary: not on the negotiation of
the metadata kept, a second look at the root, the root's row, the scan's close.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from treeutil import assert_same_tree, build, hsync_bin

HOST = "127.0.0.1"
NO_OP = 2
"""The round trips of a no-op re-sync, push or pull (main at b24909b waited on 9)."""
RENAME = 5
"""Of a push of a renamed directory (main at b24909b: 13, at 7a20753: 6; two renamed
directories 7): the no-op's, the listings and rows of the directories that differ,
and the batch's acknowledgement; not a look at the old directory's attributes
(``compare.read_unread``: the history's fingerprint of what the last sync wrote there
vouches that they are the moved source directory's)."""


INITIAL_PUSH = 3
"""Of an initial push into a root that is not there (main at 7a20753: 6): the open,
the batch (its ``configure_scan`` answer taken before it is sent), and nothing after
it: whether the destination is empty, and its root's node, are the open's answer (an
absent root), asked neither twice nor one after the other; the far clock asked beside
the batch stands (the filesystem the root is created on is judged by its parent)."""
PULL_CHANGE = 5
"""Of a pull of a renamed directory, or of an updated file (main at 7a20753: 6): the
far scan's rows asked once each, not again for the comparison's last round."""


def sync(*args: Any) -> dict[str, Any]:
    r = subprocess.run([hsync_bin(), "sync", "--json", *(os.fspath(a) for a in args)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=180, check=False)
    assert r.returncode == 0, r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return report


def spec() -> dict[str, Any]:
    return {"d/f": b"x" * 3000, "d/e/g": b"y", "h": b"z" * 70000, "k/l": b""}


def test_a_no_op_push_waits_on_two_round_trips(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", spec())
    dst = tmp_path / "dst"
    state = tmp_path / "h.sqlite"
    first = sync("--state", state, src, f"{HOST}:{dst}")
    assert first["counts"]["create"] > 0
    assert_same_tree(src, dst)
    assert first["round_trips"] <= INITIAL_PUSH, first["round_trips"]
    for _ in range(2):
        again = sync("--state", state, src, f"{HOST}:{dst}")
        assert again["counts"] == {"create": 0, "update": 0, "move": 0, "delete": 0}
        assert again["round_trips"] <= NO_OP, again["round_trips"]
    # a rename waits on what the comparison asks of the directories that differ and
    # on its batch's acknowledgement (durable there), not on the far clock at its end
    os.rename(src / "d", src / "moved")
    renamed = sync("--state", state, src, f"{HOST}:{dst}")
    assert renamed["counts"]["move"] == 1
    assert_same_tree(src, dst)
    assert renamed["round_trips"] <= RENAME, renamed["round_trips"]
    # two directories renamed: neither old place is looked at
    os.rename(src / "moved", src / "d")
    os.rename(src / "k", src / "k2")
    both = sync("--state", state, src, f"{HOST}:{dst}")
    assert both["counts"]["move"] == 2
    assert_same_tree(src, dst)
    assert both["round_trips"] <= RENAME, both["round_trips"]


def test_a_no_op_pull_waits_on_two_round_trips(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", spec())
    dst = tmp_path / "dst"
    state = tmp_path / "h.sqlite"
    sync("--state", state, f"{HOST}:{src}", dst)
    assert_same_tree(src, dst)
    for _ in range(2):
        again = sync("--state", state, f"{HOST}:{src}", dst)
        assert again["counts"] == {"create": 0, "update": 0, "move": 0, "delete": 0}
        assert again["round_trips"] <= NO_OP, again["round_trips"]
    os.rename(src / "d", src / "moved")
    renamed = sync("--state", state, f"{HOST}:{src}", dst)
    assert renamed["counts"]["move"] == 1
    assert_same_tree(src, dst)
    assert renamed["round_trips"] <= PULL_CHANGE, renamed["round_trips"]
    with open(src / "h", "ab") as f:
        f.write(b"more")
    updated = sync("--state", state, f"{HOST}:{src}", dst)
    assert updated["counts"]["update"] >= 1
    assert_same_tree(src, dst)
    assert updated["round_trips"] <= PULL_CHANGE, updated["round_trips"]


def test_a_local_run_says_no_round_trips(tmp_path: Path) -> None:
    src = build(tmp_path / "src", spec())
    report = sync("--state", tmp_path / "h.sqlite", src, tmp_path / "dst")
    assert "round_trips" not in report and "bytes_on_wire" not in report


VERIFY_EQUAL = 3
"""Of a verify of a far destination equal to the source (main at 929b674: 5): the open,
the far scan's snapshot (asked right behind its start, as a summary is; the
configure_scan and metadata answers taken with it), the files' hashes on the far
side; not whether the destination is empty (a verify deletes nothing)."""
VERIFY = 7
"""Of a verify that finds 10 differences on the far side, pushed or pulled (main at
929b674: 35, a look, a stat and a hash asked one key at a time): the equal one's, a
look at the candidates found without a hash (their metadata differs), and the settle
re-check's one round for all the candidates together: their looks, their nodes, their
files' hashes, each asked for all of them at once (``look_many``, ``stat_many``,
``hash_many``)."""


def verify(*args: Any) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([hsync_bin(), "verify", "--json", "--settle", "0",
                        *(os.fspath(a) for a in args)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=180, check=False)
    assert r.returncode in (0, 1), r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return r.returncode, report


def test_verify_rechecks_its_differences_together(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {**spec(), **{f"d/v{i}": b"%05d" % i for i in range(10)},
                                   **{f"k/m{i}": b"m" for i in range(10)}})
    dst = tmp_path / "dst"
    sync("--state", tmp_path / "h.sqlite", src, f"{HOST}:{dst}")
    code, same = verify(src, f"{HOST}:{dst}")
    assert code == 0 and same["consistent"]
    assert same["round_trips"] <= VERIFY_EQUAL, same["round_trips"]
    # 5 files with other bytes of the same size and mtime (only a hash tells), and 5
    # files with another mode, on the far side
    for i in range(5):
        far = dst / "d" / f"v{i}"
        st = os.stat(far)
        far.write_bytes(b"X%04d" % i)
        os.utime(far, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(dst / "k" / f"m{i}", 0o600)
    code, found = verify(src, f"{HOST}:{dst}")
    assert code == 1
    assert sorted((d["path"], d["difference"]) for d in found["differences"]) == [
        *((f"d/v{i}", "content") for i in range(5)),
        *((f"k/m{i}", "metadata") for i in range(5)),
    ]
    assert found["round_trips"] <= VERIFY, found["round_trips"]
    # pulled: the source is the far side, its looks asked together too
    code, pulled = verify(f"{HOST}:{dst}", src)
    assert code == 1 and len(pulled["differences"]) == 10
    assert pulled["round_trips"] <= VERIFY, pulled["round_trips"]


def test_looks_are_asked_together(remote: Any, tmp_path: Path) -> None:
    """``look_many`` of a far tree waits on one round trip for all its keys: one
    request where the agent answers it, else (an agent that does not say it does)
    the ``look`` requests back to back, answered alike."""
    from hsync.backend import look_many, open_endpoint

    src = build(tmp_path / "src", {f"d/f{i}": b"%d" % i for i in range(10)})
    keys = [("d", f"f{i}") for i in range(12)]  # two are not there
    far = open_endpoint(f"{HOST}:{src}", role="source")
    try:
        linked = far.features.linked
        assert linked is not None and far.features.bulk_hashing is not None
        far.backend.root_id()  # the open's round trip
        before = linked.round_trips()
        looks = look_many(far, keys)
        assert linked.round_trips() == before + 1
        assert [v is None for v in looks.values()] == [False] * 10 + [True] * 2
        assert looks == {k: far.features.bulk_hashing.look(k) for k in keys}
        before = linked.round_trips()
        old = far.backend.far_features  # type: ignore[attr-defined]
        far.backend.far_features = tuple(f for f in old if f != "look_many")  # type: ignore[attr-defined]
        assert look_many(far, keys) == looks
        assert linked.round_trips() == before + 1
    finally:
        far.close()


def test_checksum_asks_the_far_digests_together(remote: Any, tmp_path: Path) -> None:
    """``--checksum`` compares every file of equal size and mtime by its digest: the far
    side's were asked one after the other, a round trip per file (40 files: 43 round
    trips, with 40 ms of latency 1.7 s; 100,000 files over an hour). Push, pull, and a
    file whose content changed under the same size and mtime, found either way."""
    src = build(tmp_path / "src", {f"d/f{i:02}": f"file {i}\n".encode() * 50
                                   for i in range(40)})
    dst = tmp_path / "dst"
    sync(src, f"{HOST}:{dst}")
    pushed = sync("--checksum", src, f"{HOST}:{dst}")
    assert sum(pushed["counts"].values()) == 0
    assert pushed["round_trips"] <= NO_OP + 2, pushed["round_trips"]
    pulled_to = tmp_path / "pulled"
    sync(f"{HOST}:{dst}", pulled_to)
    pulled = sync("--checksum", f"{HOST}:{dst}", pulled_to)
    assert sum(pulled["counts"].values()) == 0
    assert pulled["round_trips"] <= NO_OP + 2, pulled["round_trips"]
    # what --checksum is for: the same size and mtime, another content
    for tree in (dst, pulled_to):
        f = tree / "d" / "f07"
        st = f.stat()
        f.write_bytes(f.read_bytes().upper())
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sync("--checksum", src, f"{HOST}:{dst}")["counts"]["update"] == 1
    assert sync("--checksum", f"{HOST}:{src}", pulled_to)["counts"]["update"] == 1
    assert_same_tree(src, dst)
    assert_same_tree(src, pulled_to)
