"""Helpers for tests: build real trees from literals, read them back for comparison."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

from hsync.model import Node, Snapshot


@attrs.frozen
class Link:
    target: str


@attrs.frozen
class File:
    content: bytes
    mode: int = 0o644
    mtime_ns: int | None = None


DIR = "DIR"
"""A directory literal: ``{"a": DIR, "a/b": b"content", "l": Link("a/b")}``."""


def build(root: Path | str, spec: dict[str, Any]) -> Path:
    """Create ``root`` and the nodes of ``spec`` (paths joined with '/', parents implied)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel in sorted(spec):
        value = spec[rel]
        path = os.path.join(os.fsencode(root), os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if value == DIR:
            os.makedirs(path, exist_ok=True)
        elif isinstance(value, Link):
            os.symlink(value.target, path)
        else:
            f = value if isinstance(value, File) else File(value)
            with open(path, "wb") as fh:
                fh.write(f.content)
            os.chmod(path, f.mode)
            if f.mtime_ns is not None:
                os.utime(path, ns=(f.mtime_ns, f.mtime_ns))
    return root


def read_tree(root: Path | str, *, dir_mtime: bool = True) -> dict[bytes, tuple[Any, ...]]:
    """Everything "in sync" compares (SPEC section 2), keyed by relative bytes path."""
    out: dict[bytes, tuple[Any, ...]] = {}
    base = os.fsencode(root)
    st = os.stat(base)
    out[b""] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns if dir_mtime else 0)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns if dir_mtime else 0)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    data = fh.read()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, data)
            elif not stat.S_ISSOCK(st.st_mode):  # a FIFO, a device (sockets are not synced)
                out[rel] = ("special", st.st_mode, st.st_rdev, st.st_mtime_ns)
    return out


def assert_same_tree(src: Path | str, dst: Path | str) -> None:
    a, b = read_tree(src), read_tree(dst)
    if a != b:
        only_a = sorted(set(a) - set(b))[:10]
        only_b = sorted(set(b) - set(a))[:10]
        differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:10]
        raise AssertionError(
            f"trees differ: only in source {only_a}, only in destination {only_b}, "
            f"different {[(k, a[k][:3], b[k][:3]) for k in differ]}"
        )


def hsync_bin() -> str:
    """The installed console script next to this interpreter."""
    cand = Path(sys.executable).with_name("hsync")
    return str(cand) if cand.exists() else shutil.which("hsync") or "hsync"


# Runs the console script as the shell would (not through runpy, which imports typing),
# then writes the names in sys.modules to argv[1] however the run ends (a normal return,
# an exception, sys.exit, or the CLI's os._exit).
_MODULES_PROBE = """
import os, sys
out, script = sys.argv[1], sys.argv[2]
real_exit = os._exit
forked, in_child = [], []
os.register_at_fork(after_in_parent=lambda: forked.append(1),
                    after_in_child=lambda: in_child.append(1))
def dump():
    if in_child:  # a forked child's exit: the parent's modules are the answer
        return
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules) + (["<forked>"] if forked else [])))
def exit_(code):
    sys.stdout.flush()
    dump()
    real_exit(code)
os._exit = exit_
sys.argv = [script, *sys.argv[3:]]
with open(script) as f:
    code = compile(f.read(), script, "exec")
try:
    exec(code, {"__name__": "__main__", "__file__": script})
finally:
    dump()
"""


def run_with_modules(
    tmp_path: Path, *args: str, stdin: str = "", no_site: bool = False
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the installed ``hsync`` with ``args`` in a child interpreter: the finished
    process and the names of the modules it had imported when it ended, and
    ``"<forked>"`` among them when it forked a child process (a scan child, copy
    workers). ``no_site``: without the ``site`` module (``-S``), hsync and the packages
    beside it found through ``PYTHONPATH``, so that no ``.pth`` hook of the test
    environment is counted (an editable install's finder imports ``re``, ``pathlib``)."""
    import sysconfig

    import hsync

    out = tmp_path / "modules.txt"
    env = None
    flags: list[str] = []
    if no_site:
        flags = ["-S"]
        where = [str(Path(hsync.__file__).parent.parent), sysconfig.get_paths()["purelib"],
                 sysconfig.get_paths()["platlib"]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(where)}
    proc = subprocess.run(
        [sys.executable, *flags, "-c", _MODULES_PROBE, str(out), hsync_bin(), *args],
        capture_output=True, text=True, timeout=120, input=stdin, env=env,
    )
    return proc, set(out.read_text().split("\n"))



# -- in-memory tree literals for the pure core (diff, plan) --------------------------------


def F(size: int = 0, mtime: int = 0, ident: object = None, mode: int = 0o644) -> Node:
    """A file node literal."""
    return Node("file", mode, size, mtime, None, ident)


def D(mode: int = 0o755, mtime: int = 0, ident: object = None) -> Node:
    """A directory node literal (``"a/": None`` in a tree literal is ``D()``)."""
    return Node("dir", mode, 0, mtime, None, ident)


def L(target: str, ident: object = None) -> Node:
    """A symlink node literal."""
    return Node("symlink", 0, 0, 0, target, ident)


def snapshot(
    spec: dict[str, Node | None],
    *,
    incomplete: dict[str, str] | None = None,
    root: Node | None = None,
) -> Snapshot:
    """A ``Snapshot`` from a readable literal: ``{"a/": None, "a/f": F(size=1)}``.

    A key ending in "/" with value None is a default directory (``D()``); the root
    ``()`` is always present, as ``root`` or ``D()``. Parents must be listed explicitly.
    """
    nodes: dict[tuple[str, ...], Node] = {(): root if root is not None else D()}
    for rel, value in spec.items():
        key = tuple(part for part in rel.split("/") if part)
        if value is None:
            assert rel.endswith("/"), f"{rel!r}: None is only for directories ('a/')"
            value = D()
        nodes[key] = value
    for key in nodes:
        assert not key or key[:-1] in nodes, f"{'/'.join(key)}: parent missing in literal"
    inc = {tuple(k.split("/")) if k else (): why for k, why in (incomplete or {}).items()}
    return Snapshot(nodes=nodes, incomplete=inc)


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, or a pid gone, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reuse_inode(old: Path, new: Path, content: bytes, tries: int = 20_000) -> bool:
    """Delete ``old`` and create ``new`` (``content``, ``old``'s mtime) so that it gets
    ``old``'s freed inode where the filesystem reuses inodes (ext4 hands out the lowest
    free inode of a group once the deletion is committed: empty filler files in the same
    directory take the lower holes first, and are removed after). True when it did."""
    st = old.stat()
    old.unlink()
    os.sync()
    fillers: list[Path] = []
    got = False
    try:
        for i in range(tries):
            probe = new.with_name(f".reuse-{os.getpid()}-{i}")
            probe.write_bytes(b"")
            if probe.stat().st_ino == st.st_ino:
                probe.rename(new)
                got = True
                break
            fillers.append(probe)
            if i and i % 512 == 0:
                os.sync()
    finally:
        for f in fillers:
            f.unlink()
    new.write_bytes(content)
    os.utime(new, ns=(st.st_mtime_ns, st.st_mtime_ns))
    return got
