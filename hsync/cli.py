"""The command line (typer). It only parses and prints; the work is in the pipeline
(``hsync.oneshot`` for ``sync`` and ``diff``, ``hsync.live`` for ``watch``).

Exit codes (SPEC section 9): 0 success / in sync; 1 the trees differ; 2 bad usage or
bad input; 3 partial: some nodes failed, the rest was synced.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from .errors import (
    EXIT_DIFFER,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    HsyncError,
    exit_code,
)
from .itemize import describe, escape, show_key
from .model import key_str

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Keep a destination tree equal to a source tree, in an order that keeps the "
    "hierarchy: parents before children, children leave before parents, moves as renames.",
)

_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


def _err(message: str) -> None:
    """One line on stderr; names in it are escaped here (a name cannot forge a line)."""
    sys.stderr.write(f"hsync: {escape(message)}\n")


def _guard(fn: F) -> F:
    """One clear line on stderr and the SPEC's exit code; a traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except BrokenPipeError:
            _closed_stdout()  # typer would exit 1: "the trees differ" to a diff
        except ClickException as e:
            # a usage mistake found by the command itself (typer.BadParameter): one line
            _err(f"error: {e.format_message()}")
            raise typer.Exit(EXIT_USAGE) from None
        except HsyncError as e:
            if _state["debug"]:
                raise
            _err(f"error: {e}")
            raise typer.Exit(exit_code(e)) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:
            if _state["debug"]:
                raise
            where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
            _err(f"error: {type(e).__name__}: {e}{where} (--debug shows the traceback)")
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"hsync {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and check every plan."),
    _show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _state["debug"] = debug


def _options(**kw: Any) -> Any:
    from .options import Options

    patterns = list(kw.pop("exclude", None) or [])
    for path in kw.pop("exclude_from", None) or []:
        try:
            patterns += Path(path).read_text(errors="surrogateescape").splitlines()
        except OSError as e:
            raise HsyncError(f"{path}: cannot read the exclude file: {e.strerror}") from None
    attrs = tuple(kw.pop("exclude_attr", None) or ())
    kw["schema"] = tuple(kw.get("schema") or ())
    return Options(exclude=tuple(patterns), exclude_attrs=attrs, check=_state["debug"], **kw)


def _filtered(
    opts: Any, include: list[str], rules: list[str], delete_excluded: bool, **more: Any
) -> Any:
    """``opts`` with --include, --filter and --delete-excluded (and ``more``)."""
    import attrs

    from .filters import parse_rule

    for rule in rules or ():
        parse_rule(rule)  # a malformed rule is a usage error before anything is opened
    return attrs.evolve(
        opts, include=tuple(include or ()), filters=tuple(rules or ()),
        delete_excluded=delete_excluded, **more,
    )


IncludeOpt = typer.Option(
    None, "--include", metavar="PATTERN",
    help="Keep what PATTERN matches whatever --exclude says (rsync's '+ PATTERN'; "
    "tried before --exclude). Repeatable.",
)
FilterOpt = typer.Option(
    None, "--filter", metavar="RULE",
    help="rsync filter rule, '+ PATTERN' or '- PATTERN'; the first rule that matches "
    "decides (after --include, before --exclude). Repeatable.",
)
DeleteExcludedOpt = typer.Option(
    False, "--delete-excluded", help="Delete excluded nodes on the destination (rsync)."
)
CopyUnstableOpt = typer.Option(
    False, "--copy-unstable",
    help="A file still changing after a few tries is copied as read, with a warning "
    "(default: reported, exit 3).",
)
SparseOpt = typer.Option(
    True, "--sparse/--no-sparse", "-S",
    help="Holes of sparse files stay holes (rsync -S; default on).",
)
SpecialsOpt = typer.Option(
    True, "--specials/--no-specials", "-D",
    help="Sync FIFOs, and device nodes when root (rsync -D; default on).",
)
OneFsOpt = typer.Option(
    False, "--one-file-system", "-x",
    help="Do not cross mount points: a mount point is synced as an empty directory "
    "(rsync -x).",
)


