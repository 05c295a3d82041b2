"""Filters as a value (SPEC 2), compiled once per process.

Two kinds of patterns make one ``Exclude``:

- ``patterns``: gitignore-style lines (``--exclude``), the last that matches decides, a
  ``!`` line re-includes. They are matched as git matches the lines of a
  ``.gitignore``: each path on its own (a pattern never matches a node through one of
  its parents), a directory it excludes is not descended (the scans prune it), so a
  later negation can only bring back what is below when it re-includes the directory
  itself (``!*/``).
- ``rules``: rsync's filter rules (``--include PAT`` is ``("+", PAT)``, ``--filter
  '- PAT'`` is ``("-", PAT)``), tried first, in order; the first that matches decides.
  Their patterns are rsync's: ``/`` at the start anchors at the root, otherwise the
  pattern matches the end of the path; a trailing ``/`` matches directories only;
  ``*`` stops at slashes, ``**`` does not, ``dir/***`` is ``dir`` and its content.
  When no rule matches, the gitignore-style patterns decide.

A backend is handed an ``Exclude`` (never a bare function), so that the same value can
be forwarded over a byte stream or to another process and compiled there.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._values import field, frozen
from .errors import UsageError
from .model import Key

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    import re
    from typing import Any

Matcher = tuple["re.Pattern[str]", bool, bool]
"""A compiled pattern: its regex (matched against the whole path), whether a match
excludes, whether it matches directories only."""


def strings(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as a tuple (an attrs converter that mypy can follow)."""
    return tuple(values)


def _rules(values: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(a), str(b)) for a, b in values)


