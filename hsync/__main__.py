"""The ``hsync`` command (and ``python -m hsync``).

``hsync --version`` is answered here, before the command line's parser (typer) is
imported: that import alone costs more than the interpreter's own start-up.
Everything else goes to ``hsync.cli``.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from . import __version__

        sys.stdout.write(f"hsync {__version__}\n")
        return
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
