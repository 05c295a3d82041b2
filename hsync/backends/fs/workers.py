"""A few threads for the applier's calls that wait on the disk (unlinks, directory
mtimes, fsyncs), without ``concurrent.futures``: its import (``logging``, which brings
``traceback``, ``string``, ``weakref``...) cost a delete of 50 files as much as its
unlinks (14 ms of a 5,000-file sync's imports). Only what the applier needs: jobs
queued as they come, run by up to ``threads`` threads started on demand, each job's
outcome waited for by the caller."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence


class Job:
    """One call queued on ``Threads``: ``result()`` waits for it and returns its value
    or raises what it raised."""

    __slots__ = ("_call", "_done", "_error", "_value")

    def __init__(self, call: Callable[[], object]) -> None:
        self._call = call
        self._done = threading.Event()
        self._value: object = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as e:  # handed to the caller by ``result``
            self._error = e
        finally:
            self._done.set()

    def result(self) -> object:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def run_all(calls: Sequence[Callable[[], object]], threads: int, name: str,
            at_least: int = 2) -> Sequence[Job]:
    """Every call of ``calls`` run, each one's ``Job`` in order (``result()`` returns
    at once): on up to ``threads`` threads named ``name`` where there are ``at_least``
    calls, else here, one after another (no thread for one call)."""
    if len(calls) < at_least:
        jobs = [Job(call) for call in calls]
        for job in jobs:
            job.run()
        return jobs
    with Threads(threads, name) as pool:
        return pool.run_all(calls)


class Threads:
    """Up to ``threads`` threads named ``name``, started as jobs come; ``close`` (or
    leaving the ``with`` block) lets them finish what is queued and joins them."""

    def __init__(self, threads: int, name: str) -> None:
        self._max = threads
        self._name = name
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._idle = 0
        self._closed = False
        self._threads: list[threading.Thread] = []

    def submit(self, call: Callable[[], object]) -> Job:
        job = Job(call)
        with self._ready:
            if self._closed:
                raise RuntimeError("Threads closed")
            self._jobs.append(job)
            if self._idle:  # one waiting thread woken per job (it counted itself idle)
                self._idle -= 1
                self._ready.notify()
            elif len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return job

    def run_all(self, calls: Iterable[Callable[[], object]]) -> Sequence[Job]:
        """Every call of ``calls`` queued, then each waited for; their jobs, in order
        (each one's ``result()`` returns at once)."""
        jobs = [self.submit(call) for call in calls]
        for job in jobs:
            job._done.wait()
        return jobs

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._idle += 1  # ``submit`` takes it back when it wakes this one
                    self._ready.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            job.run()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> Threads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
