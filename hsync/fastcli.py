"""The command line of the hot commands without typer: ``hsync sync|diff|verify|agent``.

Importing typer (and its click) costs more than the interpreter's whole start-up, and
building the commands from their signatures as much again, on every run. So
``hsync.__main__`` first asks ``parse`` here. It parses as click would, from the table
``hsync/_argtable.py`` that ``derive_table`` builds from the typer app (the options are
declared once, in ``hsync.cli``; ``tests/test_fastcli.py`` checks that the table is
still what the typer app says, and, property-based, that both parsers give the same
parameters). ``parse`` answers None for anything it does not understand whole:
``--help``, an unknown option, a missing or extra argument, a value that is not plainly
a number, another command. Then the typer app parses the line, and its help and its
error messages are what the user sees.

Regenerate the table after changing an option of a hot command::

    python -m hsync.fastcli > hsync/_argtable.py
"""

from __future__ import annotations

from ._argtable import TABLE

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any

_INT_CHARS = frozenset("0123456789")
_FLOAT_CHARS = frozenset("0123456789.")


def _number(kind: str, text: str, minimum: float | None) -> int | float | None:
    """``text`` as click's INT or FLOAT (with its range) would take it; None for
    anything but plain digits (with one point for a float) and a value below the
    minimum: click then says what is wrong with it."""
    if not text or not set(text) <= (_INT_CHARS if kind == "int" else _FLOAT_CHARS):
        return None
    if text.count(".") > 1 or text == ".":
        return None
    value = int(text) if kind == "int" else float(text)
    if minimum is not None and value < minimum:
        return None
    return value


def parse(argv: list[str]) -> tuple[str, dict[str, Any], bool] | None:
    """``(command, parameters, debug)`` for a command line of a hot command that is
    understood whole (the parameters by name, as the typer command receives them), or
    None: the typer app is then the one to parse it."""
    debug = False
    i = 0
    while i < len(argv) and argv[i] == "--debug":  # the group's one option here
        debug = True
        i += 1
    if i >= len(argv) or argv[i] not in TABLE:
        return None
    spec = TABLE[argv[i]]
    params = _parse_command(spec, argv[i + 1 :])
    return None if params is None else (argv[i], params, debug)


def _parse_command(spec: dict[str, Any], args: list[str]) -> dict[str, Any] | None:
    """click's parser (``typer._click.parser``) for one command, on the table's terms:
    options anywhere before ``--``, ``--opt=value``, short flags in clusters, a short
    option's value attached (``-eCMD``) or next; None where click would fail."""
    longs: dict[str, tuple[str, Any]] = {}
    shorts: dict[str, tuple[str, Any]] = {}
    values: dict[str, Any] = {}
    for name, opts, off, kind, multiple, default, _ in spec["options"]:
        row = (kind, multiple)
        for opt in opts:
            (longs if len(opt) > 2 else shorts)[opt] = (name, (row, True))
        for opt in off:
            (longs if len(opt) > 2 else shorts)[opt] = (name, (row, False))
        values[name] = [] if multiple else default
    positional: list[str] = []
    rest = list(reversed(args))  # popped from the end: the next argument is rest[-1]

    def take(entry: tuple[str, Any], explicit: str | None) -> bool:
        name, ((kind, multiple), on) = entry
        if kind == "flag":
            if explicit is not None:
                return False  # "does not take a value"
            values[name] = on
            return True
        if explicit is not None:
            text = explicit
        elif rest:
            text = rest.pop()
        else:
            return False  # "requires an argument"
        if multiple:
            values[name].append(text)
        else:
            values[name] = text  # converted at the end: click converts only the last
        return True

    while rest:
        arg = rest.pop()
        if arg == "--":
            positional.extend(reversed(rest))
            rest.clear()
            break
        if arg[:1] != "-" or len(arg) == 1:
            positional.append(arg)
            continue
        opt, eq, explicit = arg.partition("=")
        entry = longs.get(opt)
        if entry is not None:
            if not take(entry, explicit if eq else None):
                return None
            continue
        if arg[:2] == "--":
            return None  # no such option (or --help)
        # a cluster of short options; one that takes a value takes the rest of the
        # argument, or the next one
        for j in range(1, len(arg)):
            short = shorts.get("-" + arg[j])
            if short is None:
                return None  # no such option (or -h)
            if short[1][0][0] == "flag":
                take(short, None)
                continue
            if j + 1 < len(arg):
                rest.append(arg[j + 1 :])
            if not take(short, None):
                return None
            break
    names = spec["arguments"]
    if len(positional) != len(names):
        return None  # a missing or an extra argument
    out = dict(zip(names, positional, strict=True))
    for name, _, _, kind, multiple, default, minimum in spec["options"]:
        value = values[name]
        if kind in ("int", "float") and value is not default:
            texts = value if multiple else [value]
            numbers = [_number(kind, text, minimum) for text in texts]
            if None in numbers:
                return None  # click says what is wrong with it
            value = numbers if multiple else numbers[0]
        # typer hands an unused repeatable option over as its default (None)
        out[name] = (value or default) if multiple else value
    return out


