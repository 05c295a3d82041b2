"""Remote locations: ``ssh://[user@]host[:port]/path`` and rsync's ``[user@]host:path``
(a colon before the first slash; ``./a:b`` and ``/x:y`` are local paths)."""

from __future__ import annotations

from urllib.parse import unquote

from .. import _values
from ..errors import UsageError


@_values.frozen
class RemoteUrl:
    host: str
    path: str
    """The path on the far side as given (relative: from the login directory)."""
    user: str | None = None
    port: int | None = None

    @property
    def target(self) -> str:
        """``[user@]host`` as shown in messages."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def endpoint(self) -> str:
        """The canonical prefix of this endpoint's URLs (history keys)."""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user + '@' if self.user else ''}{host}{port}"


def is_remote(location: str) -> bool:
    """True for ``ssh://...`` and for ``[user@]host:path`` (a colon before any slash)."""
    if location.startswith("ssh://"):
        return True
    if location.startswith(("./", "/")):
        return False
    head, sep, _ = location.partition(":")
    if head.startswith("[") or (head.find("@") >= 0 and "[" in head):
        # [v6]:path or user@[v6]:path
        close = location.find("]")
        return close > 0 and location[close + 1 : close + 2] == ":" and "/" not in \
            location[:close]
    return bool(sep) and bool(head) and "/" not in head


def _split_host(text: str, location: str) -> tuple[str | None, str, int | None]:
    user, at, hostport = text.rpartition("@")
    if not at:
        user, hostport = "", text
    port: int | None = None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest.startswith(":") and rest[1:]:
            port = _port(rest[1:], location)
    else:
        host, colon, p = hostport.partition(":")
        if colon and p:
            port = _port(p, location)
    if not host:
        raise UsageError(f"{location}: no host name")
    if host.startswith("-") or (user and user.startswith("-")):
        raise UsageError(f"{location}: a host or user name cannot start with '-'")
    return user or None, host, port


def _port(text: str, location: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{location}: bad port {text!r}")
    return int(text)


def parse(location: str) -> RemoteUrl:
    """The parts of a remote location (``UsageError`` for a malformed one)."""
    if location.startswith("ssh://"):
        rest = location[len("ssh://"):]
        hostpart, slash, path = rest.partition("/")
        user, host, port = _split_host(hostpart, location)
        path = unquote(path, errors="surrogateescape")
        return RemoteUrl(host, "/" + path if slash else "/", user, port)
    if location.startswith("[") or "@[" in location.split(":", 1)[0]:
        close = location.index("]")
        hostpart, path = location[:close + 1], location[close + 2:]
    else:
        hostpart, _, path = location.partition(":")
    user, host, _ = _split_host(hostpart, location)
    return RemoteUrl(host, path or ".", user, None)
