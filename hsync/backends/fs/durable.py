"""Making a small batch durable without flushing the whole filesystem (SPEC 5).

One ``syncfs`` per batch makes everything the batch wrote durable, at the cost of
writing back every dirty page of the filesystem, other programs' too: on a disk that
others keep busy, a watch round that published one file waited tens of milliseconds
(seconds at the worst) for it, and the next round waited for that one. A batch that
touched a few nodes is made as durable by an ``fsync`` of each file and directory it
wrote (content, mode, mtime, owner, attributes) and of each directory whose entries it
changed (a create, a rename, a delete: POSIX's way to make a rename durable). Beyond
``FEW`` nodes, or where a node cannot be flushed alone (a symlink or a special file
created or updated: they cannot be opened for an ``fsync``), or when anything about
the fsyncs fails, the batch gets the one ``syncfs`` as before: never less durable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import partial

from ...errors import NodeError
from ...model import CREATE, DELETE, DIR, FILE, MOVE, UPDATE, Key, Op
from .posix import O_META, open_beneath, open_root, syncfs
from .workers import run_all

FEW = 16
"""Nodes flushed each by its own ``fsync`` at most; more get one ``syncfs`` (on this
project's disk ``syncfs`` was as cheap or cheaper from 29 directories on, even beside
another process's writes: ``bench/bench_flush.py``)."""
THREADS = 8
"""``fsync`` calls in flight at once."""


def touched(done: Sequence[Op], dirs: Iterable[Key]) -> dict[Key, bool] | None:
    """What must be flushed to make ``done`` (the batch's applied ops) and the
    directories whose metadata was set (``dirs``) durable: key -> is a directory.
    None when a ``syncfs`` is due instead (too many nodes, or one that cannot be
    flushed alone)."""
    nodes: dict[Key, bool] = {}
    for op in done:
        kind = op.node.kind if op.node is not None else op.kind
        if op.op in (CREATE, UPDATE):
            if kind not in (FILE, DIR):
                return None  # a symlink or a special file: no descriptor to fsync
            nodes[op.key] = kind == DIR
            if op.key:
                nodes[op.key[:-1]] = True
        elif op.op == MOVE and op.to is not None:
            nodes[op.key[:-1]] = True
            nodes[op.to[:-1]] = True
            if kind == DIR:
                nodes[op.to] = True  # its ``..`` entry, when it changed parents
        elif op.op == DELETE and op.key:
            nodes[op.key[:-1]] = True
        else:
            return None
        if len(nodes) > FEW:
            return None
    for key in dirs:
        nodes[key] = True
        if len(nodes) > FEW:
            return None
    return nodes


def flush_nodes(root: str, nodes: dict[Key, bool]) -> None:
    """``fsync`` each of ``nodes`` (key -> is a directory) below the tree at ``root``,
    on ``THREADS`` threads (each ``fsync`` waits for the disk's cache flush: one after
    another, 16 directories took 60 ms here where 8 at a time took 11 ms); one
    ``syncfs`` of the tree instead when any of them cannot be opened or flushed (it
    was replaced or removed since, an error). Never raises."""
    try:
        root_fd = open_root(root)
    except OSError:
        syncfs(root)
        return
    try:
        calls = [partial(_fsync, root_fd, key, is_dir) for key, is_dir in nodes.items()]
        for job in run_all(calls, THREADS, "hsync-fsync"):
            job.result()
    except (OSError, NodeError):
        syncfs(root)
    finally:
        os.close(root_fd)


def _fsync(root_fd: int, key: Key, is_dir: bool) -> None:
    if is_dir:
        fd = open_beneath(root_fd, key)
    else:
        parent = open_beneath(root_fd, key[:-1])
        try:
            fd = os.open(key[-1], O_META, dir_fd=parent)
        finally:
            os.close(parent)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
