"""Butter-Bindings through a real mitmdump: ONE recorded run serves the next
customers at every step, with zero provider calls, when every differing value
is either declared in the header or comes from an earlier tool result of the
run (the new customer's id). Real `openai` (plain and streamed) and
`anthropic` SDKs, a fake provider over TLS on loopback, one shared proxy
(each test its own credential, so its own tree).

The workflow (issue 15): look up a customer by e-mail, create it, answer with
the new id and the name. The id is made by the tool, never declared.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import ROOT
from tests.e2e.test_templates_e2e import assemble_stream
from tests.fakes import anthropic_messages as anthropic_fake
from tests.fakes import openai_chat as openai_fake
from tests.fakes.provider import Call, JSONReply, StreamReply

SYSTEM = "You are an onboarding agent. Look the customer up by e-mail, create them if new, then confirm."
TRICKY_NAME = 'Zoë "Z" O\'Brien \\ 東京'
CUSTOMERS = [
    {"name": "Ana Ruiz", "email": "ana.ruiz@example.com", "city": "Lisbon"},
    {"name": "Bo Chen", "email": "bo@chen.example.org", "city": "Taipei"},
    {"name": "Cy Diaz", "email": "cy.diaz@example.net", "city": "Quito"},
    {"name": TRICKY_NAME, "email": "zoe@example.jp", "city": "Tōkyō"},
]
EXISTING = {"email": "known@example.com", "id": "cus_1001"}  # already a customer: another branch
PARAMS = {
    "find_customer": {"email": {"type": "string"}},
    "create_customer": {"name": {"type": "string"}, "email": {"type": "string"}, "city": {"type": "string"}},
}
OPENAI_TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": p}}}
                for n, p in PARAMS.items()]
ANTHROPIC_TOOLS = [{"name": n, "input_schema": {"type": "object", "properties": p}} for n, p in PARAMS.items()]
BUTTER = Path(sys.executable).with_name("butter")


def instruction(customer: dict) -> str:
    return f"Onboard the new customer {customer['name']} <{customer['email']}> from {customer['city']}."


def new_id(email: str) -> str:
    """The id the CRM gives a new customer: its own, not the agent's."""
    return f"cus_{zlib.crc32(email.encode()) % 9000 + 1000}"


# -- the tools, and a model that reads the conversation ---------------------------------------

def run_tool(name: str, args: dict) -> dict:
    if name == "find_customer":
        return {"found": True, "id": EXISTING["id"]} if args["email"] == EXISTING["email"] else {"found": False}
    return {"id": new_id(args["email"]), "name": args["name"], "email": args["email"], "city": args["city"]}


def decide(text: str, results: list[str]) -> tuple[str | None, tuple[str, dict] | None]:
    m = re.fullmatch(r"Onboard the new customer (.+) <(.+)> from (.+)\.", text, re.S)
    assert m, f"the fake model cannot read {text!r}"
    name, email, city = m.groups()
    if not results:
        return None, ("find_customer", {"email": email})
    found = json.loads(results[0])
    if found["found"]:
        return f"{name} is already customer {found['id']}; nothing created.", None
    if len(results) == 1:
        return None, ("create_customer", {"name": name, "email": email, "city": city})
    created = json.loads(results[1])
    return f"Created customer {created['id']} for {created['name']} in {created['city']}.", None


def openai_handler(call: Call) -> JSONReply | StreamReply:
    body = call.json
    messages = body["messages"]
    text, tool = decide(next(m["content"] for m in messages if m["role"] == "user"),
                        [m["content"] for m in messages if m["role"] == "tool"])
    full = openai_fake.completion({"content": text} if tool is None else {"tool_calls": [tool]}, body["model"])
    return StreamReply(openai_fake.stream_chunks(full, include_usage=False)) if body.get("stream") else JSONReply(full)


def anthropic_handler(call: Call) -> JSONReply | StreamReply:
    body = call.json
    refused = anthropic_fake.check(body)
    if refused is not None:
        return refused
    messages = body["messages"]
    results = [b["content"] for m in messages if isinstance(m["content"], list) for b in m["content"]
               if b.get("type") == "tool_result"]
    text, tool = decide(messages[0]["content"], results)
    blocks = [{"type": "text", "text": text}] if tool is None else [
        {"type": "text", "text": "Checking."}, {"type": "tool_use", "name": tool[0], "input": tool[1]}]
    full = anthropic_fake.message(blocks, body["model"])
    return StreamReply(anthropic_fake.stream_events(full)) if body.get("stream") else JSONReply(full)


# -- agents, declaring what they know in the header ---------------------------------------------

def header(customer: dict | None) -> dict:
    return {"Butter-Bindings": json.dumps(customer)} if customer is not None else {}


def expected(customer: dict) -> dict:
    return {"answer": f"Created customer {new_id(customer['email'])} for {customer['name']} in {customer['city']}.",
            "calls": [("find_customer", {"email": customer["email"]}), ("create_customer", dict(customer))]}


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