def _glob(pattern: str) -> str:
    """The regex of a wildcard pattern's body (no anchoring, no trailing slash)."""
    import re  # only where there are patterns: a sync without them does not import it

    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            stars = j - i
            at_start = i == 0 or pattern[i - 1] == "/"
            at_end = j == n or pattern[j] == "/"
            if stars >= 2 and at_start and at_end:
                if j == n:  # trailing "**": everything below
                    out.append(".*")
                else:  # "**/": zero or more directories
                    out.append("(?:.*/)?")
                    j += 1
            else:
                out.append(".*" if stars >= 2 else "[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("(?!/)[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _compile(pattern: str, *, rsync: bool) -> tuple[str, bool] | None:
    """``pattern`` (without its ``!`` or rule prefix) as (regex, directories only), or
    None for a line that matches nothing (blank, a comment)."""
    if not rsync:
        if pattern.startswith("#"):
            return None
        stripped = pattern.rstrip(" ")  # trailing spaces unless escaped (git)
        if stripped.endswith("\\") and len(stripped) < len(pattern):
            stripped += " "
        pattern = stripped
    if not pattern or pattern == "/":
        return None
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/") if dir_only else pattern
    suffix = ""
    if rsync and pattern.endswith("/***"):  # rsync: the directory and its content
        pattern, suffix = pattern[:-4], "(?:/.*)?"
        dir_only = False
    anchored = pattern.startswith("/") or (not rsync and "/" in pattern)
    pattern = pattern.lstrip("/")
    if not pattern:
        return None
    body = _glob(pattern)
    if pattern.startswith("**/") or not anchored:
        prefix = "" if body.startswith("(?:.*/)?") else "(?:.*/)?"
    else:
        prefix = ""
    return "^" + prefix + body + suffix + "$", dir_only


@frozen
class Exclude:
    """Nodes left out of a scan: neither copied nor deleted (unless
    ``--delete-excluded``). Call it as ``exclude(key, is_dir)``; a directory pattern
    (``build/``) matches directories only. The module doc tells how ``patterns``
    (gitignore-style) and ``rules`` (rsync's ``+``/``-``, first match wins) combine."""

    patterns: tuple[str, ...] = field(converter=strings)
    rules: tuple[tuple[str, str], ...] = field(default=(), converter=_rules)
    _compiled: tuple[tuple[Matcher, ...], tuple[Matcher, ...]] | None = field(
        default=None, init=False, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        for sign, _ in self.rules:
            if sign not in ("+", "-"):
                raise UsageError(f"a filter rule is '+ PATTERN' or '- PATTERN', not {sign!r}")

    @classmethod
    def of(
        cls, patterns: Iterable[str], rules: Iterable[tuple[str, str]] = ()
    ) -> Exclude | None:
        """The exclude for ``patterns`` and ``rules``, or None when there is none."""
        patterns, rules = tuple(patterns), tuple(rules)
        return cls(patterns, rules) if patterns or rules else None

    def _compile(self) -> tuple[tuple[Matcher, ...], tuple[Matcher, ...]]:
        import re

        rules: list[Matcher] = []
        for sign, pattern in self.rules:
            c = _compile(pattern, rsync=True)
            if c is not None:
                rules.append((re.compile(c[0], re.S), sign == "-", c[1]))
        lines: list[Matcher] = []
        for line in self.patterns:
            negate = line.startswith("!")
            c = _compile(line[1:] if negate else line, rsync=False)
            if c is not None:
                lines.append((re.compile(c[0], re.S), not negate, c[1]))
        compiled = (tuple(rules), tuple(lines))
        object.__setattr__(self, "_compiled", compiled)
        return compiled

    def __call__(self, key: Key, is_dir: bool) -> bool:
        rules, lines = self._compiled or self._compile()
        rel = "/".join(key)
        for regex, excludes, dir_only in rules:  # first match wins
            if (is_dir or not dir_only) and regex.match(rel):
                return excludes
        for regex, excludes, dir_only in reversed(lines):  # last match wins
            if (is_dir or not dir_only) and regex.match(rel):
                return excludes
        return False

    def __getstate__(self) -> dict[str, Any]:
        return {"patterns": self.patterns, "rules": self.rules}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "patterns", tuple(state["patterns"]))
        object.__setattr__(self, "rules", _rules(state.get("rules", ())))
        object.__setattr__(self, "_compiled", None)

    def by_name(self) -> bool:
        """True when every pattern and rule matches a node by its own name (no ``/``
        inside, no ``**``): whether a node below a directory is excluded then does not
        depend on where the directory is, so a directory moved with nothing changed
        below it needs no rescan to know what is excluded below it."""
        bodies = [b for _, b in self.rules]
        bodies += [line[1:] if line.startswith("!") else line for line in self.patterns]
        for body in bodies:
            body = body.rstrip(" ")
            if body.endswith("/***"):
                body = body[:-4]
            body = body.rstrip("/")
            if "/" in body or "**" in body:
                return False
        return True

    def covers(self, key: Key) -> bool:
        """True when ``key`` or an ancestor is excluded, whatever the kinds (the kind of
        a key named by a watch event is not known)."""
        for i in range(1, len(key) + 1):
            k = key[:i]
            if self(k, True) or (i == len(key) and self(k, False)):
                return True
        return False


Filter = Exclude
"""The same value under the name of what it now is: an ordered list of filter rules."""


def parse_rule(text: str) -> tuple[str, str]:
    """An rsync filter rule (``+ PAT``, ``- PAT``, ``include PAT``, ``exclude PAT``) as
    (sign, pattern); raises ``UsageError`` for anything else."""
    head, _, pattern = text.partition(" ")
    sign = {"+": "+", "-": "-", "include": "+", "exclude": "-"}.get(head)
    if sign is None or not pattern:
        raise UsageError(
            f"filter rule {text!r}: expected '+ PATTERN' or '- PATTERN' (rsync's rules)"
        )
    return sign, pattern


def build(
    exclude: Iterable[str], include: Iterable[str] = (), filters: Iterable[str] = ()
) -> Exclude | None:
    """The one filter of a run's options: ``--include`` patterns as ``+`` rules, then the
    ``--filter`` rules, in their order, then the ``--exclude`` patterns (module doc)."""
    rules = [("+", p) for p in include] + [parse_rule(r) for r in filters]
    return Exclude.of(exclude, rules)
