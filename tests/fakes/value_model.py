"""A scripted OpenAI Chat model whose answers depend on values, the way real ones do.

Three tasks, each with a value that syntax cannot judge:

    "Is N prime?"                      -> "yes" / "no": N decides, and never appears in the answer
    "Is N a prime number?"             -> "Yes, N is a prime number." / "No, N is not ...": N decides,
                                          and appears in the answer beside the verdict
    "Please pay invoice N."            -> get_balance(invoice); then pay(invoice) when the balance
                                          covers AMOUNT, else "Declined invoice N: ..." (the balance
                                          decides, and never appears in the answer)
    "What is the weather in CITY?"     -> search_location(query=...) with the city as written, except
                                          the ones this model rewrites (Milan -> "Milano")
    "What is the weather in 'CITY'?"   -> search_location(query=CITY): a city the user quoted is copied
    "Please post this for me on Twitter: 'TEXT'" -> post_tweet(content=TEXT), then "Posted.": a long text
                                          the user gives, passed on whole
    "Cancel order N."                  -> get_order(order_id=N); then cancel_order(order_id=N) unless the
                                          status it returned is "shipped": create_return(order_id=N) (the
                                          status decides, and never appears in the call); then "Done."
    "Ship my order to STREET, CITY ZIP." -> update_address(address=...) as written, except the cities
                                          this model rewrites (Warsaw -> "Warszawa")
    "Does any order need attention?"   -> list_orders(); then "No, every order is on track." unless
                                          an order's status is not on track (the statuses decide,
                                          inside the list's items, and never appear in the answer)

Anything else gets a one-word answer, so any request can go through it.
Plain JSON or SSE, fresh ids on every call (openai_chat.completion).
"""
from __future__ import annotations

import json
import re

from . import openai_chat
from .provider import Call, JSONReply, StreamReply

AMOUNT = 100
REWRITES = {"Milan": "Milano", "Warsaw": "Warszawa", "Hangzhou": "Hangzhou, China"}
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": props}}}
    for name, props in (("get_balance", {"invoice": {"type": "string"}}), ("pay", {"invoice": {"type": "string"}}),
                        ("search_location", {"query": {"type": "string"}}), ("list_orders", {}),
                        ("post_tweet", {"content": {"type": "string"}}),
                        ("update_address", {"address": {"type": "string"}}),
                        ("get_order", {"order_id": {"type": "string"}}), ("cancel_order", {"order_id": {"type": "string"}}),
                        ("create_return", {"order_id": {"type": "string"}}))]
ON_TRACK = ("packed", "shipped", "delivered")
SYSTEM = "You are an assistant. Use the tools when you need them; answer briefly."


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def decide(messages: list[dict]) -> dict:
    user = next(m["content"] for m in messages if m["role"] == "user")
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    if m := re.fullmatch(r"Is (\d+) prime\?", user):
        return {"content": "yes" if is_prime(int(m.group(1))) else "no"}
    if m := re.fullmatch(r"Is (\d+) a prime number\?", user):
        n = m.group(1)
        return {"content": f"Yes, {n} is a prime number." if is_prime(int(n)) else f"No, {n} is not a prime number."}
    if m := re.fullmatch(r"Please pay invoice (\d+)\.", user):
        invoice = m.group(1)
        if not results:
            return {"tool_calls": [("get_balance", {"invoice": invoice})]}
        if len(results) == 1:
            if results[0]["balance"] >= AMOUNT:
                return {"tool_calls": [("pay", {"invoice": invoice})]}
            return {"content": f"Declined invoice {invoice}: the balance is too low."}
        return {"content": f"Paid invoice {invoice}."}
    if m := re.fullmatch(r"What is the weather in ([A-Z][a-z]+)\?", user):
        city = m.group(1)
        return {"tool_calls": [("search_location", {"query": REWRITES.get(city, city)})]}
    if m := re.fullmatch(r"What is the weather in '([A-Z][a-z]+)'\?", user):
        return {"tool_calls": [("search_location", {"query": m.group(1)})]}
    if m := re.fullmatch(r"Please post this for me on Twitter: '([^']+)'", user):
        return {"tool_calls": [("post_tweet", {"content": m.group(1)})]} if not results else {"content": "Posted."}
    if m := re.fullmatch(r"Ship my order to (\d+ [A-Z][a-z]+ [A-Z][a-z]+), ([A-Z][a-z]+) (\d+)\.", user):
        street, city, code = m.groups()
        return {"tool_calls": [("update_address", {"address": f"{street}, {REWRITES.get(city, city)} {code}"})]}
    if m := re.fullmatch(r"Cancel order (\d+)\.", user):
        order = m.group(1)
        if not results:
            return {"tool_calls": [("get_order", {"order_id": order})]}
        if len(results) == 1:
            return {"tool_calls": [("create_return" if results[0]["status"] == "shipped" else "cancel_order",
                                    {"order_id": order})]}
        return {"content": "Done."}
    if user == "Does any order need attention?":
        if not results:
            return {"tool_calls": [("list_orders", {})]}
        stuck = [o for o in results[0]["orders"] if o["status"] not in ON_TRACK]
        return {"content": f"Yes: order {stuck[0]['id']} is {stuck[0]['status']}." if stuck
                else "No, every order is on track."}
    return {"content": "ok"}


def handler(call: Call) -> JSONReply | StreamReply:
    body = call.json
    full = openai_chat.completion(decide(body["messages"]), body["model"])
    if body.get("stream"):
        return StreamReply(openai_chat.stream_chunks(full, include_usage=False))
    return JSONReply(full)
