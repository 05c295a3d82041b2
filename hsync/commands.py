"""The hot commands' work, without the command-line framework: ``sync``, ``diff``,
``verify`` and ``agent``, and what every command shares (one line on stderr per error,
the exit codes of SPEC section 9, the end of the process).

``hsync.cli`` declares the commands (typer: ``--help``, the other commands, every
error message of the parser) and calls these functions; ``hsync.fastcli`` calls them too,
without importing typer, when it understands the whole command line. Each takes the
parameters the typer command was declared with, by name, and returns the exit code.
Nothing here imports typer or click (``tests/test_startup.py`` checks a sync).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable

from .errors import (
    EXIT_DIFFER,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    HsyncError,
    UsageError,
    exit_code,
)
from .model import key_str

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any, NoReturn
else:  # signal's C half, the same functions and constants: the Python module
    # builds its enums at import (enum with it, 2-4 ms of a small sync's start-up)
    import _signal

_state = {"debug": False}
"""``hsync --debug``: tracebacks, and every plan checked."""


def _json() -> Any:
    import json  # only for --json (and status files): 5-10 ms of start-up otherwise

    return json


def describe(op: Any) -> str:
    from .itemize import describe  # only where ops are printed: not by a no-op

    return describe(op)


def escape(name: str) -> str:
    from .itemize import escape

    return escape(name)


def show_key(key: Any, kind: str = "") -> str:
    from .itemize import show_key

    return show_key(key, kind)


def _err(message: str) -> None:
    """One line on stderr; names in it are escaped here (a name cannot forge a line)."""
    sys.stderr.write(f"hsync: {escape(message)}\n")


def guarded(fn: Callable[..., int | None], /, *args: Any, **kwargs: Any) -> int:
    """``fn``'s exit code (None is 0); an error is one clear line on stderr and the
    SPEC's exit code, a traceback only with --debug."""
    try:
        return fn(*args, **kwargs) or EXIT_OK
    except BrokenPipeError:
        _closed_stdout()  # an exit 1 would say "the trees differ" to a diff
    except HsyncError as e:
        if _state["debug"]:
            raise
        _err(f"error: {e}")
        return exit_code(e)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:
        if _state["debug"]:
            raise
        where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
        _err(f"error: {type(e).__name__}: {e}{where} (--debug shows the traceback)")
        return EXIT_USAGE


def run(command: str, params: dict[str, Any]) -> int:
    """Run one of the hot commands with its parsed parameters; its exit code."""
    if command == "agent":  # the far side's protocol reports its own errors
        return agent(**params)
    return guarded(_COMMANDS[command], **params)


def start_process() -> None:
    """What every command line run sets first (``hsync.cli.main``, ``hsync.fastcli``)."""
    # A scan allocates a few objects per node and frees almost none: let the cyclic
    # collector run far less often.
    gc.set_threshold(100_000, 50, 100)
    # SIGTERM stops a one-shot run as Ctrl-C does (a batch in flight on a far agent is
    # cancelled there, at an op's boundary); a watch or a daemon sets its own handlers
    _signal.signal(_signal.SIGTERM, _signal.default_int_handler)
    # Names are bytes on POSIX: one that is not UTF-8 is printed back as those bytes
    # whatever the locale, never an encoding error.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


