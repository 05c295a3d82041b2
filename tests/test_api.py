"""The Python API (SPEC section 9) and the backend registry (SPEC section 10)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from treeutil import DIR, Link, assert_same_tree, build

import hsync
from hsync.backend import open_backend, scheme_of
from hsync.errors import HsyncError, SafetyError, UsageError


def test_sync_and_diff_mirror_the_cli(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": DIR, "a/f": b"one", "g": b"two", "l": Link("g")})
    dst = tmp_path / "dst"

    plan = hsync.diff(str(src), str(dst))
    assert [(op.op, "/".join(op.key)) for op in plan][:2] == [("create", ""), ("create", "a")]
    assert not dst.exists()  # diff changes nothing

    report = hsync.sync(str(src), str(dst), state=str(tmp_path / "h.sqlite"))
    assert report.ok and report.exit_code == 0
    assert report.counts["create"] == 5  # root, a, a/f, g, l
    assert report.bytes_copied == len(b"one") + len(b"two")
    assert_same_tree(src, dst)
    assert not hsync.diff(str(src), str(dst))


def test_sync_options_by_keyword(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"keep.txt": b"k", "skip.log": b"s"})
    dst = build(tmp_path / "dst", {"extra": b"e"})
    report = hsync.sync(str(src), str(dst), exclude=["*.log"], delete=False, state="")
    assert report.ok
    assert sorted(p.name for p in dst.iterdir()) == ["extra", "keep.txt"]

    dry = hsync.sync(str(src), str(dst), exclude=["*.log"], dry_run=True, state="", delete=True)
    assert dry.plan is not None and [op.op for op in dry.plan] == ["delete"]
    assert (dst / "extra").exists()


def test_api_raises_hsync_errors(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"f": b"x"})
    with pytest.raises(SafetyError, match="does not exist"):
        hsync.sync(str(tmp_path / "missing"), str(tmp_path / "d"))
    with pytest.raises(UsageError, match="inside the source"):
        hsync.sync(str(src), str(src / "sub"))
    with pytest.raises(HsyncError, match="unknown URL scheme 'nope'"):
        hsync.diff("nope://host/x", str(tmp_path / "d"))


@pytest.mark.parametrize(
    ("location", "scheme"),
    [
        ("/abs/path", "file"),
        ("relative/dir", "file"),
        ("file:///abs", "file"),
        ("./odd:name", "file"),
        ("ldap://127.0.0.1:389/dc=example,dc=com", "ldap"),
        ("ldif:export.ldif", "ldif"),
        ("/x:y", "file"),
        ("a/b:c", "file"),
        ("backup@nas:backup", "ssh"),
        ("nas:backup", "ssh"),
        ("nas:", "ssh"),
        ("[::1]:dir", "ssh"),
        ("ssh://user@host:2222/srv/data", "ssh"),
    ],
)
def test_scheme_of(location: str, scheme: str) -> None:
    assert scheme_of(location) == scheme


def test_ldap_scheme_without_plugin_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    real = importlib.metadata.entry_points

    def without_ldap(**kw: object) -> object:
        return [ep for ep in real(**kw) if not ep.value.startswith("hsync_ldap")]

    monkeypatch.setattr(importlib.metadata, "entry_points", without_ldap)
    with pytest.raises(UsageError, match="install the LDAP plugin"):
        open_backend("ldap://127.0.0.1:1/dc=x", role="source")


def test_third_party_backend_registered_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution that declares an ``hsync.backends`` entry point is found by its
    scheme: here a "mirror" backend, a filesystem tree under another name."""
    site = tmp_path / "site"
    pkg = site / "hsync_mirror"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from hsync.backends.fs import FsBackend

            class MirrorBackend(FsBackend):
                def __init__(self, location, *, role="source", **kw):
                    super().__init__(location[len("mirror://"):], role=role, **kw)
                    self.url = location
            """
        )
    )
    info = site / "hsync_mirror-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hsync-mirror\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[hsync.backends]\nmirror = hsync_mirror:MirrorBackend\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "hsync_mirror", raising=False)

    src = build(tmp_path / "src", {"d": DIR, "d/f": b"via a plugin"})
    dst = tmp_path / "dst"
    report = hsync.sync(f"mirror://{src}", str(dst), state="")
    assert report.ok
    assert (dst / "d" / "f").read_bytes() == b"via a plugin"


def test_public_functions_are_not_shadowed_by_submodules() -> None:
    """Regression: after ``import hsync.watch`` (a module then), ``hsync.watch`` was the
    module and not the function. No submodule is named like a public function, so
    importing every one of them leaves the functions in place."""
    import importlib
    import pkgutil

    names = [m.name for m in pkgutil.walk_packages(hsync.__path__, "hsync.")]
    assert "hsync.api" in names and "hsync.live" in names
    for name in names:
        if name != "hsync._walk":
            importlib.import_module(name)
    for public in ("sync", "diff", "watch", "verify", "plan", "check_plan", "diff_snapshots"):
        assert callable(getattr(hsync, public)), public
        assert type(getattr(hsync, public)).__name__ == "function", public
    assert hsync.watch is hsync.api.watch and hsync.verify is hsync.api.verify
    from hsync.verifier import Verifier  # the name the README gives

    assert Verifier.chunks


def test_watch_can_run_twice_in_one_process_and_leaves_no_thread(tmp_path: Path) -> None:
    """``hsync.watch`` returns when its event is set, every thread it started has ended
    by then, and a second call in the same process works the same."""
    import threading
    import time

    src = build(tmp_path / "src", {"f": b"1"})
    dst = tmp_path / "dst"
    before = set(threading.enumerate())
    for n in range(2):
        stop = threading.Event()
        t = threading.Thread(
            target=hsync.watch, args=(str(src), str(dst)),
            kwargs={"stop": stop, "debounce": 0.02, "state": str(tmp_path / "h.sqlite")},
        )
        t.start()
        (src / f"n{n}").write_bytes(b"x")
        deadline = time.monotonic() + 20
        while not (dst / f"n{n}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (dst / f"n{n}").read_bytes() == b"x"
        stop.set()
        t.join(10)
        assert not t.is_alive()
        left = [th for th in set(threading.enumerate()) - before if th.is_alive()]
        assert not left, left


def test_watch_that_cannot_open_its_pair_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    """Regression: the helper thread that relays ``stop`` waited forever when the pair
    could not be opened (the watch raised before the event was ever set)."""
    import threading

    before = set(threading.enumerate())
    with pytest.raises(SafetyError):
        hsync.watch(str(tmp_path / "missing"), str(tmp_path / "dst"))
    left = [th for th in set(threading.enumerate()) - before if th.is_alive()]
    assert not left, left


def test_every_fatal_error_exits_within_the_spec_codes() -> None:
    """SPEC 9 has exit codes 0-3 only; a plan that breaks an ordering rule (a bug) used
    to exit 70."""
    from hsync import errors

    def subclasses(cls: type) -> list[type]:
        out = [cls]
        for sub in cls.__subclasses__():
            out += subclasses(sub)
        return out

    for cls in subclasses(errors.HsyncError):
        assert errors.exit_code(cls("x")) in (0, 1, 2, 3), cls
    assert errors.exit_code(errors.PlanError("x")) == errors.EXIT_USAGE
