"""The bench's traffic: realistic OpenAI Chat requests and their replies.

Conversation `i` is an 8-message support-agent run (system prompt, user ask,
two tool calls with their JSON results, an answer, a follow-up question) with
three tool definitions, about 6 KB of JSON, which is what agents send on their
later turns. Every conversation shares its system prompt and tools per model
("context"), and differs from the user message on, so the tree gets a few
roots with many branches, as a real recording does. Everything is derived from
`i`, so a bench never has to keep a million conversations in memory.
"""
from __future__ import annotations

import json
import random

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")
API_KEY = "sk-bench-0123456789abcdef"
MESSAGES_PER_CONVERSATION = 8
# Nodes a conversation adds to the tree: every message after the shared system prompt.
NEW_NODES_PER_CONVERSATION = MESSAGES_PER_CONVERSATION - 1

SYSTEM = (
    "You are Ferris, the support agent of an online shop that sells kitchen equipment. "
    "Always look up the order before acting on it. Refund only paid orders, never more than "
    "the amount paid, and explain what you did in two short sentences. If the customer asks "
    "for something outside orders, refunds and shipping, say politely that you cannot help. "
) * 4
TOOLS = [
    {"type": "function", "function": {
        "name": "get_order", "description": "Look up an order by its id and return its status and amount.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "refund", "description": "Refund part or all of a paid order.",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "string"}, "amount": {"type": "number"},
            "reason": {"type": "string", "enum": ["damaged", "late", "changed_mind", "other"]}},
            "required": ["order_id", "amount"]}}},
    {"type": "function", "function": {
        "name": "track_shipment", "description": "Where a shipment is now and when it should arrive.",
        "parameters": {"type": "object", "properties": {"tracking_id": {"type": "string"}},
                       "required": ["tracking_id"]}}},
]
PRODUCTS = ("cast iron pan", "chef's knife", "stand mixer", "espresso machine", "dutch oven", "blender")


def model_of(i: int) -> str:
    return MODELS[i % len(MODELS)]


def request(i: int) -> dict:
    """The request body an agent sends on the last turn of conversation `i`."""
    rng = random.Random(i)
    order = f"{100000 + i}"
    product = rng.choice(PRODUCTS)
    amount = round(rng.uniform(15, 400), 2)
    order_json = {"order_id": order, "customer": f"Customer {i}", "status": "paid", "amount": amount,
                  "items": [{"sku": f"SKU-{rng.randrange(10**6):06d}", "name": product, "qty": 1, "price": amount}],
                  "shipping": {"carrier": "DHL", "tracking_id": f"JD{rng.randrange(10**12):012d}",
                               "address": f"{rng.randrange(1, 200)} Example Street, Springfield"}}
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Hi, my {product} from order {order} arrived broken. "
                                    f"Can I get my money back? It was {amount} EUR."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i:08x}a", "type": "function",
             "function": {"name": "get_order", "arguments": json.dumps({"order_id": order})}}]},
        {"role": "tool", "tool_call_id": f"call_{i:08x}a", "content": json.dumps(order_json)},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i:08x}b", "type": "function",
             "function": {"name": "refund", "arguments": json.dumps(
                 {"order_id": order, "amount": amount, "reason": "damaged"})}}]},
        {"role": "tool", "tool_call_id": f"call_{i:08x}b",
         "content": json.dumps({"refund_id": f"rf_{i}", "status": "succeeded", "amount": amount})},
        {"role": "assistant", "content": f"I have refunded {amount} EUR for your {product} (order {order}). "
                                         "You will see the money on your card within five working days."},
        {"role": "user", "content": "Thanks! Do I need to send the broken one back?"},
    ]
    return {"model": model_of(i), "messages": messages, "tools": TOOLS, "temperature": 0}


def request_bytes(i: int) -> bytes:
    return json.dumps(request(i)).encode()


def reply(i: int) -> dict:
    """The canonical reply recorded for conversation `i` (a plain chat.completion)."""
    text = ("No, there is no need to send it back: the refund is already complete. "
            "If you would like a replacement instead, just tell me and I will arrange it. ") * 3
    return {"object": "chat.completion", "model": model_of(i) + "-2024-07-18", "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1480, "completion_tokens": 64, "total_tokens": 1544}}


def conversations_for(nodes: int) -> int:
    """How many conversations give a tree of about `nodes` nodes."""
    shared = 2 * len(MODELS)  # a root and a system-prompt node per model
    return max(1, -(-(nodes - shared) // NEW_NODES_PER_CONVERSATION))
