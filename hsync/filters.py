"""Excludes as a value: gitignore-style patterns (SPEC 2), compiled once per process.

A backend is handed an ``Exclude`` (never a bare function), so that the same value can
be forwarded over a byte stream or to another process and compiled there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .model import Key


def strings(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as a tuple (an attrs converter that mypy can follow)."""
    return tuple(values)


@attrs.frozen
class Exclude:
    """Nodes left out of a scan: neither copied nor deleted. Call it as
    ``exclude(key, is_dir)``; a directory pattern (``build/``) matches directories only."""

    patterns: tuple[str, ...] = attrs.field(converter=strings)
    _match: Callable[[str], bool] | None = attrs.field(
        default=None, init=False, eq=False, repr=False
    )

    @classmethod
    def of(cls, patterns: Iterable[str]) -> Exclude | None:
        """The exclude for ``patterns``, or None when there is none."""
        patterns = tuple(patterns)
        return cls(patterns) if patterns else None

    def __call__(self, key: Key, is_dir: bool) -> bool:
        match = self._match
        if match is None:
            import pathspec

            match = pathspec.GitIgnoreSpec.from_lines(self.patterns).match_file
            object.__setattr__(self, "_match", match)
        rel = "/".join(key)
        return match(rel + "/" if is_dir else rel)

    def __getstate__(self) -> dict[str, Any]:
        return {"patterns": self.patterns}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "patterns", tuple(state["patterns"]))
        object.__setattr__(self, "_match", None)

    def covers(self, key: Key) -> bool:
        """True when ``key`` or an ancestor is excluded, whatever the kinds (the kind of
        a key named by a watch event is not known)."""
        for i in range(1, len(key) + 1):
            k = key[:i]
            if self(k, True) or (i == len(key) and self(k, False)):
                return True
        return False
