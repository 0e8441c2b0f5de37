"""A small support agent: an OpenAI tool loop over a shop's orders.

It is written the way agents usually are, with nothing in it for tests: the
`openai` SDK reads OPENAI_API_KEY (and any proxy settings) from the
environment, the model asks for tools, the loop runs them and sends the
results back until the model answers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from openai import OpenAI

MODEL = "gpt-4o-mini"
SYSTEM = "You are a support agent for a web shop. Use the tools, then answer in one sentence."
TOOLS = [
    {"type": "function", "function": {
        "name": "get_order", "description": "Look up an order by its id",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "refund", "description": "Refund an order in full",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                       "required": ["order_id", "amount"]}}},
]
MAX_TURNS = 6


@dataclass
class Shop:
    """The agent's tools: a tiny order book that remembers the refunds it made."""

    orders: dict[str, dict]
    refunds: list[tuple[str, float]] = field(default_factory=list)

    def call(self, name: str, args: dict) -> dict:
        if name == "get_order":
            return self.orders.get(args["order_id"], {"error": "no such order"})
        if name == "refund":
            self.refunds.append((args["order_id"], args["amount"]))
            return {"refunded": True, "order_id": args["order_id"]}
        return {"error": f"unknown tool {name}"}


def run(request: str, shop: Shop, *, stream: bool = False, client: OpenAI | None = None) -> str:
    """Handle one customer request; returns the agent's final answer."""
    client = client or OpenAI()
    messages: list[dict] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]
    for _ in range(MAX_TURNS):
        if stream:
            with client.chat.completions.stream(model=MODEL, messages=messages, tools=TOOLS) as events:
                completion = events.get_final_completion()
        else:
            completion = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        message = completion.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        messages.append({"role": "assistant", "content": message.content,
                         "tool_calls": [{"id": c.id, "type": "function",
                                         "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                        for c in message.tool_calls]})
        for call in message.tool_calls:
            result = shop.call(call.function.name, json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    raise RuntimeError(f"no answer after {MAX_TURNS} turns")
