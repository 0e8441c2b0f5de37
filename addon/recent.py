"""The recent-requests list of the web view: one small row per LLM request.

The addon notes each request as it completes (`note`, on the event loop:
its row, a few attribute reads), and its writer thread appends what has
piled up to a bounded ring in the database (`flush`, store.webview.RECENT_TABLE) at
most once per FLUSH_SECONDS, so every proxy sharing a database and every
`butter ui` reading it see the same list. Rows hold no headers, no bodies
and no credentials: status, API, model, namespace (already a hash), node,
and for a miss where it left the tree.
"""
from __future__ import annotations

import collections
import itertools
import os
import time
from typing import Any

from butter.store.webview import RECENT_KEEP, RECENT_TABLE, recent_key

FLUSH_SECONDS = 0.5


def row(flow: Any, state: Any, error: str | None = None) -> dict:
    """What the list shows for one request (`state` is the addon's FlowState)."""
    response = flow.response
    parsed = state.parsed
    out: dict[str, Any] = {
        "t": flow.request.timestamp_start or time.time(),
        "status": "error" if error else (state.status or "bypass"),
        "api": state.fmt.name,
        "model": parsed.conversation.context.get("model") if parsed else None,
        "namespace": state.namespace or None,
        "messages": len(parsed.conversation.messages) if parsed else None,
        "code": response.status_code if response is not None else None,
    }
    if response is not None:
        out["node"] = _butter_node(response.headers.fields)
        if response.timestamp_end and flow.request.timestamp_start:
            out["ms"] = round((response.timestamp_end - flow.request.timestamp_start) * 1000, 1)
    miss = flow.metadata.get("butter-miss")
    if miss:
        matched, detail, deepest = miss
        out.update(matched=matched, detail=detail, deepest=deepest.hex() if deepest else None)
    if error:
        out["detail"] = error
    return out


def _butter_node(fields: tuple[tuple[bytes, bytes], ...]) -> str | None:
    """The butter-node header, read off the raw fields: `headers.get` costs a
    hit ~10 µs (it decodes every field); butter adds its headers last."""
    for name, value in reversed(fields):
        if name.lower() == b"butter-node":
            return value.decode("ascii", "replace")
    return None


class RecentRequests:
    """Requests noted on the event loop as small rows, written on the writer thread.

    `note` builds the row at once (a few attribute reads): holding the flow
    until the flush instead would keep every flow of the last half second,
    and its parsed conversation, alive into the older garbage-collector
    generations, where a full collection has to walk them all."""

    def __init__(self) -> None:
        # Bounded like the ring: older rows would be trimmed at once.
        self.pending: collections.deque[dict] = collections.deque(maxlen=RECENT_KEEP)
        self.scheduled = False
        # Keys from two proxies writing one database must never collide.
        self._sequence = itertools.count(int.from_bytes(os.urandom(3), "big") << 24)

    def note(self, flow: Any, state: Any, error: str | None = None) -> bool:
        """Queue a request's row; True when the caller should schedule a flush."""
        self.pending.append(row(flow, state, error))
        if self.scheduled:
            return False
        self.scheduled = True
        return True

    def take(self) -> list[dict]:
        noted, self.scheduled = list(self.pending), False
        self.pending.clear()
        return noted

    def write(self, backend: Any, noted: list[dict]) -> None:
        rows = [(recent_key(entry["t"], next(self._sequence)), entry) for entry in noted]
        backend.append_ring(RECENT_TABLE, rows, RECENT_KEEP)
