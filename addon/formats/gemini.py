"""Google Gemini: `.../models/{model}:generateContent` and `:streamGenerateContent`.

The model comes from the path; the verb and `?alt=sse` only choose the reply's
form, so they stay out of the key (the API key, in `x-goog-api-key` or
`?key=`, never reaches an adapter at all). Google's JSON parsers accept both
lowerCamelCase and snake_case field names, and SDKs mix them in one body, so
the key is built from a copy with every proto field name in lowerCamelCase;
user-defined names (function arguments, schema property names) are left
exactly as they were.

The canonical reply is the `GenerateContentResponse` without its `responseId`;
a stream (SSE, or the JSON array `streamGenerateContent` returns without
`alt=sse`) is assembled into that same shape. `thoughtSignature` is opaque
and round-trips as the exact string the provider sent.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any, Iterator

from butter.store.canonical import base64_digest
from butter.store.model import Conversation

from . import sse
from .base import (
    JSON_HEADERS, SSE_HEADERS, NotUnderstood, ParsedRequest, WireFormat, WireRequest, WireResponse,
    compact_json, json_object_body,
)

_PATH = re.compile(r"(?:^|/)(?:v1|v1beta|v1alpha|v1beta1)/(?P<resource>(?:[^:]*/)?)(?P<collection>models|tunedModels)/"
                   r"(?P<model>[^/:]+):(?P<verb>generateContent|streamGenerateContent)$")
# Top-level fields that never change the answer (wire-formats.md §6).
NON_SEMANTIC = frozenset({"labels"})
# Fields whose value is the user's own JSON: names inside are data, not proto
# field names, and are never re-spelled.
OPAQUE_VALUES = frozenset({"args", "response", "parametersJsonSchema", "responseJsonSchema", "example", "default",
                           "structValue"})
# Fields holding a map from user-chosen names to schemas.
SCHEMA_MAPS = frozenset({"properties", "defs", "$defs"})
# Gemini's error statuses by HTTP code (google.rpc.Code names).
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE"}
_PIECE = re.compile(r"\s*\S+\s*|\s+")


class Gemini(WireFormat):
    name = "gemini"

    def recognise(self, method: str, path: str) -> bool:
        return _PATH.search(path) is not None

    # -- request -----------------------------------------------------------
    def parse_request(self, request: WireRequest) -> ParsedRequest:
        match = _PATH.search(request.path)
        if match is None:
            raise NotUnderstood("not a Gemini generate path")
        body = camel_case(json_object_body(request.body))
        contents = body.get("contents")
        if not isinstance(contents, list) or not all(isinstance(c, dict) for c in contents):
            raise NotUnderstood("no contents list")
        params = {k: v for k, v in body.items()
                  if k not in NON_SEMANTIC and k not in ("contents", "systemInstruction") and v is not None}
        model = match["model"] if match["collection"] == "models" else f"tunedModels/{match['model']}"
        context: dict[str, Any] = {"api": self.name, "model": model, "params": params}
        if match["resource"]:
            context["resource"] = match["resource"].rstrip("/")  # Vertex: project and location
        messages = list(_canonical_contents(body.get("systemInstruction"), contents))
        streamed = match["verb"] == "streamGenerateContent"
        return ParsedRequest(
            conversation=Conversation(context, tuple(messages)),
            stream=streamed,
            # Without alt=sse the stream verb answers with one JSON array.
            render_options={"form": ("sse" if request.query.get("alt") == "sse" else "array") if streamed else "plain"},
        )

    # -- reply: provider -> canonical ---------------------------------------
    def reply_from_body(self, body: bytes, streamed: bool) -> dict | None:
        chunks = _chunks_of(body)
        if chunks is None:
            return None
        reply = _assemble(chunks)
        if reply is None:
            return None
        # Function-call ids stay (bookkeeping to agreement and induction): an exact hit serves them as
        # recorded, for agents that write them into their next prompt's text.
        return reply

    def bound_reply(self, reply: dict, bindings: dict[str, str]) -> dict:
        """A template hit answers another run: fresh function-call ids (render makes them)."""
        if not _call_ids(reply):
            return reply
        reply = json.loads(json.dumps(reply))
        for call in _call_ids(reply):
            call["id"] = ""
        return reply

    # -- reply: canonical -> wire ------------------------------------------
    def render(self, reply: dict, parsed: ParsedRequest) -> WireResponse:
        response_id = secrets.token_urlsafe(16)[:22]
        reply = _with_fresh_call_ids(reply)
        form = parsed.render_options.get("form", "sse" if parsed.stream else "plain")
        if form == "plain":
            return WireResponse(200, dict(JSON_HEADERS), compact_json({**reply, "responseId": response_id}))
        chunks = list(_stream_chunks(reply, response_id))
        if form == "array":
            return WireResponse(200, dict(JSON_HEADERS), b"[" + b",\r\n".join(compact_json(c) for c in chunks) + b"]")
        # The SDK strips exactly "data: " (with the space); no event lines, no [DONE].
        body = b"".join(b"data: " + compact_json(c) + b"\r\n\r\n" for c in chunks)
        return WireResponse(200, {**SSE_HEADERS, "content-type": "text/event-stream"}, body)

    def error(self, status: int, message: str, code: str) -> WireResponse:
        body = {"error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN"),
                          "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code,
                                       "domain": "butter"}]}}
        return WireResponse(status, dict(JSON_HEADERS), compact_json(body))


# -- field names -----------------------------------------------------------------

def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def camel_case(value: Any) -> Any:
    """A copy with every proto field name in lowerCamelCase.

    Values of OPAQUE_VALUES fields are copied untouched, and the keys of
    SCHEMA_MAPS fields are kept (they are names the user chose) while the
    schemas under them are still converted.
    """
    if isinstance(value, list):
        return [camel_case(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _camel(key) if not key.startswith("$") else key
        if name in OPAQUE_VALUES:
            out[name] = item
        elif name in SCHEMA_MAPS and isinstance(item, dict):
            out[name] = {k: camel_case(v) for k, v in item.items()}
        else:
            out[name] = camel_case(item)
    return out


# -- canonical messages ------------------------------------------------------------

def media_digest(data: Any) -> str:
    """The content hash that stands for inline bytes in the key and the tree."""
    if isinstance(data, str):
        # Google reads standard and URL-safe base64, padded or not; anything
        # else keys apart from any valid bytes (base64_digest).
        return base64_digest(data, urlsafe=True)
    raw = json.dumps(data, sort_keys=True).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()


def _is_plain_text(part: dict) -> bool:
    return isinstance(part.get("text"), str) and set(part) <= {"text", "thought"}


def _canonical_parts(parts: list, aliases: dict[str, str]) -> list:
    """Parts as the key sees them.

    Adjacent plain text parts are one text (a streamed reply arrives in many
    small parts, the same reply served plain in one); inline bytes become
    their hash; function-call ids (fresh on every reply) become `call#N`.
    """
    out: list = []
    for part in parts:
        if not isinstance(part, dict):
            out.append(part)
            continue
        part = dict(part)
        if _is_plain_text(part):
            if part["text"] == "":
                continue
            last = out[-1] if out else None
            if isinstance(last, dict) and _is_plain_text(last) and last.get("thought") == part.get("thought"):
                out[-1] = {**last, "text": last["text"] + part["text"]}
                continue
        inline = part.get("inlineData")
        if isinstance(inline, dict) and "data" in inline:
            part["inlineData"] = {**{k: v for k, v in inline.items() if k != "data"},
                                  "sha256": media_digest(inline["data"])}
        for field in ("functionCall", "functionResponse"):
            item = part.get(field)
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
                ref = aliases.setdefault(item["id"], f"call#{len(aliases)}")
                part[field] = {**{k: v for k, v in item.items() if k != "id"}, "ref": ref}
        out.append(part)
    return out


def _canonical_contents(system: Any, contents: list[dict]) -> Iterator[dict]:
    aliases: dict[str, str] = {}
    if isinstance(system, dict):
        yield {"role": "system", "parts": _canonical_parts(system.get("parts") or [], aliases)}
    elif isinstance(system, str):  # some clients send the instruction as a bare string
        yield {"role": "system", "parts": [{"text": system}]}
    for content in contents:
        message = {k: v for k, v in content.items() if k != "parts" and v is not None}
        message["parts"] = _canonical_parts(content.get("parts") or [], aliases)
        yield message


# -- replies ---------------------------------------------------------------------------

def _chunks_of(body: bytes) -> list[dict] | None:
    """The response objects in a body: one JSON object, a JSON array, or SSE."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except ValueError:
            return None
        chunks = value if isinstance(value, list) else [value]
    else:
        # An error after a stream began arrives as bare JSON lines, not as a
        # `data:` event: any such line makes the stream not whole.
        for line in text.splitlines():
            if line.strip() and not line.startswith(("data:", ":", "event:", "id:", "retry:")):
                return None
        chunks = []
        for event in sse.parse(body):
            try:
                chunks.append(json.loads(event.data))
            except ValueError:
                return None
    if not chunks or not all(isinstance(c, dict) for c in chunks):
        return None
    return chunks


