"""Twelve streams recorded from the live OpenAI API (refusals, logprobs, n=3,
parallel tool calls), served by the fake provider, recorded through butter and
replayed with the provider gone: the SDK must read the same completion as it
did directly, plain or streamed."""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Iterator

import httpx2
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.e2e.harness import Proxy
from tests.fakes.provider import StreamReply

STREAMS = Path(__file__).resolve().parents[1] / "data" / "openai-chat-streams"
FILES = sorted(p.stem for p in STREAMS.glob("*.sse"))
# Request parameters matching what each recording was made with (README).
PARAMS = {"a491adda08c3d4fd": {"n": 3}, "569c877e69429d4c": {"logprobs": True}, "83b060bae42eb41c": {"logprobs": True}}
KEY = "sk-fidelity-key"


def small_chunks(body: bytes, size: int = 97) -> list[bytes]:
    # Odd-sized pieces split events and even UTF-8 sequences across reads.
    return [body[i:i + size] for i in range(0, len(body), size)]


def request_for(name: str, stream: bool = False) -> dict[str, Any]:
    # The recordings carry a usage chunk: they were made with include_usage.
    extra = {"stream_options": {"include_usage": True}} if stream else {}
    return {"model": "gpt-4o-2024-08-06", "messages": [{"role": "user", "content": f"fixture {name}"}],
            **PARAMS.get(name, {}), **extra}


def comparable(completion: Any) -> Any:
    """What a client can read, minus what butter regenerates on purpose.

    `id`, `created` and tool-call ids are fresh on every replay (as they are on
    every real call); `parsed*` fields and None-valued fields exist only on
    one of the SDK's model types; a tool call's `index` is left on it by the
    SDK's stream accumulator, and a plain reply has none.
    """
    regenerated = {"id", "created", "parsed", "parsed_arguments"}

    def strip(value: Any, dropped: set[str] = regenerated) -> Any:
        if isinstance(value, dict):
            return {k: strip(v, regenerated | {"index"} if k == "tool_calls" else regenerated)
                    for k, v in value.items() if v is not None and k not in dropped}
        if isinstance(value, list):
            return [strip(v, dropped) for v in value]
        return value
    data = strip(completion.model_dump())
    data["object"] = "chat.completion"
    return data


def final_streamed(sdk: openai.OpenAI, name: str) -> Any:
    """The helper's final completion, or how it raised (a `length` finish
    makes `stream()` raise LengthFinishReasonError: a replay must too)."""
    try:
        with sdk.chat.completions.stream(**request_for(name, stream=True)) as stream:
            return comparable(stream.get_final_completion())
    except openai.OpenAIError as e:
        return ("raised", type(e).__name__, str(e))


def snapshot_streamed(sdk: openai.OpenAI, name: str) -> Any:
    """The completion the raw chunks add up to, as the SDK accumulates them."""
    state: ChatCompletionStreamState = ChatCompletionStreamState()
    for chunk in sdk.chat.completions.create(**request_for(name, stream=True), stream=True):
        state.handle_chunk(chunk)
    return comparable(state.current_completion_snapshot)


@pytest.fixture(scope="module")
def fidelity(provider, confdir, tls, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("fidelity")
    bodies = {name: (STREAMS / f"{name}.sse").read_bytes() for name in FILES}
    provider.handler = lambda call: StreamReply(small_chunks(bodies[call.json["messages"][0]["content"].split()[-1]]))

    context = ssl.create_default_context(cafile=str(tls[0]))
    direct_sdk = openai.OpenAI(api_key=KEY, base_url=f"https://127.0.0.1:{provider.port}/v1", max_retries=0,
                               http_client=httpx2.Client(verify=context, trust_env=False))
    direct = {name: final_streamed(direct_sdk, name) for name in FILES}
    direct_snapshot = {name: snapshot_streamed(direct_sdk, name) for name in FILES}

    def sdk_through(proxy: Proxy) -> openai.OpenAI:
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        return openai.OpenAI(api_key=KEY, max_retries=0,
                             http_client=httpx2.Client(proxy=proxy.url, verify=context, trust_env=False))

    recording = Proxy(confdir, folder / "db", folder / "record.log", upstream=f"127.0.0.1:{provider.port}",
                      upstream_ca=tls[0])
    try:
        passthrough = {name: final_streamed(sdk_through(recording), name) for name in FILES}
    finally:
        recording.stop()
    calls = len(provider.calls)
    replay = Proxy(confdir, folder / "db", folder / "replay.log", mode="replay")
    try:
        sdk = sdk_through(replay)
        streamed = {name: final_streamed(sdk, name) for name in FILES}
        raw = {name: snapshot_streamed(sdk, name) for name in FILES}
        plain = {name: comparable(sdk.chat.completions.create(**request_for(name))) for name in FILES}
    finally:
        replay.stop()
    yield {"direct": direct, "direct_snapshot": direct_snapshot, "passthrough": passthrough,
           "streamed": streamed, "raw": raw, "plain": plain,
           "replay_provider_calls": len(provider.calls) - calls}


def test_replays_never_reached_the_provider(fidelity):
    assert fidelity["replay_provider_calls"] == 0


@pytest.mark.parametrize("name", FILES)
def test_a_missed_stream_passes_through_unchanged(fidelity, name):
    assert fidelity["passthrough"][name] == fidelity["direct"][name]


@pytest.mark.parametrize("name", FILES)
def test_a_recorded_stream_replays_streamed_as_the_same_completion(fidelity, name):
    assert fidelity["streamed"][name] == fidelity["direct"][name]


@pytest.mark.parametrize("name", FILES)
def test_a_recorded_stream_replays_as_raw_chunks_adding_up_to_the_same_completion(fidelity, name):
    assert fidelity["raw"][name] == fidelity["direct_snapshot"][name]


@pytest.mark.parametrize("name", FILES)
def test_a_recorded_stream_replays_plain_as_the_same_completion(fidelity, name):
    assert fidelity["plain"][name] == fidelity["direct_snapshot"][name]


def test_the_fixtures_cover_what_they_claim(fidelity):
    # Guard against a comparison that is trivially equal: the data really
    # holds refusals, logprobs, three choices and parallel tool calls.
    direct = fidelity["direct_snapshot"]
    assert direct["173417d553406f03"]["choices"][0]["message"]["refusal"]
    assert direct["83b060bae42eb41c"]["choices"][0]["logprobs"]["content"]
    assert direct["569c877e69429d4c"]["choices"][0]["logprobs"]["refusal"]
    assert len(direct["a491adda08c3d4fd"]["choices"]) == 3
    assert len(direct["f82268f2fefd5cfb"]["choices"][0]["message"]["tool_calls"]) == 2
    assert all("usage" in d for d in direct.values())
    assert any(d[0] == "raised" for d in fidelity["direct"].values() if isinstance(d, tuple))
