"""What every wire adapter provides, in plain values (bytes, dicts, strings).

An adapter knows one provider's JSON, SSE or NDJSON and nothing of mitmproxy
or storage:

    parse_request(WireRequest)  -> ParsedRequest  (conversation + how to answer)
    reply_from_body(bytes, streamed) -> canonical reply | None (None: not recordable)
    render(reply, ParsedRequest, bindings) -> WireResponse (plain or streamed,
                                              as *this* request asks)
    error(status, message, code) -> WireResponse in the provider's error shape
"""
from __future__ import annotations

import json
import json.encoder
from dataclasses import dataclass, field
from typing import Any, Protocol

from butter.store.model import Conversation


class NotUnderstood(ValueError):
    """The request is not one butter can key; it passes through untouched."""

def json_object_body(raw: bytes) -> dict:
    """A request body that must be a JSON object; anything else is not understood."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise NotUnderstood(f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise NotUnderstood("body is not a JSON object")
    return body


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# `json.dumps` builds a JSONEncoder and a C encoder on every call, which costs
# a rendered reply more than encoding it; this one is built once, with the
# same settings as `json.dumps(value, separators=(",", ":"), ensure_ascii=False)`
# and so the same bytes. No circular-reference markers: a reply decoded from
# JSON has no cycles (one would end in RecursionError).
_COMPACT = (json.encoder.c_make_encoder(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False,
                                        False, True)
            if json.encoder.c_make_encoder is not None else None)


def compact_json(value: Any) -> bytes:
    """The bytes butter sends: compact JSON, UTF-8 as is."""
    if _COMPACT is not None:
        return "".join(_COMPACT(value, 0)).encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")



@dataclass(frozen=True)
class WireRequest:
    method: str
    path: str  # without the query string
    query: dict[str, str]  # secrets already removed
    headers: dict[str, str]  # lower-case names, secrets already removed
    body: bytes


@dataclass(frozen=True)
class ParsedRequest:
    conversation: Conversation
    stream: bool
    # Format-specific facts the renderer needs and the key must not see
    # (e.g. OpenAI's stream_options.include_usage).
    render_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WireResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class StateTable(Protocol):
    """A small JSON table private to one format and one namespace.

    For formats whose requests lean on server-side state (the Responses API's
    `previous_response_id`): the addon hands one to `expand` and `remember`,
    so the adapter stays sans-IO and never learns about LMDB or namespaces.
    """

    def get(self, key: str) -> Any | None: ...
    def put(self, key: str, value: Any) -> None: ...


JSON_HEADERS = {"content-type": "application/json"}
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class WireFormat:
    """Base for adapters. `name` is also the API kind in the tree's root."""

    name: str = ""
    # True for formats that implement `expand` and `remember` below.
    keeps_state: bool = False

    def recognise(self, method: str, path: str) -> bool:
        raise NotImplementedError

    def parse_request(self, request: WireRequest) -> ParsedRequest:
        raise NotImplementedError

    def reply_from_body(self, body: bytes, streamed: bool) -> dict | None:
        raise NotImplementedError

    def render(self, reply: dict, parsed: ParsedRequest) -> WireResponse:
        raise NotImplementedError

    def error(self, status: int, message: str, code: str) -> WireResponse:
        raise NotImplementedError

    # Optional, for formats with server-side conversation state. The addon
    # calls `expand` before the lookup (it may raise NotUnderstood: state
    # butter never saw) and `remember` after a reply is recorded or served.
    def expand(self, parsed: ParsedRequest, state: StateTable) -> ParsedRequest:
        return parsed

    def remember(self, parsed: ParsedRequest, reply: dict, state: StateTable, issued: bool = False) -> None:
        """`issued`: the reply came from the provider on this upstream (not from the tree)."""
        return None

    def upstream_body(self, parsed: ParsedRequest, body: bytes, state: StateTable) -> bytes | None:
        """The body to forward instead of the client's (None: forward it unchanged).

        For a request leaning on state the provider may not hold (a response
        butter served); may raise NotUnderstood: then it goes as it is.
        """
        return None

    def bound_reply(self, reply: dict, bindings: dict[str, str]) -> dict:
        """A template reply just filled with a walk's bindings, before render.

        For formats that replay recorded ids (Responses): the same ids must not
        name conversations with other values, so they are derived here.
        """
        return reply
