"""A scripted Ollama (`POST /api/chat`) for the refund workflow, and the agent.

It answers as `ollama serve` does: `stream` true unless the body says false,
NDJSON lines (`application/x-ndjson`) with the text in pieces, tool calls
with object arguments, and a last `done: true` line with counts and
nanosecond durations; `created_at` is the time of each reply.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from .openai_chat import ORDERS, SYSTEM, TOOLS
from .provider import Call, JSONReply, StreamReply


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def decide(messages: list[dict]) -> dict:
    """The assistant message the model 'writes' for this conversation."""
    results = [json.loads(m["content"]) for m in messages if m.get("role") == "tool"]
    order_id = re.search(r"\d+", next(m["content"] for m in messages if m.get("role") == "user")).group(0)
    if not results:
        return {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "get_order", "arguments": {"order_id": order_id}}}]}
    if len(results) == 1:
        order = results[0]
        return {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "refund", "arguments": {"order_id": order["order_id"], "amount": order["amount"]}}}]}
    order = results[0]
    return {"role": "assistant", "thinking": "The refund went through.",
            "content": f"Refunded {order['amount']} for order {order['order_id']} ({order['customer']})."}


STATS = {"done_reason": "stop", "total_duration": 812_000_000, "load_duration": 2_000_000,
         "prompt_eval_count": 48, "prompt_eval_duration": 60_000_000, "eval_count": 11, "eval_duration": 700_000_000}


def handler(call: Call) -> JSONReply | StreamReply:
    body = call.json
    if not call.path.endswith("/api/chat") or not isinstance(body, dict):
        return JSONReply({"error": "not found"}, status=404)
    message = decide(body["messages"])
    model = body["model"]
    if body.get("stream", True) is False:
        return JSONReply({"model": model, "created_at": _now(), "message": message, "done": True, **STATS})
    lines: list[dict] = []
    for field in ("thinking", "content"):
        for word in re.findall(r"\S+\s*", message.get(field) or ""):
            lines.append({"model": model, "created_at": _now(),
                          "message": {"role": "assistant", "content": "", field: word}, "done": False})
    if "tool_calls" in message:
        lines.append({"model": model, "created_at": _now(),
                      "message": {"role": "assistant", "content": "", "tool_calls": message["tool_calls"]}, "done": False})
    lines.append({"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""}, "done": True, **STATS})
    return StreamReply([json.dumps(line).encode() + b"\n" for line in lines], content_type="application/x-ndjson")


# -- the agent side: an unmodified `ollama` client tool loop ---------------------

def run_agent(client: Any, order_id: str, *, stream: bool = False, model: str = "llama3.2",
              image: bytes | None = None) -> dict:
    user: dict[str, Any] = {"role": "user", "content": f"Please refund order {order_id}."}
    if image is not None:
        user["images"] = [image]
    messages: list[Any] = [{"role": "system", "content": SYSTEM}, user]
    calls: list[tuple[str, dict]] = []
    counts: list[tuple[int | None, int | None]] = []
    for _ in range(5):
        if stream:
            content, thinking, tool_calls, last = "", "", [], None
            for part in client.chat(model=model, messages=messages, tools=TOOLS, stream=True, options={"temperature": 0}):
                content += part.message.content or ""
                thinking += part.message.thinking or ""
                tool_calls += part.message.tool_calls or []
                last = part
            message = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            reply = last
        else:
            reply = client.chat(model=model, messages=messages, tools=TOOLS, options={"temperature": 0})
            message = reply.message
            tool_calls = list(message.tool_calls or [])
            content, thinking = message.content, message.thinking
        assert reply is not None and reply.done
        counts.append((reply.eval_count, reply.total_duration))
        messages.append(message)
        if not tool_calls:
            return {"answer": content, "thinking": thinking, "calls": calls, "counts": counts}
        for tc in tool_calls:
            args = dict(tc.function.arguments)
            calls.append((tc.function.name, args))
            result = ORDERS[args["order_id"]] if tc.function.name == "get_order" else {"refunded": True}
            messages.append({"role": "tool", "content": json.dumps(result), "tool_name": tc.function.name})
    raise AssertionError("the agent did not finish")
