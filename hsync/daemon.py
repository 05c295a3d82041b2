"""Several pairs in one process: the TOML config, one loop thread per pair, signals.

``hsync watch SRC DST`` is the same thing with one pair built from the command line.

Signals (handled in the main thread, which does nothing else): SIGTERM and SIGINT ask
every loop to finish the batch in flight and record its history, then the process
exits 0; SIGHUP re-reads the config: pairs that were removed or changed are stopped,
new or changed ones started, unchanged ones keep running. A config that does not load
on SIGHUP is reported and the running pairs are kept.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._values import evolve
from .backend import Credentials, local_path, scheme_of
from .credentials import for_side, refuse_secret_in_url
from .credentials import private as private_mode
from .errors import EXIT_OK, BackendError, HsyncError, LinkLost, UsageError
from .itemize import escape
from .live import PairWatch, StatusFile, WatchOptions
from .options import Options

if TYPE_CHECKING:
    from concurrent.futures import Executor

log = logging.getLogger("hsync.daemon")

STOP_TIMEOUT = 5.0
OPEN_RETRY = 5.0
LINK_RETRY = (1.0, 60.0)
"""The first and the longest wait before reconnecting a lost link (doubling)."""

_PAIR_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "source": str,
    "destination": str,
    "exclude": list,
    "exclude_from": list,
    "exclude_attr": list,
    "include": list,
    "filter": list,
    "delete_excluded": bool,
    "delete": bool,
    "checksum": bool,
    "max_delete": int,
    "state": str,
    "allow_empty_source": bool,
    "fsync": bool,
    "hard_links": bool,
    "schema": list,
    "sparse": bool,
    "specials": bool,
    "one_file_system": bool,
    "owner": bool,
    "group": bool,
    "xattrs": bool,
    "acls": bool,
    "numeric_ids": bool,
    "debounce_ms": (int, float),
    "max_delay_ms": (int, float),
    "settle_s": (int, float),
    "rescan_interval_s": (int, float),
    "poll_interval_s": (int, float),
    "verify_interval_s": (int, float),
    "rsh": str,
    "remote_hsync": str,
    "compress": bool,
    "source_bind_dn": str,
    "source_bind_password": str,
    "source_bind_password_file": str,
    "destination_bind_dn": str,
    "destination_bind_password": str,
    "destination_bind_password_file": str,
    "ca_file": str,
    "starttls": bool,
}
_META_KEYS = ("owner", "group", "xattrs", "acls", "numeric_ids")
"""Metadata kept (``Options``: all but numeric_ids on by default)."""
_TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "status_file": str,
    "log_format": str,
    "log_level": str,
    "defaults": dict,
    "pair": list,
}


@attrs.frozen
class PairConfig:
    name: str
    source: str
    destination: str
    options: Options
    wopts: WatchOptions
    credentials: tuple[Credentials | None, Credentials | None] = (None, None)


@attrs.frozen
class Config:
    path: str
    pairs: tuple[PairConfig, ...]
    status_file: str | None = None
    log_format: str = "text"
    log_level: str = "info"
    warnings: tuple[str, ...] = ()
    """What ``--check`` prints and the daemon logs, short of refusing (a missing source)."""


def _where(location: str) -> str:
    """A location compared with others: the real path of a local tree, else the URL."""
    from .backend import local_path

    path = local_path(location)
    return os.path.realpath(path) if path is not None else location.rstrip("/")


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_pairs(path: str, pairs: Sequence[PairConfig]) -> list[str]:
    """The rules between the pairs of a config (SPEC 8): a destination inside its own
    source (or the same tree), and two pairs writing one destination (or one inside
    the other: they would delete each other's files forever), are refused
    (``UsageError``); a missing local source is a warning (the pair waits for it)."""
    warnings: list[str] = []
    seen: list[tuple[str, PairConfig]] = []
    for p in pairs:
        src, dst = _where(p.source), _where(p.destination)
        if _within(dst, src):
            raise UsageError(f"{path}: pair {p.name}: destination {p.destination} is inside "
                             f"its source {p.source}")
        if _within(src, dst):
            raise UsageError(f"{path}: pair {p.name}: source {p.source} is inside its "
                             f"destination {p.destination}")
        for other_dst, other in seen:
            if _within(dst, other_dst) or _within(other_dst, dst):
                raise UsageError(
                    f"{path}: pairs {other.name} and {p.name} write one destination "
                    f"({other.destination}, {p.destination})"
                )
        seen.append((dst, p))
        from .backend import local_path

        if local_path(p.source) is not None and not os.path.isdir(src):
            warnings.append(f"{path}: pair {p.name}: source {p.source} does not exist "
                            "(the pair waits for it)")
    return warnings


def _check_types(where: str, table: dict[str, Any], keys: dict[str, Any]) -> None:
    for k, v in table.items():
        want = keys.get(k)
        if want is None:
            raise UsageError(f"{where}: unknown key {k!r} (known: {', '.join(sorted(keys))})")
        if isinstance(v, bool) and want is not bool and bool not in (
            want if isinstance(want, tuple) else (want,)
        ):
            raise UsageError(f"{where}: {k} must be a {_type_name(want)}, not a boolean")
        if not isinstance(v, want):
            raise UsageError(f"{where}: {k} must be a {_type_name(want)}")


def _type_name(want: type | tuple[type, ...]) -> str:
    if isinstance(want, tuple):
        return "number"
    return {str: "string", list: "list", bool: "boolean", int: "integer", dict: "table"}.get(
        want, want.__name__
    )


def pair_config(
    where: str,
    raw: dict[str, Any],
    *,
    debug: bool = False,
    base: Path | None = None,
    private: bool = False,
) -> PairConfig:
    """One pair's options from a config table (keys as in ``_PAIR_KEYS``)."""
    _check_types(where, raw, _PAIR_KEYS)
    for need in ("source", "destination"):
        if need not in raw:
            raise UsageError(f"{where}: {need} is missing")
        try:
            refuse_secret_in_url(raw[need])
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
    patterns = [str(p) for p in raw.get("exclude", [])]
    for f in raw.get("exclude_from", []):
        path = Path(f) if base is None or Path(f).is_absolute() else base / f
        try:
            patterns += path.read_text(errors="surrogateescape").splitlines()
        except OSError as e:
            raise UsageError(
                f"{where}: {path}: cannot read the exclude file: {e.strerror}"
            ) from None
    for k in ("debounce_ms", "max_delay_ms", "settle_s", "rescan_interval_s", "poll_interval_s",
              "verify_interval_s", "max_delete"):
        if k in raw and raw[k] < 0:
            raise UsageError(f"{where}: {k} must not be negative")
    options = Options(
        delete=raw.get("delete"),
        checksum=raw.get("checksum", False),
        exclude=tuple(patterns),
        exclude_attrs=tuple(str(a) for a in raw.get("exclude_attr", [])),
        include=tuple(str(p) for p in raw.get("include", [])),
        filters=tuple(str(r) for r in raw.get("filter", [])),
        delete_excluded=raw.get("delete_excluded", False),
        max_delete=raw.get("max_delete"),
        state=raw.get("state"),
        allow_empty_source=raw.get("allow_empty_source", False),
        fsync=raw.get("fsync", False),
        hard_links=raw.get("hard_links", False),
        rsh=raw.get("rsh"),
        remote_hsync=raw.get("remote_hsync"),
        compress=raw.get("compress", True),
        schema=tuple(str(p) for p in raw.get("schema", [])),
        sparse=raw.get("sparse", True),
        specials=raw.get("specials", True),
        one_file_system=raw.get("one_file_system", False),
        **{k: raw[k] for k in _META_KEYS if k in raw},
        check=debug,
    )
    from .filters import parse_rule

    for rule in options.filters:
        try:
            parse_rule(rule)
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
    wopts = WatchOptions(
        debounce=raw.get("debounce_ms", 100) / 1000,
        max_delay=raw.get("max_delay_ms", 1000) / 1000,
        settle=raw.get("settle_s", 2),
        rescan_interval=raw.get("rescan_interval_s") or None,
        poll_interval=raw.get("poll_interval_s", 10),
        verify_interval=raw.get("verify_interval_s") or None,
    )
    name = raw.get("name") or f"{raw['source']} -> {raw['destination']}"
    source, destination = (_relative_to(base, raw[k]) for k in ("source", "destination"))
    creds = (
        _credentials(where, raw, "source", base, private),
        _credentials(where, raw, "destination", base, private),
    )
    return PairConfig(name, source, destination, options, wopts, creds)


def _credentials(
    where: str, raw: dict[str, Any], side: str, base: Path | None, private: bool
) -> Credentials | None:
    """A side's bind DN and password from the config (SPEC 9: "or the config file"),
    and the pair's TLS settings (``ca_file``, ``starttls``) for a side that connects to
    a server. A password is read from ``*_bind_password_file`` (a file nobody else can
    read), or given inline only in a config file that nobody else can read."""
    dn = raw.get(f"{side}_bind_dn")
    inline = raw.get(f"{side}_bind_password")
    pw_file = raw.get(f"{side}_bind_password_file")
    if dn is None and (inline is not None or pw_file is not None):
        raise UsageError(f"{where}: {side}_bind_password without {side}_bind_dn")
    if inline is not None and pw_file is not None:
        raise UsageError(
            f"{where}: {side}_bind_password and {side}_bind_password_file are exclusive"
        )
    if inline is not None and not private:
        raise UsageError(
            f"{where}: {side}_bind_password in a config file that others can read "
            "(chmod 600 it, or use a password file)"
        )
    found = for_side(
        raw[side], bind_dn=dn, password_file=pw_file, ca_file=raw.get("ca_file"),
        starttls=raw.get("starttls", False), base=base, where=where,
    )
    if found is not None and dn is not None and found.password is None:
        # a bind DN from the config binds with the config's password, or none
        found = evolve(found, password=inline or "")
    return found


def _relative_to(base: Path | None, location: str) -> str:
    """A relative path in a config file is relative to the file, not to the cwd."""
    from .backend import scheme_of

    if base is None or scheme_of(location) != "file" or location.startswith("file:"):
        return location
    return str(base / location) if not Path(location).is_absolute() else location


def load_config(path: str, *, debug: bool = False) -> Config:
    """Read and check ``path``; every mistake is one ``UsageError`` naming it."""
    try:
        with open(path, "rb") as f:
            is_private = private_mode(os.fstat(f.fileno()).st_mode)
            doc = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read the config: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    _check_types(path, doc, _TOP_KEYS)
    defaults = doc.get("defaults", {})
    _check_types(f"{path}: [defaults]", defaults, _PAIR_KEYS)
    raw_pairs = doc.get("pair", [])
    if not raw_pairs:
        raise UsageError(f"{path}: no [[pair]] defined")
    pairs: list[PairConfig] = []
    base = Path(path).resolve().parent
    for i, raw in enumerate(raw_pairs, 1):
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: pair {i} must be a table ([[pair]])")
        where = f"{path}: pair {raw.get('name', i)!s}"
        pairs.append(
            pair_config(where, {**defaults, **raw}, debug=debug, base=base,
                        private=is_private)
        )
    names = [p.name for p in pairs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"{path}: pair names must be unique: {', '.join(sorted(dup))}")
    fmt = doc.get("log_format", "text")
    if fmt not in ("text", "json"):
        raise UsageError(f"{path}: log_format must be \"text\" or \"json\"")
    level = doc.get("log_level", "info")
    if level.upper() not in logging.getLevelNamesMapping():
        raise UsageError(f"{path}: unknown log_level {level!r}")
    warnings = check_pairs(path, pairs)
    return Config(path, tuple(pairs), doc.get("status_file"), fmt, level, tuple(warnings))


class _Running:
    """One pair's loop in its own thread. ``once``: an error that ends the loop ends
    the pair (``hsync watch``); otherwise it is retried (a daemon keeps trying)."""

    def __init__(
        self, config: PairConfig, status: StatusFile, *, once: bool = False,
        early: Executor | None = None,
    ) -> None:
        self.config = config
        self.once = once
        self.watch = PairWatch(
            config.source, config.destination, config.options, config.wopts,
            name=config.name, status=status, credentials=config.credentials, early=early,
        )
        self.error: HsyncError | None = None
        self._remote = "ssh" in (scheme_of(config.source), scheme_of(config.destination))
        self.thread = threading.Thread(target=self._run, name=f"hsync-pair-{config.name}")

    def _run(self) -> None:
        w = self.watch
        delay = LINK_RETRY[0]
        while not w.stopping:
            up_at = time.monotonic()
            try:
                w.run()
                return
            except BackendError as e:
                if not isinstance(e, LinkLost) and w.status.link != "down":
                    if w.status.link is None and self._remote:
                        # never connected yet (ssh refused, no hsync there): say so
                        w.status.link, w.status.link_since = "down", time.time()
                    self._failed(e)
                    if self.once:
                        return
                    continue
                # a remote endpoint's link broke (or cannot be made again yet):
                # reconnect, sooner after a long life; the next session resumes from
                # the history (a stat-only quick pass, no content comparison)
                self.error = None
                if time.monotonic() - up_at > LINK_RETRY[-1]:
                    delay = LINK_RETRY[0]
                st = w.status
                if st.link != "down":
                    st.link, st.link_since = "down", time.time()
                st.state = "reconnecting"
                st.last_error = str(e)
                w.status_file.write()
                w.log.warning("%s; reconnecting in %g s", e, delay)
                w.pause(delay)
                delay = min(delay * 2, LINK_RETRY[-1])
            except HsyncError as e:
                self._failed(e)
                if self.once:
                    return
            except Exception:
                w.log.exception("the loop failed")
                w.status.state = "error"
                w.status_file.write()
                if self.once:
                    raise
                w.pause(OPEN_RETRY)

    def _failed(self, e: HsyncError) -> None:
        w = self.watch
        self.error = e
        w.status.state = "error"
        w.status.last_error = str(e)
        w.status_file.write()
        w.log.error("%s", e)
        if not self.once:
            w.pause(OPEN_RETRY)  # a daemon keeps trying (a mount not up yet)


def _early_workers(pairs: tuple[PairConfig, ...]) -> Executor | None:
    """Copy workers for the first pass of the one pair started while no other thread
    runs (``hsync watch``, a daemon of one pair, at its start), when both its ends are
    local trees and the destination is missing or an empty directory: forked now
    (``copy.forked_early``, 70-90 ms on a loaded machine), as the pair's thread and its
    observer's thread cannot fork them safely later. The pair shuts them down after its
    first round, used or not (the destination decides: ``populate.can_populate``)."""
    if len(pairs) != 1 or threading.active_count() != 1:
        return None
    p = pairs[0]
    dst = local_path(p.destination)
    if dst is None or local_path(p.source) is None:
        return None
    try:
        with os.scandir(dst) as names:
            if next(names, None) is not None:
                return None  # no initial copy to come (or one of what a restart left)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    from .backends.fs.copy import forked_early

    return forked_early()


class Supervisor:
    """Runs the pairs of a config, each in its own thread."""

    def __init__(
        self, pairs: tuple[PairConfig, ...], status_file: str | None, *, once: bool = False
    ) -> None:
        self.status = StatusFile(status_file)
        self.running: dict[str, _Running] = {}
        self.once = once  # `hsync watch`: an error opening the pair ends the process
        self.start(pairs)

    def start(self, pairs: tuple[PairConfig, ...]) -> None:
        early = _early_workers(pairs)
        for p in pairs:
            r = _Running(p, self.status, once=self.once, early=early)
            self.running[p.name] = r
            r.thread.start()
            r.watch.log.info("watching %s -> %s", p.source, p.destination)

    def stop(self, names: list[str] | None = None, timeout: float = STOP_TIMEOUT) -> None:
        which = [self.running[n] for n in (names if names is not None else list(self.running))]
        for r in which:
            r.watch.stop()
        deadline = time.monotonic() + timeout
        for r in which:
            r.thread.join(max(0.0, deadline - time.monotonic()))
            if r.thread.is_alive():
                r.watch.log.warning("still finishing after %g s", timeout)
        for r in which:
            self.running.pop(r.config.name, None)
            if r.watch.status in self.status.pairs:
                self.status.pairs.remove(r.watch.status)

    def reload(self, pairs: tuple[PairConfig, ...]) -> None:
        new = {p.name: p for p in pairs}
        gone = [n for n, r in self.running.items() if new.get(n) != r.config]
        if gone:
            log.info("reload: stopping %s", ", ".join(gone))
            self.stop(gone)
        self.start(tuple(p for n, p in new.items() if n not in self.running))
        self.status.write()

    def failed(self) -> HsyncError | None:
        """The error that ended a pair that runs ``once``, when every pair has ended."""
        if all(not r.thread.is_alive() for r in self.running.values()):
            for r in self.running.values():
                if r.error is not None:
                    return r.error
            return HsyncError("every pair stopped") if self.running else None
        return None


def serve(supervisor: Supervisor, config_path: str | None = None, *, debug: bool = False) -> int:
    """The main thread: wait for signals, reload on SIGHUP, stop on SIGTERM/SIGINT."""
    stop = threading.Event()
    hup = threading.Event()

    def on_stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    try:
        while not stop.is_set():
            stop.wait(0.1)
            if hup.is_set():
                hup.clear()
                if config_path is None:
                    log.info("SIGHUP: nothing to reload (no config file)")
                    continue
                try:
                    cfg = load_config(config_path, debug=debug)
                except HsyncError as e:
                    log.error("reload refused, the running pairs are kept: %s", e)
                    continue
                log.info("SIGHUP: reloading %s", config_path)
                supervisor.reload(cfg.pairs)
            err = supervisor.failed()
            if err is not None:
                raise err
    finally:
        supervisor.stop()
    return EXIT_OK


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pair (a pair's lines), message;
    an applied op's line also has op, kind, path (and to)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        pair = record.__dict__.get("pair")
        if pair is not None:
            doc["pair"] = pair
        item = record.__dict__.get("item")
        if isinstance(item, dict):
            doc.update(item)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time hsync LEVEL pair: message``, the message escaped (a name with a newline
    stays on its line, as in every human-readable output)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s hsync %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = escape(record.message)
        pair = record.__dict__.get("pair")
        if pair is not None:
            text = f"{escape(str(pair))}: {text}"
        return super().formatMessage(logging.makeLogRecord({**record.__dict__, "message": text}))


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger("hsync")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
