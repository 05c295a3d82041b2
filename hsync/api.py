"""The Python API: the same runs as the command line, as functions.

``hsync/__init__.py`` re-exports these; no submodule of the package is named like one of
them, so ``hsync.sync``, ``hsync.diff``, ``hsync.watch`` and ``hsync.verify`` stay these
functions whatever else is imported.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Plan
    from .options import Report
    from .verifier import VerifyReport

_WATCH_KEYS = frozenset({"debounce", "max_delay", "rescan_interval", "poll_interval",
                         "batch_ops", "verify_interval", "max_restarts"})


_CONNECT_KEYS = ("src_bind_dn", "src_password_file", "dst_bind_dn", "dst_password_file",
                 "ca_file", "starttls")
"""The CLI's connection options, by the same names (``hsync.credentials.for_side``)."""


def _options(options: dict[str, Any]) -> Any:
    from .options import Options

    return Options(**options)


def _credentials(src: str, dst: str, options: dict[str, Any]) -> Any:
    """Both sides' ``Credentials`` from (and taken out of) ``options``."""
    from .credentials import for_side, refuse_secret_in_url

    given = {k: options.pop(k) for k in _CONNECT_KEYS if k in options}
    refuse_secret_in_url(src)
    refuse_secret_in_url(dst)
    ca_file, starttls = given.get("ca_file"), bool(given.get("starttls"))
    return (
        for_side(src, bind_dn=given.get("src_bind_dn"), ca_file=ca_file, starttls=starttls,
                 password_file=given.get("src_password_file")),
        for_side(dst, bind_dn=given.get("dst_bind_dn"), ca_file=ca_file, starttls=starttls,
                 password_file=given.get("dst_password_file")),
    )


def sync(src: str, dst: str, **options: Any) -> Report:
    """Make ``dst`` equal to ``src`` once; options as the CLI's (``dry_run``, ``delete``,
    ``checksum``, ``exclude``, ``exclude_attrs``, ``max_delete``, ``state``, ...; for
    LDAP ``src_bind_dn``, ``src_password_file``, ``dst_bind_dn``, ``dst_password_file``,
    ``ca_file``, ``starttls``)."""
    from .oneshot import sync_once

    creds = _credentials(src, dst, options)
    return sync_once(src, dst, _options(options), credentials=creds)


def diff(src: str, dst: str, **options: Any) -> Plan:
    """The plan that would make ``dst`` equal to ``src`` (nothing is changed)."""
    from .oneshot import compare

    creds = _credentials(src, dst, options)
    return compare(src, dst, _options({"dry_run": True, **options}), credentials=creds).plan


def watch(src: str, dst: str, *, stop: threading.Event | None = None, **options: Any) -> None:
    """Keep ``dst`` equal to ``src`` until ``stop`` (a ``threading.Event``) is set.

    Watch options (``debounce``, ``max_delay`` in seconds, ``rescan_interval``,
    ``poll_interval``, ``verify_interval``, ``status_file``) beside the sync options.
    Returns when stopped; raises ``HsyncError`` when the pair cannot be opened. Every
    thread it started has ended when it returns, so it can be called again."""
    from .live import PairWatch, StatusFile, WatchOptions

    wopts = WatchOptions(**{k: options.pop(k) for k in list(options) if k in _WATCH_KEYS})
    status = StatusFile(options.pop("status_file", None))
    creds = _credentials(src, dst, options)
    pw = PairWatch(src, dst, _options(options), wopts, status=status, credentials=creds)
    stop = stop if stop is not None else threading.Event()
    done = threading.Event()

    def relay() -> None:
        while not done.is_set():
            if stop.wait(0.05):
                pw.stop()
                return

    relay_thread = threading.Thread(target=relay, name="hsync-watch-stop", daemon=True)
    relay_thread.start()
    try:
        pw.run()
    finally:
        done.set()
        relay_thread.join()


def verify(src: str, dst: str, **options: Any) -> VerifyReport:
    """Compare ``src`` and ``dst`` content and all (``hsync.verifier.VerifyReport``);
    options: ``exclude``, ``settle``, ``repair``, ``state``, ``pending``, and what is
    kept: ``owner``, ``group``, ``xattrs``, ``acls``, ``numeric_ids``."""
    from .verifier import verify as run

    return run(src, dst, **options)
