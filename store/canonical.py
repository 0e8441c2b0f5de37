"""Canonical JSON and content addresses.

The byte form produced here is part of the on-disk contract: every node id is
a hash over it, so changing it silently splits the tree in two. The hash tag
carries a version for that reason (as simonw/llm's `b2:` prefix does).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_TAG = b"butter/v1\x00"
ID_BYTES = 16


# Values that come back unchanged: skipping the call for them halves the cost
# of a request's keys (this runs on every message of every lookup).
_LEAVES = frozenset({str, int, bool, type(None)})


def normalise_numbers(value: Any) -> Any:
    """Integral floats become ints, so `temperature: 0` and `0.0` key alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: v if type(v) in _LEAVES else normalise_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _LEAVES else normalise_numbers(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: equal meaning gives equal bytes."""
    return json.dumps(
        normalise_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def digest(kind: bytes, *parts: bytes) -> bytes:
    """A tagged, length-prefixed hash: no two different part lists collide."""
    h = hashlib.sha256(HASH_TAG + kind + b"\x00")
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()[:ID_BYTES]


def parse_json_text(text: str) -> Any | None:
    """A string that holds JSON, parsed; None when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None
