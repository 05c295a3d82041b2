"""The link to an agent: the system ``ssh`` client started with ``hsync agent`` as its
remote command, a version handshake, and a multiplexer of requests over the frames.

The ``ssh`` command is ``-e/--rsh`` split as a shell would (``shlex``), so
``~/.ssh/config``, agents, ProxyJump and ControlMaster work as they do for ssh. The
remote command is built of words each quoted with ``shlex.quote``: nothing the user
gives is interpreted by the remote shell. The remote path never travels on the command
line at all: the agent is told which tree to open in the first message.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import BackendError, LinkLost, SourceChanged, TargetChanged, UsageError
from . import Reach
from .early import remote_command, spawn, take
from .protocol import MAGIC, PROTOCOL, Framer, LinkClosed, hsync_version
from .url import RemoteUrl

_DONE = object()


class RemoteError(BackendError):
    """The far side failed a request as a whole (its message names the host)."""


def ssh_argv(url: RemoteUrl, reach: Reach) -> list[str]:
    """The local argv: the ssh command, its options for this host, the remote command."""
    try:
        if not shlex.split(reach.command()):
            raise UsageError("--rsh: empty command")
        return remote_command(reach.command(), url.host, url.user, url.port,
                              reach.remote_hsync)
    except ValueError as e:
        raise UsageError(f"--rsh {reach.command()!r}: {e}") from None


class Link:
    """One running agent: the ssh process, its frames, and the requests in flight.

    ``call`` sends a request and waits for its answer; ``stream`` yields the ``item``
    frames of a request until its end. Any thread may call; one reader thread
    dispatches the answers. A broken link fails every request in flight and every
    later one with ``BackendError`` naming the host."""

    def __init__(self, url: RemoteUrl, reach: Reach) -> None:
        self.url = url
        self.reach = reach
        self.host = url.target
        self.argv = ssh_argv(url, reach)
        # started at the top of the command when it could be (``early``): the login
        # and the far side's start-up ran while this process imported its modules
        early = take(self.argv)
        try:
            self.proc = early if early is not None else spawn(self.argv)
        except OSError as e:
            raise BackendError(f"{self.host}: cannot run {self.argv[0]}: {e.strerror}") from None
        self.early = early is not None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.framer = Framer(self.proc.stdout, self.proc.stdin, compress=reach.compress)
        self._stderr: list[str] = []
        self._errt = threading.Thread(target=self._drain_stderr, daemon=True)
        self._errt.start()
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.SimpleQueue[Any]] = {}
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._garbled = False
        """A frame that does not decode arrived (before the hello: not an agent)."""
        self.closed = False
        self._hello: dict[str, Any] | None = None
        self._hello_lock = threading.Lock()
        # the hello is not waited for here: the first requests follow it at once and
        # their answers are used only once it checked out (``ready``), one round trip
        # saved and the far side's start-up overlapped with this side's
        self._hello_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting[0] = self._hello_q
        self._depth: dict[int, int] = {0: 1}
        """The round trip each request in flight was sent in (``round_trips``)."""
        self._level = 0
        """The deepest round trip whose answer this side has taken so far."""
        self._arrivals: dict[int, int] = {}
        """When the answers of the requests asked with ``ask_timed`` arrived (ns)."""
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"hsync-link-{self.host}")
        try:
            self.framer.send([0, "hello", [MAGIC, PROTOCOL, hsync_version(), reach.compress]])
        except LinkClosed:
            raise self._failure("the remote hsync agent did not start") from None
        self._reader.start()

    # -- start -----------------------------------------------------------------------
    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                del self._stderr[:-20]

    def _failure(self, what: str) -> BackendError:
        """Why the agent did not start (ssh's exit status and last words)."""
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._errt.join(timeout=2)
        said = next((s for s in reversed(self._stderr) if s.strip()), "")
        if rc == 127:
            name = shlex.join(self.argv[-1:]).strip("'")
            return BackendError(
                f"{self.host}: hsync not found on the remote host (ran {name!r}; "
                "--remote-hsync PATH, or remote_hsync in a daemon's config, names it)"
            )
        if rc == 255:
            return BackendError(f"{self.host}: ssh failed: {said or 'exit 255'}")
        tail = f": {said}" if said else ""
        return BackendError(f"{self.host}: {what} (exit {rc}){tail}")

    @property
    def hello(self) -> dict[str, Any]:
        """The agent's answer to the hello (waited for, checked once)."""
        self.ready()
        assert self._hello is not None
        return self._hello

    def ready(self) -> None:
        """Wait for the hello's answer and check it: a missing or incompatible remote
        hsync, or something else answering, is one ``BackendError`` naming the host."""
        if self._hello is not None:
            return
        with self._hello_lock:
            if self._hello is not None:
                return
            tag, value = self._hello_q.get()
            with self._lock:
                self._waiting.pop(0, None)
            self._took(0)
            if tag == "lost":
                self._hello_q.put((tag, value))  # a later caller fails the same way
                if self._garbled:
                    self._kill()
                    raise BackendError(
                        f"{self.host}: the remote side did not answer as an hsync agent "
                        "(does the login shell print something?)"
                    )
                raise self._failure("the remote hsync agent did not start")
            if tag == "err":
                self._kill()
                raise BackendError(f"{self.host}: {value[1]}")
            hello = dict(value) if isinstance(value, dict) else {}
            if hello.get("magic") != MAGIC or hello.get("protocol") != PROTOCOL:
                self._kill()
                raise BackendError(
                    f"{self.host}: incompatible remote hsync {hello.get('version', '?')} "
                    f"(protocol {hello.get('protocol', '?')}; this one speaks {PROTOCOL})"
                )
            self._hello = hello

    # -- round trips -------------------------------------------------------------------
    @property
    def round_trips(self) -> int:
        """The round trips this side has waited on so far, one after the other: a
        request sent before any answer was taken is in the first (the hello, the
        requests pipelined behind it), one sent after the answer of a request of the
        n-th is in the (n+1)-th; this counts the deepest whose answer was taken. It
        does not depend on timing (an answer already there when it is taken counts as
        if waited for): on a link with latency, a run waits at least this many round
        trips. The ssh login's own are not in it."""
        return self._level

    def _took(self, rid: int) -> None:
        """An answer frame of ``rid`` was taken: what is sent from now on may depend
        on it."""
        with self._lock:
            depth = self._depth.pop(rid, 0)
            if depth > self._level:
                self._level = depth

    # -- requests ----------------------------------------------------------------------
    def _read_loop(self) -> None:
        try:
            while True:
                rid, tag, value = self.framer.recv()  # a bad shape: not an agent
                with self._lock:
                    q = self._waiting.get(rid)
                    if rid in self._arrivals:
                        self._arrivals[rid] = time.time_ns()
                if q is not None:
                    q.put((tag, value))
        except LinkClosed as e:
            if str(e).startswith("bad frame"):
                self._garbled = True
            self._break(f"connection lost ({e})")
        except Exception as e:  # a frame that does not decode: the link is unusable
            self._garbled = True
            self._break(f"bad message from the agent: {e}")

    def _break(self, why: str) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = why
            waiting = list(self._waiting.values())
        for q in waiting:
            q.put(("lost", why))

    def _error(self, why: str) -> BackendError:
        """Why a request failed on a broken link. A link that broke before the agent's
        hello came is one that never started (ssh could not log in, the host refused,
        no hsync there): that is what is said, as ``ready`` says it, not a connection
        "lost" (and not ``LinkLost``: there is nothing to reconnect to)."""
        if self.closed:
            return BackendError(f"{self.host}: the link is closed")
        if self._hello is None:
            try:
                self.ready()
            except BackendError as e:
                return e
        said = next((s for s in reversed(self._stderr) if s.strip()), "")
        return LinkLost(f"{self.host}: {why}" + (f": {said}" if said else ""))

    def open(self, method: str, *args: Any, timed: bool = False
             ) -> tuple[int, queue.SimpleQueue[Any]]:
        """Send a request; its id and the queue its answers arrive on (``timed``: the
        time its answer arrives is noted, ``ask_timed``)."""
        rid = next(self._ids)
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            broken = self._broken
            if broken is None:
                self._waiting[rid] = q
                self._depth[rid] = self._level + 1
                if timed:
                    self._arrivals[rid] = 0
        if broken is not None:
            raise self._error(broken)
        try:
            self.framer.send([rid, method, list(args)])
        except LinkClosed as e:
            self._break(f"connection lost ({e})")
            self.finish(rid)
            raise self._error(self._broken or "connection lost") from None
        return rid, q

    def send_more(self, rid: int, value: Any) -> None:
        """A further frame of request ``rid`` (a page of content for a batch)."""
        try:
            self.framer.send([rid, "more", value])
        except LinkClosed as e:
            self._break(f"connection lost ({e})")
            raise self._error(self._broken or "connection lost") from None

    def finish(self, rid: int) -> None:
        with self._lock:
            self._waiting.pop(rid, None)
            self._depth.pop(rid, None)

    def tell(self, method: str, *args: Any) -> None:
        """Send a request whose answer nobody waits for (a cancel)."""
        rid, _ = self.open(method, *args)
        self.finish(rid)

    def answer(self, rid: int, q: queue.SimpleQueue[Any],
               on_interrupt: Callable[[], bool] | None = None) -> Iterator[tuple[str, Any]]:
        """The answer frames of ``rid`` as ``(tag, value)``, through its end. A Ctrl-C
        while waiting goes to ``on_interrupt``: True goes on waiting (it forwarded the
        cancel: the answer comes), False (or none) raises it."""
        try:
            self.ready()
            while True:
                try:
                    tag, value = q.get()
                except KeyboardInterrupt:
                    if on_interrupt is not None and on_interrupt():
                        continue
                    raise
                if tag == "lost":
                    raise self._error(value)
                self._took(rid)
                yield tag, value
                if tag in ("ok", "err"):
                    return
        finally:
            self.finish(rid)

    def result(self, tag: str, value: Any) -> Any:
        if tag == "err":
            kind, message = value
            if kind == "oserror":
                raise OSError(message)
            if kind == "usage":
                raise UsageError(f"{self.host}: {message}")
            if kind == "source_changed":  # the far file changed while it was read
                raise SourceChanged(message)
            if kind == "target_changed":
                raise TargetChanged(message)
            raise RemoteError(f"{self.host}: {message}")
        return value

    def call(self, method: str, *args: Any) -> Any:
        return self.ask(method, *args)()

    def ask(self, method: str, *args: Any) -> Callable[[], Any]:
        """Send a request now, take its answer later (calling what this returns waits
        for it, raises what ``call`` raises): requests sent back to back cross the
        link together, one round trip for all of them."""
        return self.ask_id(method, *args)[1]

    def ask_id(self, method: str, *args: Any) -> tuple[int, Callable[[], Any]]:
        """``ask``, with the request's id."""
        rid, q = self.open(method, *args)
        return rid, lambda: self._wait(rid, q)

    def _wait(self, rid: int, q: queue.SimpleQueue[Any]) -> Any:
        """The result of request ``rid`` (waited for), or what ``call`` raises."""
        for tag, value in self.answer(rid, q):
            if tag in ("ok", "err"):
                return self.result(tag, value)
        raise self._error("no answer")  # pragma: no cover

    def ask_timed(self, method: str, *args: Any) -> Callable[[], tuple[Any, int, int]]:
        """``ask``, and when: what this returns waits for the answer and returns it with
        the time (``time.time_ns``) just before the request was sent and the time its
        answer arrived (not when it was taken: a clock read there is bracketed by the
        two, however late the answer is used)."""
        sent = time.time_ns()
        rid, q = self.open(method, *args, timed=True)

        def timed() -> tuple[Any, int, int]:
            try:
                answer = self._wait(rid, q)
            finally:
                with self._lock:
                    arrived = self._arrivals.pop(rid, 0)
            return answer, sent, arrived or time.time_ns()

        return timed

    def stream(self, method: str, *args: Any, on_event: Callable[[Any], None] | None = None
               ) -> Iterator[Any]:
        rid, q = self.open(method, *args)
        for tag, value in self.answer(rid, q):
            if tag == "item":
                yield value
            elif tag == "event" and on_event is not None:
                on_event(value)
            else:
                self.result(tag, value)

    # -- end ---------------------------------------------------------------------------
    @property
    def wire(self) -> tuple[int, int]:
        """Bytes sent and received on the link so far (after compression)."""
        return self.framer.sent, self.framer.received

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def abandon(self) -> None:
        """Give up a link that broke: its ssh is killed (not waited for gracefully),
        every request in flight fails."""
        if self.closed:
            return
        self.closed = True
        self._kill()
        self._break("the link is closed")
        self._reader.join(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the agent ends at the end of its input
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._kill()
        self._break("the link is closed")
        self._reader.join(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