def run_openai(sdk: openai.OpenAI, customer: dict, *, stream: bool = False, declare: bool = True,
               text: str | None = None) -> dict:
    messages: list[dict] = [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": text or instruction(customer)}]
    calls, cache = [], []
    for _ in range(4):
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, tools=OPENAI_TOOLS, stream=stream,
            extra_headers=header(customer if declare else None))
        cache.append(raw.headers.get("butter-cache"))
        message = assemble_stream(raw.parse()) if stream else raw.parse().choices[0].message.model_dump(exclude_none=True)
        messages.append(message)
        if not message.get("tool_calls"):
            return {"answer": message["content"], "calls": calls, "cache": cache, "messages": messages}
        for tc in message["tool_calls"]:
            name, args = tc["function"]["name"], json.loads(tc["function"]["arguments"])
            calls.append((name, args))
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": json.dumps(run_tool(name, args))})
    raise AssertionError("the agent did not finish")


def run_anthropic(sdk: anthropic.Anthropic, customer: dict, *, stream: bool = False) -> dict:
    messages: list[dict] = [{"role": "user", "content": instruction(customer)}]
    kwargs: dict[str, Any] = {"model": anthropic_fake.MODEL, "max_tokens": 512, "system": SYSTEM,
                              "tools": ANTHROPIC_TOOLS, "extra_headers": header(customer)}
    calls, cache = [], []
    for _ in range(4):
        if stream:
            with sdk.messages.stream(messages=messages, **kwargs) as s:
                reply = s.get_final_message()
                cache.append(s.response.headers.get("butter-cache"))
        else:
            raw = sdk.messages.with_raw_response.create(messages=messages, **kwargs)
            cache.append(raw.headers.get("butter-cache"))
            reply = raw.parse()
        messages.append({"role": "assistant", "content": reply.content})
        uses = [b for b in reply.content if b.type == "tool_use"]
        if not uses:
            return {"answer": "".join(b.text for b in reply.content if b.type == "text"), "calls": calls, "cache": cache}
        results = []
        for use in uses:
            calls.append((use.name, dict(use.input)))
            results.append({"type": "tool_result", "tool_use_id": use.id,
                            "content": json.dumps(run_tool(use.name, dict(use.input)))})
        messages.append({"role": "user", "content": results})
    raise AssertionError("the agent did not finish")


@pytest.fixture
def openai_sdk(shared_proxy, through, provider, api_key) -> openai.OpenAI:
    provider.handler = openai_handler
    through(shared_proxy)
    return openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)


# -- one recording, every other customer served ---------------------------------------------------

def test_one_bound_recording_serves_three_other_customers_plain_and_streamed_with_no_provider_call(
        openai_sdk, provider):
    first = run_openai(openai_sdk, CUSTOMERS[0])
    assert outcome(first) == expected(CUSTOMERS[0]) and first["cache"] == ["miss"] * 3
    assert len(provider.calls) == 3
    for customer, stream in ((CUSTOMERS[1], False), (CUSTOMERS[2], True), (CUSTOMERS[3], False)):
        run = run_openai(openai_sdk, customer, stream=stream)
        assert outcome(run) == expected(customer), f"wrong values served for {customer['name']}"
        assert run["cache"] == ["hit"] * 3, f"{customer['name']} (stream={stream}): {run['cache']}"
    assert len(provider.calls) == 3, "a customer's run reached the provider"


def test_anthropic_one_bound_recording_serves_three_other_customers_with_no_provider_call(
        shared_proxy, through, provider, api_key):
    provider.handler = anthropic_handler
    through(shared_proxy)
    sdk = anthropic.Anthropic(api_key=api_key, max_retries=0, timeout=20)
    first = run_anthropic(sdk, CUSTOMERS[0])
    assert outcome(first) == expected(CUSTOMERS[0]) and first["cache"] == ["miss"] * 3
    for customer, stream in ((CUSTOMERS[1], True), (CUSTOMERS[2], False), (CUSTOMERS[3], True)):
        run = run_anthropic(sdk, customer, stream=stream)
        assert outcome(run) == expected(customer), f"wrong values served for {customer['name']}"
        assert run["cache"] == ["hit"] * 3, f"{customer['name']} (stream={stream}): {run['cache']}"
    assert len(provider.calls) == 3, "a customer's run reached the provider"


def test_a_tool_result_that_takes_another_branch_goes_to_the_provider(openai_sdk, provider):
    run_openai(openai_sdk, CUSTOMERS[0])
    known = {"name": "Di Eze", "email": EXISTING["email"], "city": "Oslo"}
    run = run_openai(openai_sdk, known)
    assert run["cache"] == ["hit", "miss"], "the 'found' result was served the 'not found' branch"
    assert run["answer"] == f"Di Eze is already customer {EXISTING['id']}; nothing created."
    assert len(provider.calls) == 4
