"""OpenAI Chat Completions through a real mitmdump with butter, the real
openai SDK as the client, and a fake provider over TLS on loopback."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import lmdb.verify
import openai
import pytest

from tests.fakes import openai_chat
from tests.fakes.openai_chat import run_agent
from tests.fakes.provider import JSONReply, StreamReply


def client(api_key: str, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=api_key, timeout=20, **kwargs)


EXPECTED_1234 = {"answer": "Refunded 42.5 for order 1234 (Ana Ruiz).",
                 "calls": [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]}


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_second_run_is_served_from_the_tree_with_zero_provider_calls(shared_proxy, through, provider, api_key, stream):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", stream=stream)
    assert outcome(first) == EXPECTED_1234
    assert len(provider.calls) == 3

    second = run_agent(client(api_key), "1234", stream=stream)
    assert len(provider.calls) == 3, "the second run reached the provider"
    assert outcome(second) == outcome(first)


def test_every_llm_response_says_hit_or_miss_and_hits_name_their_node(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234")
    second = run_agent(client(api_key), "1234")
    assert first["cache"] == ["miss", "miss", "miss"]
    assert second["cache"] == ["hit", "hit", "hit"]
    raw = client(api_key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", tools=openai_chat.TOOLS,
        messages=[{"role": "system", "content": openai_chat.SYSTEM},
                  {"role": "user", "content": "Please refund order 1234."}])
    assert len(raw.headers["butter-node"]) == 32 and int(raw.headers["butter-node"], 16) >= 0


@pytest.mark.parametrize("recorded,replayed", [(False, True), (True, False)], ids=["plain-to-streamed", "streamed-to-plain"])
def test_a_recording_replays_in_the_other_form(shared_proxy, through, provider, api_key, recorded, replayed):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", stream=recorded)
    second = run_agent(client(api_key), "1234", stream=replayed)
    assert len(provider.calls) == 3
    assert outcome(second) == outcome(first) == EXPECTED_1234


def test_streamed_replay_adds_the_usage_chunk_only_when_this_request_asks(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    messages = [{"role": "user", "content": "Please refund order 1234."}]
    plain = client(api_key).chat.completions.create(model="gpt-4o-mini", messages=messages)
    without = list(client(api_key).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    with_usage = list(client(api_key).chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}))
    assert len(provider.calls) == 1
    assert all(chunk.choices for chunk in without), "a chunk without choices breaks chunk.choices[0] code"
    assert with_usage[-1].choices == [] and with_usage[-1].usage == plain.usage


def test_replay_mode_after_restart_serves_recorded_runs_with_no_provider(start_proxy, through, provider, api_key, tmp_path):
    db = tmp_path / "offline-db"
    recording = start_proxy(db)
    through(recording)
    plain = run_agent(client(api_key), "1234")
    streamed = run_agent(client(api_key), "9876", stream=True)
    recording.stop()
    calls = len(provider.calls)

    # No redirect to the fake: api.openai.com is unreachable from here.
    offline = start_proxy(db, mode="replay", forward=False)
    through(offline)
    assert outcome(run_agent(client(api_key), "1234")) == outcome(plain)
    assert outcome(run_agent(client(api_key), "9876", stream=True)) == outcome(streamed)
    assert outcome(run_agent(client(api_key), "1234", stream=True)) == outcome(plain)
    assert len(provider.calls) == calls


def test_replay_mode_miss_is_an_openai_error_that_is_not_retried_and_never_forwarded(start_proxy, through, provider, api_key, tmp_path):
    db = tmp_path / "replay-db"
    recording = start_proxy(db)
    through(recording)
    run_agent(client(api_key), "1234")
    recording.stop()
    calls = len(provider.calls)

    replay = start_proxy(db, mode="replay")  # the fake is reachable: butter must still not forward
    through(replay)
    sdk = client(api_key, max_retries=2)
    with pytest.raises(openai.NotFoundError) as raised:
        run_agent(sdk, "9876")
    assert "replay mode" in raised.value.message and "never recorded" in raised.value.message
    assert raised.value.code == "butter_replay_miss"
    assert raised.value.response.headers["butter-cache"] == "replay-miss"
    assert len(provider.calls) == calls
    assert replay.log_text().count("butter: replay-miss") == 1, "the SDK retried a replay miss"
    # ... and the proxy keeps serving what it has.
    assert outcome(run_agent(sdk, "1234")) == EXPECTED_1234


def test_reverse_mode_serves_clients_that_set_a_base_url(start_proxy, provider, api_key, tmp_path, monkeypatch):
    proxy = start_proxy(tmp_path / "reverse-db", reverse="https://api.openai.com")
    monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_cert))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    sdk = client(api_key, base_url=f"https://localhost:{proxy.reverse_port}/v1")
    first = run_agent(sdk, "1234", stream=True)
    second = run_agent(sdk, "1234")
    assert outcome(first) == outcome(second) == EXPECTED_1234
    assert len(provider.calls) == 3
    assert all(call.headers["host"] == "api.openai.com" for call in provider.calls)


def test_database_and_log_hold_no_credential_bytes(start_proxy, through, provider, tmp_path):
    secret = "sk-proj-" + "Zq9" * 20
    db = tmp_path / "secret-db"
    proxy = start_proxy(db)
    through(proxy)
    run_agent(client(secret), "1234")
    run_agent(client(secret), "1234", stream=True)
    proxy.stop()
    assert any(call.headers.get("authorization") == f"Bearer {secret}" for call in provider.calls)
    needles = [secret.encode(), secret[8:].encode(), secret[8:40].encode()]
    files = [p for p in db.rglob("*") if p.is_file()]
    assert files
    for path in files + [proxy.log]:
        data = path.read_bytes()
        assert not any(n in data for n in needles), f"credential bytes in {path.name}"


def test_another_api_key_does_not_see_this_keys_recordings(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    run_agent(client(api_key), "1234")
    run_agent(client(api_key + "-other"), "1234")
    assert len(provider.calls) == 6


def test_the_same_key_sent_as_x_api_key_shares_the_namespace(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    run_agent(client(api_key), "1234")
    sdk = openai.OpenAI(api_key="unused", max_retries=0, default_headers={"authorization": "", "x-api-key": api_key})
    assert outcome(run_agent(sdk, "1234")) == EXPECTED_1234
    assert len(provider.calls) == 3


def test_upstream_500_is_passed_through_and_not_recorded(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    provider.handler = lambda call: JSONReply({"error": {"message": "upstream broke", "type": "server_error"}}, status=500)
    with pytest.raises(openai.InternalServerError) as raised:
        run_agent(client(api_key), "1234")
    assert "upstream broke" in str(raised.value)
    assert raised.value.response.headers["butter-cache"] == "miss"
    provider.handler = openai_chat.handler
    assert outcome(run_agent(client(api_key), "1234")) == EXPECTED_1234
    assert len(provider.calls) == 4, "the 500 was served from the tree"


def test_a_200_error_payload_is_passed_through_and_not_recorded(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    provider.handler = lambda call: StreamReply([b'data: {"error": {"message": "overloaded"}}\n\n'])
    with pytest.raises(openai.APIError):
        list(client(api_key).chat.completions.create(model="gpt-4o-mini", stream=True,
                                                     messages=[{"role": "user", "content": "refund order 1234"}]))
    provider.handler = openai_chat.handler
    list(client(api_key).chat.completions.create(model="gpt-4o-mini", stream=True,
                                                 messages=[{"role": "user", "content": "refund order 1234"}]))
    assert len(provider.calls) == 2


def test_a_stream_the_provider_cuts_short_is_not_recorded(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    full = openai_chat.completion({"content": "Refunded 42.5 for order 1234 today."}, "gpt-4o-mini")
    chunks = openai_chat.stream_chunks(full, include_usage=False)
    provider.handler = lambda call: StreamReply(chunks, abort_after=3)
    messages = [{"role": "user", "content": "refund order 1234"}]
    with pytest.raises((openai.APIError, httpx2.HTTPError)):
        list(client(api_key).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    provider.handler = lambda call: StreamReply(chunks)
    whole = list(client(api_key).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in whole if c.choices) == "Refunded 42.5 for order 1234 today."
    assert len(provider.calls) == 2, "the cut stream was recorded and served"


def test_a_stream_the_client_abandons_is_not_recorded(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    full = openai_chat.completion({"content": "one two three four five six seven"}, "gpt-4o-mini")
    chunks = openai_chat.stream_chunks(full, include_usage=False)
    abandoned = threading.Event()
    provider.handler = lambda call: StreamReply(chunks, before_chunk=lambda i: i == 2 and abandoned.wait(10))
    messages = [{"role": "user", "content": "count to seven"}]
    stream = client(api_key).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    next(iter(stream))
    disconnects = shared_proxy.log_text().count("client disconnect")
    stream.close()
    # The provider sends the rest only once the proxy has seen the client go
    # (otherwise, on a loaded machine, the whole stream may arrive first).
    deadline = time.monotonic() + 10
    while shared_proxy.log_text().count("client disconnect") == disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    abandoned.set()
    provider.handler = lambda call: StreamReply(chunks)
    list(client(api_key).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    assert len(provider.calls) == 2, "the abandoned stream was recorded and served"


def test_a_missed_stream_reaches_the_client_before_the_provider_sends_its_last_chunk(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    full = openai_chat.completion({"content": "first then the rest of the answer"}, "gpt-4o-mini")
    chunks = openai_chat.stream_chunks(full, include_usage=False)
    client_saw_first = threading.Event()
    provider_waited = []

    def hold_back(i: int) -> None:
        # The provider sends the rest only once the client has read the first
        # chunk; a buffering proxy would make this wait run out.
        if i == 1:
            provider_waited.append(client_saw_first.wait(timeout=15))

    provider.handler = lambda call: StreamReply(chunks, before_chunk=hold_back)
    stream = client(api_key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream please"}], stream=True)
    pieces = []
    for n, chunk in enumerate(stream):
        if n == 0:
            client_saw_first.set()
        pieces.append(chunk.choices[0].delta.content or "")
    assert provider_waited == [True], "the client saw nothing until the provider had sent everything"
    assert "".join(pieces) == "first then the rest of the answer"


def test_requests_butter_cannot_parse_pass_through_unchanged(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    provider.handler = lambda call: JSONReply({"error": {"message": f"got {len(call.body)} bytes"}}, status=400)
    body = b'{"model": "gpt-4o-mini", "messages": "not a list", "odd": true}'
    sdk = client(api_key)
    response = sdk._client.post(f"{sdk.base_url}chat/completions", content=body,
                                headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"})
    assert response.status_code == 400
    assert provider.calls[-1].body == body
    assert response.headers["butter-cache"] == "bypass (not understood)"


def test_other_traffic_passes_through_untouched(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    provider.handler = lambda call: JSONReply({"object": "list", "data": []})
    sdk = client(api_key)
    response = sdk._client.post(f"{sdk.base_url}embeddings", json={"model": "e", "input": "x"},
                                headers={"authorization": f"Bearer {api_key}"})
    assert response.json() == {"object": "list", "data": []}
    assert "butter-cache" not in response.headers
    assert provider.calls[-1].headers.get("authorization") == f"Bearer {api_key}"


def test_many_agents_at_once_through_one_proxy_lose_nothing(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    # This test counts one recorded run per order; learned templates would
    # (rightly) serve later orders from earlier ones, so induction is off.
    quiet = {"Butter-Disable-Induction": "true"}
    orders = [str(2000 + n) for n in range(1, 13)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        first = list(pool.map(lambda o: run_agent(client(api_key, default_headers=quiet), o, stream=int(o) % 2 == 0), orders))
    assert len(provider.calls) == 3 * len(orders)
    with ThreadPoolExecutor(max_workers=6) as pool:
        second = list(pool.map(lambda o: run_agent(client(api_key, default_headers=quiet), o, stream=int(o) % 2 == 1), orders))
    assert len(provider.calls) == 3 * len(orders)
    assert [outcome(r) for r in second] == [outcome(r) for r in first]


def test_two_proxies_sharing_one_database_lose_and_corrupt_nothing(start_proxy, through, provider, api_key, tmp_path, monkeypatch):
    db = tmp_path / "shared-db"
    a, b = start_proxy(db), start_proxy(db)
    orders = [str(2000 + n) for n in range(1, 13)]

    def run(pair: tuple[int, str]) -> dict:
        proxy = (a, b)[pair[0] % 2]
        http = httpx2.Client(proxy=proxy.url, verify=str(proxy.ca_cert), timeout=20)
        return run_agent(client(api_key, http_client=http), pair[1])

    with ThreadPoolExecutor(max_workers=6) as pool:
        first = list(pool.map(run, enumerate(orders)))
    a.stop()
    b.stop()
    assert lmdb.verify.verify(str(db)) == []
    calls = len(provider.calls)
    offline = start_proxy(db, mode="replay", forward=False)
    through(offline)
    for order, recorded in zip(orders, first):
        assert outcome(run_agent(client(api_key), order)) == outcome(recorded)
    assert len(provider.calls) == calls
