"""Templates through a real mitmdump: runs that differ only in values are
served with the run's own values; a changed instruction or a changed
branch-deciding field goes to the provider. Real `openai` and `anthropic`
SDKs, a fake provider over TLS on loopback, one shared proxy (each test its
own credential, so its own tree).

A learned template is served once live traffic has verified it (store/trust.py):
two more customers' runs go to the provider as verifications, agree, and
promote it (`promote`); tests/e2e/test_trust_e2e.py covers trust itself."""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import Proxy
from tests.fakes import anthropic_messages as anthropic_fake
from tests.fakes import openai_chat as openai_fake
from tests.fakes.provider import Call, JSONReply, StreamReply

# -- a model that follows the instruction and the order's status -----------------------------

TRICKY = 'Zoë "Z" O\'Brien \\ 東京'
ORDERS = {
    "1234": {"order_id": "1234", "customer": "Ana Ruiz", "amount": 42.5, "status": "paid"},
    "9876": {"order_id": "9876", "customer": "Bo Chen", "amount": 17.0, "status": "paid"},
    "5555": {"order_id": "5555", "customer": "Cy Diaz", "amount": 29.9, "status": "paid"},
    "7777": {"order_id": "7777", "customer": TRICKY, "amount": 5.25, "status": "paid"},
    "8888": {"order_id": "8888", "customer": "Di Eze", "amount": 8.0, "status": "refunded"},
    # A refund far above every amount the template was verified with (a limit may lie there).
    "6666": {"order_id": "6666", "customer": "Lu Park", "amount": 99.9, "status": "paid"},
}
# Customers whose runs verify a learned template before it is served (see `promote`).
VERIFIERS = ("2001", "2002", "2003", "2004", "2005")
# Names with nothing in common: runs that shared a word ("Customer 3", "Customer 4") would teach a
# narrower template of their own, which starts its own probation.
ORDERS.update({o: {"order_id": o, "customer": name, "amount": float(o[-1]), "status": "paid"}
               for o, name in zip(VERIFIERS, ("Ed Fox", "Flo Gil", "Gus Hale", "Ida Ives", "Jo Kerr"))})
SYSTEM = "You are a support agent. Use the tools, then answer in one sentence."
PARAMS = {
    "get_order": {"order_id": {"type": "string"}},
    "refund": {"order_id": {"type": "string"}, "amount": {"type": "number"}, "customer": {"type": "string"}},
    "cancel_order": {"order_id": {"type": "string"}},
}
OPENAI_TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": props}}}
                for name, props in PARAMS.items()]
ANTHROPIC_TOOLS = [{"name": name, "input_schema": {"type": "object", "properties": props}} for name, props in PARAMS.items()]


def decide(instruction: str, results: list[str]) -> tuple[str | None, tuple[str, dict] | None]:
    """(text, tool call) the model writes: it reads the instruction and the order's status."""
    order_id = re.search(r"\d+", instruction).group(0)
    cancel = "cancel" in instruction.lower()
    if not results:
        return None, ("get_order", {"order_id": order_id})
    order = json.loads(results[0])
    if len(results) == 1:
        if order["status"] != "paid":
            return f"Order {order['order_id']} was already {order['status']}; nothing to do.", None
        if cancel:
            return None, ("cancel_order", {"order_id": order["order_id"]})
        return None, ("refund", {"order_id": order["order_id"], "amount": order["amount"], "customer": order["customer"]})
    if cancel:
        return f"Cancelled order {order['order_id']} for {order['customer']}.", None
    return f"Refunded {order['amount']} for order {order['order_id']} ({order['customer']}).", None


def openai_handler(call: Call) -> JSONReply | StreamReply:
    body = call.json
    messages = body["messages"]
    instruction = next(m["content"] for m in messages if m["role"] == "user")
    text, tool = decide(instruction, [m["content"] for m in messages if m["role"] == "tool"])
    full = openai_fake.completion({"content": text} if tool is None else {"tool_calls": [tool]}, body["model"])
    if body.get("stream"):
        return StreamReply(openai_fake.stream_chunks(full, include_usage=False))
    return JSONReply(full)


def anthropic_blocks(body: dict) -> list[dict]:
    messages = body["messages"]
    text, tool = decide(messages[0]["content"], anthropic_fake.tool_result_contents(messages))
    return [{"type": "text", "text": text}] if tool is None else [
        {"type": "text", "text": f"Let me use {tool[0]}."}, {"type": "tool_use", "name": tool[0], "input": tool[1]}]