ExcludeOpt = typer.Option(
    None,
    "--exclude",
    metavar="PATTERN",
    help="Gitignore-style pattern; excluded nodes are neither copied nor deleted. Repeatable.",
)
ExcludeFromOpt = typer.Option(
    None, "--exclude-from", metavar="FILE", help="File of exclude patterns."
)
ExcludeAttrOpt = typer.Option(
    None,
    "--exclude-attr",
    metavar="NAME",
    help="LDAP attribute left out of the comparison (never read, written or deleted). "
    "Repeatable.",
)
RshOpt = typer.Option(
    None, "--rsh", "-e", metavar="CMD",
    help="The ssh command for remote trees (host:path, ssh://host/path), as rsync's -e; "
    "default $HSYNC_RSH, else ssh.",
)
RemoteHsyncOpt = typer.Option(
    None, "--remote-hsync", metavar="PATH",
    help="hsync on the remote host (rsync's --rsync-path); default: hsync on its PATH.",
)
CompressOpt = typer.Option(
    True, "--compress/--no-compress", "-z",
    help="Compress data on the link to a remote tree (zstd; on by default).",
)
WindowOpt = typer.Option(
    None, "--window", min=1, metavar="N",
    help="Batches a push to a remote tree keeps in flight, unacknowledged (default 4).",
)
BatchOpsOpt = typer.Option(
    None, "--batch-ops", min=1, metavar="N",
    help="Ops one batch to a remote tree holds at most (default 2000).",
)
SchemaOpt = typer.Option(
    None,
    "--schema",
    metavar="FILE",
    help="LDAP schema file (OpenLDAP .schema or LDIF) by which an ldif: endpoint compares "
    "and rebases values when its peer is no server (with a server, the server's schema "
    "is used). Repeatable.",
)
StateOpt = typer.Option(
    None,
    "--state",
    metavar="PATH",
    help="History file (SQLite). Default: $XDG_STATE_HOME/hsync/history.sqlite",
)