def _assemble(chunks: list[dict]) -> dict | None:
    """The one response the chunks amount to, or None if it is not whole.

    Whole means no chunk is an error and every candidate reached a
    finishReason (or the prompt itself was blocked). usageMetadata is
    cumulative, so the last one holds the totals.
    """
    top: dict[str, Any] = {}
    candidates: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if "error" in chunk:
            return None
        for key, value in chunk.items():
            if key == "candidates":
                for piece in value or []:
                    if isinstance(piece, dict):
                        _merge_candidate(candidates.setdefault(piece.get("index", 0), {}), piece)
            elif key not in ("responseId", "createTime") and value is not None:
                top[key] = value
    blocked = isinstance(top.get("promptFeedback"), dict) and top["promptFeedback"].get("blockReason")
    if not candidates and not blocked:
        return None
    if any(not c.get("finishReason") for c in candidates.values()):
        return None
    out: dict[str, Any] = {}
    if candidates:
        out["candidates"] = [candidates[i] for i in sorted(candidates)]
    out.update(top)
    return out


def _merge_candidate(acc: dict, piece: dict) -> None:
    for key, value in piece.items():
        if value is None:
            continue
        if key == "content" and isinstance(value, dict):
            content = acc.setdefault("content", {})
            for ck, cv in value.items():
                if ck == "parts":
                    parts = content.setdefault("parts", [])
                    for part in cv or []:
                        _append_part(parts, part)
                elif cv is not None:
                    content[ck] = cv
        elif key == "citationMetadata" and isinstance(value, dict) and "citationMetadata" in acc:
            before = acc["citationMetadata"].get("citations") or []
            acc["citationMetadata"] = {**value, "citations": before + (value.get("citations") or [])}
        else:
            acc[key] = value