HOT = ("sync", "diff", "verify", "agent")
"""The commands ``parse`` knows (the ones a user or a remote end runs most)."""


def derive_table() -> dict[str, Any]:
    """The table ``parse`` reads, from the typer app's commands (imports typer): per
    hot command, its arguments' names, and per option ``(name, opts, secondary opts,
    kind, multiple, default, minimum)``; kind is flag, str, int or float."""
    from typer._click import types
    from typer.main import get_command

    from .cli import app

    group: Any = get_command(app)
    table: dict[str, Any] = {}
    for command in HOT:
        cmd = group.commands[command]
        arguments: list[str] = []
        options: list[tuple[Any, ...]] = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                if p.nargs != 1 or not p.required or p.type is not types.STRING:
                    raise ValueError(f"{command} {p.name}: an argument parse() cannot read")
                arguments.append(p.name)
                continue
            if p.envvar or p.callback or p.is_eager or p.nargs != 1 or p.count or p.required:
                raise ValueError(f"{command} {p.opts[0]}: an option parse() cannot read")
            t = p.type
            minimum = None
            if p.is_flag:
                if not p.is_bool_flag:
                    raise ValueError(f"{command} {p.opts[0]}: a flag parse() cannot read")
                kind = "flag"
            elif t is types.STRING:
                kind = "str"
            elif isinstance(t, types.IntParamType | types.FloatParamType):
                kind = "int" if isinstance(t, types.IntParamType) else "float"
                if isinstance(t, types.IntRange | types.FloatRange):
                    if t.max is not None or t.min_open or t.clamp:
                        raise ValueError(f"{command} {p.opts[0]}: a range parse() cannot read")
                    minimum = t.min
            else:
                raise ValueError(f"{command} {p.opts[0]}: a type parse() cannot read: {t}")
            default = p.default
            if p.multiple:
                if default is not None:
                    raise ValueError(f"{command} {p.opts[0]}: a default parse() cannot give")
            elif default is not None and kind in ("int", "float"):
                default = int(default) if kind == "int" else float(default)
            options.append(
                (p.name, tuple(p.opts), tuple(p.secondary_opts), kind, p.multiple, default,
                 minimum)
            )
        table[command] = {"arguments": tuple(arguments), "options": tuple(options)}
    return table


def table_source() -> str:
    """``hsync/_argtable.py`` as ``derive_table`` makes it."""
    lines = [
        '"""The hot commands\' parameters, derived from the typer app in ``hsync.cli``: do',
        "not edit; ``python -m hsync.fastcli > hsync/_argtable.py`` writes it, and",
        '``tests/test_fastcli.py`` checks that it is up to date (see ``hsync.fastcli``).',
        "",
        "An option is (name, opts, secondary opts, kind, multiple, default, minimum).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "TYPE_CHECKING = False  # not typing's: a sync does not import typing",
        "if TYPE_CHECKING:",
        "    from typing import Any",
        "",
        "TABLE: dict[str, Any] = {",
    ]
    for command, spec in derive_table().items():
        lines += [f"    {command!r}: {{", f"        'arguments': {spec['arguments']!r},",
                  "        'options': ("]
        lines += [f"            {row!r}," for row in spec["options"]]
        lines += ["        ),", "    },"]
    return "\n".join([*lines, "}", ""])


if __name__ == "__main__":
    import sys

    sys.stdout.write(table_source())
