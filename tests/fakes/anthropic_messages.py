"""A scripted Anthropic Messages model for a refund workflow, and its agent.

The model answers the way the real API does: fresh `msg_`/`toolu_` ids every
time, plain JSON or SSE with an `event:` line on every event (message_start,
content_block_start/delta/stop, ping, message_delta with usage, message_stop),
and it rejects what the real API rejects: a tool_result that points at no
tool_use of the previous turn, and a thinking block whose signature it did
not issue. It decides deterministically from the conversation:

    no tool result yet      -> text + tool_use get_order(order_id)
    one tool result         -> tool_use refund(order_id, amount)
    two tool results        -> final text naming the order and amount

With `thinking` enabled in the request, every reply opens with a signed
thinking block and a redacted_thinking block, which the agent must send back.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from typing import Any, Callable

from .provider import Call, JSONReply, StreamReply

MODEL = "claude-sonnet-4-6"
TOOLS = [
    {"name": "get_order", "description": "Look up an order",
     "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}},
    {"name": "refund", "description": "Refund an order",
     "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                      "required": ["order_id", "amount"]}},
]
SYSTEM = "You are a support agent. Use the tools, then answer in one sentence."
_SIGNING_KEY = b"fake-anthropic-signing-key"


def sign(thinking: str) -> str:
    """The opaque signature this 'model' issues for a thinking text."""
    return base64.b64encode(hashlib.sha256(_SIGNING_KEY + thinking.encode()).digest() * 3).decode()


def _error(status: int, kind: str, message: str) -> JSONReply:
    return JSONReply({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def _blocks(message: dict) -> list[dict]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def check(body: dict) -> JSONReply | None:
    """What the real API would refuse, as a 400; None when the request is valid."""
    previous_tool_ids: set[str] = set()
    for message in body["messages"]:
        blocks = _blocks(message)
        for block in blocks:
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in previous_tool_ids:
                return _error(400, "invalid_request_error", f"unexpected tool_use_id {block.get('tool_use_id')!r}")
            if block.get("type") == "thinking" and block.get("signature") != sign(block.get("thinking", "")):
                return _error(400, "invalid_request_error", "Invalid `signature` in `thinking` block")
        previous_tool_ids = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    return None


def tool_result_contents(messages: list[dict]) -> list:
    """What each tool_result block of a conversation carries, in order (for fakes that decide by them)."""
    return [b["content"] for m in messages if isinstance(m["content"], list) for b in m["content"]
            if b.get("type") == "tool_result"]


def decide(body: dict) -> list[dict]:
    """The content blocks the model 'writes' for this conversation (tool ids left out)."""
    results = [b for m in body["messages"] if m["role"] == "user" for b in _blocks(m) if b.get("type") == "tool_result"]
    first_user = _blocks(body["messages"][0])
    order_id = re.search(r"\d+", first_user[0]["text"]).group(0)
    blocks: list[dict] = []
    if (body.get("thinking") or {}).get("type") == "enabled":
        thought = f"The customer wants order {order_id} refunded; step {len(results) + 1}."
        blocks.append({"type": "thinking", "thinking": thought, "signature": sign(thought)})
        blocks.append({"type": "redacted_thinking", "data": "EmwKAhgBEgy" + hashlib.sha256(thought.encode()).hexdigest()})
    if not results:
        blocks.append({"type": "text", "text": f"Let me look up order {order_id}."})
        blocks.append({"type": "tool_use", "name": "get_order", "input": {"order_id": order_id}})
    elif len(results) == 1:
        order = json.loads(_result_text(results[0]))
        blocks.append({"type": "tool_use", "name": "refund", "input": {"order_id": order["order_id"], "amount": order["amount"]}})
    else:
        order = json.loads(_result_text(results[0]))
        blocks.append({"type": "text", "text": f"Refunded {order['amount']} for order {order['order_id']} ({order['customer']})."})
    return blocks


def _result_text(result: dict) -> str:
    content = result["content"]
    return content if isinstance(content, str) else content[0]["text"]


def message(blocks: list[dict], model: str) -> dict:
    content = [{"type": "tool_use", "id": "toolu_01" + secrets.token_hex(11), **{k: v for k, v in b.items() if k != "type"}}
               if b["type"] == "tool_use" else b for b in blocks]
    return {"id": "msg_01" + secrets.token_hex(11), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 120, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": 31, "service_tier": "standard"}}


def _event(data: dict) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def stream_events(full: dict) -> list[bytes]:
    """The SSE the real API sends for `full`, one event per chunk."""
    start = {k: v for k, v in full.items() if k != "content"}
    start.update(content=[], stop_reason=None, stop_sequence=None,
                 usage={**full["usage"], "output_tokens": 1})
    out = [_event({"type": "message_start", "message": start})]
    for index, block in enumerate(full["content"]):
        kind = block["type"]
        opening = {"text": {"type": "text", "text": ""},
                   "thinking": {"type": "thinking", "thinking": "", "signature": ""},
                   "tool_use": {**block, "input": {}}}.get(kind, block)
        out.append(_event({"type": "content_block_start", "index": index, "content_block": opening}))
        if index == 0:
            out.append(_event({"type": "ping"}))

        def delta(body: dict) -> None:
            out.append(_event({"type": "content_block_delta", "index": index, "delta": body}))

        if kind == "text":
            for word in re.findall(r"\S+\s*", block["text"]):
                delta({"type": "text_delta", "text": word})
        elif kind == "thinking":
            for word in re.findall(r"\S+\s*", block["thinking"]):
                delta({"type": "thinking_delta", "thinking": word})
            delta({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "tool_use":
            arguments = json.dumps(block["input"])
            delta({"type": "input_json_delta", "partial_json": ""})
            for at in range(0, len(arguments), 7):
                delta({"type": "input_json_delta", "partial_json": arguments[at:at + 7]})
        out.append(_event({"type": "content_block_stop", "index": index}))
    out.append(_event({"type": "message_delta", "delta": {"stop_reason": full["stop_reason"], "stop_sequence": None},
                       "usage": {"output_tokens": full["usage"]["output_tokens"]}}))
    out.append(_event({"type": "message_stop"}))
    return out


def handler_for(write: Callable[[dict], list[dict]]) -> Callable[[Call], JSONReply | StreamReply]:
    """A provider handler for a model whose content blocks `write(body)` decides:
    the request checked as the real API does, the answer plain or streamed."""
    def handle(call: Call) -> JSONReply | StreamReply:
        body = call.json
        refused = check(body)
        if refused is not None:
            return refused
        full = message(write(body), body["model"])
        return StreamReply(stream_events(full)) if body.get("stream") else JSONReply(full)
    return handle


handler = handler_for(decide)


# -- the agent side: what an unmodified agent does with the SDK ----------------

ORDERS = {
    "1234": {"order_id": "1234", "customer": "Ana Ruiz", "amount": 42.5, "status": "paid"},
    "9876": {"order_id": "9876", "customer": "Bo Chen", "amount": 17.0, "status": "paid"},
}


def run_agent(client: Any, order_id: str, *, stream: bool = False, model: str = MODEL,
              thinking: bool = False, **extra: Any) -> dict:
    """A plain tool loop, as agents write it; returns what a person would check."""
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 1024, "system": SYSTEM, "tools": TOOLS, **extra}
    if thinking:
        kwargs["thinking"] = {"type": "enabled", "budget_tokens": 1024}

    def run_tool(name: str, args: dict) -> dict:
        return ORDERS[args["order_id"]] if name == "get_order" else {"refunded": True}

    return tool_loop(client, f"Please refund order {order_id}.", kwargs, run_tool, stream=stream)


def tool_loop(client: Any, instruction: str, kwargs: dict[str, Any], run_tool: Any, *, stream: bool = False,
              steps: int = 5) -> dict:
    """An Anthropic SDK agent: ask, run each tool_use with `run_tool(name, input)`, send the
    results back, until a reply calls no tool. Returns the answer, the calls made, each
    response's butter-cache header and the replies."""
    messages: list[dict] = [{"role": "user", "content": instruction}]
    calls: list[tuple[str, dict]] = []
    cache: list[str] = []
    replies: list[Any] = []
    for _ in range(steps):
        if stream:
            with client.messages.stream(messages=messages, **kwargs) as s:
                reply = s.get_final_message()
                cache.append(s.response.headers.get("butter-cache", ""))
        else:
            raw = client.messages.with_raw_response.create(messages=messages, **kwargs)
            cache.append(raw.headers.get("butter-cache", ""))
            reply = raw.parse()
        replies.append(reply)
        messages.append({"role": "assistant", "content": reply.content})
        uses = [b for b in reply.content if b.type == "tool_use"]
        if not uses:
            text = "".join(b.text for b in reply.content if b.type == "text")
            return {"answer": text, "calls": calls, "cache": cache, "replies": replies}
        results = []
        for use in uses:
            calls.append((use.name, dict(use.input)))
            results.append({"type": "tool_result", "tool_use_id": use.id,
                            "content": json.dumps(run_tool(use.name, dict(use.input)))})
        messages.append({"role": "user", "content": results})
    raise AssertionError("the agent did not finish")
