"""Remote runs (issue 14): what the agent is told and how it starts, against the real
sshd on 127.0.0.1 (``tests/sshd.py``): the scan options reach the far tree, a far file
that changes while it is read is a retry, the agent starts without the command line's
parser, the ssh is started before this side's imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_remote import HOST, run
from treeutil import assert_same_tree, build, hsync_bin


# -- the scan options reach the far side -------------------------------------------------
def test_no_specials_reaches_the_far_scan(remote: Any, tmp_path: Path) -> None:
    """``--no-specials`` on a pull: the far scan leaves the FIFO out (it is not created
    here); on a push with ``--delete``: a FIFO in the far destination is left alone."""
    far = build(tmp_path / "far", {"f": b"x"})
    os.mkfifo(far / "pipe")
    here = tmp_path / "here"
    r = run("sync", "--no-specials", f"{HOST}:{far}", here)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(here)) == ["f"]
    # push: the far destination's FIFO is not in its scan, so not deleted
    src = build(tmp_path / "src", {"f": b"y"})
    r = run("sync", "--no-specials", "--delete", src, f"{HOST}:{far}")
    assert r.returncode == 0, r.stderr
    assert (far / "f").read_bytes() == b"y" and (far / "pipe").exists()


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted below the far source (skipped where mounting is not allowed)."""
    where = tmp_path / "far" / "mnt"
    where.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_one_file_system_reaches_the_far_scan(remote: Any, tmp_path: Path,
                                              mounted: Path) -> None:
    far = mounted.parent
    (far / "top").write_bytes(b"top")
    (mounted / "inside").write_bytes(b"on another file system")
    here = tmp_path / "here"
    r = run("sync", "-x", f"{HOST}:{far}", here)
    assert r.returncode == 0, r.stderr
    assert (here / "top").read_bytes() == b"top"
    assert (here / "mnt").is_dir() and os.listdir(here / "mnt") == []


# -- a far file that changes while it is read --------------------------------------------
def test_far_file_changing_while_read_is_a_retry_not_a_failed_run(
        remote: Any, tmp_path: Path) -> None:
    """Pull: a big far file (read on its own, not prefetched) whose mtime keeps moving
    is a problem of that file (exit 3, retried), not a failed link (exit 2); the other
    files are synced; once it is quiet the next run converges."""
    far = build(tmp_path / "far", {"a": b"a", "b/c": b"c", "big": os.urandom(6 << 20)})
    here = tmp_path / "here"
    stop = threading.Event()

    def touch() -> None:
        n = time.time_ns()
        while not stop.is_set():
            n += 1000
            os.utime(far / "big", ns=(n, n))
            time.sleep(0.0005)

    t = threading.Thread(target=touch)
    t.start()
    try:
        r = run("sync", f"{HOST}:{far}", here)
    finally:
        stop.set()
        t.join()
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "big" in r.stderr and "changed" in r.stderr
    assert (here / "a").read_bytes() == b"a" and (here / "b" / "c").read_bytes() == b"c"
    assert not (here / "big").exists()
    r = run("sync", f"{HOST}:{far}", here)
    assert r.returncode == 0, r.stderr
    assert_same_tree(far, here)


# -- start-up ------------------------------------------------------------------------------
def _imports(argv: list[str], stdin: bytes = b"") -> set[str]:
    """The modules a command has imported when it ends (``-X importtime``)."""
    p = subprocess.run([sys.executable, "-X", "importtime", *argv], input=stdin,
                       capture_output=True, check=False)
    return {line.split("|")[-1].strip() for line in p.stderr.decode().splitlines()
            if line.startswith("import time:")}


def test_agent_starts_without_the_command_line_parser() -> None:
    """``hsync agent`` (what every remote run starts on the far side) and
    ``python -m hsync.remote.agent`` serve without importing typer or click, librsync's
    wrapper or sqlite, until a request needs them."""
    for argv in (["-m", "hsync", "agent"], ["-m", "hsync.remote.agent"]):
        mods = _imports(argv)
        assert "hsync.remote.agent" in mods, argv
        assert not {m for m in mods if m.split(".")[0] in ("typer", "click", "rich")}, argv
        assert "hsync.delta" not in mods and "sqlite3" not in mods, argv


