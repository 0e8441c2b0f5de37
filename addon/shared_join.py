"""Joining a shared store that was not there when the proxy started.

A replica that never synced cannot serve before it has met Redis (it does
not know the fleet's namespace secret), and in a docker-compose deployment
the proxy often starts before Redis is ready. Rather than exit, butter
starts disabled (traffic passes through untouched) and this thread tries to
open the store every JOIN_RETRY_SECONDS, off the event loop: an attempt
costs a refused connection, or at most the client's short connect timeout.

The store opened here is handed to the event loop (`install`, through
`call_soon_threadsafe`), the one thread on which the addon's hooks read and
set `cache`, `writer` and `inducer`; a store opened while the addon is
closing is closed here instead, never installed and never leaked.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable, Generic, TypeVar

from butter.store.shared_backend import SharedStoreUnreachable

log = logging.getLogger("butter")

JOIN_RETRY_SECONDS = 3.0
# How long closing waits for an attempt in progress (the Redis client's
# connect timeout is 2 s); past that the attempt closes what it opens itself.
STOP_WAIT_SECONDS = 5.0

Store = TypeVar("Store")


class SharedStoreJoiner(Generic[Store]):
    """Try `open_store` until it stops raising SharedStoreUnreachable, then `install` it on `loop`.

    Any other error is a configuration mistake that waiting will not fix:
    `give_up(error)` is called on the loop and the attempts stop.
    """

    def __init__(self, open_store: Callable[[], Store], install: Callable[[Store], None],
                 give_up: Callable[[Exception], None], loop: asyncio.AbstractEventLoop,
                 interval: float | None = None):
        self._open_store, self._install, self._give_up = open_store, install, give_up
        self._loop, self.interval = loop, JOIN_RETRY_SECONDS if interval is None else interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._opened: Store | None = None  # opened, not yet installed
        self._thread = threading.Thread(target=self._run, name="butter-shared-join", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                store = self._open_store()
            except SharedStoreUnreachable:
                continue  # still not there: the warning said so once
            except Exception as e:
                self._call_on_loop(self._fail, e)
                return
            with self._lock:
                if self._stop.is_set():
                    _close(store)
                    return
                self._opened = store
            self._call_on_loop(self._hand_over)
            return

    def _call_on_loop(self, fn: Callable, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the proxy is gone
            _close(self._take())

    def _hand_over(self) -> None:
        """On the loop: install what the thread opened, unless `stop` came first."""
        store = self._take()
        if store is not None:
            self._install(store)

    def _fail(self, error: Exception) -> None:
        if not self._stop.is_set():
            self._give_up(error)

    def _take(self) -> Store | None:
        with self._lock:
            store, self._opened = self._opened, None
            return store

    def stop(self) -> None:
        """No more attempts; a store opened and not yet installed is closed."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT_SECONDS)
        _close(self._take())


def _close(store) -> None:
    if store is None:
        return
    try:
        store.close()
    except Exception as e:  # closing on the way out must not raise into the caller
        log.warning("butter: closing a shared store opened while stopping failed: %r", e)
