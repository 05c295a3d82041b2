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

    dry = hsync.sync(str(src), str(dst), exclude=["*.log"], dry_run=True, state="")
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
                def __init__(self, location, *, role="source", credentials=None,
                             exclude_attrs=()):
                    super().__init__(location[len("mirror://"):], role=role,
                                     credentials=credentials)
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
