"""Names and ops as people read them: the one escaping of a name (so a name cannot
forge a line of output or of a log), one line per op (``-i``, ``diff``, the dry-run
listing, a watch's log), and the ``--log-file`` record of a run.

Machine-readable output (``--json``) carries names as they are; only what a person
reads goes through ``escape``.
"""

from __future__ import annotations

import os
import time

from .model import ENTRY, Key, Op, key_dn, key_str

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import IO

_SEPARATORS = frozenset("\u0085\u2028\u2029")
"""Unicode line breaks (NEL, LINE and PARAGRAPH SEPARATOR): some readers split on them."""


def _needs_escape(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o < 0xA0 or c in _SEPARATORS


def escape(name: str) -> str:
    """``name`` with every control character (and Unicode line break) written as rsync
    writes it, ``\\#ooo`` (octal, one per UTF-8 byte), and a backslash that starts such
    a sequence written ``\\#134``, so the escaping reads back unambiguously. A name that
    is not UTF-8 keeps its surrogate escapes (printed back as its own bytes)."""
    if not any(_needs_escape(c) for c in name) and "\\#" not in name:
        return name
    out: list[str] = []
    for i, c in enumerate(name):
        if c == "\\" and name.startswith("#", i + 1):
            out.append("\\#134")
        elif _needs_escape(c):
            out.extend(f"\\#{b:03o}" for b in c.encode("utf-8"))
        else:
            out.append(c)
    return "".join(out)


def show_key(key: Key, kind: str = "", *, escaped: bool = True) -> str:
    """A key as a path (an LDAP entry as its DN relative to the base), escaped unless
    told; the root is ``.``."""
    text = key_dn(key) if kind == ENTRY else key_str(key)
    return (escape(text) if escaped else text) if text else "."


def describe(op: Op, *, escaped: bool = True) -> str:
    """One line for one op: ``create file    a/b``, ``move   dir     a -> b``,
    ``update file    c (metadata)``, ``delete symlink d`` (op and kind in columns).
    ``escaped=False`` leaves the names as they are, for a writer that escapes the
    whole line itself (a log formatter)."""
    path = show_key(op.key, op.kind, escaped=escaped)
    if op.to is not None:
        return f"{op.op:<7}{op.kind:<8}{path} -> {show_key(op.to, op.kind, escaped=escaped)}"
    extra = " (metadata)" if op.op == "update" and op.kind == "file" and not op.content else ""
    return f"{op.op:<7}{op.kind:<8}{path}{extra}"


class LogFile:
    """``--log-file``: lines appended with a timestamp and the process id (as rsync's
    log file), a header and a footer per run. Writes from copy threads are serialized;
    every line is flushed as it is written (a run that is killed keeps its record)."""

    def __init__(self, path: str) -> None:
        import threading  # only for --log-file: a no-op does not import it

        self.path = path
        self._lock = threading.Lock()
        self._f: IO[str] = open(  # noqa: SIM115 (closed by close())
            path, "a", encoding="utf-8", errors="surrogateescape"
        )

    def write(self, line: str) -> None:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        with self._lock:
            self._f.write(f"{stamp} [{os.getpid()}] {line}\n")
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()
