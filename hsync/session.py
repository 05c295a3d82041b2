"""One pair session: both endpoints open, the safety rules checked, the history and the
journal open. Every caller (``sync``, ``diff``, a watch, ``verify``) starts a pair here.

The session owns what lives as long as the pair: the two ``Endpoint`` values (each a
backend and its resolved ``Features``), the ``Exclude`` built once from the options, the
history (``History`` or None) and the journal of applied batches. It does not compare
or apply: ``hsync.compare`` and ``hsync.apply`` do, given a session.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from .backend import Credentials, Endpoint, open_endpoint, relation
from .errors import SafetyError, UsageError
from .filters import build as build_filter
from .model import Key
from .options import DEFAULT, Options

if TYPE_CHECKING:
    from .history import History
    from .journal import Journal


class PairSession:
    """Source and destination of one pair, opened and checked (SPEC 8).

    Raises ``HsyncError`` (nothing opened stays open) when an endpoint cannot be opened,
    the two are one tree or nested, they are different kinds of trees, the source root
    is unusable or the destination cannot be created."""

    def __init__(
        self,
        source_url: str,
        destination_url: str,
        options: Options = DEFAULT,
        *,
        credentials: tuple[Credentials | None, Credentials | None] = (None, None),
        history: bool = True,
    ) -> None:
        self.options = options
        self.exclude = build_filter(options.exclude, options.include, options.filters)
        self.destination_exclude = None if options.delete_excluded else self.exclude
        """What the destination's scans leave out: nothing with ``--delete-excluded``."""
        self.history: History | None = None
        self.journal: Journal | None = None
        self.source = open_endpoint(
            source_url, role="source", credentials=credentials[0],
            exclude_attrs=options.exclude_attrs,
        )
        try:
            self.destination = open_endpoint(
                destination_url, role="destination", credentials=credentials[1],
                exclude_attrs=options.exclude_attrs,
            )
        except BaseException:
            self.source.close()
            raise
        try:
            self._check_pair()
            self.check_source_root()
            self._check_destination_root()
            if history:
                self.history = open_history(self.source, self.destination, options)
                self.journal = _journal_for(self.history)
        except BaseException:
            self.close()
            raise

    # -- life ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the journal, the history and both endpoints (idempotent)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.history is not None:
            self.history.close()
            self.history = None
        self.source.close()
        self.destination.close()

    def __enter__(self) -> PairSession:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the rules of SPEC 8 ----------------------------------------------------------------
    def _check_pair(self) -> None:
        """The same tree, or one inside the other, is refused; so is a pair of a tree of
        files and a tree of entries (one has content, the other attributes)."""
        src, dst = self.source, self.destination
        if src.capabilities.content != dst.capabilities.content:
            raise UsageError(
                f"{dst.url}: cannot sync {src.url} into it (files and directory "
                "entries are different kinds of trees)"
            )
        rel = relation(src, dst)
        if rel == "same":
            raise UsageError(f"{dst.url}: source and destination are the same tree")
        if rel == "inside":
            raise UsageError(f"{dst.url}: destination is inside the source {src.url}")
        if rel == "contains":
            raise UsageError(f"{src.url}: source is inside the destination {dst.url}")

    def check_source_root(self) -> None:
        """A source root that is missing or unusable stops the run before anything is
        done (``SafetyError``); checked at open and before every full scan."""
        why = self.source.backend.root_error()
        if why is not None:
            raise SafetyError(f"{self.source.url}: source {why}; nothing done")

    def check_source(self, incomplete: Mapping[Key, str], n_src: int, n_dst: int) -> None:
        """After the scans: a source root that could not be listed (``incomplete``), or
        a source that is empty while the destination is not, is never a reason to
        delete (``SafetyError``, unless ``--allow-empty-source``)."""
        url = self.source.url
        if () in incomplete:
            raise SafetyError(f"{url}: source {incomplete[()]}; nothing done")
        if n_src <= 1 and n_dst > 1 and not self.options.allow_empty_source:
            raise SafetyError(
                f"{url}: source is empty but the destination is not; refusing to delete "
                "everything (--allow-empty-source to allow it)"
            )

    def _check_destination_root(self) -> None:
        """A destination that is there must be usable; one that is not must be one the
        first batch can create (``root_error`` says why not)."""
        why = self.destination.backend.root_error()
        if why is not None:
            raise UsageError(f"{self.destination.url}: destination {why}")

    @property
    def history_trusted(self) -> History | None:
        """The history when it is complete (moves may be taken from it), else None."""
        h = self.history
        return h if h is not None and h.complete else None


def open_history(source: Endpoint, destination: Endpoint, options: Options) -> History | None:
    """The pair's history, or None (no history asked for, or a dry run without one).

    A batch that a killed run left unfinished is rolled forward first (the history is
    then incomplete: this run compares in full; see ``journal``)."""
    if options.state == "" or not options.delete:
        return None
    from .history import History, default_state_path
    from .journal import recover

    path = options.state or default_state_path()
    src_id = source.backend.canonical_url()
    dst_id = destination.backend.canonical_url()
    history = None
    try:
        if not options.dry_run:
            history = History(path, src_id, dst_id)
        elif os.path.exists(path):  # a dry run reads the history, never creates it
            history = History(path, src_id, dst_id, readonly=True)
    except (OSError, sqlite3.Error) as e:
        raise UsageError(f"{path}: cannot open the history: {e}") from None
    if history is not None and not recover(history) and history.readonly:
        history.close()  # a dry run after a killed one: plan without the history
        return None
    return history


def _journal_for(history: History | None) -> Journal | None:
    from .journal import open_for

    return open_for(history)
