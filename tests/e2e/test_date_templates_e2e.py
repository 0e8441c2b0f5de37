"""Relative dates through a real mitmdump: the system prompt says what day it
is, the user asks about "tomorrow", and the model's tool call carries the
date it counted (today + 1), a date no message spells. Two recorded runs on
different days teach the template `{{today +1d}}` (store/induction.py); a
run on a third day gets its own date. Real `openai` SDK, the fake provider
over TLS on loopback playing a model that counts days.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from datetime import date, timedelta

import openai
import pytest

from tests.e2e.harness import Proxy
from tests.fakes.openai_chat import completion
from tests.fakes.provider import Call, JSONReply

TOOLS = [{"type": "function", "function": {"name": "get_forecast", "description": "Daily forecast for a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}}}}}]
TMAX = {"Porto": 16.5, "Lyon": 9.0, "Bergen": 3.5, "Graz": 6.0}
VERIFIED = "butter: verified "


def system(today: str) -> str:
    return f"You are a weather assistant. Today is {today}. Use the tools, then answer in one sentence."


def weather_model(call: Call) -> JSONReply:
    """A model that reads today's date from the system prompt and asks for the next day's forecast."""
    body = call.json
    if body["model"].startswith("settle-"):
        return JSONReply(completion({"content": "hi"}, body["model"]))
    messages = body["messages"]
    today = date.fromisoformat(re.search(r"Today is (\d{4}-\d{2}-\d{2})", messages[0]["content"]).group(1))
    city = re.search(r"weather in (\w+) tomorrow", messages[1]["content"]).group(1)
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    if not results:
        tomorrow = (today + timedelta(days=1)).isoformat()
        return JSONReply(completion({"tool_calls": [("get_forecast", {"city": city, "date": tomorrow})]}, body["model"]))
    return JSONReply(completion({"content": f"On {results[0]['date']} in {city}: up to {results[0]['tmax']} °C."},
                                body["model"]))


def sdk_for(proxy: Proxy) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(proxy=proxy.url, verify=str(proxy.ca_cert), trust_env=False)
    return openai.OpenAI(api_key="sk-test-" + uuid.uuid4().hex, http_client=http, max_retries=0, timeout=30)


def ask_weather(sdk: openai.OpenAI, today: str, city: str) -> dict:
    """One agent run: the forecast call, the tool's answer, the model's sentence."""
    messages: list[dict] = [{"role": "system", "content": system(today)},
                            {"role": "user", "content": f"What's the weather in {city} tomorrow?"}]
    calls, cache = [], []
    for _ in range(3):
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)
        cache.append(raw.headers.get("butter-cache"))
        message = raw.parse().choices[0].message.model_dump(exclude_none=True)
        messages.append(message)
        if not message.get("tool_calls"):
            return {"answer": message["content"], "calls": calls, "cache": cache}
        for tc in message["tool_calls"]:
            args = json.loads(tc["function"]["arguments"])
            calls.append((tc["function"]["name"], args))
            messages.append({"role": "tool", "tool_call_id": tc["id"],
                             "content": json.dumps({"date": args["date"], "tmax": TMAX[args["city"]]})})
    raise AssertionError("the agent did not finish")


def settle(proxy: Proxy, sdk: openai.OpenAI) -> None:
    """Wait (not a timing assertion) until every recorded miss has been learned from: induction
    works in order on one thread, so a miss under a model of its own is learned from last."""
    model = f"settle-{uuid.uuid4().hex[:12]}"
    sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
    deadline = time.monotonic() + 60
    while f"butter: induction openai-chat {model}:" not in proxy.log_text():
        assert time.monotonic() < deadline, proxy.log_text()[-3000:]
        time.sleep(0.05)


def expected(today: str, city: str) -> dict:
    tomorrow = (date.fromisoformat(today) + timedelta(days=1)).isoformat()
    return {"answer": f"On {tomorrow} in {city}: up to {TMAX[city]} °C.",
            "calls": [("get_forecast", {"city": city, "date": tomorrow})]}


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


@pytest.fixture
def counting_model(provider):
    provider.handler = weather_model


def record_two_days(proxy: Proxy) -> openai.OpenAI:
    sdk = sdk_for(proxy)
    # A month end (11-30 -> 12-01) and an ordinary day: the model counted one day both times.
    for today, city in (("2026-11-30", "Porto"), ("2026-12-03", "Lyon")):
        run = ask_weather(sdk, today, city)
        assert outcome(run) == expected(today, city) and run["cache"] == ["miss", "miss"], run
    settle(proxy, sdk)
    return sdk


def test_two_runs_on_different_days_teach_tomorrows_date_and_a_third_day_is_served_its_own(
        start_proxy, provider, counting_model):
    proxy = start_proxy(options={"butter_verify": "false"})
    sdk = record_two_days(proxy)
    calls = len(provider.calls)
    run = ask_weather(sdk, "2026-12-31", "Bergen")  # tomorrow is in the next year
    assert run["cache"] == ["hit", "hit"], (run, proxy.log_text()[-3000:])
    assert outcome(run) == expected("2026-12-31", "Bergen")
    assert len(provider.calls) == calls, "a templated run reached the provider"


def test_with_verification_on_a_learned_date_offset_is_verified_before_it_is_served(
        start_proxy, provider, counting_model):
    proxy = start_proxy()
    sdk = record_two_days(proxy)
    before = proxy.log_text().count(VERIFIED)
    run = ask_weather(sdk, "2027-02-28", "Graz")
    assert run["cache"][0] == "verify", run
    assert outcome(run) == expected("2027-02-28", "Graz")  # the provider's own answer
    deadline = time.monotonic() + 60
    while proxy.log_text().count(VERIFIED) <= before:
        assert time.monotonic() < deadline, proxy.log_text()[-3000:]
        time.sleep(0.05)
    verdicts = "".join(proxy.log_text().split(VERIFIED)[before + 1:])
    assert "the provider agreed" in verdicts and "disagreed" not in verdicts, verdicts
