"""Anthropic Messages: `POST .../v1/messages` on any host.

Key: model, system, messages, tools and every answer-changing parameter,
plus the `anthropic-version` and `anthropic-beta` headers (they change the
reply's shape and features). Out of the key: `stream`, `metadata`,
`service_tier`, `cache_control` hints, tool-use ids (aliased by position),
and the bytes of images and documents (keyed by their sha256 instead).

Reply: the plain `message` body without its volatile ids (`id`, `tool_use`
ids). A streamed reply is assembled into that same shape; it additionally
keeps `_stream`, the shape of the stream it came from (where the deltas were
split, unknown events, the message_start and message_delta as sent), so a
streamed replay yields the very events the provider sent. `_stream` holds
lengths and markers, not a second copy of the text, and is only used when it
still reproduces the reply exactly (otherwise the stream is synthesised from
the message, as it is for a reply recorded plain).

Opaque fields (`thinking` + `signature`, `redacted_thinking.data`,
citations, server tool blocks, unknown block types) are kept as sent.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
from typing import Any, Iterator

from butter.store.canonical import parse_json_text
from butter.store.model import Conversation

from . import sse
from .base import (
    JSON_HEADERS, SSE_HEADERS, NotUnderstood, ParsedRequest, WireFormat, WireRequest, WireResponse,
    compact_json, json_object_body,
)

# Body fields that never change the answer (wire-formats.md §3).
NON_SEMANTIC = frozenset({"stream", "metadata", "service_tier", "cache_control"})
# Headers that change the answer and so belong to the root.
SEMANTIC_HEADERS = ("anthropic-version", "anthropic-beta")
# Block keys that are hints to the provider's prompt cache, not content.
BLOCK_HINTS = frozenset({"cache_control"})
STREAM_KEY = "_stream"

_PIECE = re.compile(r"\s*\S+\s*|\s+")
_ID_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}


class AnthropicMessages(WireFormat):
    name = "anthropic-messages"

    def recognise(self, method: str, path: str) -> bool:
        # Not /v1/messages/count_tokens nor /v1/messages/batches: those pass through.
        return path.rstrip("/").endswith("/v1/messages")

    # -- request -----------------------------------------------------------
    def parse_request(self, request: WireRequest) -> ParsedRequest:
        body = json_object_body(request.body)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str):
            raise NotUnderstood("no model")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise NotUnderstood("no messages list")
        params: dict[str, Any] = {}
        for key, value in body.items():
            if key in NON_SEMANTIC or key in ("model", "messages", "system") or value is None:
                continue
            if key == "tools" and isinstance(value, list):
                value = [_without_hints(t) for t in value]
            elif key == "mcp_servers" and isinstance(value, list):
                value = [_without_secret(s) for s in value]
            params[key] = value
        context: dict[str, Any] = {"api": self.name, "model": model, "params": params,
                                   "headers": {h: request.headers[h] for h in SEMANTIC_HEADERS if h in request.headers}}
        if request.query:
            context["query"] = dict(sorted(request.query.items()))  # e.g. ?beta=true
        aliases = _Aliases()
        canonical: list[dict] = []
        system = body.get("system")
        if system is not None:
            content = _canonical_content(system, aliases)
            if content:
                canonical.append({"role": "system", "content": content})
        canonical.extend(_canonical_message(m, aliases) for m in messages)
        return ParsedRequest(Conversation(context, tuple(canonical)), stream=body.get("stream") is True)

    # -- reply: provider -> canonical ---------------------------------------
    def reply_from_body(self, body: bytes, streamed: bool) -> dict | None:
        if streamed:
            try:
                # An event without data is skipped by the SDK, and so here.
                events = [(e.event, parse_json_text(e.data)) for e in sse.parse(body) if e.data]
            except UnicodeDecodeError:
                return None
            return assemble(events)
        message = parse_json_text(body.decode("utf-8", "replace"))
        if not isinstance(message, dict) or message.get("type") != "message" or not isinstance(message.get("content"), list):
            return None
        if not all(isinstance(b, dict) for b in message["content"]):
            return None
        # Tool-use ids stay in the stored reply (bookkeeping to agreement and induction): an exact hit
        # serves them as recorded, for agents that write them into their next prompt's text.
        return {k: v for k, v in message.items() if k != "id"}

    def bound_reply(self, reply: dict, bindings: dict[str, str]) -> dict:
        """A template hit answers another run: fresh tool-use ids, never a recorded run's."""
        content = reply.get("content")
        if not isinstance(content, list):
            return reply
        return {**reply, "content": [_without_tool_id(b) if isinstance(b, dict) else b for b in content]}

    # -- reply: canonical -> wire ------------------------------------------
    def render(self, reply: dict, parsed: ParsedRequest) -> WireResponse:
        ids = _FreshIds(reply)
        headers = {"request-id": "req_" + _random_id(24)}
        if parsed.stream:
            events = shaped_events(reply, ids)
            if events is None:
                events = synthesised_events(reply, ids)
            body = b"".join(sse.encode(data, event=name) for name, data in events)
            return WireResponse(200, {**SSE_HEADERS, **headers}, body)
        return WireResponse(200, {**JSON_HEADERS, **headers}, compact_json(plain_message(reply, ids)))

    def error(self, status: int, message: str, code: str) -> WireResponse:
        # `code` is butter's own error kind (e.g. butter_replay_miss); it stands
        # where Anthropic puts its error type, so clients can tell the two apart.
        body = {"type": "error", "error": {"type": code or _ERROR_TYPES.get(status, "api_error"), "message": message}}
        return WireResponse(status, dict(JSON_HEADERS), compact_json(body))