anthropic_handler = anthropic_fake.handler_for(anthropic_blocks)


def tool_result(name: str, args: dict, orders: dict) -> dict:
    return orders[args["order_id"]] if name == "get_order" else {"done": True}


# -- agents, as people write them ---------------------------------------------------------------

def bindings_header(known: dict | None) -> dict:
    return {"Butter-Bindings": json.dumps(known)} if known is not None else {}


def learn(known: dict | None, name: str, result: dict) -> None:
    """A Butter-Bindings agent declares each value as soon as it knows it."""
    if known is not None and name == "get_order":
        known.update(customer=result["customer"], amount=result["amount"])


def run_openai(sdk: openai.OpenAI, instruction: str, *, stream: bool = False, orders: dict = ORDERS,
               declare: bool = False) -> dict:
    messages: list[dict] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": instruction}]
    known = {"order_id": re.search(r"\d+", instruction).group(0)} if declare else None
    calls, cache = [], []
    for _ in range(5):
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, tools=OPENAI_TOOLS, stream=stream,
            extra_headers=bindings_header(known))
        cache.append(raw.headers.get("butter-cache"))
        message = assemble_stream(raw.parse()) if stream else raw.parse().choices[0].message.model_dump(exclude_none=True)
        messages.append(message)
        if not message.get("tool_calls"):
            return {"answer": message["content"], "calls": calls, "cache": cache}
        for tc in message["tool_calls"]:
            name, args = tc["function"]["name"], json.loads(tc["function"]["arguments"])
            calls.append((name, args))
            result = tool_result(name, args, orders)
            learn(known, name, result)
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": json.dumps(result)})
    raise AssertionError("the agent did not finish")


def assemble_stream(stream: Any) -> dict:
    content, calls = "", {}
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                entry["id"] = tc.id or entry["id"]
                if tc.function:
                    entry["function"]["name"] += tc.function.name or ""
                    entry["function"]["arguments"] += tc.function.arguments or ""
    message: dict = {"role": "assistant"}
    if content:
        message["content"] = content
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message


def run_anthropic(sdk: anthropic.Anthropic, instruction: str, *, stream: bool = False, orders: dict = ORDERS) -> dict:
    kwargs = {"model": anthropic_fake.MODEL, "max_tokens": 512, "system": SYSTEM, "tools": ANTHROPIC_TOOLS}
    return anthropic_fake.tool_loop(sdk, instruction, kwargs, lambda name, args: tool_result(name, args, orders),
                                    stream=stream)


def refund_outcome(order_id: str) -> dict:
    o = ORDERS[order_id]
    return {"answer": f"Refunded {o['amount']} for order {order_id} ({o['customer']}).",
            "calls": [("get_order", {"order_id": order_id}),
                      ("refund", {"order_id": order_id, "amount": o["amount"], "customer": o["customer"]})]}


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


def openai_client(api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)


def anthropic_client(api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=api_key, max_retries=0, timeout=20)