def test_agent_command_still_answers_help_and_restrict(tmp_path: Path) -> None:
    r = subprocess.run([hsync_bin(), "agent", "--help"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "--restrict" in r.stdout
    r = subprocess.run([hsync_bin(), "agent", "--restrict", str(tmp_path / "nope")],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       check=False)
    assert r.returncode == 2 and "--restrict needs a directory" in r.stderr


def test_ssh_is_started_before_the_parser_is_imported(tmp_path: Path) -> None:
    """The ssh of a remote location starts before typer is imported (a fake ``-e``
    records which modules were loaded when it ran)."""
    marker = tmp_path / "seen"
    fake = tmp_path / "fake-ssh"
    fake.write_text(f"#!/bin/sh\necho started >> {marker}\nsleep 2\nexit 255\n")
    (tmp_path / "src").mkdir()
    fake.chmod(0o755)
    code = (
        "import sys, subprocess\n"
        "real = subprocess.Popen.__init__\n"
        "def spy(self, argv, *a, **k):\n"
        "    if argv and argv[0] == fake:\n"
        f"        open({str(tmp_path / 'mods')!r}, 'a').write(\n"
        "            str('typer' in sys.modules) + '\\n')\n"
        "    real(self, argv, *a, **k)\n"
        "subprocess.Popen.__init__ = spy\n"
        "fake = sys.argv.pop()\n"
        "sys.argv = ['hsync', 'sync', '-e', fake, sys.argv[1], 'user@127.0.0.1:/x']\n"
        "from hsync.__main__ import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src"), str(fake)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr
    assert "127.0.0.1" in r.stderr and "Traceback" not in r.stderr
    seen = (tmp_path / "mods").read_text().split()
    assert seen and seen[0] == "False", seen  # the first ssh: before typer
    assert len(seen) == 1, seen  # adopted by the link, not started twice


def test_early_ssh_knows_every_option_of_the_remote_commands() -> None:
    """The early start reads the command line without its parser: it must know every
    option of the commands it looks at, and whether it takes a value (else it would
    take an option's value for a location, or a location for a value)."""
    import typer.main as tm

    from hsync.cli import app
    from hsync.remote import early

    group: Any = tm.get_command(app)
    for name in early.COMMANDS:
        for p in group.commands[name].params:
            if p.param_type_name != "option":
                continue
            for opt in [*p.opts, *p.secondary_opts]:
                table = early.FLAG_OPTIONS if p.is_flag else early.VALUE_OPTIONS
                assert opt in table, (name, opt)


# -- the digest comparison works across hosts ------------------------------------------
def test_noop_over_ssh_compares_digests_not_listings(remote: Any, tmp_path: Path) -> None:
    """A no-op re-sync of 2,000 files sends back the far tree's directory digests, not
    its listing: the digests computed by the agent (another process) equal this side's.
    (They did not while a row's data was hashed with Python's per-process ``hash``.)"""
    spec = {f"d{d}/f{i}": os.urandom(64) for d in range(20) for i in range(100)}
    src = build(tmp_path / "src", spec)
    dst = f"{HOST}:{tmp_path / 'dst'}"
    for _ in range(2):  # the copy, then a run that reads back its new nodes' attributes
        r = run("sync", src, dst)
        assert r.returncode == 0, r.stderr
    for _ in range(2):
        r = run("sync", "--json", src, dst)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert sum(report["counts"].values()) == 0
        assert report["bytes_on_wire"]["received"] < 8000, report["bytes_on_wire"]
    os.rename(src / "d3", src / "moved")
    r = run("sync", "--json", src, dst)
    report = json.loads(r.stdout)
    assert report["counts"]["move"] == 1, report["counts"]
    assert report["bytes_on_wire"]["received"] < 16000, report["bytes_on_wire"]
    assert_same_tree(src, tmp_path / "dst")


# -- a cancel reaches the far side -----------------------------------------------------------
def _far_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The files below ``root``: under their final names, and hsync's temporaries."""
    final: list[Path] = []
    temps: list[Path] = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            (temps if n.startswith(".hsync-tmp-") else final).append(Path(dirpath) / n)
    return final, temps


def test_sigterm_mid_batch_stops_the_agent_at_an_op_boundary(
        remote: Any, tmp_path: Path) -> None:
    """SIGTERM to a push while the far side writes a batch: the run ends as on Ctrl-C
    (exit 130, one line), the agent is told and stops at its next op (the batch's other
    files are not written), no temporary file is left there, every file there under
    its final name is whole; the next run converges."""
    n = 40
    src = build(tmp_path / "src", {f"f{i:02}": os.urandom(4 << 20) for i in range(n)})
    dst = tmp_path / "dst"
    p = subprocess.Popen([hsync_bin(), "sync", "--no-compress", src, f"{HOST}:{dst}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if dst.is_dir() and any(_far_files(dst)):
            break  # the batch is being written there (its files are unnamed until
            # whole, or under temporary names where the filesystem makes no unnamed one)
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before the batch was being written"
    p.send_signal(15)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip().splitlines() == ["hsync: interrupted"], err
    time.sleep(1)  # an agent still running would go on writing
    final, temps = _far_files(dst)
    assert temps == [], temps
    assert len(final) < n, "the agent did not stop"
    for f in final:
        assert f.read_bytes() == (src / f.name).read_bytes(), f
    assert _far_files(dst) == (final, temps)
    r = run("sync", src, f"{HOST}:{dst}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, dst)


# -- where the time of a remote run goes: the agent's timeline (a debugging aid) --------------
def test_agent_timeline_and_profile_say_where_the_far_time_goes(remote: Any,
                                                                 tmp_path: Path) -> None:
    """``HSYNC_AGENT_TIMELINE=FILE`` in the agent's environment: when it started serving
    (and how long its process had been up), each request received and answered, each
    batch's steps (applied and flushed, done in its journal), and its CPU time at the
    end, each line with the wall clock (to line up with the client's own times);
    ``HSYNC_AGENT_PROFILE=FILE``: a cProfile of the agent."""
    import pstats

    timeline, profile = tmp_path / "timeline", tmp_path / "agent.prof"
    wrapper = tmp_path / "hsync-timed"
    wrapper.write_text(f"#!/bin/sh\nHSYNC_AGENT_TIMELINE={timeline} "
                       f"HSYNC_AGENT_PROFILE={profile} exec {hsync_bin()} \"$@\"\n")
    wrapper.chmod(0o755)
    src = build(tmp_path / "src", {f"d/f{i}": os.urandom(100) for i in range(20)})
    dst = f"{HOST}:{tmp_path / 'dst'}"
    started = time.time()
    for _ in range(2):  # a copy, then a re-sync (a digest scan there)
        r = run("sync", "--remote-hsync", wrapper, src, dst)
        assert r.returncode == 0, r.stderr
    assert_same_tree(src, tmp_path / "dst")
    lines = timeline.read_text().splitlines()
    stamps = [float(line.split()[0]) for line in lines]
    assert started <= stamps[0] and stamps[-1] <= time.time()
    assert stamps == sorted(stamps)
    events = [line.split(" ", 1)[1] for line in lines]
    assert sum(e.startswith("serving (pid ") for e in events) == 2, events
    for step in ("hello received", "open answered", "digest_scan answered",
                 "ds_summary answered"):
        assert step in events, (step, events)
    assert any(e.startswith("batch 1: ") and e.endswith("done in the journal")
               for e in events), events
    ends = [e for e in events if e.startswith("end (cpu ")]
    assert len(ends) == 2, events
    calls = {f[2] for f in pstats.Stats(str(profile)).stats}  # type: ignore[attr-defined]
    assert "do_ds_summary" in calls and "serve" not in calls


def _frames(values: list[Any]) -> list[tuple[int, int, Any]]:
    """Each value sent by a compressing ``Framer``: (payload length, flags, the value
    read back)."""
    import io

    from hsync.remote.protocol import Framer

    out = io.BytesIO()
    sender = Framer(io.BytesIO(), out, compress=True)
    for v in values:
        sender.send(v)
    raw = out.getvalue()
    reader = Framer(io.BytesIO(raw), io.BytesIO(), compress=True)
    got, pos = [], 0
    for _ in values:
        length, flags = int.from_bytes(raw[pos:pos + 4], "big"), raw[pos + 4]
        got.append((length, flags, reader.recv()))
        pos += 5 + length
    return got


def test_bulk_frames_are_compressed_where_samples_of_them_compress() -> None:
    """A frame of content is compressed where samples spread over it compress: a page
    of random bytes is sent as it is, one whose second half compresses (a random file
    then a text file) and a page of many small text files are compressed; each reads
    back as sent."""
    from hsync.remote.protocol import COMPRESSED

    noise = os.urandom(1 << 20)
    half = [[b"a", os.urandom(1 << 19), None], [b"b", b"hsync " * 90_000, None]]
    small = [[f"f{i}".encode(), f"line {i} of a small text file\n".encode() * 40, None]
             for i in range(1000)]
    (n1, f1, v1), (n2, f2, v2), (n3, f3, v3) = _frames([[b"k", noise], half, small])
    assert not f1 & COMPRESSED and n1 > 1 << 20
    assert f2 & COMPRESSED and n2 < (1 << 19) + 100_000
    assert f3 & COMPRESSED and n3 < 200_000
    assert v1 == (b"k", noise)
    assert [list(x) for x in v2] == half
    assert [list(x) for x in v3] == small
