"""OpenAI Chat Completions: `POST .../chat/completions` on any host.

Serves api.openai.com, OpenRouter, Groq, Together, vLLM, Ollama's `/v1` and
any other OpenAI-compatible server. The canonical reply is the plain
`chat.completion` body without its volatile ids (`id`, `created`, tool-call
ids); a streamed reply is assembled into that same shape, so either
recording renders as either form.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any, Iterator

from butter.store.canonical import base64_digest, json_argument, parse_json_text
from butter.store.model import Conversation

from . import sse
from .base import (
    JSON_HEADERS, SSE_HEADERS, NotUnderstood, ParsedRequest, WireFormat, WireRequest, WireResponse,
    compact_json, json_object_body,
)

# Fields that never change the answer: out of the key (wire-formats.md §6).
NON_SEMANTIC = frozenset({
    "stream", "stream_options", "user", "safety_identifier", "metadata", "store", "service_tier",
    "prompt_cache_key", "prompt_cache_retention",
})
# Headers that change the answer and so belong to the root.
SEMANTIC_HEADERS = ("openai-beta",)
# Part keys that are hints to the provider's prompt cache, not content.
PART_HINTS = frozenset({"cache_control", "prompt_cache_breakpoint"})

_PIECE = re.compile(r"\s*\S+\s*|\s+")


class OpenAIChat(WireFormat):
    name = "openai-chat"
    kind = "openai-chat"

    def recognise(self, method: str, path: str) -> bool:
        return path.rstrip("/").endswith("/chat/completions")

    # -- request -----------------------------------------------------------
    def parse_request(self, request: WireRequest) -> ParsedRequest:
        body = json_object_body(request.body)
        messages = body.get("messages")
        model = self.model_of(request, body)
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise NotUnderstood("no messages list")
        params = {k: v for k, v in body.items() if k not in NON_SEMANTIC and k not in ("messages", "model")}
        headers = {h: request.headers[h] for h in SEMANTIC_HEADERS if h in request.headers}
        context = {"api": self.kind, "model": model, "params": params, "headers": headers}
        context.update(self.extra_context(request))
        canonical = tuple(_canonical_messages(messages))
        stream_options = body.get("stream_options") or {}
        return ParsedRequest(
            conversation=Conversation(context, canonical),
            stream=body.get("stream") is True,
            render_options={"include_usage": bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))},
        )

    def model_of(self, request: WireRequest, body: dict) -> str:
        model = body.get("model")
        if not isinstance(model, str):
            raise NotUnderstood("no model")
        return model

    def extra_context(self, request: WireRequest) -> dict:
        return {}

    # -- reply: provider -> canonical ---------------------------------------
    def reply_from_body(self, body: bytes, streamed: bool) -> dict | None:
        reply = _assemble_stream(body) if streamed else _plain_reply(body)
        # Tool-call ids are kept (`id` is bookkeeping to reply agreement and
        # induction): an exact hit serves them as recorded, because agents
        # such as smolagents write them into the next request's text
        # ("Calling tools: [{'id': 'call_…'"), which then matches the recording.
        return reply

    def bound_reply(self, reply: dict, bindings: dict[str, str]) -> dict:
        """A template hit answers another run: fresh tool-call ids (render makes them), never a recorded run's."""
        return {**reply, "choices": [_without_call_ids(c) for c in reply.get("choices") or []]}

    # -- reply: canonical -> wire ------------------------------------------
    def render(self, reply: dict, parsed: ParsedRequest) -> WireResponse:
        ids = _FreshIds()
        if parsed.stream:
            body = b"".join(_stream_chunks(reply, ids, parsed.render_options.get("include_usage", False)))
            return WireResponse(200, dict(SSE_HEADERS), body)
        out = {"id": ids.completion, "object": "chat.completion", "created": ids.created}
        out.update({k: v for k, v in reply.items() if k not in ("id", "object", "created")})
        out["choices"] = [_with_call_ids(c, ids) for c in reply["choices"]]
        return WireResponse(200, dict(JSON_HEADERS), compact_json(out))

    def error(self, status: int, message: str, code: str) -> WireResponse:
        body = {"error": {"message": message, "type": "butter_error", "param": None, "code": code}}
        return WireResponse(status, dict(JSON_HEADERS), compact_json(body))


# -- canonical messages --------------------------------------------------------

