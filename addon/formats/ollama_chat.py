"""Ollama's native chat API: `POST .../api/chat`.

Unlike OpenAI's, `stream` defaults to true when the body leaves it out, and a
streamed reply is NDJSON (one JSON object a line, `application/x-ndjson`),
the last one with `done: true` and the counts and durations (nanoseconds).
Tool-call `arguments` are JSON objects, not strings, and images are base64
strings in a message's `images` list: the key holds their content hash.

The canonical reply is the whole (non-streamed) `/api/chat` body without its
`created_at`; a stream is assembled into that shape, so either recording
renders as either form.
"""
from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timezone
from typing import Any, Iterator

from butter.store.canonical import base64_digest
from butter.store.model import Conversation

from .base import (
    JSON_HEADERS, NotUnderstood, ParsedRequest, WireFormat, WireRequest, WireResponse,
    compact_json, json_object_body,
)

# Fields that never change the answer (wire-formats.md §6).
NON_SEMANTIC = frozenset({"stream", "keep_alive"})
NDJSON_HEADERS = {"content-type": "application/x-ndjson"}
# Message fields a stream spreads over many lines and the assembly joins back.
TEXT_FIELDS = ("thinking", "content")  # in the order a stream sends them
_PIECE = re.compile(r"\s*\S+\s*|\s+")


class OllamaChat(WireFormat):
    name = "ollama-chat"

    def recognise(self, method: str, path: str) -> bool:
        return path.rstrip("/").endswith("/api/chat")

    # -- request -----------------------------------------------------------
    def parse_request(self, request: WireRequest) -> ParsedRequest:
        body = json_object_body(request.body)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise NotUnderstood("no model")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise NotUnderstood("no messages list")
        params = {k: v for k, v in body.items() if k not in NON_SEMANTIC and k not in ("model", "messages") and v is not None}
        context = {"api": self.name, "model": model, "params": params}
        return ParsedRequest(
            conversation=Conversation(context, tuple(_canonical_messages(messages))),
            stream=body.get("stream", True) is not False,  # absent means streamed
        )

    # -- reply: provider -> canonical ---------------------------------------
    def reply_from_body(self, body: bytes, streamed: bool) -> dict | None:
        lines = _objects(body)
        if not lines:
            return None
        reply = _assemble(lines)
        if reply is None:
            return None
        # Tool-call ids stay (bookkeeping to agreement and induction): an exact hit serves them as
        # recorded, for agents that write them into their next prompt's text.
        return reply

    def bound_reply(self, reply: dict, bindings: dict[str, str]) -> dict:
        """A template hit answers another run: fresh tool-call ids (render makes them), never a recorded run's."""
        calls = reply.get("message", {}).get("tool_calls") or []
        if not any(isinstance(c, dict) and c.get("id") for c in calls):
            return reply
        blank = [{**c, "id": ""} if isinstance(c, dict) and "id" in c else c for c in calls]
        return {**reply, "message": {**reply["message"], "tool_calls": blank}}

    # -- reply: canonical -> wire ------------------------------------------
    def render(self, reply: dict, parsed: ParsedRequest) -> WireResponse:
        now = _now()
        reply = _with_fresh_call_ids(reply)
        if not parsed.stream:
            return WireResponse(200, dict(JSON_HEADERS), compact_json(_with_time(reply, now)))
        body = b"".join(compact_json(line) + b"\n" for line in _stream_lines(reply, now))
        return WireResponse(200, dict(NDJSON_HEADERS), body)

    def error(self, status: int, message: str, code: str) -> WireResponse:
        return WireResponse(status, dict(JSON_HEADERS), compact_json({"error": message}))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def image_digest(image: Any) -> Any:
    """The content hash that stands for a base64 image in the key and the tree."""
    if not isinstance(image, str):
        return image
    return {"sha256": base64_digest(image)}  # invalid base64 keys apart from any valid bytes


