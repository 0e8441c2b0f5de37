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

from dataclasses import dataclass, field
from typing import Any

from store.model import Conversation


class NotUnderstood(ValueError):
    """The request is not one butter can key; it passes through untouched."""


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


JSON_HEADERS = {"content-type": "application/json"}
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


class WireFormat:
    """Base for adapters. `name` is also the API kind in the tree's root."""

    name: str = ""

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
