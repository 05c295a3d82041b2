"""Only the optional C helper; everything else is in pyproject.toml.

``hsync._walk`` lists a directory with one lstat per name in C (the scan's inner loop).
It is optional: where it cannot be built (no compiler), hsync uses the same function in
Python (hsync/backends/fs/scan.py) and is only slower."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("hsync._walk", ["hsync/_walk.c"], optional=True)])