def _canonical_messages(messages: list[dict]) -> Iterator[dict]:
    """Messages with volatile ids replaced by their position in the conversation.

    Tool-call ids are fresh on every provider reply (and on every replay), so
    they cannot be in the key; but a tool result must still say *which* call
    it answers when calls run in parallel. `call#N` (the N-th call of the
    conversation) keeps that link and drops the randomness.
    """
    aliases: dict[str, str] = {}
    for message in messages:
        out: dict[str, Any] = {}
        for key, value in message.items():
            if value is None:
                continue  # SDKs echo back unset fields as null
            if key == "content":
                content = _canonical_content(value)
                if content:
                    out["content"] = content
            elif key == "tool_calls" and isinstance(value, list):
                calls = []
                for call in value:
                    # Echoed nulls go here too (the stream helper's `function.parsed_arguments: null`).
                    call = {k: v for k, v in call.items() if v is not None} if isinstance(call, dict) else {"raw": call}
                    raw_id = call.pop("id", None)
                    # The SDK's stream accumulator leaves each call's `index`
                    # on the message an agent echoes back; a plain reply has
                    # none. The list order says the same thing.
                    call.pop("index", None)
                    if isinstance(raw_id, str):
                        aliases.setdefault(raw_id, f"call#{len(aliases)}")
                        call["ref"] = aliases[raw_id]
                    fn = call.get("function")
                    if isinstance(fn, dict) and any(v is None for v in fn.values()):
                        fn = call["function"] = {k: v for k, v in fn.items() if v is not None}
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        # Whitespace and key order inside arguments are not meaning;
                        # invalid JSON is keyed by its text, never like a valid value.
                        fn = dict(fn, arguments=json_argument(fn["arguments"]))
                        call["function"] = fn
                    calls.append(call)
                if calls:
                    out["tool_calls"] = calls
            elif key == "tool_call_id" and isinstance(value, str):
                out["tool_call_ref"] = aliases.get(value, value)
            elif key == "annotations" and value == []:
                continue
            else:
                out[key] = value
        yield out


