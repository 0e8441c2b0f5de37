"""Azure OpenAI (`openai.AzureOpenAI`) and OpenAI-compatible servers (OpenRouter,
Groq) through a real mitmdump with butter, the real openai SDK, and fake
providers over TLS on loopback that add each server's quirks to the scripted
refund model of tests/fakes/openai_chat.py."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import openai
import pytest

from tests.fakes import openai_chat
from tests.fakes.openai_chat import run_agent
from tests.fakes.provider import Call, JSONReply, StreamReply

ENDPOINT = "https://example.openai.azure.com"
DEPLOYMENT = "support-gpt4o"
API_VERSION = "2024-10-21"
EXPECTED_ANSWER = "Refunded 42.5 for order 1234 (Ana Ruiz)."
EXPECTED_CALLS = [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]
FILTERS = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"}}


def _events(chunks: list[bytes]) -> list[dict | str]:
    out: list[dict | str] = []
    for raw in chunks:
        data = raw.decode().strip()[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _encode(event: dict | str) -> bytes:
    return f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()


def azure_handler(call: Call) -> JSONReply | StreamReply:
    """Azure's shape: deployment in the path, `api-key` auth, content-filter
    results everywhere, and async-filter events with `object: ""`."""
    if f"/openai/deployments/{DEPLOYMENT}/" not in call.path or "api-version" not in call.query:
        return JSONReply({"error": {"code": "404", "message": "Resource not found"}}, status=404)
    if not call.headers.get("api-key"):
        return JSONReply({"error": {"code": "401", "message": "Access denied"}}, status=401)
    reply = openai_chat.handler(call)
    prompt_filters = [{"prompt_index": 0, "content_filter_results": FILTERS}]
    if isinstance(reply, JSONReply):
        reply.body["prompt_filter_results"] = prompt_filters
        for choice in reply.body["choices"]:
            choice["content_filter_results"] = FILTERS
        return reply
    events = _events(reply.chunks)
    for event in events:
        if isinstance(event, dict):
            for choice in event["choices"]:
                choice["content_filter_results"] = FILTERS if choice["delta"].get("content") else {}
    azure_only = {"created": 0, "id": "", "model": "", "object": ""}
    events.insert(0, {"choices": [], **azure_only, "prompt_filter_results": prompt_filters})
    events.insert(-1, {"choices": [{"index": 0, "finish_reason": None, "content_filter_results": FILTERS,
                                    "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 40}}],
                       **azure_only})
    return StreamReply([_encode(e) for e in events])


def compat_handler(call: Call) -> JSONReply | StreamReply:
    """OpenRouter's keep-alive comments and Groq's x_groq and reasoning deltas."""
    reply = openai_chat.handler(call)
    reasoning = "Check the order first."
    if isinstance(reply, JSONReply):
        reply.body["choices"][0]["message"]["reasoning"] = reasoning
        reply.body["x_groq"] = {"id": "req_" + uuid.uuid4().hex[:8], "usage": {"queue_time": 0.01}}
        return reply
    events = _events(reply.chunks)
    events.insert(1, {**events[0], "choices": [{"index": 0, "delta": {"reasoning": reasoning}, "finish_reason": None}]})
    chunks = [b": OPENROUTER PROCESSING\n\n"]
    for event in events:
        if isinstance(event, dict) and event["choices"] and event["choices"][0]["finish_reason"]:
            event["x_groq"] = {"id": "req_1", "usage": {"queue_time": 0.01}}
        chunks += [_encode(event), b": OPENROUTER PROCESSING\n\n"]
    return StreamReply(chunks)


def azure(api_key: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=ENDPOINT, api_key=api_key, api_version=API_VERSION,
                              max_retries=0, timeout=20)


def compat(api_key: str, base_url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=20)


@pytest.fixture
def azure_key() -> str:
    return uuid.uuid4().hex  # Azure keys are 32 hex characters


@pytest.fixture
def on_azure(provider):
    provider.handler = azure_handler


@pytest.fixture
def on_compat(provider):
    provider.handler = compat_handler


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_azure_second_run_is_served_from_the_tree_with_zero_provider_calls(shared_proxy, through, provider, on_azure, azure_key, stream):
    through(shared_proxy)
    first = run_agent(azure(azure_key), "1234", stream=stream, model=DEPLOYMENT)
    assert (first["answer"], first["calls"]) == (EXPECTED_ANSWER, EXPECTED_CALLS)
    recorded = len(provider.calls)
    assert recorded == 3
    second = run_agent(azure(azure_key), "1234", stream=stream, model=DEPLOYMENT)
    assert len(provider.calls) == recorded, "the second run reached the provider"
    assert (second["answer"], second["calls"]) == (first["answer"], first["calls"])
    if not stream:
        assert second["cache"] == ["hit"] * 3


@pytest.mark.parametrize("recorded_as,replayed_as", [(False, True), (True, False)],
                         ids=["plain-to-streamed", "streamed-to-plain"])
def test_azure_recording_replays_in_the_other_form(shared_proxy, through, provider, on_azure, azure_key, recorded_as, replayed_as):
    through(shared_proxy)
    first = run_agent(azure(azure_key), "9876", stream=recorded_as, model=DEPLOYMENT)
    recorded = len(provider.calls)
    second = run_agent(azure(azure_key), "9876", stream=replayed_as, model=DEPLOYMENT)
    assert len(provider.calls) == recorded
    assert (second["answer"], second["calls"]) == (first["answer"], first["calls"])


def test_azure_replayed_completion_keeps_the_filter_results(shared_proxy, through, provider, on_azure, azure_key):
    through(shared_proxy)
    messages = [{"role": "user", "content": "Please refund order 5555."}]
    with azure(azure_key).chat.completions.stream(model=DEPLOYMENT, messages=messages, tools=openai_chat.TOOLS) as s:
        s.get_final_completion()
    raw = azure(azure_key).chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=messages,
                                                                      tools=openai_chat.TOOLS)
    assert raw.headers["butter-cache"] == "hit"
    completion = raw.parse().to_dict()
    assert completion["prompt_filter_results"][0]["content_filter_results"] == FILTERS
    assert completion["choices"][0]["content_filter_results"] == FILTERS
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_order"


def assert_not_in_files(folder: Path, *needles: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle!r} found in {path}"


def test_azure_offline_replay_after_restart_stores_no_key_and_another_key_misses(start_proxy, through, provider, on_azure, azure_key, tmp_path):
    db = tmp_path / "db"
    recording = start_proxy(db)
    through(recording)
    first = run_agent(azure(azure_key), "1234", stream=True, model=DEPLOYMENT)
    recording.stop()

    before = len(provider.calls)
    offline = start_proxy(db, mode="replay", forward=False)
    through(offline)
    replayed = run_agent(azure(azure_key), "1234", stream=False, model=DEPLOYMENT)
    assert (replayed["answer"], replayed["calls"]) == (first["answer"], first["calls"])
    assert replayed["cache"] == ["hit"] * 3
    with pytest.raises(openai.NotFoundError):
        run_agent(azure(uuid.uuid4().hex), "1234", model=DEPLOYMENT)
    other_version = openai.AzureOpenAI(azure_endpoint=ENDPOINT, api_key=azure_key, api_version="2025-04-01-preview",
                                       max_retries=0, timeout=20)
    with pytest.raises(openai.NotFoundError):
        run_agent(other_version, "1234", model=DEPLOYMENT)
    assert len(provider.calls) == before
    offline.stop()
    assert_not_in_files(db, azure_key)


def test_azure_another_key_misses(shared_proxy, through, provider, on_azure, azure_key):
    through(shared_proxy)
    run_agent(azure(azure_key), "5555", model=DEPLOYMENT)
    before = len(provider.calls)
    other = run_agent(azure(uuid.uuid4().hex), "5555", model=DEPLOYMENT)
    assert other["cache"] == ["miss"] * 3
    assert len(provider.calls) == before + 3


@pytest.mark.parametrize("base_url", ["https://openrouter.ai/api/v1", "https://api.groq.com/openai/v1"],
                         ids=["openrouter", "groq"])
@pytest.mark.parametrize("recorded_as,replayed_as", [(True, True), (False, True), (True, False)],
                         ids=["streamed", "plain-to-streamed", "streamed-to-plain"])
def test_compatible_servers_record_and_replay_with_their_extras(shared_proxy, through, provider, on_compat, api_key,
                                                                base_url, recorded_as, replayed_as):
    through(shared_proxy)
    first = run_agent(compat(api_key, base_url), "1234", stream=recorded_as, model="meta-llama/llama-3.3-70b")
    assert (first["answer"], first["calls"]) == (EXPECTED_ANSWER, EXPECTED_CALLS)
    recorded = len(provider.calls)
    second = run_agent(compat(api_key, base_url), "1234", stream=replayed_as, model="meta-llama/llama-3.3-70b")
    assert len(provider.calls) == recorded
    assert (second["answer"], second["calls"]) == (first["answer"], first["calls"])

    messages = [{"role": "user", "content": "Please refund order 1234."}]
    client = compat(api_key, base_url)
    client.chat.completions.create(model="meta-llama/llama-3.3-70b", messages=messages, tools=openai_chat.TOOLS)
    raw = client.chat.completions.with_raw_response.create(model="meta-llama/llama-3.3-70b", messages=messages,
                                                           tools=openai_chat.TOOLS)
    assert raw.headers["butter-cache"] == "hit"
    replayed = raw.parse().to_dict()
    assert replayed["choices"][0]["message"]["reasoning"] == "Check the order first."
    assert "x_groq" in replayed


def test_an_extra_body_field_that_changes_the_answer_is_a_different_request(shared_proxy, through, provider, on_compat, api_key):
    through(shared_proxy)
    client = compat(api_key, "https://openrouter.ai/api/v1")
    messages = [{"role": "user", "content": "Please refund order 9876."}]
    first = client.chat.completions.with_raw_response.create(model="m", messages=messages, extra_body={"top_k": 5})
    same = client.chat.completions.with_raw_response.create(model="m", messages=messages, extra_body={"top_k": 5})
    other = client.chat.completions.with_raw_response.create(model="m", messages=messages, extra_body={"top_k": 50})
    assert [r.headers["butter-cache"] for r in (first, same, other)] == ["miss", "hit", "miss"]
