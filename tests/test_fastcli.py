"""The hot commands' own parser (``hsync.fastcli``, issue 15 item 1) against typer's.

``hsync sync|diff|verify|agent`` lines are parsed without typer when ``fastcli.parse``
understands them whole; anything else goes to the typer app. These check that the
table it reads is what the typer app declares, and, for generated command lines, that
it gives exactly the parameters the typer app hands the command, and gives up exactly
where the typer app would refuse the line (which then prints typer's message)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from treeutil import run_with_modules
from typer._click.exceptions import ClickException
from typer.main import get_command

import hsync.cli as cli
from hsync import _argtable, commands, fastcli

GROUP: Any = get_command(cli.app)


def typer_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...] | None:
    """``(command, parameters, debug)`` as the typer app hands them to the command's
    work, or None when typer does not run a command (a usage error, ``--help``)."""
    seen: list[tuple[Any, ...]] = []

    def capture(command: str, params: dict[str, Any]) -> int:
        seen.append((command, dict(params), commands._state["debug"]))
        return 0

    monkeypatch.setattr(cli, "run", capture)
    commands._state["debug"] = False
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.suppress(ClickException, SystemExit),
    ):
        GROUP.main(args=list(argv), prog_name="hsync", standalone_mode=False)
    commands._state["debug"] = False
    assert len(seen) <= 1
    return seen[0] if seen else None


# -- the table ----------------------------------------------------------------------------


def test_the_table_is_derived_from_the_typer_app() -> None:
    # an option added to (or changed in) a hot command of hsync.cli without running
    # `python -m hsync.fastcli > hsync/_argtable.py` fails here
    assert fastcli.derive_table() == _argtable.TABLE
    assert Path(_argtable.__file__).read_text() == fastcli.table_source()


def test_the_table_covers_every_option_of_the_hot_commands() -> None:
    for command in fastcli.HOT:
        declared = {p.name for p in GROUP.commands[command].params}
        spec = _argtable.TABLE[command]
        assert declared == {*spec["arguments"], *(row[0] for row in spec["options"])}


# -- parity with typer, generated ---------------------------------------------------------

_TEXT = st.text(alphabet="ab-=/ .x", max_size=6)
_PATH = st.one_of(
    st.sampled_from(["src", "dst", "-", "--", "-x", "--json", "-rf", "a=b", "", "-h"]), _TEXT
)


def _number_text(kind: str) -> st.SearchStrategy[str]:
    plain = st.integers(0, 10**6).map(str)
    if kind == "float":
        plain = st.one_of(
            plain, st.floats(0, 1e6).map(lambda x: f"{x:.3f}"), st.sampled_from([".5", "2."])
        )
    return plain


def _option_tokens(row: tuple[Any, ...], odd_numbers: bool) -> st.SearchStrategy[list[str]]:
    _, opts, off, kind = row[:4]
    spellings = st.sampled_from([*opts, *off])
    if kind == "flag":
        return st.one_of(
            spellings.map(lambda o: [o]),
            spellings.map(lambda o: [o + "=yes"]),  # a flag given a value: refused
        )
    if kind == "str":
        value = st.one_of(_TEXT, st.sampled_from(["--", "-n", "--json", "-", "--help"]))
    else:
        value = _number_text(kind)
        if odd_numbers:
            value = st.one_of(
                value, st.sampled_from(["-1", "1_000", " 2", "1e3", "x", ".", "nan", "+3"])
            )
    longs = [o for o in opts if len(o) > 2]
    shorts = [o for o in opts if len(o) == 2]
    ways = [
        st.tuples(spellings, value).map(lambda t: [t[0], t[1]]),
        st.tuples(st.sampled_from(longs), value).map(lambda t: [f"{t[0]}={t[1]}"]),
        spellings.map(lambda o: [o]),  # the value missing (or the next token taken)
    ]
    if shorts:
        ways.append(st.tuples(st.sampled_from(shorts), value).map(lambda t: [t[0] + t[1]]))
    return st.one_of(ways)


@st.composite
def command_lines(draw: st.DrawFn, odd_numbers: bool = False) -> list[str]:
    command = draw(st.sampled_from(fastcli.HOT))
    spec = _argtable.TABLE[command]
    rows = spec["options"]
    shorts = [
        (o[1], row[3]) for row in rows for o in (*row[1], *row[2]) if len(o) == 2
    ]
    groups: list[list[str]] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind <= 5:
            groups.append(draw(_option_tokens(draw(st.sampled_from(rows)), odd_numbers)))
        elif kind == 6 and shorts:
            # a cluster of short flags, maybe ending with one that takes a value
            letters = draw(st.lists(st.sampled_from(shorts), min_size=2, max_size=4))
            text = "-" + "".join(ch for ch, _ in letters)
            groups.append([text] if letters[-1][1] == "flag" or draw(st.booleans())
                          else [text, draw(_TEXT)])
        elif kind == 7:
            groups.append([draw(st.sampled_from(
                ["--help", "-h", "--bogus", "-q", "--debug", "--version", "--json=",
                 "--state", "-e"]
            ))])
        else:
            groups.append([draw(_PATH)])
    positional = draw(st.lists(_PATH, min_size=0, max_size=3)) if spec["arguments"] else []
    if not draw(st.integers(0, 4)) and spec["arguments"]:
        positional = draw(st.lists(_PATH, min_size=2, max_size=2))
    else:
        positional = draw(st.lists(st.sampled_from(["src", "dst", "s p", "/t"]),
                                   min_size=len(spec["arguments"]),
                                   max_size=len(spec["arguments"])))
    where = draw(st.integers(0, len(groups)))
    if draw(st.booleans()):
        groups.insert(where, positional)
    else:  # after --: anything goes, paths starting with - too
        groups.append(["--", *positional])
    prefix = ["--debug"] * draw(st.integers(0, 2))
    return [*prefix, command, *(token for group in groups for token in group)]


def check_parity(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    fast = fastcli.parse(argv)
    slow = typer_parse(argv, monkeypatch)
    if fast is not None:
        # understood: exactly what the typer app would have handed the command
        assert slow is not None, f"typer refuses {argv}, the fast parser took it: {fast}"
        assert fast == slow
    return fast, slow


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
@example(argv=["sync", "src", "dst", "--json", "--no-progress", "--state", "st"])
@example(argv=["sync", "-nc", "--exclude=*.o", "--", "-src", "--dst"])
@example(argv=["sync", "-ezssh -p 2", "--max-delete", "0", "a", "b"])
@example(argv=["verify", "--settle=0.5", "a", "b", "--no-owner"])
@example(argv=["diff", "--state", "--", "a", "b"])
@example(argv=["--debug", "agent", "--restrict", "/srv"])
def test_the_fast_parser_gives_what_typer_gives(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = check_parity(argv, monkeypatch)
    # and it gives up only where typer refuses the line (plain numbers only here)
    assert (fast is None) == (slow is None), (argv, slow)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines(odd_numbers=True))
def test_odd_numbers_are_typers_to_read(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # "1_000", " 2", "1e3", "+3": the fast parser may leave a number it does not read
    # as plain digits to typer; whatever it does take, it takes as typer does
    check_parity(argv, monkeypatch)


@pytest.mark.parametrize(
    "argv",
    [
        ["sync", "src", "dst", "--json", "--no-progress", "--state", "st"],  # bench_fs's
        ["sync", "-nHxi", "src", "dst"],
        ["diff", "--tree", "-c", "--exclude", "*.o", "--exclude=*.a", "src", "dst"],
        ["verify", "--repair", "--settle", "0", "src", "dst"],
        ["agent"],
        ["agent", "--restrict", "/srv/tree"],
    ],
)
def test_the_usual_lines_are_parsed_without_typer(argv: list[str]) -> None:
    parsed = fastcli.parse(argv)
    assert parsed is not None and parsed[0] == argv[0]


def test_multiple_values_and_the_last_flag_win_as_in_typer() -> None:
    parsed = fastcli.parse(
        ["sync", "--exclude", "a", "src", "--exclude=b", "--delete", "--no-delete", "dst"]
    )
    assert parsed is not None
    _, params, debug = parsed
    assert (params["src"], params["dst"], params["exclude"]) == ("src", "dst", ["a", "b"])
    assert params["delete"] is False and params["include"] is None and not debug


# -- the processes --------------------------------------------------------------------------

_FRAMEWORK = {"typer", "typer._click", "click", "rich", "shellingham"}


def test_a_sync_diff_and_verify_do_not_import_typer(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    for i in range(10):
        (src / "d" / f"f{i}").write_text(f"{i}\n")
    state = str(tmp_path / "state")
    for args, rc in (
        (["sync", str(src), str(dst), "--state", state, "--json", "--no-progress"], 0),
        (["sync", str(src), str(dst), "--state", state], 0),  # the no-op, history there
        (["diff", str(src), str(dst), "--state", state], 0),
        (["verify", "--settle", "0", str(src), str(dst)], 0),
    ):
        proc, modules = run_with_modules(tmp_path, *args)
        assert proc.returncode == rc, proc.stderr
        assert "hsync.commands" in modules  # the probe saw the real run
        assert not modules & _FRAMEWORK, (args, sorted(modules & _FRAMEWORK))
    assert sorted(p.name for p in (dst / "d").iterdir()) == [f"f{i}" for i in range(10)]


def test_the_agent_does_not_import_typer(tmp_path: Path) -> None:
    # the far side of a remote tree, started over ssh on every remote run; with its
    # input closed at once it ends without a session
    proc, modules = run_with_modules(tmp_path, "agent", "--restrict", str(tmp_path))
    assert "hsync.remote.agent" in modules, proc.stderr
    assert not modules & _FRAMEWORK, sorted(modules & _FRAMEWORK)


def test_a_line_it_does_not_understand_gets_typers_message(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    proc, modules = run_with_modules(tmp_path, "sync", "--bogus", str(src), str(tmp_path / "d"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("hsync: error: No such option: --bogus"), proc.stderr
    assert "typer" in modules and not (tmp_path / "d").exists()
    proc, _ = run_with_modules(
        tmp_path, "sync", "--max-delete", "-1", str(src), str(tmp_path / "d")
    )
    assert proc.returncode == 2 and "--max-delete" in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists()
    proc, _ = run_with_modules(tmp_path, "diff", "-h")
    assert proc.returncode == 0 and "Usage: hsync diff" in proc.stdout, proc.stdout
