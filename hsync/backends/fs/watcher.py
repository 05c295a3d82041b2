"""Change notifications for a filesystem tree: inotify through watchdog.

The watcher only reports: every event becomes ``sink.dirty(key, deep=...)`` and nothing
else happens on watchdog's threads. A file's modification (``IN_MODIFY``) is reported
with ``writing=True``: the file is open for writing, and the loop holds it back until
its close after the write (``IN_CLOSE_WRITE``, reported without ``writing``) or a quiet
period (SPEC 5: a half-written file is never published under its name).

What watchdog does not report by itself is made visible at its boundary (``_Group``, a
subclass of its inotify watch group):

- a queue overflow (events were lost) -> ``sink.lost``;
- a directory that could not be watched (the watch limit, a permission) ->
  ``sink.unwatched`` (the loop polls it).

Facts measured here (shared/notes/baselines.md): watchdog's default event mask
overflows the 16,384-event queue at once on a real tree, so an ``event_filter`` is
passed; a directory rename fans out into one synthesised event per descendant, which
are dropped (the one ``DirMovedEvent`` dirties both whole subtrees, and is reported as
a move, ``sink.moved``, where the sink has it).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup

from ...backend import WatchSink
from ...model import Key

log = logging.getLogger("hsync.watch")

# watchdog warns when `mkdir -p a/b` makes it register the same watch twice (the create
# event of a/b and the walk of a both add it); the second registration is harmless
warnings.filterwarnings(
    "ignore", message="Callback with id .* already exists", category=RuntimeWarning
)

EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    DirModifiedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileAttribEvent,
    DirAttribEvent,
]
"""What hsync listens to: never opens, reads or close-without-write. An attribute change
(``IN_ATTRIB``: chmod, chown, utime, an extended attribute or ACL set, a ``touch -h`` of
a symlink, a FIFO's mtime) marks the node; it is metadata that needs no close to be
complete: a round takes it at once."""

_DEEP = (DirCreatedEvent, FileCreatedEvent, DirDeletedEvent, FileDeletedEvent)


@dataclass
class _Group(InotifyWatchGroup):
    """watchdog's recursive watch group, telling the sink what watchdog only logs."""

    sink: WatchSink | None = None
    base: bytes = b""

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        if self.sink is not None:
            self.sink.lost("the inotify event queue overflowed")

    def _add_callback(self, path: bytes) -> None:
        try:
            wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback, self._id)
        except OSError as e:
            if path == self.path:
                raise
            key = _key_of(self.base, path)
            if not os.path.isdir(path) or self.sink is None or key is None:
                return  # gone, or replaced, meanwhile: its own events say so
            self.sink.unwatched(key, e.strerror or str(e))
            return
        self._active_callbacks_by_path[path] = wd
        self._active_callbacks_by_watch[wd] = path


class _Emitter(InotifyEmitter):
    def __init__(self, *args: Any, sink: WatchSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink

    def on_thread_start(self) -> None:
        path = os.fsencode(self.watch.path)
        self._inotify = _Group(
            self._inotify_fd,
            path,
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=False,
            sink=self.sink,
            base=path,
        )


def _key_of(base: bytes, path: bytes | str) -> Key | None:
    """The key of ``path`` below the watched root ``base``; None for a path outside."""
    raw = os.fsencode(path)
    if raw == base:
        return ()
    if not raw.startswith(base + b"/"):
        return None
    return tuple(os.fsdecode(raw[len(base) + 1 :]).split("/"))


class _Handler(FileSystemEventHandler):
    def __init__(self, base: bytes, sink: WatchSink) -> None:
        self.base = base
        self.sink = sink
        self.open: set[Key | None] = set()
        """Files written (IN_MODIFY) and not closed since: an attribute change of one
        of them does not make it whole."""
        self.closed_in: str | None = None
        """The directory of the file whose close was the last event: watchdog follows
        every close with a ``DirModifiedEvent`` of it, which is not a change (closing a
        file changes no directory)."""

    def _appeared_or_went(self, key: Key | None) -> None:
        """A node created, deleted, or moved in or out: its subtree, and its parent's
        metadata (the parent's mtime changed)."""
        if key is None:
            return
        self.sink.dirty(key, deep=True)
        if key:
            self.sink.dirty(key[:-1], deep=False)

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            return  # one per descendant of a moved or created directory: already covered
        closed_in, self.closed_in = self.closed_in, None
        if isinstance(event, DirModifiedEvent) and closed_in is not None and (
            os.fsencode(event.src_path) == os.fsencode(closed_in)
        ):
            # the echo of the close just reported: dirtying the directory would make a
            # round that already took the file stale (a restart, then the debounce)
            return
        key = _key_of(self.base, event.src_path)
        if isinstance(event, FileClosedEvent):
            self.closed_in = os.path.dirname(os.fsdecode(event.src_path))
        if not isinstance(event, (FileModifiedEvent, FileAttribEvent)):
            self.open.discard(key)  # closed, deleted or moved: no longer being written
        if isinstance(event, (DirMovedEvent, FileMovedEvent)):
            dest = _key_of(self.base, event.dest_path)
            self._appeared_or_went(key)
            self._appeared_or_went(dest)
            if key and dest:
                self.sink.moved(key, dest, directory=isinstance(event, DirMovedEvent))
        elif isinstance(event, _DEEP):
            self._appeared_or_went(key)
        elif isinstance(event, FileModifiedEvent) and key is not None:
            # written, not closed yet: the loop waits for the close (or for quiet)
            self.open.add(key)
            self.sink.dirty(key, deep=False, writing=True)
        elif isinstance(event, FileAttribEvent) and key is not None:
            # metadata (a chmod, a touch -h of a symlink, cp -p's utime after the
            # close): at once, unless the file is being written (the close says when)
            self.sink.dirty(key, deep=False, writing=key in self.open)
        elif key is not None:  # closed after a write, a directory's content or metadata
            self.sink.dirty(key, deep=False)


class FsWatcher:
    """A watch (``hsync.backend.Watch``): watches the tree at ``root`` recursively while
    entered.

    Entering raises ``OSError`` when the root itself cannot be watched (the caller
    falls back to polling); a subdirectory that cannot be watched is reported to the
    sink instead. inotify has no positions: a watch never resumes."""

    def __init__(self, root: str, sink: WatchSink) -> None:
        self.root = root
        self.sink = sink
        self.observer: InotifyObserver | None = None

    def __enter__(self) -> FsWatcher:
        root = os.path.realpath(self.root)
        observer = InotifyObserver()
        # watchdog's own observer, with the emitter above (it passes these kwargs on)
        observer._emitter_class = _Emitter
        observer._emitter_kwargs = {**observer._emitter_kwargs, "sink": self.sink}
        try:
            observer.schedule(
                _Handler(os.fsencode(root), self.sink), root, recursive=True, event_filter=EVENTS
            )
            observer.start()
        except BaseException:
            _stop(observer)
            raise
        self.observer = observer
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.observer is not None:
            _stop(self.observer)
            self.observer = None

    @property
    def alive(self) -> bool:
        """False once the observer stopped by itself (the root was deleted or moved)."""
        obs = self.observer
        return obs is not None and obs.is_alive() and any(
            e.is_alive() for e in list(obs.emitters)
        )

    @property
    def resumed(self) -> bool:
        return False

    def checkpoint(self) -> bytes | None:
        return None


def _stop(observer: InotifyObserver) -> None:
    try:
        if observer.is_alive():
            observer.stop()
            observer.join(5)
        else:
            observer.on_thread_stop()  # releases the inotify descriptor it opened
    except Exception:
        log.debug("stopping the observer failed", exc_info=True)
