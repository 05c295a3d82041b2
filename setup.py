"""Only the optional C helper and the command's script; everything else is in
pyproject.toml.

``hsync._walk`` lists a directory with one lstat per name in C (the scan's inner loop).
It is optional: where it cannot be built (no compiler), hsync uses the same function in
Python (hsync/backends/fs/scan.py) and is only slower.

``bin/hsync`` is the ``hsync`` command, installed as a script rather than declared under
``[project.scripts]``: the wrapper pip writes for a console script imports ``re`` before
hsync (issue 15 item 1, start-up); the script runs the same ``hsync.__main__:main``."""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("hsync._walk", ["hsync/_walk.c"], optional=True)],
    scripts=["bin/hsync"],
)