def end_process(run: Callable[[], int]) -> NoReturn:
    """Run ``run`` and end the process with its exit code, at once: everything is closed
    and flushed by then (the history is committed and closed when a run ends), so the
    heap of snapshot objects is not torn down one by one. A closed stdout ends quietly."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        _closed_stdout()
    sys.stderr.flush()
    os._exit(code)


def _options(**kw: Any) -> Any:
    from .options import Options

    patterns = list(kw.pop("exclude", None) or [])
    for path in kw.pop("exclude_from", None) or []:
        try:
            with open(path, errors="surrogateescape") as f:  # as Path.read_text did
                patterns += f.read().splitlines()
        except OSError as e:
            raise HsyncError(f"{path}: cannot read the exclude file: {e.strerror}") from None
    attrs = tuple(kw.pop("exclude_attr", None) or ())
    kw["schema"] = tuple(kw.get("schema") or ())
    return Options(exclude=tuple(patterns), exclude_attrs=attrs, check=_state["debug"], **kw)


def _filtered(
    opts: Any, include: list[str] | None, rules: list[str] | None, delete_excluded: bool,
    **more: Any,
) -> Any:
    """``opts`` with --include, --filter and --delete-excluded (and ``more``)."""
    from ._values import evolve
    from .filters import parse_rule

    for rule in rules or ():
        parse_rule(rule)  # a malformed rule is a usage error before anything is opened
    return evolve(
        opts, include=tuple(include or ()), filters=tuple(rules or ()),
        delete_excluded=delete_excluded, **more,
    )


def _credentials(
    src: str, dst: str, src_bind_dn: str | None, src_password_file: str | None,
    dst_bind_dn: str | None, dst_password_file: str | None, ca_file: str | None,
    starttls: bool,
) -> Any:
    """Both sides' ``Credentials`` (None where nothing was given); URLs that carry a
    password are refused first, before anything names them."""
    from .credentials import for_side, refuse_secret_in_url

    refuse_secret_in_url(src)
    refuse_secret_in_url(dst)
    return (
        for_side(src, bind_dn=src_bind_dn, password_file=src_password_file, ca_file=ca_file,
                 starttls=starttls),
        for_side(dst, bind_dn=dst_bind_dn, password_file=dst_password_file, ca_file=ca_file,
                 starttls=starttls),
    )


def _meta(owner: bool, group: bool, xattrs: bool, acls: bool, numeric_ids: bool) -> Any:
    return {"owner": owner, "group": group, "xattrs": xattrs, "acls": acls,
            "numeric_ids": numeric_ids}


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def sync(
    *, src: str, dst: str, dry_run: bool, delete: bool | None, checksum: bool,
    exclude: list[str] | None, exclude_from: list[str] | None, include: list[str] | None,
    filter_rule: list[str] | None, delete_excluded: bool, copy_unstable: bool, sparse: bool,
    specials: bool, one_file_system: bool, exclude_attr: list[str] | None,
    schema: list[str] | None, max_delete: int | None, json_out: bool, state: str | None,
    rsh: str | None, remote_hsync: str | None, compress: bool, window: int | None,
    batch_ops: int | None, wait_lock: bool,
    progress: bool | None, allow_empty_source: bool, fsync: bool, hard_links: bool,
    itemize: bool, verbose: bool, log_file: str | None, stats: bool,
    src_bind_dn: str | None, src_password_file: str | None, dst_bind_dn: str | None,
    dst_password_file: str | None, ca_file: str | None, starttls: bool, owner: bool,
    group: bool, xattrs: bool, acls: bool, numeric_ids: bool,
) -> int:
    """Make DST equal to SRC (SRC's contents go into DST, like rsync SRC/ DST/)."""
    from .oneshot import sync_once

    _ends_with_the_process()

    creds = _credentials(src, dst, src_bind_dn, src_password_file, dst_bind_dn,
                         dst_password_file, ca_file, starttls)

    opts = _options(
        rsh=rsh, remote_hsync=remote_hsync, compress=compress, window=window,
        batch_ops=batch_ops, dry_run=dry_run, delete=delete, checksum=checksum, exclude=exclude,
        exclude_from=exclude_from, exclude_attr=exclude_attr, max_delete=max_delete,
        state=state, allow_empty_source=allow_empty_source, fsync=fsync,
        hard_links=hard_links, wait_lock=wait_lock, schema=schema,
        **_meta(owner, group, xattrs, acls, numeric_ids),
    )
    opts = _filtered(
        opts, include, filter_rule, delete_excluded, copy_unstable=copy_unstable,
        sparse=sparse, specials=specials, one_file_system=one_file_system,
    )
    show = sys.stderr.isatty() and not json_out if progress is None else progress
    bar = _Progress() if show and not dry_run else None
    log = None
    if log_file is not None:
        from .itemize import LogFile

        try:
            log = LogFile(log_file)
        except OSError as e:
            raise HsyncError(f"{log_file}: cannot open the log file: {e.strerror}") from None
    items = _Items(print_lines=(itemize or verbose) and not json_out, log=log)
    try:
        if log is not None:
            log.write(f"sync {escape(src)} -> {escape(dst)}{' (dry run)' if dry_run else ''}")
        report = sync_once(
            src, dst, opts,
            on_planned=bar.start if bar else None,
            on_done=_both(bar.advance if bar else None, items.done if items.wanted else None),
            credentials=creds,
        )
        if log is not None:
            for p in report.problems:
                log.write(escape(f"error: {_problem(p, src, dst)}"))
            log.write(f"done: {_summary(report, dry_run)}; exit {report.exit_code}")
    finally:
        if bar:
            bar.stop()
        if log is not None:
            log.close()
    if json_out:
        out = report.to_json()
        if dry_run and report.plan is not None:
            out["plan"] = report.plan.to_json()
        print(_json().dumps(out, indent=2))
    else:
        if dry_run and report.plan is not None:
            for op in report.plan:
                print(describe(op))
        print(_summary(report, dry_run))
        if stats:
            print(_stats(report))
    for line in report.skipped_lines():
        _err(f"warning: {line}")
    for w in dict.fromkeys(report.warnings):  # a line said by several batches: once
        if not any(p.message == w for p in report.problems):
            _err(f"warning: {w}")
    for p in report.problems:
        _err(_problem(p, src, dst))
    for line in report.notices:
        _err(f"warning: {line}")
    if report.withheld_line:
        _err(f"warning: {report.withheld_line}")
    return report.exit_code




def _summary(report: Any, dry_run: bool) -> str:
    c = report.counts if not dry_run else report.planned
    verb = " would be" if dry_run else ""
    return (
        f"{c['create']} created, {c['update']} updated, {c['move']} moved, "
        f"{c['delete']} deleted{verb}; "
        f"{_human_bytes(report.bytes_copied)} copied in {report.elapsed:.2f} s"
    )


def _problem(p: Any, src: str, dst: str) -> str:
    """A problem's line, not yet escaped: a node's key, or the tree it is about (the
    destination for the deletions a run held back, else the source)."""
    return f"{key_str(p.key) or (dst if p.op == 'delete' else src)}: {p.message}"


def _stats(report: Any) -> str:
    """The ``--stats`` block (rsync's): what was examined, what was done, failures."""
    c = report.counts
    scanned, examined = report.scanned, report.bytes_examined
    rows = [
        ("Nodes examined", f"{scanned.get('source', 0):,} source, "
                           f"{scanned.get('destination', 0):,} destination"),
        ("Bytes examined", f"{examined.get('source', 0):,} source, "
                           f"{examined.get('destination', 0):,} destination"),
        ("Nodes compared", f"{report.compared.get('source', 0):,} source, "
                           f"{report.compared.get('destination', 0):,} destination"),
        ("Created", f"{c['create']:,}"),
        ("Updated", f"{c['update']:,}"),
        ("Moved", f"{c['move']:,}"),
        ("Deleted", f"{c['delete']:,}"),
        ("Bytes copied", f"{report.bytes_copied:,}"),
    ]
    if report.wire is not None:  # a remote endpoint: what crossed its link (rsync's)
        rows.append(("Bytes on wire", f"{report.wire.get('sent', 0):,} sent, "
                                      f"{report.wire.get('received', 0):,} received"))
    if report.round_trips is not None:
        rows.append(("Round trips", f"{report.round_trips:,} waited on"))
    rows += [
        ("Failures", f"{len(report.problems):,}"),
        ("Elapsed", f"{report.elapsed:.2f} s"),
    ]
    return "\n".join(f"{name + ':':<16}{value}" for name, value in rows)


def _ends_with_the_process() -> None:
    """A one-shot command (its process ends in ``end_process``'s ``os._exit`` once it
    returns) leaves its history and journal connections to that end: no close, so no
    checkpoint and no ctypes call to prevent one (``history.LEFT_TO_THE_EXIT``)."""
    from . import history

    history.LEFT_TO_THE_EXIT = True


def _both(*callbacks: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    """One ``on_done`` that calls each given callback; None when none is given."""
    given = [cb for cb in callbacks if cb is not None]
    if not given:
        return None

    def call(op: Any) -> None:
        for cb in given:
            cb(op)

    return call


class _Items:
    """``-i`` and ``--log-file``: one line per applied op, as each lands (copy threads
    call ``done`` too: one lock). A closed stdout stops the lines, not the sync: the
    run finishes its batch and its history, and ends as ``main`` says."""

    def __init__(self, *, print_lines: bool, log: Any) -> None:
        self.print_lines = print_lines
        self.log = log
        if print_lines:  # a run that prints no line does not import threading
            import threading

            self.lock = threading.Lock()

    @property
    def wanted(self) -> bool:
        return self.print_lines or self.log is not None

    def done(self, op: Any) -> None:
        line = describe(op)
        if self.log is not None:
            self.log.write(line)
        if self.print_lines:
            with self.lock:
                try:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
                except BrokenPipeError:
                    self.print_lines = False



def diff(
    *, src: str, dst: str, json_out: bool, tree: bool, checksum: bool,
    exclude: list[str] | None, exclude_from: list[str] | None, include: list[str] | None,
    filter_rule: list[str] | None, delete_excluded: bool, exclude_attr: list[str] | None,
    schema: list[str] | None, no_delete: bool, hard_links: bool, specials: bool,
    one_file_system: bool, state: str | None, rsh: str | None, remote_hsync: str | None,
    compress: bool, src_bind_dn: str | None, src_password_file: str | None,
    dst_bind_dn: str | None, dst_password_file: str | None, ca_file: str | None,
    starttls: bool, owner: bool, group: bool, xattrs: bool, acls: bool, numeric_ids: bool,
) -> int:
    """Print the plan that would make DST equal to SRC. Exit 0 in sync, 1 differ."""
    from .oneshot import compare

    _ends_with_the_process()

    creds = _credentials(src, dst, src_bind_dn, src_password_file, dst_bind_dn,
                         dst_password_file, ca_file, starttls)

    if json_out and tree:
        # typer.BadParameter's words, as before this left the typer layer
        raise UsageError("Invalid value: --json and --tree are exclusive")
    opts = _options(
        rsh=rsh, remote_hsync=remote_hsync, compress=compress,
        checksum=checksum, exclude=exclude, exclude_from=exclude_from,
        exclude_attr=exclude_attr, state=state, delete=not no_delete, dry_run=True,
        allow_empty_source=True, schema=schema, hard_links=hard_links,
        **_meta(owner, group, xattrs, acls, numeric_ids),
    )
    opts = _filtered(opts, include, filter_rule, delete_excluded, specials=specials,
                     one_file_system=one_file_system)
    cmp = compare(src, dst, opts, credentials=creds)
    the_plan = cmp.plan
    if json_out:
        print(_json().dumps(the_plan.to_json(), indent=1))
    elif tree:
        print(render_tree(the_plan))
    else:
        for op in the_plan:
            print(describe(op))
        if not the_plan:
            print("in sync")
    unknown = [(src, k, why) for k, why in cmp.src.incomplete.items()]
    unknown += [(dst, k, why) for k, why in cmp.dst.incomplete.items()]
    for root, key, why in unknown:
        _err(f"{os.path.join(root, *key)}: not compared: {why}")
    # a part that could not be read cannot be called in sync
    return EXIT_USAGE if unknown else EXIT_DIFFER if the_plan else EXIT_OK





def verify(
    *, src: str, dst: str, json_out: bool, repair: bool, settle: float,
    exclude: list[str] | None, exclude_from: list[str] | None, state: str | None,
    rsh: str | None, remote_hsync: str | None, compress: bool, owner: bool, group: bool,
    xattrs: bool, acls: bool, numeric_ids: bool,
) -> int:
    """Compare SRC and DST content and all (xxhash). Exit 0 consistent, 1 differences."""
    from .verifier import verify as run_verify

    opts = _options(exclude=exclude, exclude_from=exclude_from)
    # how the far tree is reached goes in the options: the session reaches it by them
    report = run_verify(
        src, dst, exclude=opts.exclude, settle=settle, repair=repair, state=state,
        rsh=rsh, remote_hsync=remote_hsync, compress=compress,
        **_meta(owner, group, xattrs, acls, numeric_ids),
    )
    if json_out:
        print(_json().dumps(report.to_json(), indent=2))
    else:
        for d in report.differences:
            print(f"{d.what:<9}{show_key(d.key)}  ({escape(d.detail)})")
        for key in report.pending:
            print(f"{'pending':<9}{show_key(key)}  (the source changed during verify)")
        state_line = "consistent" if not report.differences else (
            f"{len(report.differences)} difference(s)"
        )
        print(
            f"{state_line}; {report.files} files, {_human_bytes(report.bytes_hashed)} "
            f"hashed in {report.elapsed:.2f} s"
        )
        if report.repair is not None:
            c = report.repair.counts
            print(
                f"repair: {c['create']} created, {c['update']} updated, {c['move']} moved, "
                f"{c['delete']} deleted"
            )
    for key, why in report.unreadable:
        _err(f"{key_str(key) or '.'}: not verified: {why}")
    if report.repair is not None:
        for p in report.repair.problems:
            _err(_problem(p, src, dst))
    return report.exit_code



def agent(*, restrict: str | None) -> int:
    """The far side of a remote tree: started by hsync over ssh, speaks on stdin/stdout."""
    from .remote.agent import run_agent

    return run_agent(restrict)


_COMMANDS: dict[str, Callable[..., int]] = {"sync": sync, "diff": diff, "verify": verify}


def render_tree(the_plan: Any) -> str:
    """The plan drawn as a tree of the paths it touches (anytree)."""
    from anytree import Node, RenderTree

    root = Node(".", label=".")
    index: dict[tuple[str, ...], Node] = {(): root}

    def at(key: tuple[str, ...]) -> Node:
        node = index.get(key)
        if node is None:
            node = Node(key[-1], parent=at(key[:-1]), label=escape(key[-1]))
            index[key] = node
        return node

    for i, op in enumerate(the_plan, 1):
        node = at(op.key)
        what = f"{op.op} {op.kind}"
        if op.to is not None:
            what += f" -> {show_key(op.to, op.kind)}"
        node.label += f"  [{i}: {what}]"
    return "\n".join(f"{pre}{node.label}" for pre, _, node in RenderTree(root))


class _Progress:
    """A rich progress bar on stderr. When the plan has content to copy it counts bytes
    (with the throughput, and the name of a big file while it is copied); otherwise it
    counts ops, for plans long enough to want a bar."""

    BIG = 8 << 20
    """A file this large is named on the bar while it is copied."""

    def __init__(self) -> None:
        import threading

        self.bar: Any = None
        self.task: Any = None
        self.by_bytes = False
        self.lock = threading.Lock()
        self.pending: list[Any] = []  # the big files not done yet, in plan order
        self.done_keys: set[tuple[str, ...]] = set()

    @staticmethod
    def _copies(op: Any) -> int:
        """The bytes ``op`` copies (a create of a file, an update of its content)."""
        if op.node is None or op.kind != "file":
            return 0
        return op.node.size if op.op == "create" or (op.op == "update" and op.content) else 0

    def start(self, the_plan: Any) -> None:
        total = sum(self._copies(op) for op in the_plan)
        if not total and len(the_plan) < 200:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.by_bytes = total > 0
        columns: list[Any] = ["{task.description}", BarColumn()]
        if self.by_bytes:
            columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
            self.pending = [op for op in the_plan if self._copies(op) >= self.BIG]
        else:
            columns.append(MofNCompleteColumn())
        columns.append(TimeRemainingColumn())
        self.bar = Progress(
            *columns, console=Console(stderr=True), transient=True,
            redirect_stdout=sys.stdout.isatty(),
        )
        self.task = self.bar.add_task(
            "syncing", total=total if self.by_bytes else len(the_plan)
        )
        self._describe_next()
        self.bar.start()

    def advance(self, op: Any) -> None:
        if self.bar is None:
            return
        with self.lock:
            if not self.by_bytes:
                self.bar.advance(self.task)
                return
            self.bar.advance(self.task, self._copies(op))
            if self._copies(op) >= self.BIG:
                self.done_keys.add(op.key)
                self._describe_next()

    def _describe_next(self) -> None:
        """Name the first big file not copied yet: the one in flight (copies run in
        plan order; the small ones around it pass too fast to read)."""
        while self.pending and self.pending[0].key in self.done_keys:
            self.pending.pop(0)
        name = show_key(self.pending[0].key)[-40:] if self.pending else ""
        self.bar.update(self.task, description=f"syncing {name}" if name else "syncing")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _closed_stdout() -> NoReturn:
    """The reader of stdout went away (``hsync diff | head``): end as git or rsync do,
    quietly, by the SIGPIPE a write would have raised in a C program (the shell sees
    128 + 13); nothing more is written to stdout or stderr."""
    import signal

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)  # not reached
