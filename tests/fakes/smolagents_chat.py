"""A scripted OpenAI Chat Completions model for a smolagents ToolCallingAgent.

smolagents does not send tool results as `tool` messages: it writes the
calls it made into the next request as text (`Calling tools:\n[{'id':
'call_…', …}]`) and each result as `Call id: call_…\nObservation: …`. The
model here counts those observations to decide its next step, and mints
fresh call ids every time, as the real API does:

    no observation yet   -> call get_order(order_id)
    one observation      -> call refund(order_id, amount)
    two observations     -> call final_answer(answer)
"""
from __future__ import annotations

import ast
import json
import re

from . import openai_chat
from .provider import Call, JSONReply


def _texts(messages: list[dict]) -> list[str]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p.get("text", "") for p in content if isinstance(p, dict)]
    return out


def decide(messages: list[dict]) -> dict:
    texts = _texts([m for m in messages if m.get("role") != "system"])  # the system prompt has examples
    observations = [t for t in texts if "Observation:" in t]
    task = next(t for t in texts if "refund order" in t)
    order_id = re.search(r"refund order (\d+)", task).group(1)
    if not observations:
        return {"tool_calls": [("get_order", {"order_id": order_id})]}
    if len(observations) == 1:
        observed = observations[0].split("Observation:", 1)[1].strip()
        order = ast.literal_eval(observed) if observed.startswith("{") else json.loads(observed)
        return {"tool_calls": [("refund", {"order_id": order["order_id"], "amount": order["amount"]})]}
    return {"tool_calls": [("final_answer", {"answer": f"Refunded order {order_id}."})]}


def handler(call: Call) -> JSONReply:
    body = call.json
    return JSONReply(openai_chat.completion(decide(body["messages"]), body["model"]))
