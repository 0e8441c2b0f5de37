"""The last request each namespace missed, kept so `butter explain --last-miss` can replay it.

    row = last_miss_row(fmt, path, namespace, conversation, mode)   # plain values, or None if too big
    backend.put_aux(LAST_MISS_TABLE, last_miss_key(namespace), row)
    newest_last_miss(backend) -> dict | None

What is kept is the canonical conversation, the same data the tree stores
for a recording (credentials are never part of it: they became the
namespace's keyed hash), plus the wire format and path. One row per
namespace, replaced by each miss, and none for a request larger than
MAX_BYTES, so the table stays small. It is not exported (store/portable.py):
it changes with every miss and says nothing about what is recorded.
"""
from __future__ import annotations

import json
import time
from typing import Any

from .model import Conversation

LAST_MISS_TABLE = "last_miss"
MAX_BYTES = 1_000_000


def last_miss_key(namespace: str) -> bytes:
    # Namespace first, as every side table's keys: `butter clear --namespace` removes it with the rest.
    return namespace.encode("utf-8") + b"\x00last"


def last_miss_row(fmt: str, path: str, namespace: str, conversation: Conversation, mode: str,
                  where: str) -> dict[str, Any] | None:
    row = {"time": time.time(), "format": fmt, "path": path, "namespace": namespace, "mode": mode, "where": where,
           "context": conversation.context, "messages": list(conversation.messages)}
    try:
        size = len(json.dumps(row, ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return None
    return row if size <= MAX_BYTES else None


def newest_last_miss(backend: Any, namespace: str | None = None) -> dict[str, Any] | None:
    rows = [row for _, row in backend.iter_aux(LAST_MISS_TABLE)
            if isinstance(row, dict) and (namespace is None or row.get("namespace") == namespace)]
    return max(rows, key=lambda r: r.get("time", 0), default=None)


def conversation_of(row: dict[str, Any]) -> Conversation:
    return Conversation(row["context"], tuple(row["messages"]))
