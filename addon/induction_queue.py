"""Induction jobs on one thread, in a queue that cannot grow without bound.

Learning from a recorded miss is slow and optional; recording is neither. At
200 agents the old unbounded queue held thousands of jobs (memory, and a
backlog learned from long after it mattered). Here:

- a job for a workflow that already has one waiting (same namespace, same
  root, same number of messages) replaces its arguments: the newer recording
  is learned from along with every sibling already in the tree, so the
  waiting one would add nothing (counted as `coalesced`);
- when `max_jobs` are waiting, the oldest waiting job is dropped to make room
  (counted as `dropped`); its recordings stay, and the next miss of that
  workflow learns from them.

Jobs run in the order they were first queued. `submit` returns a Future like
an executor's (cancelled when its job is coalesced away or dropped), so a
caller can wait for everything queued before a marker job.
"""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from concurrent.futures import Future
from typing import Any, Callable, Hashable

MAX_JOBS = 64


class InductionQueue:
    def __init__(self, max_jobs: int = MAX_JOBS, name: str = "butter-induction") -> None:
        self.max_jobs = max_jobs
        self.skipped: Counter[str] = Counter()  # coalesced / dropped, since the last `take_skipped`
        self._jobs: OrderedDict[Hashable, tuple[Future, Callable, tuple]] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._serial = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, key: Hashable | None = None) -> Future:
        """Queue `fn(*args)`; with a `key`, replace a job of the same key still waiting."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the induction queue is shut down")
            if key is None:
                self._serial += 1
                key = ("unkeyed", self._serial)
            waiting = self._jobs.get(key)
            if waiting is not None:
                waiting[0].cancel()
                self.skipped["coalesced"] += 1
            elif len(self._jobs) >= self.max_jobs:
                _, (oldest, _, _) = self._jobs.popitem(last=False)
                oldest.cancel()
                self.skipped["dropped"] += 1
            self._jobs[key] = (future, fn, args)  # a replaced job keeps its place in line
            self._cond.notify()
        return future

    def take_skipped(self) -> dict[str, int]:
        """The skip counts since the last call (for the stats table), reset."""
        with self._cond:
            counts, self.skipped = dict(self.skipped), Counter()
        return counts

    def waiting(self) -> int:
        with self._cond:
            return len(self._jobs)

    def shutdown(self, wait: bool = True) -> None:
        """Stop: waiting jobs are cancelled (learning waits for the next run), a running one finishes."""
        with self._cond:
            self._closed = True
            for future, _, _ in self._jobs.values():
                future.cancel()
            self._jobs.clear()
            self._cond.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed and not self._jobs:
                    return
                _, (future, fn, args) = self._jobs.popitem(last=False)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # the job's own errors are its caller's to see
                future.set_exception(e)
