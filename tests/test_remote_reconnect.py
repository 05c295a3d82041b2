"""A pull (``hsync sync host:SRC DST``) whose link breaks in the middle of the copy is
reconnected within the run, as a push is (through a real sshd on 127.0.0.1): the
files not all read are read again, whole, on a new link; none is published torn,
none is copied twice."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_remote import HOST, _files, run
from test_remote_window import LostForGood, _agent_wrapper, _cut, _spec
from treeutil import assert_same_tree, build, hsync_bin


def _start_pull(src: Path, dst: Path, wrapper: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [hsync_bin(), "sync", "--json", "--no-compress", "--batch-ops", "20",
         "--remote-hsync", str(wrapper), *extra, f"{HOST}:{src}", str(dst)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("victim", ["ssh", "agent"])
def test_link_cut_in_a_pull_is_resumed_in_the_run(remote: Any, tmp_path: Path,
                                                  victim: str) -> None:
    spec = _spec()
    src = build(tmp_path / "src", spec)
    dst = tmp_path / "dst"
    wrapper, _ = _agent_wrapper(tmp_path)
    state = tmp_path / "h.sqlite"
    proc = _start_pull(src, dst, wrapper, "--state", str(state))
    killed = _cut(proc, remote, dst, victim)
    out, err = proc.communicate(timeout=180)
    assert killed, "the pull ended before the link could be cut"
    # reconnected within the run: converged, exit 0, nothing said
    assert proc.returncode == 0, (out, err)
    assert err == ""
    assert_same_tree(src, dst)
    assert not [n for n in _files(dst) if ".hsync-tmp" in n]
    report = json.loads(out)
    assert report["counts"]["create"] == len(spec) + 4  # each once: the root, 3 dirs
    assert not report.get("problems")
    # the next run has nothing to do
    r = run("sync", "--json", "--state", state, f"{HOST}:{src}", dst)
    assert r.returncode == 0 and sum(json.loads(r.stdout)["counts"].values()) == 0


def test_a_pull_whose_link_is_lost_for_good_ends_with_one_line(remote: Any,
                                                               tmp_path: Path) -> None:
    """Reconnecting fails (the host stays unreachable): the run ends (exit 2, one line
    naming the host), nothing torn under a final name; the next run converges."""
    lost = LostForGood(tmp_path, remote, _start_pull, "ssh")
    assert lost.returncode != 0, (lost.out, lost.err)
    assert HOST in lost.err and "Traceback" not in lost.err, lost.err
    lost.landed()  # nothing torn under a final name
    lost.host_back()
    r = run("sync", "--json", "--state", lost.state, "-e", lost.rsh, f"{HOST}:{lost.src}",
            lost.dst)
    assert r.returncode == 0, r.stderr
    assert_same_tree(lost.src, lost.dst)
    assert not [n for n in _files(lost.dst) if ".hsync-tmp" in n]
