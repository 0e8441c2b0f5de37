"""Gemini through a real mitmdump with butter, the real google-genai SDK as the
client, and a fake generativelanguage.googleapis.com over TLS on loopback."""
from __future__ import annotations

import base64
import ssl
import uuid
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.fakes import gemini
from tests.fakes.gemini import PNG, run_agent

EXPECTED_ANSWER = "Refunded 42.5 for order 1234 (Ana Ruiz)."
EXPECTED_CALLS = [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]


def client(api_key: str) -> genai.Client:
    # retry_options with one attempt: a test must fail fast, not back off.
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(
        timeout=20_000, retry_options=types.HttpRetryOptions(attempts=1)))


@pytest.fixture
def gemini_key() -> str:
    return "AIza-test-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def _gemini_provider(provider):
    provider.handler = gemini.handler


def gemini_calls(provider) -> int:
    return sum(1 for c in provider.calls if ":generateContent" in c.path or ":streamGenerateContent" in c.path)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_second_run_is_served_from_the_tree_with_zero_provider_calls(shared_proxy, through, provider, gemini_key, stream):
    through(shared_proxy)
    first = run_agent(client(gemini_key), "1234", stream=stream)
    assert first["answer"] == EXPECTED_ANSWER
    assert first["calls"] == EXPECTED_CALLS
    assert set(first["cache"]) == {"miss"}
    recorded = gemini_calls(provider)
    assert recorded == 3

    second = run_agent(client(gemini_key), "1234", stream=stream)
    assert gemini_calls(provider) == recorded, "the second run reached the provider"
    assert second["cache"] == ["hit", "hit", "hit"]
    assert (second["answer"], second["calls"]) == (first["answer"], first["calls"])
    assert second["signatures"] == first["signatures"], "thoughtSignature did not round-trip byte-exact"
    assert second["usage"] == first["usage"]


@pytest.mark.parametrize("recorded_as,replayed_as", [(False, True), (True, False)],
                         ids=["plain-to-streamed", "streamed-to-plain"])
def test_a_recording_replays_in_the_other_form(shared_proxy, through, provider, gemini_key, recorded_as, replayed_as):
    through(shared_proxy)
    first = run_agent(client(gemini_key), "9876", stream=recorded_as)
    recorded = gemini_calls(provider)
    second = run_agent(client(gemini_key), "9876", stream=replayed_as)
    assert gemini_calls(provider) == recorded
    assert second["cache"] == ["hit", "hit", "hit"]
    assert (second["answer"], second["calls"], second["signatures"]) == (first["answer"], first["calls"], first["signatures"])


def test_the_stream_verb_without_alt_sse_is_answered_with_a_json_array(shared_proxy, provider, gemini_key):
    # REST clients that omit alt=sse get one JSON array; a hit must keep that form.


    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Please refund order 5555."}]}]}
    with httpx.Client(proxy=shared_proxy.url, verify=ssl.create_default_context(cafile=shared_proxy.ca_cert), timeout=20) as http:
        first = http.post(url, json=body, headers={"x-goog-api-key": gemini_key})
        second = http.post(url, json=body, headers={"x-goog-api-key": gemini_key})
    assert first.headers["butter-cache"] == "miss" and second.headers["butter-cache"] == "hit"
    chunks = second.json()
    assert isinstance(chunks, list)
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert [p["functionCall"]["name"] for c in chunks for p in c["candidates"][0]["content"]["parts"]] == ["get_order"]


def test_key_in_the_query_string_is_a_credential_and_never_stored(start_proxy, provider, tmp_path):


    proxy = start_proxy(tmp_path / "db")
    secret = "AIza-query-" + uuid.uuid4().hex
    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Please refund order 1234."}]}]}
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=proxy.ca_cert), timeout=20) as http:
        first = http.post(url, params={"key": secret}, json=body)
        second = http.post(url, params={"key": secret}, json=body)
        other = http.post(url, params={"key": secret + "-other"}, json=body)
    assert [r.headers["butter-cache"] for r in (first, second, other)] == ["miss", "hit", "miss"]
    proxy.stop()
    assert_not_in_files(tmp_path / "db", secret)


def assert_not_in_files(folder: Path, *needles: str | bytes) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                raw = needle.encode() if isinstance(needle, str) else needle
                assert raw not in data, f"{needle!r} found in {path}"


def test_offline_replay_after_restart_with_no_credential_or_image_bytes_stored(start_proxy, through, provider, gemini_key, tmp_path):
    db = tmp_path / "db"
    image = PNG + uuid.uuid4().bytes  # unique bytes, to search the files for
    recording = start_proxy(db)
    through(recording)
    first = run_agent(client(gemini_key), "1234", stream=True, image=image)
    recording.stop()

    calls_before = len(provider.calls)
    offline = start_proxy(db, mode="replay", forward=False)
    through(offline)
    replayed = run_agent(client(gemini_key), "1234", stream=False, image=image)
    assert len(provider.calls) == calls_before
    assert (replayed["answer"], replayed["calls"], replayed["signatures"]) == (first["answer"], first["calls"], first["signatures"])

    # Another image is another conversation: a replay-mode miss, never forwarded.
    with pytest.raises(errors.ClientError) as missed:
        run_agent(client(gemini_key), "1234", image=PNG + b"other")
    assert missed.value.code == 404
    # So is another credential.
    with pytest.raises(errors.ClientError):
        run_agent(client(gemini_key + "-other"), "1234", image=image)
    assert len(provider.calls) == calls_before
    offline.stop()
    assert_not_in_files(db, gemini_key, image, base64.b64encode(image))


def test_another_credential_misses(shared_proxy, through, provider, gemini_key):
    through(shared_proxy)
    run_agent(client(gemini_key), "5555")
    before = gemini_calls(provider)
    other = run_agent(client(gemini_key + "-b"), "5555")
    assert other["cache"] == ["miss", "miss", "miss"]
    assert gemini_calls(provider) == before + 3
