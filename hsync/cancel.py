"""The cancel token: cooperative cancellation, checked between items.

One token goes through a scan, a walk, a stream, a quick pass, an initial copy and an
apply; each checks it once per directory, page or op (``check`` raises ``Cancelled``,
``cancelled`` answers without raising). A token is cancelled by its owner (``cancel``)
or by a condition it was made with (``Cancel.when``: the watch loop's "stop asked, or
the source changed under the comparison"). Over a byte stream it is one message.
"""

from __future__ import annotations

import time

from .errors import Cancelled

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable


class Cancel:
    """A cancel token. ``NEVER`` is one that is never cancelled."""

    __slots__ = ("_event", "_when", "reason")

    def __init__(self, when: Callable[[], bool] | None = None) -> None:
        import threading  # not at import: NEVER needs no event, nor a no-op threading

        self._event = threading.Event()
        self._when = when
        self.reason = "cancelled"

    @classmethod
    def when(cls, condition: Callable[[], bool]) -> Cancel:
        """A token that is cancelled while ``condition()`` is true (or once cancelled)."""
        return cls(condition)

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    def cancelled(self) -> bool:
        return self._event.is_set() or (self._when is not None and self._when())

    def check(self) -> None:
        """Raise ``Cancelled`` when the token is cancelled."""
        if self._event.is_set() or (self._when is not None and self._when()):
            raise Cancelled(self.reason)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking on ``cancel``; True when cancelled."""
        return self._event.wait(seconds) or self.cancelled()

    def __repr__(self) -> str:
        return f"Cancel(cancelled={self.cancelled()})"


class _Never(Cancel):
    __slots__ = ()

    def __init__(self) -> None:
        self._when = None
        self.reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        raise TypeError("NEVER cannot be cancelled")

    def cancelled(self) -> bool:
        return False

    def check(self) -> None:
        return None

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return False


NEVER: Cancel = _Never()
"""A token that is never cancelled (the default of every ``cancel`` parameter)."""
