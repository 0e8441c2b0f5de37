"""When two replies are the same answer (sans-IO).

A provider that answers the same request the same way twice still writes
different bytes: `usage` counts, a `system_fingerprint`, a `created` time,
Ollama's durations. Those are bookkeeping, not the answer. Agreement between
observations (`butter_min_observations`, induction's evidence) and a reply's
id in the tree are computed on the answer alone, so two identical answers
count as two observations of one reply.

Ids are left out of the comparison but never lost: a reply is stored and
served with the ids it was recorded with (a Responses id that a later
`previous_response_id` names), and a template hit gets ids derived from its
own values (the adapter's `bound_reply`), so one run's id never continues
another run's conversation upstream.

Public API
----------
    VOLATILE_REPLY_KEYS                 provider bookkeeping, at any depth outside structured data
    JSON_KEYS                           keys whose value is structured data (tool-call arguments)
    answer_of(reply) -> value           the reply without bookkeeping, JSON strings parsed
    same_answer(a, b) -> bool
    json_container(value) -> dict | list | None   the object or array a string holds as JSON
    is_empty(value) -> bool             None, [] or {}: a field one recording has and another leaves out
    answer_id(reply) -> bytes           the reply's id in the tree: 16 bytes, the same for one answer
"""
from __future__ import annotations

import json
from typing import Any

from .canonical import canonical_json, digest

VOLATILE_REPLY_KEYS = frozenset({
    "usage", "usageMetadata", "system_fingerprint", "created", "created_at",
    "modelVersion", "service_tier", "total_duration", "load_duration", "prompt_eval_count",
    "prompt_eval_duration", "eval_count", "eval_duration",
    # Ids a reply keeps (OpenAI Responses: the response, its items, its
    # calls). Every provider call mints new ones, so they never say whether
    # two answers agree. They are still served: as recorded on an exact hit
    # (a stateful client names them next turn, and the provider may know
    # them), derived from the bound values on a template hit (the adapter's
    # `bound_reply`), so one run's ids never reach another run's conversation.
    "id", "call_id",
})
# Structured data: tool-call arguments (OpenAI `arguments`, Gemini `args`,
# Anthropic `input`) and tool results given as objects (Gemini
# `functionResponse.response`). Their fields are values, not prose.
JSON_KEYS = frozenset({"arguments", "args", "input", "parameters", "response"})
_PARSED = "\x00json"  # wraps a JSON string's parsed value; no provider writes this key


def is_empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def json_container(v: Any) -> Any:
    """The object or array a string holds as JSON, else None."""
    if not isinstance(v, str) or not v.lstrip().startswith(("{", "[")):
        return None
    try:
        parsed = json.loads(v)
    except ValueError:
        return None
    return parsed if isinstance(parsed, (dict, list)) else None


def answer_of(reply: Any, in_json: bool = False) -> Any:
    """The reply without bookkeeping, empty fields or an adapter's `_` notes.

    A string holding JSON (tool-call `arguments`) is compared as JSON: `{"a": 1}`
    and `{"a":1}` are one answer. Inside structured data nothing is dropped.
    """
    if isinstance(reply, dict):
        return {k: answer_of(v, in_json or k in JSON_KEYS) for k, v in reply.items()
                if in_json or (k not in VOLATILE_REPLY_KEYS and not is_empty(v) and not k.startswith("_"))}
    if isinstance(reply, list):
        return [answer_of(v, in_json) for v in reply]
    if isinstance(reply, str):
        parsed = json_container(reply)
        if parsed is not None:
            return {_PARSED: parsed}
    return reply


def same_answer(a: Any, b: Any) -> bool:
    return canonical_json(answer_of(a)) == canonical_json(answer_of(b))


def answer_id(reply: Any) -> bytes:
    return digest(b"reply", canonical_json(answer_of(reply)))
