"""A scripted Gemini model for the refund workflow, and the agent that uses it.

The fake answers as generativelanguage.googleapis.com does: the model from the
path, plain JSON for `:generateContent`, `data: ` SSE chunks for
`:streamGenerateContent?alt=sse` (a JSON array without `alt`), cumulative
usageMetadata, a fresh `responseId` and function-call ids every time, and an
opaque `thoughtSignature` on each function call that must come back
byte-exact in the history (as Gemini 3 requires), or the fake answers 400.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from typing import Any

from .openai_chat import ORDERS, SYSTEM
from .provider import Call, JSONReply, StreamReply

PATH = re.compile(r"/models/(?P<model>[^/:]+):(?P<verb>generateContent|streamGenerateContent)$")
DECLARATIONS = [
    {"name": "get_order", "description": "Look up an order",
     "parameters": {"type": "OBJECT", "properties": {"order_id": {"type": "STRING"}}, "required": ["order_id"]}},
    {"name": "refund", "description": "Refund an order",
     "parameters": {"type": "OBJECT", "properties": {"order_id": {"type": "STRING"}, "amount": {"type": "NUMBER"}},
                    "required": ["order_id", "amount"]}},
]

_issued: set[bytes] = set()
_issued_lock = threading.Lock()


def _signature() -> str:
    raw = secrets.token_bytes(48)
    with _issued_lock:
        _issued.add(raw)
    return base64.b64encode(raw).decode()


def _decoded(signature: Any) -> bytes | None:
    # Proto JSON accepts bytes in either base64 alphabet; the SDK re-encodes url-safe.
    if not isinstance(signature, str):
        return None
    return base64.b64decode(signature.replace("-", "+").replace("_", "/") + "=" * (-len(signature) % 4))


def _field(d: dict, camel: str) -> Any:
    snake = re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), camel)
    return d.get(camel, d.get(snake))


def unsigned_calls(contents: list[dict]) -> list[str]:
    """Function calls in the history whose signature this fake never issued."""
    bad = []
    for content in contents:
        for part in content.get("parts") or []:
            call = _field(part, "functionCall")
            if call and _decoded(_field(part, "thoughtSignature")) not in _issued:
                bad.append(call.get("name", "?"))
    return bad


def thinks(model: str) -> bool:
    """Gemini 2.5 and later think, and sign their function calls; 2.0 does neither."""
    return not model.startswith("gemini-2.0")


def decide(contents: list[dict], signed: bool = True) -> list[dict]:
    """The parts the model 'writes' for this history."""
    results = [_field(p, "functionResponse") for c in contents for p in c.get("parts") or []
               if _field(p, "functionResponse")]
    first_text = next(p["text"] for c in contents for p in c.get("parts") or [] if p.get("text"))
    order_id = re.search(r"\d+", first_text).group(0)
    if not results:
        return [{"functionCall": {"id": secrets.token_hex(4), "name": "get_order", "args": {"order_id": order_id}},
                 **({"thoughtSignature": _signature()} if signed else {})}]
    if len(results) == 1:
        order = results[0]["response"]
        return [{"functionCall": {"id": secrets.token_hex(4), "name": "refund",
                                  "args": {"order_id": order["order_id"], "amount": order["amount"]}},
                 **({"thoughtSignature": _signature()} if signed else {})}]
    order = results[0]["response"]
    return [{"text": f"Refunded {order['amount']} for order {order['order_id']} ({order['customer']})."}]


def usage(output_tokens: int) -> dict:
    return {"promptTokenCount": 40, "candidatesTokenCount": output_tokens, "totalTokenCount": 40 + output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 40}]}


def response(parts: list[dict], model: str) -> dict:
    return {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage(9), "modelVersion": model, "responseId": secrets.token_urlsafe(16)}


def stream_chunks(parts: list[dict], model: str) -> list[dict]:
    """Text arrives word by word and its signature in a last empty part;
    usageMetadata grows with every chunk."""
    rid = secrets.token_urlsafe(16)
    pieces: list[dict] = []
    for part in parts:
        if "text" in part:
            pieces.extend({"text": w} for w in re.findall(r"\S+\s*", part["text"]))
            if thinks(model):
                pieces.append({"text": "", "thoughtSignature": _signature()})
        else:
            pieces.append(part)
    chunks = []
    for n, piece in enumerate(pieces, start=1):
        candidate: dict[str, Any] = {"content": {"parts": [piece], "role": "model"}, "index": 0}
        if n == len(pieces):
            candidate["finishReason"] = "STOP"
        chunks.append({"candidates": [candidate], "usageMetadata": usage(n), "modelVersion": model, "responseId": rid})
    return chunks


def handler(call: Call) -> JSONReply | StreamReply:
    match = PATH.search(call.path)
    body = call.json
    if match is None or not isinstance(body, dict):
        return JSONReply({"error": {"code": 404, "message": "no such method", "status": "NOT_FOUND"}}, status=404)
    model = match["model"]
    unsigned = unsigned_calls(body["contents"]) if thinks(model) else []
    if unsigned:
        return JSONReply({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                    "message": f"Function call is missing a thought_signature: {unsigned}"}}, status=400)
    parts = decide(body["contents"], signed=thinks(model))
    if match["verb"] == "generateContent":
        return JSONReply(response(parts, model))
    chunks = stream_chunks(parts, model)
    if call.query.get("alt") == "sse":
        return StreamReply([b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks])
    return StreamReply([b"[" + b",\r\n".join(json.dumps(c).encode() for c in chunks) + b"]"],
                       content_type="application/json; charset=UTF-8")


# -- the agent side: an unmodified google-genai tool loop ------------------------

# Image-shaped bytes; the fake never decodes them, only their hash matters.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def run_agent(client: Any, order_id: str, *, stream: bool = False, model: str = "gemini-2.5-flash",
              image: bytes | None = None) -> dict:
    from google.genai import types

    user_parts = [types.Part(text=f"Please refund order {order_id}.")]
    if image is not None:
        user_parts.append(types.Part.from_bytes(data=image, mime_type="image/png"))
    contents: list[Any] = [types.Content(role="user", parts=user_parts)]
    config = types.GenerateContentConfig(
        system_instruction=SYSTEM, temperature=0,
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(**d) for d in DECLARATIONS])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    calls: list[tuple[str, dict]] = []
    signatures: list[bytes] = []
    cache: list[str] = []
    usage_totals: list[int] = []
    for _ in range(5):
        if stream:
            parts: list[Any] = []
            last = None
            for chunk in client.models.generate_content_stream(model=model, contents=contents, config=config):
                parts.extend(chunk.candidates[0].content.parts or [])
                last = chunk
            content = types.Content(role="model", parts=parts)
            reply = last
        else:
            reply = client.models.generate_content(model=model, contents=contents, config=config)
            content = reply.candidates[0].content
        cache.append((reply.sdk_http_response.headers or {}).get("butter-cache", ""))
        usage_totals.append(reply.usage_metadata.total_token_count)
        contents.append(content)
        signatures.extend(p.thought_signature for p in content.parts if p.thought_signature)
        function_calls = [p.function_call for p in content.parts if p.function_call]
        if not function_calls:
            answer = "".join(p.text for p in content.parts if p.text)
            return {"answer": answer, "calls": calls, "cache": cache, "signatures": signatures, "usage": usage_totals}
        for fc in function_calls:
            args = dict(fc.args)
            calls.append((fc.name, args))
            result = ORDERS[args["order_id"]] if fc.name == "get_order" else {"refunded": True}
            contents.append(types.Content(role="user", parts=[types.Part(
                function_response=types.FunctionResponse(id=fc.id, name=fc.name, response=result))]))
    raise AssertionError("the agent did not finish")