def _append_part(parts: list, part: Any) -> None:
    """Adds a streamed part, joining text pieces back into one text part.

    Only plain text joins plain text: a part that carries a thoughtSignature
    (or anything else) stays exactly where and as it arrived.
    """
    last = parts[-1] if parts else None
    if (isinstance(part, dict) and _is_plain_text(part) and isinstance(last, dict) and _is_plain_text(last)
            and last.get("thought") == part.get("thought")):
        parts[-1] = {**last, "text": last["text"] + part["text"]}
    else:
        parts.append(dict(part) if isinstance(part, dict) else part)


def _call_ids(reply: dict) -> list[dict]:
    """Every functionCall of the reply that has an `id` field."""
    return [part["functionCall"] for candidate in reply.get("candidates") or []
            for part in (candidate.get("content") or {}).get("parts") or []
            if isinstance(part, dict) and isinstance(part.get("functionCall"), dict) and "id" in part["functionCall"]]


def _with_fresh_call_ids(reply: dict) -> dict:
    """A fresh id for each call that has none recorded (a template hit, an older recording)."""
    if not any(not call["id"] for call in _call_ids(reply)):
        return reply
    reply = json.loads(json.dumps(reply))
    for call in _call_ids(reply):
        if not call["id"]:
            call["id"] = secrets.token_hex(4)
    return reply


def _stream_chunks(reply: dict, response_id: str) -> Iterator[dict]:
    """The reply as Gemini streams it: text in word-sized pieces, every other
    part whole, the finishReason and the totals on the last chunk."""
    head = {k: v for k, v in reply.items() if k not in ("candidates", "usageMetadata", "promptFeedback")}
    head["responseId"] = response_id
    candidates = reply.get("candidates") or []
    if not candidates:
        yield {**reply, "responseId": response_id}
        return
    pieces: list[dict] = []
    for candidate in candidates:
        content = candidate.get("content") or {}
        frame = {k: v for k, v in candidate.items() if k == "index"}
        shell = {k: v for k, v in content.items() if k != "parts"}  # the role
        mine: list[dict] = []
        for part in content.get("parts") or []:
            if isinstance(part, dict) and _is_plain_text(part) and part["text"]:
                texts = _PIECE.findall(part["text"]) or [part["text"]]
                mine.extend({**frame, "content": {**shell, "parts": [{**part, "text": t}]}} for t in texts)
            else:
                mine.append({**frame, "content": {**shell, "parts": [part]}})
        if not mine:
            mine.append({**frame, **({"content": shell} if shell else {})})
        mine[-1].update({k: v for k, v in candidate.items() if k not in ("content", "index")})
        pieces.extend(mine)
    for n, piece in enumerate(pieces):
        chunk: dict[str, Any] = {"candidates": [piece], **head}
        if n == 0 and "promptFeedback" in reply:
            chunk["promptFeedback"] = reply["promptFeedback"]
        if n == len(pieces) - 1 and "usageMetadata" in reply:
            chunk["usageMetadata"] = reply["usageMetadata"]
        yield chunk


FORMAT = Gemini()