SrcBindDnOpt = typer.Option(
    None, "--src-bind-dn", metavar="DN",
    help="LDAP: the source's bind DN (default: HSYNC_SRC_BIND_DN, else HSYNC_BIND_DN).",
)
DstBindDnOpt = typer.Option(
    None, "--dst-bind-dn", metavar="DN",
    help="LDAP: the destination's bind DN (default: HSYNC_DST_BIND_DN, else HSYNC_BIND_DN).",
)
SrcPasswordFileOpt = typer.Option(
    None, "--src-password-file", metavar="FILE",
    help="LDAP: the source's bind password, read from FILE (mode 0600; its trailing "
    "newline is not part of it).",
)
DstPasswordFileOpt = typer.Option(
    None, "--dst-password-file", metavar="FILE",
    help="LDAP: the destination's bind password, read from FILE (mode 0600).",
)
CaFileOpt = typer.Option(
    None, "--ca-file", metavar="FILE",
    help="LDAP over TLS: the CA certificates (PEM) the servers' certificates are checked "
    "against, for both sides (default: HSYNC_LDAP_CACERT, else the system's).",
)
StartTlsOpt = typer.Option(
    False, "--starttls",
    help="LDAP: StartTLS on every ldap:// endpoint (ldaps:// is TLS already).",
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
# metadata kept (rsync -a's -o -g, and -X -A): on by default; rsync's spellings accepted
OwnerOpt = typer.Option(
    True, "--owner/--no-owner", "-o",
    help="Keep owners, by name unless --numeric-ids (where the destination may chown).",
)
GroupOpt = typer.Option(True, "--group/--no-group", "-g", help="Keep groups (likewise).")
XattrsOpt = typer.Option(
    True, "--xattrs/--no-xattrs", "-X",
    help="Keep extended attributes (user.*; trusted.*, security.* as root).",
)
AclsOpt = typer.Option(True, "--acls/--no-acls", "-A", help="Keep POSIX ACLs.")
NumericIdsOpt = typer.Option(
    False, "--numeric-ids", help="Owners and groups by number, not by name."
)


def _meta(owner: bool, group: bool, xattrs: bool, acls: bool, numeric_ids: bool) -> Any:
    return {"owner": owner, "group": group, "xattrs": xattrs, "acls": acls,
            "numeric_ids": numeric_ids}


WaitLockOpt = typer.Option(
    False, "--wait-lock",
    help="Wait while another run syncs the same pair (default: exit 2 naming its pid).",
)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command()
@_guard
def sync(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(
        ..., metavar="DST", help="Destination tree; created when missing."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Print the plan, change nothing."),
    delete: bool | None = typer.Option(
        None, "--delete/--no-delete",
        help="Delete destination-only nodes, even in a destination never synced from SRC "
        "/ never delete them. Default: delete once the pair was synced.",
    ),
    checksum: bool = typer.Option(False, "--checksum", "-c", help="Compare content by hash."),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    include: list[str] = IncludeOpt,
    filter_rule: list[str] = FilterOpt,
    delete_excluded: bool = DeleteExcludedOpt,
    copy_unstable: bool = CopyUnstableOpt,
    sparse: bool = SparseOpt,
    specials: bool = SpecialsOpt,
    one_file_system: bool = OneFsOpt,
    exclude_attr: list[str] = ExcludeAttrOpt,
    schema: list[str] = SchemaOpt,
    max_delete: int | None = typer.Option(
        None,
        "--max-delete",
        min=0,
        metavar="N",
        help="Delete nothing when more than N deletions are due.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    window: int | None = WindowOpt,
    batch_ops: int | None = BatchOpsOpt,
    wait_lock: bool = WaitLockOpt,
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."
    ),
    allow_empty_source: bool = typer.Option(
        False, "--allow-empty-source", help="Let an empty source empty the destination."
    ),
    fsync: bool = typer.Option(
        False, "--fsync", help="fsync every file (default: one syncfs per batch)."
    ),
    hard_links: bool = typer.Option(
        False, "--hard-links", "-H", help="Keep hard-linked source files linked (rsync -H)."
    ),
    itemize: bool = typer.Option(
        False, "--itemize-changes", "-i", help="Print one line per applied op."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="The same as -i."),
    log_file: str | None = typer.Option(
        None, "--log-file", metavar="FILE",
        help="Append each applied op, with a timestamp, to FILE.",
    ),
    stats: bool = typer.Option(False, "--stats", help="Print a summary of the run (rsync's)."),
    src_bind_dn: str | None = SrcBindDnOpt,
    src_password_file: str | None = SrcPasswordFileOpt,
    dst_bind_dn: str | None = DstBindDnOpt,
    dst_password_file: str | None = DstPasswordFileOpt,
    ca_file: str | None = CaFileOpt,
    starttls: bool = StartTlsOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Make DST equal to SRC (SRC's contents go into DST, like rsync SRC/ DST/)."""
    from .itemize import LogFile
    from .oneshot import sync_once

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
                log.write(escape(f"error: {_problem(p, src)}"))
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
        print(json.dumps(out, indent=2))
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
        _err(_problem(p, src))
    for line in report.notices:
        _err(f"warning: {line}")
    if report.withheld_line:
        _err(f"warning: {report.withheld_line}")
    raise typer.Exit(report.exit_code)


def _summary(report: Any, dry_run: bool) -> str:
    c = report.counts if not dry_run else report.planned
    verb = " would be" if dry_run else ""
    return (
        f"{c['create']} created, {c['update']} updated, {c['move']} moved, "
        f"{c['delete']} deleted{verb}; "
        f"{_human_bytes(report.bytes_copied)} copied in {report.elapsed:.2f} s"
    )


def _problem(p: Any, root: str) -> str:
    """A problem's line, not yet escaped."""
    return f"{key_str(p.key) or root}: {p.message}"


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
    rows += [
        ("Failures", f"{len(report.problems):,}"),
        ("Elapsed", f"{report.elapsed:.2f} s"),
    ]
    return "\n".join(f"{name + ':':<16}{value}" for name, value in rows)


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
        import threading

        self.print_lines = print_lines
        self.log = log
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


@app.command()
@_guard
def diff(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(..., metavar="DST", help="Destination tree."),
    json_out: bool = typer.Option(False, "--json", help="Print the ordered plan as JSON."),
    tree: bool = typer.Option(False, "--tree", help="Render the plan as a tree."),
    checksum: bool = typer.Option(False, "--checksum", "-c", help="Compare content by hash."),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    include: list[str] = IncludeOpt,
    filter_rule: list[str] = FilterOpt,
    delete_excluded: bool = DeleteExcludedOpt,
    exclude_attr: list[str] = ExcludeAttrOpt,
    schema: list[str] = SchemaOpt,
    no_delete: bool = typer.Option(False, "--no-delete", help="Plan as sync --no-delete would."),
    hard_links: bool = typer.Option(
        False, "--hard-links", "-H", help="Plan as sync -H would (hard links kept)."
    ),
    specials: bool = SpecialsOpt,
    one_file_system: bool = OneFsOpt,
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    src_bind_dn: str | None = SrcBindDnOpt,
    src_password_file: str | None = SrcPasswordFileOpt,
    dst_bind_dn: str | None = DstBindDnOpt,
    dst_password_file: str | None = DstPasswordFileOpt,
    ca_file: str | None = CaFileOpt,
    starttls: bool = StartTlsOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Print the plan that would make DST equal to SRC. Exit 0 in sync, 1 differ."""
    from .oneshot import compare

    creds = _credentials(src, dst, src_bind_dn, src_password_file, dst_bind_dn,
                         dst_password_file, ca_file, starttls)

    if json_out and tree:
        raise typer.BadParameter("--json and --tree are exclusive")
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
        print(json.dumps(the_plan.to_json(), indent=1))
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
    raise typer.Exit(EXIT_USAGE if unknown else EXIT_DIFFER if the_plan else EXIT_OK)


LogFormatOpt = typer.Option("text", "--log-format", help="Log lines as text or json.")
LogLevelOpt = typer.Option("info", "--log-level", help="debug, info, warning or error.")


@app.command()
@_guard
def watch(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(..., metavar="DST", help="Destination tree; created when missing."),
    debounce: float = typer.Option(
        100, "--debounce", min=0, metavar="MS", help="Quiet period before a round (ms)."
    ),
    max_delay: float = typer.Option(
        1000, "--max-delay", min=0, metavar="MS",
        help="A round starts at the latest this long after the first change (ms).",
    ),
    settle: float = typer.Option(
        2, "--settle", min=0, metavar="SECONDS",
        help="A file still open for writing is copied once closed, or once quiet this long.",
    ),
    status_file: str | None = typer.Option(
        None, "--status-file", metavar="PATH", help="JSON status, rewritten every round."
    ),
    rescan_interval: float | None = typer.Option(
        None, "--rescan-interval", min=0, metavar="SECONDS",
        help="Full comparison this often, to repair changes made by others (default off).",
    ),
    poll_interval: float = typer.Option(
        10, "--poll-interval", min=0.1, metavar="SECONDS",
        help="Rescan period of directories that could not be watched.",
    ),
    verify_interval: float | None = typer.Option(
        None, "--verify-interval", min=0, metavar="SECONDS",
        help="Content-level verify this often; differences are repaired (default off).",
    ),
    delete: bool | None = typer.Option(
        None, "--delete/--no-delete",
        help="Delete destination-only nodes, even in a destination never synced from SRC "
        "/ never delete them. Default: delete once the pair was synced.",
    ),
    checksum: bool = typer.Option(False, "--checksum", "-c", help="Compare content by hash."),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    include: list[str] = IncludeOpt,
    filter_rule: list[str] = FilterOpt,
    delete_excluded: bool = DeleteExcludedOpt,
    exclude_attr: list[str] = ExcludeAttrOpt,
    schema: list[str] = SchemaOpt,
    max_delete: int | None = typer.Option(
        None, "--max-delete", min=0, metavar="N",
        help="Delete nothing in a round when more than N deletions are due.",
    ),
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    wait_lock: bool = WaitLockOpt,
    allow_empty_source: bool = typer.Option(
        False, "--allow-empty-source", help="Let an empty source empty the destination."
    ),
    fsync: bool = typer.Option(False, "--fsync", help="fsync every file."),
    hard_links: bool = typer.Option(
        False, "--hard-links", "-H", help="Keep hard-linked source files linked."
    ),
    sparse: bool = SparseOpt,
    specials: bool = SpecialsOpt,
    one_file_system: bool = OneFsOpt,
    log_format: str = LogFormatOpt,
    log_level: str = LogLevelOpt,
    src_bind_dn: str | None = SrcBindDnOpt,
    src_password_file: str | None = SrcPasswordFileOpt,
    dst_bind_dn: str | None = DstBindDnOpt,
    dst_password_file: str | None = DstPasswordFileOpt,
    ca_file: str | None = CaFileOpt,
    starttls: bool = StartTlsOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Keep DST equal to SRC until stopped (SIGTERM/SIGINT): a full comparison, then
    only what changes."""
    from .daemon import PairConfig, Supervisor, serve, setup_logging
    from .live import WatchOptions

    creds = _credentials(src, dst, src_bind_dn, src_password_file, dst_bind_dn,
                         dst_password_file, ca_file, starttls)

    _log_setup(setup_logging, log_format, log_level)
    opts = _options(
        rsh=rsh, remote_hsync=remote_hsync, compress=compress,
        delete=delete, checksum=checksum, exclude=exclude, exclude_from=exclude_from,
        exclude_attr=exclude_attr, max_delete=max_delete, state=state,
        allow_empty_source=allow_empty_source, fsync=fsync,
        hard_links=hard_links, wait_lock=wait_lock, schema=schema,
        **_meta(owner, group, xattrs, acls, numeric_ids),
    )
    opts = _filtered(opts, include, filter_rule, delete_excluded, sparse=sparse,
                     specials=specials, one_file_system=one_file_system)
    wopts = WatchOptions(
        debounce=debounce / 1000, max_delay=max_delay / 1000, settle=settle,
        rescan_interval=rescan_interval or None, poll_interval=poll_interval,
        verify_interval=verify_interval or None,
    )
    _check_endpoints(src, dst, creds, opts)
    sup = Supervisor((PairConfig(src, src, dst, opts, wopts, creds),), status_file, once=True)
    raise typer.Exit(serve(sup, debug=_state["debug"]))


@app.command()
@_guard
def daemon(
    config: str = typer.Option(..., "--config", metavar="FILE", help="hsync.toml: the pairs."),
    check: bool = typer.Option(False, "--check", help="Check the config and exit."),
    log_format: str | None = typer.Option(None, "--log-format", help="text or json."),
    log_level: str | None = typer.Option(None, "--log-level", help="Log level."),
) -> None:
    """Keep several pairs in sync, as the config file says; SIGHUP reloads it."""
    from .daemon import Supervisor, load_config, serve, setup_logging
    from .daemon import log as daemon_log

    cfg = load_config(config, debug=_state["debug"])
    if check:
        for p in cfg.pairs:
            print(f"{p.name}: {p.source} -> {p.destination}")
        for line in cfg.warnings:
            _err(f"warning: {line}")
        raise typer.Exit(0)
    _log_setup(setup_logging, log_format or cfg.log_format, log_level or cfg.log_level)
    for line in cfg.warnings:
        daemon_log.warning("%s", line)
    sup = Supervisor(cfg.pairs, cfg.status_file)
    raise typer.Exit(serve(sup, config, debug=_state["debug"]))


@app.command()
@_guard
def status(
    status_file: str = typer.Option(
        ..., "--status-file", metavar="PATH", help="The file a watch or daemon writes."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the status file as it is."),
) -> None:
    """Show what a running watch or daemon is doing. Exit 0 all well, 1 a pair is in
    error or waiting, or the process is not running."""
    try:
        with open(status_file, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise HsyncError(f"{status_file}: cannot read the status file: {e.strerror}") from None
    except ValueError as e:
        raise HsyncError(f"{status_file}: not a status file: {e}") from None
    alive = _pid_alive(doc.get("pid"))
    if json_out:
        print(json.dumps({**doc, "running": alive}, indent=1))
    else:
        print(f"hsync pid {doc.get('pid')} {'running' if alive else 'NOT RUNNING'}, "
              f"started {doc.get('started_at')}, status written {doc.get('written_at')}")
        for p in doc.get("pairs", []):
            c = p.get("counts", {})
            print(f"{escape(str(p.get('name')))}: {p.get('state')}  "
                  f"{escape(str(p.get('source')))} -> {escape(str(p.get('destination')))}")
            print(f"  last round {p.get('last_round_at')} ({p.get('last_round_seconds')} s, "
                  f"lag {p.get('last_lag_seconds')} s); rounds {p.get('rounds')}, full "
                  f"comparisons {p.get('full_comparisons')}, restarts {p.get('restarts')}")
            print(f"  pending {p.get('pending')}; {c.get('create', 0)} created, "
                  f"{c.get('update', 0)} updated, {c.get('move', 0)} moved, "
                  f"{c.get('delete', 0)} deleted; {_human_bytes(p.get('bytes_copied', 0))} copied; "
                  f"{p.get('problems', 0)} problem(s)")
            if p.get("link"):
                print(f"  link {p['link']} since {p.get('link_since')}")
            for k, why in (p.get("unwatched") or {}).items():
                print(f"  not watched (polled): {escape(k or '.')}: {escape(why)}")
            if p.get("last_error"):
                print(f"  last error: {escape(p['last_error'])}")
    bad = not alive or any(p.get("state") in ("error", "waiting", "reconnecting")
                           for p in doc.get("pairs", []))
    raise typer.Exit(EXIT_DIFFER if bad else EXIT_OK)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_setup(setup: Callable[[str, str], None], fmt: str, level: str) -> None:
    if fmt not in ("text", "json"):
        raise typer.BadParameter("--log-format must be text or json")
    import logging

    if level.upper() not in logging.getLevelNamesMapping():
        raise typer.BadParameter(f"unknown --log-level {level!r}")
    setup(fmt, "debug" if _state["debug"] else level)


def _check_endpoints(src: str, dst: str, credentials: Any = (None, None),
                     opts: Any = None) -> None:
    """The checks of SPEC section 8 before any thread starts: a bad pair is one line
    and exit 2, like ``sync``."""
    from .options import DEFAULT
    from .session import PairSession

    PairSession(src, dst, opts if opts is not None else DEFAULT, history=False,
                credentials=credentials).close()


@app.command(hidden=True)
def agent(
    restrict: str | None = typer.Option(
        None, "--restrict", metavar="ROOT",
        help="Serve only the tree at ROOT (for command= in authorized_keys).",
    ),
) -> None:
    """The far side of a remote tree: started by hsync over ssh, speaks on stdin/stdout."""
    from .remote.agent import run_agent

    raise typer.Exit(run_agent(restrict))


@app.command()
@_guard
def verify(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(..., metavar="DST", help="Destination tree."),
    json_out: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    repair: bool = typer.Option(
        False, "--repair", help="Fix the differences found (a checksum sync)."
    ),
    settle: float = typer.Option(
        1.0, "--settle", min=0.0, metavar="SECONDS",
        help="Wait this long before re-checking a mismatch (changes in flight settle).",
    ),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Compare SRC and DST content and all (xxhash). Exit 0 consistent, 1 differences."""
    from .remote import Reach, reaching
    from .verifier import verify as run_verify

    opts = _options(exclude=exclude, exclude_from=exclude_from)
    with reaching(Reach(rsh=rsh, remote_hsync=remote_hsync, compress=compress)):
        report = run_verify(
            src, dst, exclude=opts.exclude, settle=settle, repair=repair, state=state,
            **_meta(owner, group, xattrs, acls, numeric_ids),
        )
    if json_out:
        print(json.dumps(report.to_json(), indent=2))
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
            _err(_problem(p, src))
    raise typer.Exit(report.exit_code)


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


def main() -> None:
    # A scan allocates a few objects per node and frees almost none: let the cyclic
    # collector run far less often.
    gc.set_threshold(100_000, 50, 100)
    os.environ.setdefault("TYPER_USE_RICH", "0")
    # Names are bytes on POSIX: one that is not UTF-8 is printed back as those bytes
    # whatever the locale, never an encoding error.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        try:
            rv = app(prog_name="hsync", standalone_mode=False)
            code = rv if isinstance(rv, int) else 0
        except NoArgsIsHelpError as e:
            e.show()
            code = EXIT_USAGE
        except ClickException as e:
            # a usage mistake found while parsing: one line naming it, not click's
            # three-line usage block
            ctx = e.ctx if isinstance(e, UsageError) else None
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            _err(f"error: {e.format_message()}{hint}")
            code = EXIT_USAGE
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        # Everything is closed and flushed by now (the history is committed and closed
        # when the run ends); skip tearing down a heap of snapshot objects one by one.
        sys.stdout.flush()
    except BrokenPipeError:
        _closed_stdout()
    sys.stderr.flush()
    os._exit(code)


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

if __name__ == "__main__":
    main()
