"""The fixed cost of a remote run: the round trips before the far scan starts.

A request whose answer the session asks for first (the roots' state, the owners'
names) is sent with the open; one whose answer says only "done" (``configure_scan``,
a digest scan's start) is not waited for. Counted in round
trips (``Link.round_trips``: requests sent together count once, whatever the timing),
against a real sshd on 127.0.0.1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from treeutil import build

from hsync.options import Options
from hsync.session import PairSession

HOST = "127.0.0.1"


def test_a_push_waits_for_few_answers_before_the_far_scan_starts(
    remote: Any, tmp_path: Path
) -> None:
    src = build(tmp_path / "src", {"d/f": b"x", "g": b"y"})
    dst = tmp_path / "dst"
    os.mkdir(dst)
    options = Options(state=str(tmp_path / "h.sqlite"))
    with PairSession(str(src), f"{HOST}:{dst}", options) as session:
        far = session.destination
        scanning = far.features.digest_scanning
        linked = far.features.linked
        assert scanning is not None and linked is not None
        before = linked.round_trips()
        scan = scanning.digest_scan(None)
        started = linked.round_trips()
        scan.summary()
        scan.close()
    # counted in round trips (requests sent together count once; not timing: an answer
    # in flight behind the open's is not a round trip of its own): the open, with the
    # roots' checks, the owners' names and the scan options behind it, and the
    # destination's emptiness (main waited for 8 answers here)
    assert before <= 2, before
    assert started == before  # the scan's start is not waited for either


def test_the_agent_serves_a_push_and_a_rename_without_attrs_or_typer(
    remote: Any, tmp_path: Path
) -> None:
    """The agent's start-up is on the critical path of every remote run: it imports
    what serving needs, not attrs (the value classes cross by their own fields) nor
    the command line's framework. The agent's modules, written as it ends."""
    import subprocess
    import sys

    from treeutil import _MODULES_PROBE, assert_same_tree, hsync_bin

    probe = tmp_path / "probe.py"
    probe.write_text(_MODULES_PROBE)
    modules = tmp_path / "agent-modules"
    wrapper = tmp_path / "hsync-probed"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {probe} {modules} {hsync_bin()} "
                       '"$@"\n')
    wrapper.chmod(0o755)
    src = build(tmp_path / "src", {"d/f": b"x" * 5000, "d/g": b"y", "h": b"z"})
    dst = tmp_path / "dst"
    for step in ("copy", "rename"):
        if step == "rename":
            os.rename(src / "d", src / "e")
        r = subprocess.run([hsync_bin(), "sync", "--remote-hsync", str(wrapper), str(src),
                            f"{HOST}:{dst}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert_same_tree(src, dst)
        loaded = set(modules.read_text().split())
        assert "hsync.remote.agent" in loaded and "hsync.backends.fs" in loaded, loaded
        assert not {"attr", "attrs", "typer", "click"} & loaded, step
