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

def lookup_ref(email: str) -> str:
    """The CRM's reference for a lookup (some CRMs return one, which the answer quotes)."""
    return f"LK-{zlib.adler32(email.encode()) % 90000 + 10000}"


def run_tool(name: str, args: dict, reference: bool = False) -> dict:
    if name == "find_customer":
        if args["email"] == EXISTING["email"]:
            return {"found": True, "id": EXISTING["id"]}
        return {"found": False, "ref": lookup_ref(args["email"])} if reference else {"found": False}
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
    quoted = f" (lookup {found['ref']})" if "ref" in found else ""
    return f"Created customer {created['id']} for {created['name']} in {created['city']}{quoted}.", None


def openai_handler(call: Call) -> JSONReply | StreamReply:
    body = call.json
    messages = body["messages"]
    text, tool = decide(next(m["content"] for m in messages if m["role"] == "user"),
                        [m["content"] for m in messages if m["role"] == "tool"])
    full = openai_fake.completion({"content": text} if tool is None else {"tool_calls": [tool]}, body["model"])
    return StreamReply(openai_fake.stream_chunks(full, include_usage=False)) if body.get("stream") else JSONReply(full)


def anthropic_blocks(body: dict) -> list[dict]:
    messages = body["messages"]
    text, tool = decide(messages[0]["content"], anthropic_fake.tool_result_contents(messages))
    return [{"type": "text", "text": text}] if tool is None else [
        {"type": "text", "text": "Checking."}, {"type": "tool_use", "name": tool[0], "input": tool[1]}]


anthropic_handler = anthropic_fake.handler_for(anthropic_blocks)


# -- agents, declaring what they know in the header ---------------------------------------------

def header(customer: dict | None) -> dict:
    return {"Butter-Bindings": json.dumps(customer)} if customer is not None else {}


def expected(customer: dict, reference: bool = False) -> dict:
    quoted = f" (lookup {lookup_ref(customer['email'])})" if reference else ""
    return {"answer": f"Created customer {new_id(customer['email'])} for {customer['name']} in {customer['city']}{quoted}.",
            "calls": [("find_customer", {"email": customer["email"]}), ("create_customer", dict(customer))]}


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


def run_openai(sdk: openai.OpenAI, customer: dict, *, stream: bool = False, declare: bool = True,
               text: str | None = None, reference: bool = False) -> dict:
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
            messages.append({"role": "tool", "tool_call_id": tc["id"],
                             "content": json.dumps(run_tool(name, args, reference))})
    raise AssertionError("the agent did not finish")


def run_anthropic(sdk: anthropic.Anthropic, customer: dict, *, stream: bool = False) -> dict:
    kwargs: dict[str, Any] = {"model": anthropic_fake.MODEL, "max_tokens": 512, "system": SYSTEM,
                              "tools": ANTHROPIC_TOOLS, "extra_headers": header(customer)}
    return anthropic_fake.tool_loop(sdk, instruction(customer), kwargs, run_tool, stream=stream, steps=4)


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


def test_a_value_of_the_first_tool_result_only_the_final_answer_repeats_is_served_at_every_step(
        openai_sdk, provider):
    # The lookup's reference reaches only the final answer: when the second step was
    # recorded it was literal; the final step proves it a value, and the first run's
    # second reply is carried onto that path, so the next customers miss nothing.
    first = run_openai(openai_sdk, CUSTOMERS[0], reference=True)
    assert outcome(first) == expected(CUSTOMERS[0], reference=True) and first["cache"] == ["miss"] * 3
    for customer, stream in ((CUSTOMERS[1], True), (CUSTOMERS[2], False)):
        run = run_openai(openai_sdk, customer, stream=stream, reference=True)
        assert outcome(run) == expected(customer, reference=True)
        assert run["cache"] == ["hit"] * 3, f"{customer['name']} (stream={stream}): {run['cache']}"
    assert len(provider.calls) == 3


def test_a_tool_result_that_takes_another_branch_goes_to_the_provider(openai_sdk, provider):
    run_openai(openai_sdk, CUSTOMERS[0])
    known = {"name": "Di Eze", "email": EXISTING["email"], "city": "Oslo"}
    run = run_openai(openai_sdk, known)
    assert run["cache"] == ["hit", "miss"], "the 'found' result was served the 'not found' branch"
    assert run["answer"] == f"Di Eze is already customer {EXISTING['id']}; nothing created."
    assert len(provider.calls) == 4


