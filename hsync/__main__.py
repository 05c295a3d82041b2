"""The ``hsync`` command (and ``python -m hsync``).

``hsync --version`` is answered here, before the command line's parser (typer) is
imported: that import alone costs more than the interpreter's own start-up. So is
``hsync agent`` (the far side of a remote tree, started by every remote run: its
start-up is on the critical path of each one). Everything else goes to ``hsync.cli``.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from . import __version__

        sys.stdout.write(f"hsync {__version__}\n")
        return
    if sys.argv[1:2] == ["agent"]:  # started over ssh by every remote run: no typer
        from .remote.agent import main as agent_main

        code = agent_main(sys.argv[2:])
        if code is not None:
            sys.exit(code)
    if sys.argv[1:2] and sys.argv[1] in ("sync", "diff", "watch", "verify") and any(
        ":" in a for a in sys.argv[2:]
    ):  # the ssh login and the far side's start-up overlap this side's imports
        from .remote.early import start

        start(sys.argv[1:])
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