def _canonical_messages(messages: list[dict]) -> Iterator[dict]:
    """Messages as the key sees them: images by hash, empty fields dropped,
    tool-call ids (fresh on every reply, when a server sends them) by position."""
    aliases: dict[str, str] = {}
    for message in messages:
        out: dict[str, Any] = {}
        for key, value in message.items():
            if value is None or value == "" or value == []:
                continue  # the client sends unset fields as null or empty
            if key == "images" and isinstance(value, list):
                out["images"] = [image_digest(i) for i in value]
            elif key == "tool_calls" and isinstance(value, list):
                calls = []
                for call in value:
                    call = dict(call) if isinstance(call, dict) else {"raw": call}
                    raw_id = call.pop("id", None)
                    if isinstance(raw_id, str) and raw_id:
                        call["ref"] = aliases.setdefault(raw_id, f"call#{len(aliases)}")
                    calls.append(call)
                out["tool_calls"] = calls
            elif key == "tool_call_id" and isinstance(value, str):
                out["tool_call_ref"] = aliases.get(value, value)
            else:
                out[key] = value
        yield out


def _objects(body: bytes) -> list[dict] | None:
    """The JSON objects of a body: one object, or NDJSON lines."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            try:  # a plain reply pretty-printed over several lines
                value = json.loads(text)
            except ValueError:
                return None
            return [value] if isinstance(value, dict) else None
        if not isinstance(value, dict):
            return None
        out.append(value)
    return out


def _assemble(lines: list[dict]) -> dict | None:
    """The whole reply the lines amount to, or None when it is not whole.

    Whole means no line carries an `error` and the last one says `done`.
    """
    message: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for line in lines:
        if "error" in line:
            return None
        for key, value in line.items():
            if key == "message" and isinstance(value, dict):
                for mk, mv in value.items():
                    if mk in TEXT_FIELDS and isinstance(mv, str):
                        message[mk] = message.get(mk, "") + mv
                    elif mk in ("tool_calls", "images") and isinstance(mv, list):
                        message[mk] = message.get(mk, []) + mv
                    elif mv is not None:
                        message[mk] = mv
            elif key != "created_at":
                top[key] = value
    if top.get("done") is not True or not message:
        return None
    return {"model": top.pop("model", ""), "message": message, **top}


def _with_time(reply: dict, now: str) -> dict:
    return {"model": reply.get("model", ""), "created_at": now, **{k: v for k, v in reply.items() if k != "model"}}


def _with_fresh_call_ids(reply: dict) -> dict:
    """A fresh id for each call that has none recorded (a template hit, an older recording)."""
    calls = reply["message"].get("tool_calls") or []
    if not any(isinstance(c, dict) and "id" in c and not c["id"] for c in calls):
        return reply
    fresh = [{**c, "id": "call_" + secrets.token_hex(4)} if isinstance(c, dict) and "id" in c and not c["id"] else c
             for c in calls]
    return {**reply, "message": {**reply["message"], "tool_calls": fresh}}


def _stream_lines(reply: dict, now: str) -> Iterator[dict]:
    """The reply as Ollama streams it: thinking, then content in word-sized
    pieces, tool calls in one line, then `done` with the counts."""
    model = reply.get("model", "")
    message = reply["message"]
    role = message.get("role", "assistant")
    head = {"model": model, "created_at": now}
    for field in TEXT_FIELDS:
        text = message.get(field)
        if isinstance(text, str) and text:
            for piece in _PIECE.findall(text) or [text]:
                yield {**head, "message": {"role": role, "content": "", field: piece}, "done": False}
    extras = {k: v for k, v in message.items() if k not in TEXT_FIELDS and k != "role"}
    if extras:
        yield {**head, "message": {"role": role, "content": "", **extras}, "done": False}
    last = {k: v for k, v in reply.items() if k not in ("model", "message")}
    yield {**head, "message": {"role": role, "content": ""}, **last}


FORMAT = OllamaChat()