def _canonical_content(value: Any) -> Any:
    """A string is the same as one text part; cache hints are dropped;
    inline media (data: URLs, base64 audio and files) stand as their hash."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}] if value else []
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, dict):
                part = _media_by_hash({k: v for k, v in part.items() if k not in PART_HINTS})
            parts.append(part)
        return parts
    return value


def _media_by_hash(part: dict) -> dict:
    """The part with its inline bytes replaced by their content hash.

    The bytes still decide the key, but the tree does not keep a copy of
    every image an agent ever sent.
    """
    def swap(inner: Any, field: str) -> Any:
        if not isinstance(inner, dict) or not isinstance(inner.get(field), str):
            return inner
        data = inner[field]
        out = {k: v for k, v in inner.items() if k != field}
        if data.startswith("data:") and "," in data:
            head, data = data.split(",", 1)
            out["media_type"] = head[len("data:"):].split(";", 1)[0]
        elif field == "url":
            return inner  # a real URL is itself the key
        out["sha256"] = base64_digest(data)  # invalid base64 keys apart from any valid bytes
        return out

    kind = part.get("type")
    if kind == "image_url":
        return {**part, "image_url": swap(part.get("image_url"), "url")}
    if kind == "input_audio":
        return {**part, "input_audio": swap(part.get("input_audio"), "data")}
    if kind == "file":
        return {**part, "file": swap(part.get("file"), "file_data")}
    return part


# -- replies -------------------------------------------------------------------

def _plain_reply(raw: bytes) -> dict | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or "error" in body or not isinstance(body.get("choices"), list):
        return None
    if not body["choices"] or any(not isinstance(c, dict) or "message" not in c for c in body["choices"]):
        return None
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def _assemble_stream(raw: bytes) -> dict | None:
    """The `chat.completion` a stream amounts to, or None if it is not whole.

    Whole means every choice reached a finish_reason and no chunk carried an
    error: a stream cut short is never recorded.
    """
    top: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    try:
        events = list(sse.parse(raw))
    except UnicodeDecodeError:
        return None
    for event in events:
        if event.data.strip() == "[DONE]":
            break
        chunk = parse_json_text(event.data)
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        for key, value in chunk.items():
            if key in ("id", "created", "object", "choices", "usage"):
                continue
            # "" as well: Azure's content-filter events say `model: ""`.
            if value is not None and value != "":
                top[key] = value
        if chunk.get("usage") is not None:
            top["usage"] = chunk["usage"]
        for piece in chunk.get("choices") or []:
            _merge_choice(choices.setdefault(piece.get("index", 0), _empty_choice(piece.get("index", 0))), piece)
    if not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    out = {"object": "chat.completion", **{k: v for k, v in top.items() if k != "object"}}
    out["choices"] = [_finish_choice(choices[i]) for i in sorted(choices)]
    return out


def _empty_choice(index: int) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": None, "refusal": None},
            "calls": {}, "logprobs": None, "finish_reason": None}


def _merge_choice(acc: dict, piece: dict) -> None:
    delta = piece.get("delta") or {}
    message = acc["message"]
    for key, value in delta.items():
        if key == "tool_calls":
            for fragment in value or []:
                call = acc["calls"].setdefault(fragment.get("index", 0), {"type": "function", "function": {"name": "", "arguments": ""}})
                for k, v in fragment.items():
                    if k == "function":
                        for fk, fv in (v or {}).items():
                            if isinstance(fv, str):
                                call["function"][fk] = call["function"].get(fk, "") + fv
                    elif k != "index" and v is not None:
                        call[k] = v
        elif value is None:
            continue
        elif isinstance(value, str) and key != "role":
            message[key] = (message.get(key) or "") + value
        else:
            message[key] = value
    if piece.get("logprobs") is not None:
        logprobs = acc["logprobs"] = acc["logprobs"] or {"content": None, "refusal": None}
        for key, value in piece["logprobs"].items():
            if isinstance(value, list):
                logprobs[key] = (logprobs.get(key) or []) + value
            elif value is not None:
                logprobs[key] = value
    for key, value in piece.items():
        if key in ("index", "delta", "logprobs"):
            continue
        # Azure sends `content_filter_results: {}` on chunks it did not check;
        # that must not erase the results an earlier chunk carried.
        if value is not None and not (value == {} and acc.get(key)):
            acc[key] = value


def _finish_choice(acc: dict) -> dict:
    message = acc["message"]
    if acc["calls"]:
        message["tool_calls"] = [acc["calls"][i] for i in sorted(acc["calls"])]
    out = {k: v for k, v in acc.items() if k != "calls"}
    out["message"] = message
    return out


class _FreshIds:
    def __init__(self) -> None:
        self.completion = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    @staticmethod
    def call() -> str:
        return "call_" + secrets.token_hex(12)


def _with_call_ids(choice: dict, ids: _FreshIds) -> dict:
    """Each call with its recorded id (an exact hit), else a fresh one (a template hit, an older recording)."""
    message = dict(choice.get("message") or {})
    if message.get("tool_calls"):
        message["tool_calls"] = [{**c, "id": _call_id(c, ids)} if "id" in c else {"id": _call_id(c, ids), **c}
                                 for c in message["tool_calls"]]
    return {**choice, "message": message}


def _call_id(call: dict, ids: _FreshIds) -> str:
    recorded = call.get("id")
    return recorded if isinstance(recorded, str) and recorded else ids.call()


def _without_call_ids(choice: dict) -> dict:
    message = choice.get("message")
    if not isinstance(message, dict) or not message.get("tool_calls"):
        return choice
    calls = [{k: v for k, v in c.items() if k != "id"} if isinstance(c, dict) else c for c in message["tool_calls"]]
    return {**choice, "message": {**message, "tool_calls": calls}}


def _pieces(text: str) -> list[str]:
    """Word-sized pieces, so a replayed stream still arrives incrementally."""
    return _PIECE.findall(text) or [text]


def _stream_chunks(reply: dict, ids: _FreshIds, include_usage: bool) -> Iterator[bytes]:
    head: dict[str, Any] = {"id": ids.completion, "object": "chat.completion.chunk", "created": ids.created,
                            "model": reply.get("model", "")}
    for key in ("system_fingerprint", "service_tier"):
        if reply.get(key) is not None:
            head[key] = reply[key]
    # Top-level extras (Azure's prompt_filter_results, Groq's x_groq, ...) ride
    # on the first chunk, the one the SDK's stream helper builds its snapshot
    # from. `obfuscation` is per-chunk padding, not content.
    extras = {k: v for k, v in reply.items()
              if k not in ("id", "object", "created", "model", "choices", "usage", "obfuscation") and k not in head}

    def chunk(choices: list[dict], **extra: Any) -> bytes:
        body = {**head, "choices": choices, **extra, **extras}
        extras.clear()
        if include_usage and "usage" not in body:
            body["usage"] = None
        return sse.encode(body)

    def piece(index: int, delta: dict, logprobs: Any = None, finish_reason: Any = None, **extra: Any) -> dict:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason, **extra}

    for choice in reply["choices"]:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        logprobs = choice.get("logprobs") or {}
        first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": "" if message.get("content") is not None else None}
        if message.get("refusal") is not None:
            first["refusal"] = ""
        yield chunk([piece(index, first, {"content": [], "refusal": None} if logprobs.get("content") is not None else None)])
        for key, value in message.items():
            if key in ("role", "content", "refusal", "tool_calls") or value is None or value == []:
                continue
            yield chunk([piece(index, {key: value})])  # reasoning, audio, annotations: one delta each
        for field in ("content", "refusal"):
            text = message.get(field)
            if not text:
                continue
            tokens = logprobs.get(field)
            if tokens and "".join(t.get("token", "") for t in tokens) == text:
                # One chunk per token keeps every logprob beside its text.
                for token in tokens:
                    yield chunk([piece(index, {field: token["token"]}, {"content": None, "refusal": None, field: [token]})])
            else:
                parts = _pieces(text)
                for n, part in enumerate(parts):
                    lp = {"content": None, "refusal": None, field: tokens} if tokens and n == 0 else None
                    yield chunk([piece(index, {field: part}, lp)])
        for n, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            opening = {"index": n, "id": _call_id(call, ids), "type": call.get("type", "function"),
                       "function": {"name": fn.get("name", ""), "arguments": ""}}
            yield chunk([piece(index, {"tool_calls": [opening]})])
            if fn.get("arguments"):
                yield chunk([piece(index, {"tool_calls": [{"index": n, "function": {"arguments": fn["arguments"]}}]})])
        extra = {k: v for k, v in choice.items() if k not in ("index", "message", "logprobs", "finish_reason")}
        yield chunk([piece(index, {}, None, choice.get("finish_reason") or "stop", **extra)])
    if include_usage and reply.get("usage") is not None:
        yield chunk([], usage=reply["usage"])
    yield b"data: [DONE]\n\n"


FORMAT = OpenAIChat()
