#!/usr/bin/env python3
"""A link with latency, for ssh's ``ProxyCommand``: relays stdin/stdout to HOST:PORT,
holding every chunk ``RTT/2`` ms in each direction before passing it on.

    ssh -o ProxyCommand='python3 bench/latency_relay.py 40 %h %p' HOST ...

makes a loopback ssh connection behave like one with a 40 ms round trip (a WAN link,
a nearby data centre), without root or ``tc netem`` (which would slow every loopback
user of the machine). Chunks keep their order and their own arrival times, so a
stream's throughput is not capped, only delayed: what a window of batches in flight
(``--window``) is for. ``bench_ssh.py --latency MS`` passes it to both tools.
Stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections import deque

CHUNK = 256 * 1024


def relay(read: int, write: int, delay: float, on_end: threading.Event | None = None) -> None:
    """Copy ``read`` to ``write``, each chunk ``delay`` seconds after it arrived."""
    pending: deque[tuple[float, bytes]] = deque()
    cond = threading.Condition()
    done = False

    def reader() -> None:
        nonlocal done
        try:
            while True:
                data = os.read(read, CHUNK)
                if not data:
                    break
                with cond:
                    pending.append((time.monotonic() + delay, data))
                    cond.notify()
        except OSError:
            pass
        with cond:
            done = True
            cond.notify()

    threading.Thread(target=reader, daemon=True).start()
    try:
        while True:
            with cond:
                while not pending and not done:
                    cond.wait()
                if not pending:
                    break
                due, data = pending.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            view = memoryview(data)
            while view:
                view = view[os.write(write, view):]
    except OSError:
        pass
    if on_end is not None:
        on_end.set()


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit("usage: latency_relay.py RTT_MS HOST PORT")
    delay = float(sys.argv[1]) / 2000.0
    sock = socket.create_connection((sys.argv[2], int(sys.argv[3])))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = sock.fileno()

    def up() -> None:
        relay(0, fd, delay)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # ssh closed its side: pass the end on

    threading.Thread(target=up, daemon=True).start()
    relay(fd, 1, delay)  # until the server closes the connection (or ssh goes away)


if __name__ == "__main__":
    main()