def settle(proxy: Proxy, provider, api_key: str) -> None:
    """Wait (not a timing assertion) until every miss recorded so far has been learned from.

    Induction runs its jobs in order on one thread: one more miss, under a
    model name of its own, is learned from last, and its log line says so.
    """
    model = f"settle-{uuid.uuid4().hex[:12]}"
    handler, provider.handler = provider.handler, openai_handler
    try:
        openai_client(api_key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Please refund order 1234."}])
    finally:
        provider.handler = handler
    deadline = time.monotonic() + 60
    while f"butter: induction openai-chat {model}:" not in proxy.log_text():
        assert time.monotonic() < deadline, f"induction did not finish:\n{proxy.log_text()[-3000:]}"
        time.sleep(0.05)


def promote(proxy: Proxy, run_customer, customers: tuple[str, ...] = VERIFIERS[:2],
            expect: list[str] | None = None) -> None:
    """Pay the probation of the templates two runs taught: each customer's run goes to the provider
    as a verification (`butter-cache: verify` at every step), agrees, and counts; two promote
    (butter_verify_min). Waits (not a timing assertion) until the proxy has concluded them."""
    before = proxy.log_text().count("butter: verified ")
    verified = 0
    for order_id in customers:
        cache = run_customer(order_id)
        assert cache == (expect or ["verify"] * 3), cache
        verified += cache.count("verify")
    deadline = time.monotonic() + 60
    while proxy.log_text().count("butter: verified ") < before + verified:
        assert time.monotonic() < deadline, f"verifications did not conclude:\n{proxy.log_text()[-3000:]}"
        time.sleep(0.05)
    assert "disagreed" not in "".join(proxy.log_text().split("butter: verified ")[before + 1:])


def promote_past_a_decision_input(proxy: Proxy, run_customer) -> None:
    """`promote` for agents whose refund call leaves out the customer's name: at that step the
    name, a field of the tool result, never reaches the reply, so it is a decision input; the
    order number and the amount go into the calls (numbers: decision inputs), and the final
    answer states them in its text ("Refunded 1.0 for order 2001 (…)"). New values are
    verified at every step until five agreed (butter_verify_inputs_min)."""
    promote(proxy, run_customer, VERIFIERS)


def record_two_customers(proxy: Proxy, provider, api_key: str, run, sdk) -> None:
    """Two recorded runs (one plain, one streamed), learned from, and five verifying runs, before the test
    goes on: two promote every step; the order number and the amount each call passes on are
    numbers, and the final answer states its values in its text (decision inputs either way), so
    three more free them at every step."""
    assert outcome(run(sdk, "Please refund order 1234.")) == refund_outcome("1234")
    assert outcome(run(sdk, "Please refund order 9876.", stream=True)) == refund_outcome("9876")
    settle(proxy, provider, api_key)

    def verifying(order_id: str) -> list[str]:
        done = run(sdk, f"Please refund order {order_id}.")
        assert outcome(done) == refund_outcome(order_id)  # the provider's own answers
        return done["cache"]

    promote(proxy, verifying, VERIFIERS)


@pytest.fixture(scope="module")
def shared_proxy(tmp_path_factory, confdir, provider, tls):
    """This module's own auto-mode proxy, without sampled re-checks: these tests count provider
    calls to prove a run was served, and a re-check is a provider call off the request path
    (each freed number in a call is re-checked 1 in 10 by default; tests/e2e/test_trust_e2e.py
    has the re-check's own test)."""
    folder = tmp_path_factory.mktemp("templates-proxy")
    proxy = Proxy(confdir, folder / "db", folder / "mitmdump.log", upstream=f"127.0.0.1:{provider.port}",
                  upstream_ca=tls[0], options={"butter_verify_inputs_sample": 0, "butter_verify_sample": 0})
    yield proxy
    proxy.stop()


# -- OpenAI Chat ---------------------------------------------------------------------------------

@pytest.fixture
def openai_model(provider):
    provider.handler = openai_handler


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_two_recorded_customers_serve_a_third_with_every_value_and_no_provider_call(
        shared_proxy, through, provider, api_key, openai_model, stream):
    through(shared_proxy)
    sdk = openai_client(api_key)
    record_two_customers(shared_proxy, provider, api_key, run_openai, sdk)
    calls = len(provider.calls)
    assert calls == 6 + 1 + 15  # two runs of three steps, the settling request, the verifications
    third = run_openai(sdk, "Please refund order 5555.", stream=stream)
    assert outcome(third) == refund_outcome("5555")
    assert third["cache"] == ["hit", "hit", "hit"]
    # Quotes, a backslash and unicode from a tool result, into tool-call arguments and the answer.
    fourth = run_openai(sdk, "Please refund order 7777.", stream=stream)
    assert outcome(fourth) == refund_outcome("7777")
    assert len(provider.calls) == calls, "a templated run reached the provider"


def test_a_refund_above_every_amount_verified_goes_to_the_provider_though_the_template_is_trusted(
        shared_proxy, through, provider, api_key, openai_model):
    # butter_verify_ranges (the default): the amounts verified were 1 to 42.5, all refunded. A
    # refund of 99.9 may cross a limit none of them did, so it is verified before it is served.
    through(shared_proxy)
    sdk = openai_client(api_key)
    record_two_customers(shared_proxy, provider, api_key, run_openai, sdk)
    calls = len(provider.calls)
    above = run_openai(sdk, "Please refund order 6666.")
    assert outcome(above) == refund_outcome("6666"), "the client gets the provider's answer"
    assert above["cache"] == ["hit", "verify", "verify"], "the order id lies within the ids verified"
    assert len(provider.calls) == calls + 2


def test_a_customer_named_in_the_request_but_unused_by_the_first_call_is_served_from_the_first_step(
        shared_proxy, through, provider, api_key, openai_model):
    # The issue's own example: the name is in the user's words, the first
    # call (get_order) does not use it, the final answer does. The later
    # step proves it is a value, so the third run misses nothing.
    through(shared_proxy)
    sdk = openai_client(api_key)

    def named(order_id: str) -> str:
        return f"Please refund order {order_id} for {ORDERS[order_id]['customer']}."

    assert outcome(run_openai(sdk, named("1234"))) == refund_outcome("1234")
    assert outcome(run_openai(sdk, named("9876"), stream=True)) == refund_outcome("9876")
    settle(shared_proxy, provider, api_key)

    def verifying(order_id: str) -> list[str]:
        done = run_openai(sdk, named(order_id))
        assert outcome(done) == refund_outcome(order_id)
        return done["cache"]

    # The name never reaches the first reply (get_order): a decision input there, so the first
    # step verifies every new name until five agreed (butter_verify_inputs_min); so do the
    # refund call, which passes the order number and the amount on (numbers may decide which
    # call), and the final answer, which states the values in its text.
    promote(shared_proxy, verifying, VERIFIERS)
    calls = len(provider.calls)
    third = run_openai(sdk, named("5555"), stream=True)
    assert outcome(third) == refund_outcome("5555")
    assert third["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == calls, "a templated run reached the provider"
    # Another instruction around the same kind of values still goes to the provider.
    cancelled = run_openai(sdk, "Please cancel order 5555 for " + ORDERS["5555"]["customer"] + ".")
    assert cancelled["cache"][0] == "miss"


def test_the_same_flow_with_a_changed_instruction_misses(shared_proxy, through, provider, api_key, openai_model):
    through(shared_proxy)
    sdk = openai_client(api_key)
    record_two_customers(shared_proxy, provider, api_key, run_openai, sdk)
    calls = len(provider.calls)
    cancelled = run_openai(sdk, "Please cancel order 5555.")
    assert cancelled["cache"][0] == "miss"
    assert outcome(cancelled) == {"answer": "Cancelled order 5555 for Cy Diaz.",
                                  "calls": [("get_order", {"order_id": "5555"}), ("cancel_order", {"order_id": "5555"})]}
    assert "cancel order 5555" in provider.calls[calls].body.decode()


def test_a_tool_result_whose_branch_deciding_field_changes_misses(shared_proxy, through, provider, api_key, openai_model):
    through(shared_proxy)
    sdk = openai_client(api_key)
    record_two_customers(shared_proxy, provider, api_key, run_openai, sdk)
    calls = len(provider.calls)
    run = run_openai(sdk, "Please refund order 8888.")
    assert run["cache"] == ["hit", "miss"], "the status 'refunded' was served the 'paid' branch"
    assert outcome(run) == {"answer": "Order 8888 was already refunded; nothing to do.",
                            "calls": [("get_order", {"order_id": "8888"})]}
    assert len(provider.calls) == calls + 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_butter_bindings_make_a_template_from_the_first_recording(
        shared_proxy, through, provider, api_key, openai_model, stream):
    through(shared_proxy)
    sdk = openai_client(api_key)
    first = run_openai(sdk, "Please refund order 1234.", declare=True)
    assert outcome(first) == refund_outcome("1234") and first["cache"] == ["miss"] * 3
    assert not any("butter-bindings" in c.headers for c in provider.calls), "the header went upstream"
    for order_id in ("9876", "7777"):
        run = run_openai(sdk, f"Please refund order {order_id}.", declare=True, stream=stream)
        assert outcome(run) == refund_outcome(order_id)
        assert run["cache"] == ["hit"] * 3
    assert len(provider.calls) == 3


def test_a_binding_value_with_quotes_and_unicode_renders_into_valid_json(
        shared_proxy, through, provider, api_key, openai_model):
    through(shared_proxy)
    sdk = openai_client(api_key)
    run_openai(sdk, "Please refund order 1234.", declare=True)
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", tools=OPENAI_TOOLS, extra_headers=bindings_header({"order_id": TRICKY}),
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Please refund order {TRICKY}."}])
    assert raw.headers["butter-cache"] == "hit"
    arguments = raw.parse().choices[0].message.tool_calls[0].function.arguments
    assert json.loads(arguments) == {"order_id": TRICKY}
    assert len(provider.calls) == 3


@pytest.mark.parametrize("header,value,complaint", [
    ("Butter-Bindings", "{not json", "not JSON"),
    ("Butter-Bindings", '["a"]', "flat JSON object"),
    ("Butter-Bindings", '{"name": {"nested": 1}}', "string or a number"),
    ("Butter-Bindings", '{"no spaces": "x"}', "not a placeholder name"),
    ("Butter-Disable-Induction", "maybe", "not true or false"),
])
def test_an_invalid_template_header_is_a_clear_error_and_never_forwarded(
        shared_proxy, through, provider, api_key, openai_model, header, value, complaint):
    through(shared_proxy)
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(api_key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={header: value})
    assert complaint in raised.value.message and raised.value.code == "butter_invalid_header"
    assert provider.calls == []


def test_disable_induction_header_learns_nothing_from_those_runs(shared_proxy, through, provider, api_key, openai_model):
    through(shared_proxy)
    quiet = openai.OpenAI(api_key=api_key, max_retries=0, timeout=20,
                          default_headers={"Butter-Disable-Induction": "true"})
    run_openai(quiet, "Please refund order 1234.")
    run_openai(quiet, "Please refund order 9876.", stream=True)
    settle(shared_proxy, provider, api_key)
    assert not any("butter-disable-induction" in c.headers for c in provider.calls)
    # The same two runs without the header teach a template (see above); with it, nothing.
    third = run_openai(quiet, "Please refund order 5555.")
    assert third["cache"] == ["miss"] * 3 and outcome(third) == refund_outcome("5555")


# -- Anthropic Messages ----------------------------------------------------------------------------

@pytest.fixture
def anthropic_model(provider, monkeypatch):
    provider.handler = anthropic_handler
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_anthropic_two_recorded_customers_serve_a_third_with_every_value(
        shared_proxy, through, provider, api_key, anthropic_model, stream):
    through(shared_proxy)
    sdk = anthropic_client(api_key)
    record_two_customers(shared_proxy, provider, api_key, run_anthropic, sdk)
    calls = len(provider.calls)
    for order_id in ("5555", "7777"):
        run = run_anthropic(sdk, f"Please refund order {order_id}.", stream=stream)
        assert outcome(run) == refund_outcome(order_id)
        assert run["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == calls


def test_anthropic_changed_instruction_and_changed_status_miss(shared_proxy, through, provider, api_key, anthropic_model):
    through(shared_proxy)
    sdk = anthropic_client(api_key)
    record_two_customers(shared_proxy, provider, api_key, run_anthropic, sdk)
    cancelled = run_anthropic(sdk, "Please cancel order 5555.")
    assert cancelled["cache"][0] == "miss" and cancelled["answer"] == "Cancelled order 5555 for Cy Diaz."
    refunded = run_anthropic(sdk, "Please refund order 8888.")
    assert refunded["cache"] == ["hit", "miss"]
    assert refunded["answer"] == "Order 8888 was already refunded; nothing to do."


# -- Ollama (NDJSON streams, arguments as objects) ------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_ollama_two_recorded_customers_serve_a_third_with_every_value(shared_proxy, through, provider, api_key, stream):
    import ollama

    from tests.fakes import ollama_chat

    provider.handler = ollama_chat.handler
    through(shared_proxy)
    verdicts: list[str] = []
    sdk = ollama.Client(host="https://ollama.local", headers={"authorization": f"Bearer {api_key}"}, timeout=20,
                        event_hooks={"response": [lambda r: verdicts.append(r.headers.get("butter-cache", ""))]})
    ollama_chat.run_agent(sdk, "1234")
    ollama_chat.run_agent(sdk, "9876", stream=True)
    settle(shared_proxy, provider, api_key)

    def verifying(order_id: str) -> list[str]:
        verdicts[:] = []
        ollama_chat.run_agent(sdk, order_id)
        return list(verdicts)

    promote_past_a_decision_input(shared_proxy, verifying)
    calls, verdicts[:] = len(provider.calls), []
    third = ollama_chat.run_agent(sdk, "5555", stream=stream)
    assert third["answer"] == "Refunded 29.9 for order 5555 (Cy Diaz)."
    assert third["calls"] == [("get_order", {"order_id": "5555"}), ("refund", {"order_id": "5555", "amount": 29.9})]
    assert verdicts == ["hit"] * 3 and len(provider.calls) == calls


# -- OpenAI Responses ----------------------------------------------------------------------------

@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
def test_responses_two_recorded_customers_serve_a_third_with_ids_of_its_own(
        shared_proxy, through, provider, api_key, stateful):
    # Induced, not declared: the recorded runs' response and call ids differ,
    # and are bookkeeping to induction; a served run gets ids derived from
    # its own values, so a stateful client's next turn continues its own
    # conversation and never one the provider holds for a recorded customer.
    from tests.fakes.openai_responses import FakeResponsesModel, run_agent

    through(shared_proxy)
    provider.handler = FakeResponsesModel()
    sdk = openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)
    recorded = [run_agent(sdk, order_id, stateful=stateful, encrypted_reasoning=False) for order_id in ("1234", "9876")]
    settle(shared_proxy, provider, api_key)
    # Verified in the same mode: a stateful run that mixes hits and provider calls continues a
    # served response by resending the whole conversation (docs/responses.md).
    promote_past_a_decision_input(
        shared_proxy, lambda o: run_agent(sdk, o, stateful=stateful, encrypted_reasoning=False)["cache"])
    calls = len(provider.calls)
    served = run_agent(sdk, "5555", mode="helper", stateful=stateful, encrypted_reasoning=False)
    assert served["cache"] == ["hit", "hit", "hit"] and len(provider.calls) == calls
    o = ORDERS["5555"]
    assert served["answer"] == f"Refunded {o['amount']} for order 5555 ({o['customer']})."
    assert served["calls"] == [("get_order", {"order_id": "5555"}),
                               ("refund", {"order_id": "5555", "amount": o["amount"]})]
    assert not set(served["ids"]) & {i for run in recorded for i in run["ids"]}


# -- Gemini (a model without thought signatures) ------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_gemini_two_recorded_customers_serve_a_third_with_every_value(shared_proxy, through, provider, api_key, stream):
    # Gemini 2.5's calls carry a thought signature minted per call, which no
    # other run may be handed: those replay exactly. Gemini 2.0 signs nothing,
    # so its runs differ only in values and are templated like the others.
    from google import genai
    from google.genai import types

    from tests.fakes import gemini as gemini_fake

    through(shared_proxy)
    provider.handler = gemini_fake.handler
    sdk = genai.Client(api_key="AIza-test-" + uuid.uuid4().hex, http_options=types.HttpOptions(
        timeout=20_000, retry_options=types.HttpRetryOptions(attempts=1)))
    for order_id in ("1234", "9876"):
        gemini_fake.run_agent(sdk, order_id, model="gemini-2.0-flash", stream=order_id == "9876")
    settle(shared_proxy, provider, api_key)
    promote_past_a_decision_input(shared_proxy, lambda o: gemini_fake.run_agent(sdk, o, model="gemini-2.0-flash")["cache"])
    calls = len(provider.calls)
    served = gemini_fake.run_agent(sdk, "5555", model="gemini-2.0-flash", stream=stream)
    assert served["cache"] == ["hit", "hit", "hit"] and len(provider.calls) == calls
    o = ORDERS["5555"]
    assert served["answer"] == f"Refunded {o['amount']} for order 5555 ({o['customer']})."
    assert served["calls"] == [("get_order", {"order_id": "5555"}),
                               ("refund", {"order_id": "5555", "amount": o["amount"]})]


def test_gemini_calls_with_thought_signatures_are_never_templated(shared_proxy, through, provider, api_key):
    # A thought signature is minted for one call of one conversation; a
    # template would hand one run's signature to another. The runs differ in
    # it, so induction finds nothing it can substitute, and a new customer's
    # run goes to the provider (its answers still right).
    from google import genai
    from google.genai import types

    from tests.fakes import gemini as gemini_fake

    through(shared_proxy)
    provider.handler = gemini_fake.handler
    sdk = genai.Client(api_key="AIza-test-" + uuid.uuid4().hex, http_options=types.HttpOptions(
        timeout=20_000, retry_options=types.HttpRetryOptions(attempts=1)))
    for order_id in ("1234", "9876"):
        gemini_fake.run_agent(sdk, order_id, model="gemini-2.5-flash")
    settle(shared_proxy, provider, api_key)
    served = gemini_fake.run_agent(sdk, "5555", model="gemini-2.5-flash")
    assert served["cache"] == ["miss", "miss", "miss"]
    assert served["calls"][0] == ("get_order", {"order_id": "5555"})
