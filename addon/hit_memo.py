"""Requests met before, byte for byte: the lookup's hit without parsing or walking again.

An agent replayed (a CI run, a retried job, a test suite) sends the very
bytes it sent last time. Parsing them, normalising every message and
walking the tree again costs most of a hit's time, and can only give the
same answer while nothing it depends on has changed:

- the request: method, upstream, path and query, the headers parsing reads
  and the body. The key digests all of them; only headers that no wire
  format reads and that clients change per request (retry counters, trace
  ids) are left out, so a retry still finds its first attempt;
- the tree: LMDB numbers every committed write transaction, whoever made it
  (this proxy's writer, another proxy, the `butter` CLI, a shared store's
  replica applying a peer's log). A hit is remembered with the number its
  lookup started from and used only while every write since is one this
  process knows no lookup reads (its hit counters, miss counters, the
  recent-requests ring: store/lmdb_backend.py `lookups_unchanged`). Any
  other write, by anyone, forgets it. A write that commits during the
  lookup makes the number stale at once: missing is the safe direction;
- the rules: options (verification, min observations, namespace) change
  only in `configure`, which forgets everything.

What comes after the lookup still runs every time: the sampled re-check of
a template hit, hit counts, the run report, rendering (fresh ids, the
reply copied so no renderer can change the remembered one).

Requests with butter's own headers (modes, namespaces, bindings,
verification) and Responses requests (they depend on server-side state kept
outside the tree) never use it.
"""
from __future__ import annotations

import hashlib
import marshal
from dataclasses import dataclass, replace
from typing import Callable

from mitmproxy import http

from butter.addon.formats import ParsedRequest
from butter.store.model import Hit

# Headers no wire format reads (neither credentials nor semantic headers; see
# tests/unit/test_hit_memo.py) that clients change from one sending to the next.
VOLATILE_HEADERS = frozenset({
    b"content-length",  # follows the body, which is in the key
    b"x-stainless-retry-count",  # the OpenAI and Anthropic SDKs count their retries
    b"idempotency-key", b"x-idempotency-key",
    b"traceparent", b"tracestate", b"x-request-id", b"x-correlation-id",
})
MAX_ENTRIES = 2048
MAX_BODY_BYTES = 1 << 20  # a bigger body is rare and costly to hold: looked up the long way
MAX_TOTAL_BYTES = 64 << 20


@dataclass(frozen=True)
class Remembered:
    """One lookup's outcome, as the hit path needs it again."""

    commit: int  # LMDB's newest write transaction when the lookup began
    parsed: ParsedRequest  # shared between requests: read, never changed
    namespace: str
    size: int
    hit: Hit
    reply: bytes  # the reply, marshalled: each use gets its own copy

    def fresh_hit(self) -> Hit:
        return replace(self.hit, reply=marshal.loads(self.reply), bindings=dict(self.hit.bindings))


def freeze(hit: Hit) -> tuple[Hit, bytes] | None:
    """The hit with its reply as bytes, taken before it is served (no renderer can change it
    afterwards); None when the reply is not plain JSON values, which are then not remembered."""
    try:
        return hit, marshal.dumps(hit.reply)
    except (ValueError, TypeError):
        return None


class HitMemo:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        self.max_entries = max_entries
        self.max_total_bytes = max_total_bytes
        self._entries: dict[bytes, Remembered] = {}
        self._bytes = 0

    @staticmethod
    def key(fmt_name: str, request: http.Request, body: bytes) -> bytes | None:
        """The request's digest, or None when it is too big to remember."""
        if len(body) > MAX_BODY_BYTES:
            return None
        parts = [fmt_name.encode(), request.method.encode(), request.scheme.encode(), request.host.encode(),
                 str(request.port).encode(), request.path.encode("utf-8", "surrogateescape")]
        for name, value in request.headers.fields:
            name = name.lower()
            if name not in VOLATILE_HEADERS:
                parts += (name, value)
        parts.append(body)
        # Each part prefixed with its length: no two different requests give the same bytes.
        return hashlib.blake2b(b"".join(len(p).to_bytes(4, "big") + p for p in parts), digest_size=32).digest()

    def get(self, key: bytes, commit: int, unchanged: Callable[[int, int], bool]) -> Remembered | None:
        """The lookup remembered for `key`, if the tree is as it was then.

        `commit`: the newest write now; `unchanged(then, now)`: whether every
        write between them left lookups alone (LmdbBackend.lookups_unchanged).
        """
        found = self._entries.get(key)
        if found is None or found.commit == commit:
            return found
        if not unchanged(found.commit, commit):
            self._drop(key)
            return None
        found = self._entries[key] = replace(found, commit=commit)  # the next check starts from here
        return found

    def put(self, key: bytes, commit: int, parsed: ParsedRequest, namespace: str, size: int,
            frozen: tuple[Hit, bytes]) -> None:
        """Remember a hit served for `key`, its reply as `freeze` took it before serving."""
        hit, reply = frozen
        if key in self._entries:
            self._drop(key)
        self._entries[key] = Remembered(commit, parsed, namespace, size, hit, reply)
        self._bytes += size + len(reply)
        while len(self._entries) > self.max_entries or self._bytes > self.max_total_bytes:
            self._drop(next(iter(self._entries)))  # oldest first

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: bytes) -> None:
        gone = self._entries.pop(key)
        self._bytes -= gone.size + len(gone.reply)