# -- a declared value that is a whole message is no free slot (issue 10, item 3) ---------------------

CAPITALS = {"France": "Paris.", "Peru": "Lima.", "Japan": "Tokyo."}


def capitals_handler(call: Call) -> JSONReply:
    """A model that answers a capital question without repeating it."""
    asked = " ".join(part["text"] if isinstance(part, dict) else part for m in call.json["messages"]
                     if m["role"] == "user" for part in ([m["content"]] if isinstance(m["content"], str) else m["content"]))
    country = next(c for c in CAPITALS if c in asked)
    return JSONReply(openai_fake.completion({"content": CAPITALS[country]}, call.json["model"]))


def ask(sdk: openai.OpenAI, content: str | list, declared: dict | None) -> tuple[str, str]:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Answer in one word."},
                                       {"role": "user", "content": content}], extra_headers=header(declared))
    return raw.headers["butter-cache"], raw.parse().choices[0].message.content


@pytest.mark.parametrize("shape", ["whole message", "whole text part", "no literal word"])
def test_a_binding_that_is_a_whole_question_never_serves_another_question(
        shared_proxy, through, provider, api_key, shape):
    provider.handler = capitals_handler
    through(shared_proxy)
    sdk = openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)

    def content(question: str) -> str | list:
        if shape == "whole text part":
            return [{"type": "text", "text": "Please answer the question below."}, {"type": "text", "text": question}]
        return f"Q: {question}" if shape == "no literal word" else question

    first = "What is the capital of France?"
    assert ask(sdk, content(first), {"question": first}) == ("miss", "Paris.")
    assert ask(sdk, content(first), {"question": first}) == ("hit", "Paris.")  # the recording itself serves
    other = "What is the capital of Peru?"
    assert ask(sdk, content(other), {"question": other}) == ("miss", "Lima."), "a catch-all served another question"
    third = "What is the capital of Japan?"
    assert ask(sdk, content(third), None) == ("miss", "Tokyo."), "a catch-all served a request without the header"
    assert len(provider.calls) == 3


def test_a_declared_value_beside_literal_words_is_still_a_slot(shared_proxy, through, provider, api_key):
    provider.handler = capitals_handler
    through(shared_proxy)
    sdk = openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)
    assert ask(sdk, "What is the capital of France?", {"country": "France"}) == ("miss", "Paris.")
    # The same words around another value: served (the reply does not name the country, so it is
    # the recorded one: the client declared the country a value that does not change the answer).
    assert ask(sdk, "What is the capital of Peru?", {"country": "Peru"}) == ("hit", "Paris.")
    assert len(provider.calls) == 1


# -- butter explain on a bound recording ------------------------------------------------------------

def butter_cli(*args: str, db: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BUTTER), "--db", str(db), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, f"butter {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.parametrize("declared", [True, False], ids=["with-header", "without-header"])
def test_explain_names_the_literal_of_the_bound_template_a_changed_instruction_fails(
        openai_sdk, shared_proxy, provider, api_key, tmp_path, declared):
    run_openai(openai_sdk, CUSTOMERS[0])
    changed = CUSTOMERS[1]
    body = {"model": "gpt-4o-mini", "tools": OPENAI_TOOLS,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": instruction(changed).replace("Onboard the new", "Delete the")}]}
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    args = ["explain", str(request), "--api-key", api_key]
    if declared:
        args += ["--header", "Butter-Bindings: " + json.dumps(changed)]
    data = json.loads(butter_cli(*args, "--json", db=shared_proxy.db).stdout)
    assert data["hit"] is False and data["reason"] == "diverged" and data["matched"] == 1
    failures = [t["failed"] for t in data["templates"]] or [data["template_failure"]]
    assert any("literal 'Onboard the new customer '" in f for f in failures), failures
    text = butter_cli(*args, db=shared_proxy.db).stdout
    assert "MISS (diverged)" in text and "literal 'Onboard the new customer '" in text
    assert "{{name}}" in text and "{{email}}" in text  # the nearest template is shown with its slots
    # The unchanged instruction of another customer is served by the same template.
    body["messages"][1]["content"] = instruction(changed)
    request.write_text(json.dumps(body))
    served = json.loads(butter_cli(*args, "--json", db=shared_proxy.db).stdout)
    assert served["hit"] is True and served["bindings"]["name"] == changed["name"]