# -- the key: canonical messages ------------------------------------------------

class _Aliases:
    """Tool-use ids by position (`toolu#N`): fresh on every reply, so never keyed.

    A tool result must still say which call it answers, so the N-th tool use
    of the conversation and the results that point at it share one alias.
    """

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def define(self, raw: str) -> str:
        return self.known.setdefault(raw, f"toolu#{len(self.known)}")

    def refer(self, raw: str) -> str:
        return self.known.get(raw, raw)


def _canonical_message(message: dict, aliases: _Aliases) -> dict:
    out: dict[str, Any] = {}
    for key, value in message.items():
        if value is None:
            continue  # SDKs echo unset fields back as null
        out[key] = _canonical_content(value, aliases) if key == "content" else value
    return out


def _canonical_content(value: Any, aliases: _Aliases) -> Any:
    """A string is one text block; blocks lose cache hints, ids and inline bytes."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}] if value else []
    if isinstance(value, list):
        return [_canonical_block(b, aliases) if isinstance(b, dict) else b for b in value]
    return value


def _canonical_block(block: dict, aliases: _Aliases) -> dict:
    out: dict[str, Any] = {}
    kind = block.get("type")
    for key, value in block.items():
        if key in BLOCK_HINTS or value is None:
            continue
        if key == "id" and isinstance(kind, str) and kind.endswith("tool_use") and isinstance(value, str):
            out["ref"] = aliases.define(value)
        elif key == "tool_use_id" and isinstance(value, str):
            out["tool_use_ref"] = aliases.refer(value)
        elif key == "content":
            out[key] = _canonical_content(value, aliases)
        elif key == "source" and isinstance(value, dict):
            out[key] = _canonical_source(value, aliases)
        else:
            out[key] = value
    return out


def _canonical_source(source: dict, aliases: _Aliases) -> dict:
    """Inline base64 bytes are keyed by their hash and never stored in the tree."""
    if isinstance(source.get("data"), str) and source.get("type") == "base64":
        digest = hashlib.sha256(source["data"].encode("ascii", "replace")).hexdigest()
        return {**{k: v for k, v in source.items() if k != "data"}, "sha256": digest}
    if isinstance(source.get("content"), list):  # a document made of blocks
        return {**source, "content": _canonical_content(source["content"], aliases)}
    return source


def _without_hints(value: Any) -> Any:
    return {k: v for k, v in value.items() if k not in BLOCK_HINTS} if isinstance(value, dict) else value


def _without_secret(server: Any) -> Any:
    # An MCP server's bearer token is a credential: never in the key or the tree.
    return {k: v for k, v in server.items() if k != "authorization_token"} if isinstance(server, dict) else server


def _without_tool_id(block: dict) -> dict:
    if block.get("type") == "tool_use":
        return {k: v for k, v in block.items() if k != "id"}
    return block


# -- replies: assembling a stream ------------------------------------------------

class _Unrecordable(Exception):
    """The stream is not a whole, valid message: it is never recorded."""


def assemble(events: list[tuple[str, Any]]) -> dict | None:
    """The message a stream amounts to (plus its `_stream` shape), or None.

    None when the stream is not whole (no message_stop, or no message_delta
    with a stop_reason), carries an `error` event, or is something the SDK
    itself would reject (a closed tool block whose JSON does not parse).
    Events are read by their data's `type`, as the SDK reads them; `ping` and
    unnamed events are skipped, as the SDK skips them.
    """
    try:
        return _Assembler().run(events)
    except (_Unrecordable, KeyError, TypeError, IndexError, AttributeError):
        return None


class _Assembler:
    def __init__(self) -> None:
        self.message: dict | None = None
        self.start: dict = {}
        self.blocks: list[dict] = []
        self.starts: list[dict] = []
        self.json_bufs: dict[int, str] = {}
        self.closed: set[int] = set()
        self.script: list[list] = []
        self.stop_reason = None
        self.stopped = False

    def run(self, events: list[tuple[str, Any]]) -> dict:
        for name, data in events:
            if name == "ping" or not name:
                continue
            if name == "error" or not isinstance(data, dict) or data.get("type") == "error":
                raise _Unrecordable("error event")
            self.take(name, data)
        if self.message is None or not self.stopped or self.stop_reason is None:
            raise _Unrecordable("stream incomplete")
        for index, buf in self.json_bufs.items():
            self.blocks[index]["input"] = _final_input(buf, closed=index in self.closed)
        reply = {k: v for k, v in self.message.items() if k != "id"}
        reply["content"] = list(self.blocks)  # tool-use ids kept, as in a plain reply
        for entry in self.script:
            if entry[0] == "block":  # the opening block, or null when it equals the final one
                opening = _without_tool_id(self.starts[entry[1]])
                entry[2] = None if opening == _without_tool_id(reply["content"][entry[1]]) else opening
        reply[STREAM_KEY] = {"start": self.start, "events": self.script}
        return reply

    def take(self, name: str, data: dict) -> None:
        kind = data.get("type")
        if self.message is None:
            if kind == "message_start":
                if data["message"].get("content"):
                    raise _Unrecordable("content before any content_block_start")
                self.message = copy.deepcopy(data["message"])
                self.message["content"] = []
                self.start = {k: v for k, v in data["message"].items() if k not in ("id", "content")}
                self.script.append(["start"])
            else:  # before message_start the SDK passes events through untouched
                self.script.append(["raw", name, data])
            return
        if kind == "content_block_start":
            if data["index"] != len(self.blocks):
                raise _Unrecordable("content blocks out of order")
            self.starts.append(copy.deepcopy(data["content_block"]))
            self.blocks.append(copy.deepcopy(data["content_block"]))
            self.script.append(["block", data["index"], None])
        elif kind == "content_block_delta":
            self.delta(data["index"], data["delta"])
        elif kind == "content_block_stop":
            index = self.started(data["index"])
            if index in self.json_bufs:
                self.blocks[index]["input"] = _final_input(self.json_bufs.pop(index), closed=True)
            self.closed.add(index)
            self.script.append(["stop", index])
        elif kind == "message_delta":
            self.message.update(data.get("delta") or {})
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            usage = self.message.setdefault("usage", {})
            usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None or k not in usage})
            self.message.update({k: v for k, v in data.items() if k not in ("type", "delta", "usage")})
            self.script.append(["message_delta", {k: v for k, v in data.items() if k != "type"}])
        elif kind == "message_stop":
            self.stopped = True
            extra = {k: v for k, v in data.items() if k != "type"}
            self.script.append(["message_stop", extra] if extra else ["message_stop"])
        elif kind == "message_start":
            raise _Unrecordable("a second message_start")
        else:  # an event type this adapter does not know: kept as sent
            self.script.append(["raw", name, data])

    def started(self, index: Any) -> int:
        """The index of a block that has started; anything else the SDK would choke on."""
        if not isinstance(index, int) or not 0 <= index < len(self.blocks):
            raise _Unrecordable(f"no content block {index!r}")
        return index

    def delta(self, index: int, delta: dict) -> None:
        index = self.started(index)
        block = self.blocks[index]
        kind, btype = delta.get("type"), block.get("type")
        if kind == "text_delta" and btype == "text":
            block["text"] = (block.get("text") or "") + delta["text"]
            self.script.append(["text", index, len(delta["text"])])
        elif kind == "thinking_delta" and btype == "thinking":
            block["thinking"] = (block.get("thinking") or "") + delta["thinking"]
            self.script.append(["thinking", index, len(delta["thinking"])])
        elif kind == "input_json_delta" and "input" in block:
            self.json_bufs[index] = self.json_bufs.get(index, "") + delta["partial_json"]
            self.script.append(["json", index, delta["partial_json"]])
        elif kind == "citations_delta" and btype == "text":
            block["citations"] = (block.get("citations") or []) + [delta["citation"]]
            self.script.append(["cite", index])
        elif kind == "signature_delta" and btype == "thinking":
            block["signature"] = delta["signature"]
            self.script.append(["sig", index])
        else:
            # An unknown delta (e.g. compaction_delta): strings extend the
            # block's strings, anything else replaces; the delta is kept as sent.
            for key, value in delta.items():
                if key == "type":
                    continue
                if isinstance(value, str) and isinstance(block.get(key), str):
                    block[key] += value
                else:
                    block[key] = copy.deepcopy(value)
            self.script.append(["delta", index, delta])


def _final_input(buf: str, closed: bool) -> Any:
    """A tool block's input from its streamed JSON.

    A closed block must hold whole JSON (the SDK raises otherwise). A block
    the message ended inside (stop_reason max_tokens) keeps the complete part,
    the way the SDK's partial parser reads it.
    """
    if buf == "":
        return {}
    try:
        return json.loads(buf)
    except ValueError:
        if closed:
            raise _Unrecordable("tool input is not JSON") from None
    value = partial_json(buf)
    if value is _MISSING:
        raise _Unrecordable("tool input is not JSON")
    return value


# -- partial JSON ------------------------------------------------------------------

_MISSING = object()
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")


class _Truncated(Exception):
    def __init__(self, value: Any = _MISSING) -> None:
        self.value = value


class _Invalid(Exception):
    pass


def partial_json(text: str) -> Any:
    """The complete part of JSON cut off at its end; `_MISSING` if there is none.

    Containers keep the members that were complete; a string, number or
    literal cut off mid-way is dropped. Anything malformed before the end is
    `_MISSING` too: only a truncation is forgiven.
    """
    pos = 0
    decoder = json.JSONDecoder()

    def ws() -> None:
        nonlocal pos
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1

    def value() -> Any:
        nonlocal pos
        ws()
        if pos >= len(text):
            raise _Truncated()
        c = text[pos]
        if c == "{":
            return obj()
        if c == "[":
            return arr()
        if c == '"':
            return string()
        match = _NUMBER.match(text, pos)
        if match:
            rest = text[match.end():]
            if rest[:1] in (".", "e", "E", "+", "-") and rest[:1]:
                if re.fullmatch(r"[0-9.eE+-]*", rest):
                    raise _Truncated()  # `12.` or `1e`: a number still being written
                raise _Invalid()
            pos = match.end()
            return json.loads(match.group(0))
        if text[pos:] == "-":
            raise _Truncated()
        for literal, result in (("true", True), ("false", False), ("null", None)):
            if text.startswith(literal, pos):
                pos += len(literal)
                return result
            if literal.startswith(text[pos:]):
                raise _Truncated()
        raise _Invalid()

    def string() -> str:
        nonlocal pos
        try:
            result, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if "Unterminated" in e.msg or e.pos >= len(text) - 1 or text.find('"', pos + 1) == -1:
                raise _Truncated() from None
            raise _Invalid() from None
        return result

    def obj() -> dict:
        nonlocal pos
        out: dict[str, Any] = {}
        pos += 1
        while True:
            ws()
            if pos >= len(text):
                raise _Truncated(out)
            if text[pos] == "}":
                pos += 1
                return out
            if text[pos] != '"':
                raise _Invalid()
            try:
                key = string()
            except _Truncated:
                raise _Truncated(out) from None
            ws()
            if pos >= len(text):
                raise _Truncated(out)
            if text[pos] != ":":
                raise _Invalid()
            pos += 1
            try:
                out[key] = value()
            except _Truncated as t:
                if t.value is not _MISSING:
                    out[key] = t.value
                raise _Truncated(out) from None
            ws()
            if pos >= len(text):
                raise _Truncated(out)
            if text[pos] == ",":
                pos += 1
            elif text[pos] != "}":
                raise _Invalid()

    def arr() -> list:
        nonlocal pos
        out: list[Any] = []
        pos += 1
        while True:
            ws()
            if pos >= len(text):
                raise _Truncated(out)
            if text[pos] == "]":
                pos += 1
                return out
            try:
                out.append(value())
            except _Truncated as t:
                if t.value is not _MISSING:
                    out.append(t.value)
                raise _Truncated(out) from None
            ws()
            if pos >= len(text):
                raise _Truncated(out)
            if text[pos] == ",":
                pos += 1
            elif text[pos] != "]":
                raise _Invalid()

    try:
        result = value()
    except _Truncated as t:
        return t.value
    except _Invalid:
        return _MISSING
    ws()
    return result if pos == len(text) else _MISSING


# -- replies: rendering ----------------------------------------------------------------

def _random_id(n: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


class _FreshIds:
    """A fresh message id and one id per tool_use block (the recorded one on an exact hit, else fresh),
    used throughout one reply."""

    def __init__(self, reply: dict) -> None:
        self.message = "msg_01" + _random_id(22)
        self.tools = {i: b["id"] if isinstance(b.get("id"), str) and b["id"] else "toolu_01" + _random_id(22)
                      for i, b in enumerate(reply.get("content") or [])
                      if isinstance(b, dict) and b.get("type") == "tool_use"}

    def block(self, index: int, block: dict) -> dict:
        """The block with its fresh id in the place the API puts it (after `type`)."""
        if index not in self.tools or not isinstance(block, dict) or block.get("type") != "tool_use":
            return block
        out: dict[str, Any] = {"type": "tool_use", "id": self.tools[index]}
        out.update({k: v for k, v in block.items() if k not in ("type", "id")})
        return out


def plain_message(reply: dict, ids: _FreshIds) -> dict:
    out: dict[str, Any] = {"id": ids.message}
    for key, value in reply.items():
        if key in ("id", STREAM_KEY):
            continue
        out[key] = [ids.block(i, b) for i, b in enumerate(value)] if key == "content" else value
    out.setdefault("type", "message")
    out.setdefault("role", "assistant")
    return out


Events = list[tuple[str, dict]]


def shaped_events(reply: dict, ids: _FreshIds) -> Events | None:
    """The recorded stream's own events, when its shape still fits the reply.

    Text is cut at the recorded lengths from the reply's text; the result is
    assembled again and must give the reply back exactly, so a reply changed
    since (e.g. by template bindings) falls back to a synthesised stream.
    """
    shape = reply.get(STREAM_KEY)
    if not isinstance(shape, dict) or not isinstance(shape.get("events"), list):
        return None
    try:
        events = list(_shaped(reply, shape, ids))
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    again = assemble(events)
    if again is None:
        return None
    expected = {k: v for k, v in reply.items() if k != STREAM_KEY}
    return events if {k: v for k, v in again.items() if k != STREAM_KEY} == expected else None


def _shaped(reply: dict, shape: dict, ids: _FreshIds) -> Iterator[tuple[str, dict]]:
    content = reply["content"]
    offsets: dict[tuple[int, str], int] = {}
    cited: dict[int, int] = {}

    def cut(index: int, field: str, n: int) -> str:
        start = offsets.get((index, field), 0)
        offsets[(index, field)] = start + n
        piece = content[index][field][start:start + n]
        if len(piece) != n:
            raise ValueError("recorded lengths exceed the text")
        return piece

    for entry in shape["events"]:
        tag = entry[0]
        if tag == "raw":
            yield entry[1], entry[2]
        elif tag == "start":
            message = {"id": ids.message, **shape["start"], "content": []}
            yield "message_start", {"type": "message_start", "message": message}
        elif tag == "block":
            index, opening = entry[1], entry[2]
            block = content[index] if opening is None else opening
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": ids.block(index, block)}
        elif tag in ("text", "thinking"):
            index = entry[1]
            delta = {"type": f"{tag}_delta", tag: cut(index, tag, entry[2])}
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        elif tag == "json":
            yield "content_block_delta", {"type": "content_block_delta", "index": entry[1],
                                          "delta": {"type": "input_json_delta", "partial_json": entry[2]}}
        elif tag == "cite":
            index = entry[1]
            n = cited.get(index, 0)
            cited[index] = n + 1
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "citations_delta", "citation": content[index]["citations"][n]}}
        elif tag == "sig":
            index = entry[1]
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "signature_delta", "signature": content[index]["signature"]}}
        elif tag == "delta":
            yield "content_block_delta", {"type": "content_block_delta", "index": entry[1], "delta": entry[2]}
        elif tag == "stop":
            yield "content_block_stop", {"type": "content_block_stop", "index": entry[1]}
        elif tag == "message_delta":
            yield "message_delta", {"type": "message_delta", **entry[1]}
        elif tag == "message_stop":
            yield "message_stop", {"type": "message_stop", **(entry[1] if len(entry) > 1 else {})}
        else:
            raise ValueError(f"unknown shape entry {tag!r}")


# Fields the stream sends in message_delta rather than in message_start.
_DELTA_FIELDS = ("stop_reason", "stop_sequence", "stop_details", "container")


def synthesised_events(reply: dict, ids: _FreshIds) -> Events:
    """A stream for a reply recorded plain: the order and shape the API uses."""
    message = plain_message(reply, ids)
    usage = dict(message.get("usage") or {})
    usage.setdefault("input_tokens", 0)
    usage.setdefault("output_tokens", 0)
    head = {k: v for k, v in message.items() if k not in ("content", *_DELTA_FIELDS)}
    head.update({"content": [], "stop_reason": None, "stop_sequence": None, "usage": usage})
    events: Events = [("message_start", {"type": "message_start", "message": head})]

    def delta(index: int, body: dict) -> None:
        events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}))

    for index, block in enumerate(message["content"]):
        kind = block.get("type")
        if kind == "text":
            opening = {**block, "text": ""}
            if isinstance(block.get("citations"), list):
                opening["citations"] = []
        elif kind == "thinking":
            opening = {**block, "thinking": "", "signature": ""}
        elif isinstance(kind, str) and kind.endswith("tool_use") and isinstance(block.get("input"), dict):
            opening = {**block, "input": {}}
        else:
            opening = block  # redacted_thinking, tool results, unknown blocks: whole, in one event
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}))
        if opening is not block:
            if kind == "text":
                for citation in block.get("citations") or []:
                    delta(index, {"type": "citations_delta", "citation": citation})
                for piece in _pieces(block.get("text") or ""):
                    delta(index, {"type": "text_delta", "text": piece})
            elif kind == "thinking":
                for piece in _pieces(block.get("thinking") or ""):
                    delta(index, {"type": "thinking_delta", "thinking": piece})
                if block.get("signature"):
                    delta(index, {"type": "signature_delta", "signature": block["signature"]})
            elif block["input"]:
                delta(index, {"type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)})
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    tail = {k: message.get(k) for k in _DELTA_FIELDS if k in message or k in ("stop_reason", "stop_sequence")}
    events.append(("message_delta", {"type": "message_delta", "delta": tail, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _pieces(text: str) -> list[str]:
    """Word-sized pieces, so a replayed stream still arrives incrementally."""
    return _PIECE.findall(text) if text else []


FORMAT = AnthropicMessages()
