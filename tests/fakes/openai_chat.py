"""A scripted OpenAI Chat Completions model for a refund workflow.

It answers the way the real API does (fresh ids every time, plain JSON or SSE
chunks with a usage chunk when `stream_options.include_usage` is set), and
decides deterministically from the conversation:

    no tool result yet      -> call get_order(order_id)
    one tool result         -> call refund(order_id, amount)
    two tool results        -> final text naming the order and amount
"""
from __future__ import annotations

import json
import re
import secrets
from typing import Any

from .provider import Call, JSONReply, StreamReply

TOOLS = [
    {"type": "function", "function": {"name": "get_order", "description": "Look up an order",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "refund", "description": "Refund an order",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                    "required": ["order_id", "amount"]}}},
]
SYSTEM = "You are a support agent. Use the tools, then answer in one sentence."


def decide(messages: list[dict]) -> dict:
    """The assistant message the model 'writes' for this conversation."""
    tool_results = [m for m in messages if m.get("role") == "tool"]
    user = next(m for m in messages if m.get("role") == "user")
    text = user["content"] if isinstance(user["content"], str) else user["content"][0]["text"]
    order_id = re.search(r"\d+", text).group(0)
    if not tool_results:
        return {"tool_calls": [("get_order", {"order_id": order_id})]}
    if len(tool_results) == 1:
        order = json.loads(tool_results[0]["content"])
        return {"tool_calls": [("refund", {"order_id": order["order_id"], "amount": order["amount"]})]}
    order = json.loads(tool_results[0]["content"])
    return {"content": f"Refunded {order['amount']} for order {order['order_id']} ({order['customer']})."}


def completion(decision: dict, model: str) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": decision.get("content"), "refusal": None,
                               "annotations": []}
    if "tool_calls" in decision:
        message["tool_calls"] = [
            {"id": "call_" + secrets.token_hex(8), "type": "function",
             "function": {"name": name, "arguments": json.dumps(args)}}
            for name, args in decision["tool_calls"]]
    return {"id": "chatcmpl-" + secrets.token_hex(8), "object": "chat.completion", "created": 1700000000,
            "model": model + "-2024-07-18", "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if "tool_calls" in decision else "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}}


def stream_chunks(full: dict, include_usage: bool) -> list[bytes]:
    head = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
            "model": full["model"], "system_fingerprint": "fp_fake"}
    choice = full["choices"][0]
    message = choice["message"]
    events: list[dict] = []

    def add(delta: dict, finish: str | None = None) -> None:
        event = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            event["usage"] = None
        events.append(event)

    add({"role": "assistant", "content": "" if message["content"] is not None else None, "refusal": None})
    if message["content"]:
        for word in re.findall(r"\S+\s*", message["content"]):
            add({"content": word})
    for i, call in enumerate(message.get("tool_calls") or []):
        add({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                             "function": {"name": call["function"]["name"], "arguments": ""}}]})
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), 7):
            add({"tool_calls": [{"index": i, "function": {"arguments": arguments[start:start + 7]}}]})
    add({}, choice["finish_reason"])
    if include_usage:
        events.append({**head, "choices": [], "usage": full["usage"]})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def handler(call: Call) -> JSONReply | StreamReply:
    body = call.json
    full = completion(decide(body["messages"]), body["model"])
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamReply(stream_chunks(full, include_usage))
    return JSONReply(full)


# -- the agent side: what an unmodified agent does with the SDK ----------------

ORDERS = {
    "1234": {"order_id": "1234", "customer": "Ana Ruiz", "amount": 42.5, "status": "paid"},
    "9876": {"order_id": "9876", "customer": "Bo Chen", "amount": 17.0, "status": "paid"},
    "5555": {"order_id": "5555", "customer": "Cy Diaz", "amount": 29.9, "status": "paid"},
}
# A crowd of further customers for concurrency tests.
ORDERS.update({str(2000 + n): {"order_id": str(2000 + n), "customer": f"Customer {n}", "amount": float(n), "status": "paid"}
               for n in range(1, 25)})


def run_agent(client: Any, order_id: str, *, stream: bool = False, model: str = "gpt-4o-mini",
              include_usage: bool = False) -> dict:
    """A plain tool loop, as agents write it; returns what a person would check."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": f"Please refund order {order_id}."}]
    calls: list[tuple[str, dict]] = []
    cache_headers: list[str] = []
    for _ in range(5):
        if stream:
            kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
            with client.chat.completions.stream(model=model, messages=messages, tools=TOOLS, **kwargs) as s:
                final = s.get_final_completion()
                cache_headers.append(s.response.headers.get("butter-cache", "")) if hasattr(s, "response") else None
            message = final.choices[0].message
        else:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, tools=TOOLS)
            cache_headers.append(raw.headers.get("butter-cache", ""))
            message = raw.parse().choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return {"answer": message.content, "calls": calls, "cache": cache_headers}
        for tc in message.tool_calls:
            args = json.loads(tc.function.arguments)
            calls.append((tc.function.name, args))
            result = ORDERS[args["order_id"]] if tc.function.name == "get_order" else {"refunded": True}
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": json.dumps(result)})
    raise AssertionError("the agent did not finish")
