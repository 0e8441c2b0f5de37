"""Canonical JSON and content addresses.

The byte form produced here is part of the on-disk contract: every node id is
a hash over it, so changing it silently splits the tree in two. The hash tag
carries a version for that reason (as simonw/llm's `b2:` prefix does).
"""
from __future__ import annotations

import base64
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


# -- keys that must not equate texts a provider treats differently ------------------
# Canonical forms drop what does not change the answer (whitespace inside JSON,
# key order); they must never make a request a provider would reject key like
# one it accepts. Invalid input is therefore keyed by its raw text, under a
# marker no valid value can take.
INVALID_JSON = "butter:invalid-json"
_WRAPPED_JSON = "butter:json"


def json_argument(text: str) -> Any:
    """Tool-call arguments (a JSON text) as the key sees them.

    Valid JSON becomes its value, so spacing and key order do not count.
    Anything else becomes `{"butter:invalid-json": text}`: `abc` (invalid)
    and `"abc"` (the JSON string abc) are different requests, and so are
    `Infinity` and `1e400`. A valid object that happens to look like a
    marker is wrapped once more, so no two different texts share a value.
    """
    try:
        value = _ARGUMENTS.decode(text)
    except (ValueError, TypeError, RecursionError):
        return {INVALID_JSON: text}
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in (INVALID_JSON, _WRAPPED_JSON):
        return {_WRAPPED_JSON: value}
    return value


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; JSON (and providers) do not


# One decoder for every call: `json.loads(text, parse_constant=...)` builds a
# new one (and its scanner) each time, on the hit path once per tool call.
_ARGUMENTS = json.JSONDecoder(parse_constant=_not_json_constant)


def base64_digest(text: str, *, urlsafe: bool = False) -> str:
    """The hash that stands for inline base64 bytes in the key.

    Valid base64 is hashed by its bytes (sha256 hex), so the same image keys
    alike however it got there. Text that is not valid base64 (characters
    outside the alphabet, bad padding, whitespace) is hashed as text under an
    `invalid-base64:` prefix: it never keys like the valid bytes a lenient
    decoder would make of it. `urlsafe` also accepts `-`/`_` and missing
    padding, as Gemini does.
    """
    data = text
    if urlsafe:
        data = data.replace("-", "+").replace("_", "/")
        data += "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(data, validate=True)
    except (ValueError, TypeError):  # binascii.Error is a ValueError; non-ASCII text too
        return "invalid-base64:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return hashlib.sha256(raw).hexdigest()
