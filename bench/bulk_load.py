"""Fill a butter database with many recorded conversations, quickly.

Population goes through the real front door: the OpenAI Chat adapter parses
each request exactly as it parses live traffic, and `Cache.record` plans and
writes the nodes, so the tree has the genuine layout and keys. The one bench
trick is batching: `record` normally runs one write transaction per call
(right for a proxy, far too slow for a million nodes), so here many calls
share one transaction. That keeps the on-disk format owned by the backend,
with no second writer of it in the bench.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from butter.addon import credentials
from butter.addon.exchange import upstream_of, with_upstream
from butter.addon.formats import WireRequest
from butter.addon.formats.openai_chat import FORMAT
from butter.store import Cache, Conversation

from . import workload

PATH = "/v1/chat/completions"
HEADERS = {"authorization": f"Bearer {workload.API_KEY}", "content-type": "application/json"}


# The bench's clients talk to api.openai.com (through the intercept or the
# reverse listener): the server the tree's roots name.
UPSTREAM = upstream_of("https", "api.openai.com", 443)


def parse(body: bytes) -> Conversation:
    """The conversation butter keys a request on, computed as the addon does."""
    _, headers, query = credentials.split(HEADERS, {})
    parsed = FORMAT.parse_request(WireRequest("POST", PATH, query, headers, body))
    return with_upstream(parsed, UPSTREAM).conversation


def namespace(cache: Cache) -> str:
    credential, _, _ = credentials.split(HEADERS, {})
    return cache.namespace(credential)


def populate(cache: Cache, conversations: int, batch: int = 5000,
             progress: Callable[[int, int, float], None] | None = None) -> float:
    """Record conversations 0..n-1 with their replies; returns the seconds taken."""
    backend = cache.backend
    ns = namespace(cache)
    real_write = backend._write
    started = time.perf_counter()
    for first in range(0, conversations, batch):
        items = [(parse(workload.request_bytes(i)), workload.reply(i))
                 for i in range(first, min(first + batch, conversations))]

        def write_batch(txn) -> None:
            calls = 0

            def in_this_txn(fn, op=None):  # op: a shared store's journal entry, not used here
                nonlocal calls
                calls += 1
                return fn(txn)

            backend._write = in_this_txn  # record()'s own write, inside our transaction
            try:
                for conversation, reply in items:
                    cache.record(ns, conversation, reply)
            finally:
                del backend._write
            if calls != len(items):  # record() changed shape: refuse to bench a different thing
                raise RuntimeError("Cache.record no longer makes exactly one backend write per call")

        real_write(write_batch)  # grows the map and retries the batch on MapFullError
        if progress:
            progress(min(first + batch, conversations), conversations, time.perf_counter() - started)
    return time.perf_counter() - started


def print_progress(label: str) -> Callable[[int, int, float], None]:
    def show(done: int, total: int, seconds: float) -> None:
        rate = done / seconds if seconds else 0.0
        print(f"\r  {label}: {done:>8}/{total} conversations  {seconds:6.1f} s  ({rate:,.0f}/s)",
              end="\n" if done == total else "", file=sys.stderr, flush=True)
    return show
