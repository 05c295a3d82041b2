"""A third-party backend works end to end: the in-memory test backend (written only from
the contract in ``hsync/backend.py``) synced, moved, diffed and watched through the
public API and the command line, with its watch (``mem://``) and with nothing optional
at all (``memmin://``: the core needs no more than the required protocol)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from memory_backend import (
    mem_mkdir,
    mem_node,
    mem_rename,
    mem_reset,
    mem_symlink,
    mem_tree,
    mem_write,
)
from typer.testing import CliRunner

import hsync
from hsync.cli import app

SCHEMES = ["mem", "memmin"]


@pytest.fixture(autouse=True)
def _fresh_trees() -> Iterator[None]:
    mem_reset()
    yield
    mem_reset()


@pytest.fixture
def state(tmp_path: Path) -> str:
    return str(tmp_path / "h.sqlite")


def build_source() -> None:
    mem_write("a", "top.txt", "top")
    mem_write("a", "d1/f1", "hello")
    mem_write("a", "d1/sub/f2", b"\x00\xff" * 500, mode=0o600)
    mem_symlink("a", "d1/link", "../top.txt")
    mem_symlink("a", "dangling", "nowhere/at/all")
    mem_mkdir("a", "empty")
    mem_mkdir("a", "d2")


def wait_until(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sync_makes_the_destination_equal(scheme: str, state: str) -> None:
    build_source()
    report = hsync.sync(f"{scheme}://a", f"{scheme}://b", state=state)
    assert report.ok, report.problems
    assert mem_tree("b") == mem_tree("a")
    assert mem_tree("b")["d1/link"] == "../top.txt"
    assert mem_tree("b")["d1/sub/f2"] == b"\x00\xff" * 500
    assert report.counts["create"] == len(mem_tree("a")) + 1  # and b's root
    assert report.bytes_copied == len("top") + len("hello") + 1000
    # payloads too (modes, mtimes), not only contents
    for path in mem_tree("a"):
        assert mem_node("b", path) == mem_node("a", path), path
    assert not hsync.diff(f"{scheme}://a", f"{scheme}://b", state=state)
    again = hsync.sync(f"{scheme}://a", f"{scheme}://b", state=state)
    assert again.ok and sum(again.counts.values()) == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_move_on_the_source_is_a_move(scheme: str, state: str) -> None:
    build_source()
    assert hsync.sync(f"{scheme}://a", f"{scheme}://b", state=state).ok
    before = mem_node("b", "d1/sub/f2")
    assert before is not None
    mem_rename("a", "d1", "d2/d1")
    report = hsync.sync(f"{scheme}://a", f"{scheme}://b", state=state)
    assert report.ok, report.problems
    assert report.counts["move"] == 1, report.plan
    assert (report.counts["create"], report.counts["delete"]) == (0, 0), report.plan
    assert report.bytes_copied == 0
    assert mem_tree("b") == mem_tree("a")
    after = mem_node("b", "d2/d1/sub/f2")
    assert after is not None and after.identity == before.identity  # moved, not copied
    assert not hsync.diff(f"{scheme}://a", f"{scheme}://b", state=state)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_missing_source_is_refused(scheme: str, state: str) -> None:
    mem_write("b", "keep", "1")
    with pytest.raises(hsync.HsyncError):
        hsync.sync(f"{scheme}://nothing-here", f"{scheme}://b", state=state)
    assert mem_tree("b") == {"keep": b"1"}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cli_sync_and_diff(scheme: str, state: str) -> None:
    build_source()
    runner = CliRunner()
    src, dst = f"{scheme}://a", f"{scheme}://b"
    res = runner.invoke(app, ["diff", src, dst, "--state", state])
    assert res.exit_code == 1, res.output
    res = runner.invoke(app, ["sync", src, dst, "--state", state, "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["counts"]["create"] == len(mem_tree("a")) + 1  # and b's root
    assert out["errors"] == []
    assert mem_tree("b") == mem_tree("a")
    res = runner.invoke(app, ["diff", src, dst, "--state", state])
    assert res.exit_code == 0, res.output
    mem_rename("a", "top.txt", "d2/top.txt")
    res = runner.invoke(app, ["sync", src, dst, "--state", state, "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["counts"]["move"], out["counts"]["create"], out["bytes_copied"]) == (1, 0, 0)
    assert mem_tree("b") == mem_tree("a")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_watch_propagates_and_stops_cleanly(scheme: str, state: str) -> None:
    build_source()
    before = set(threading.enumerate())
    stop = threading.Event()
    failed: list[BaseException] = []
    # a source without a watch is polled
    extra: dict[str, Any] = {"poll_interval": 0.2} if scheme == "memmin" else {}

    def run() -> None:
        try:
            hsync.watch(f"{scheme}://a", f"{scheme}://b", stop=stop, debounce=0.05,
                        state=state, **extra)
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=run, name="test-watch")
    t.start()
    try:
        assert wait_until(lambda: mem_tree("b") == mem_tree("a"), 10), failed
        mem_write("a", "d1/new", "fresh")
        assert wait_until(lambda: mem_tree("b").get("d1/new") == b"fresh", 5), failed
        mem_rename("a", "d1/f1", "d2/f1")
        assert wait_until(lambda: mem_tree("b") == mem_tree("a"), 5), failed
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive(), "the watch did not stop"
    assert not failed, failed
    assert wait_until(
        lambda: not [x for x in threading.enumerate() if x not in before and x.is_alive()], 2
    ), [x for x in threading.enumerate() if x not in before]


def test_a_capability_is_recognised_by_its_members_without_typing() -> None:
    """The contract's optional protocols are checked at run time without ``typing``
    (start-up, issue 15 item 1), as ``typing.runtime_checkable`` checks them: an object
    offers a capability when it has every member the protocol declares, none of its
    methods None; a protocol that is not run-time checkable refuses the check; a class
    derived from a protocol is an ordinary class."""
    from hsync.backend import Backend, DigestScan, Linked, Metadata

    class Both:
        def id_names(self) -> dict[str, dict[int, str]]:
            return {}

        def metadata(self, wanted: object) -> object:
            return wanted

    class Half:
        def id_names(self) -> dict[str, dict[int, str]]:
            return {}

    class Nulled(Both):
        metadata = None  # type: ignore[assignment]

    assert isinstance(Both(), Metadata)
    assert not isinstance(Half(), Metadata)
    assert not isinstance(Nulled(), Metadata)
    with pytest.raises(TypeError):
        isinstance(Both(), DigestScan)

    class Counted(Linked):
        def wire(self) -> tuple[int, int]:
            return (0, 0)

        def round_trips(self) -> int:
            return 0

    class Other:
        def wire(self) -> tuple[int, int]:
            return (1, 1)

        def round_trips(self) -> int:
            return 1

        def stat_many(self, keys: object) -> dict[object, object]:
            return {}

        def look_many(self, keys: object) -> dict[object, object]:
            return {}

        def digest_many(self, keys: object) -> dict[object, object]:
            return {}

    assert isinstance(Counted(), Linked) and isinstance(Other(), Linked)
    assert not isinstance(Other(), Counted)  # an ordinary class: by its subclasses only
    assert not isinstance(Half(), Backend)
    # the required protocol's members: its methods and its annotated attributes
    members = ("url", "capabilities", "canonical_url", "root_error", "root_id", "is_empty",
               "scan", "stat", "read", "digest", "apply_batch", "close")
    whole = type("Whole", (), dict.fromkeys(members, lambda *a: None))
    assert isinstance(whole(), Backend)
    for left_out in members:
        part = type("Part", (), {m: lambda *a: None for m in members if m != left_out})
        assert not isinstance(part(), Backend), left_out
