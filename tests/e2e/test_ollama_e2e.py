"""Ollama's native /api/chat through a real mitmdump with butter, the real
`ollama` Python client, and a fake Ollama over TLS on loopback (https://ollama.local)."""
from __future__ import annotations

import base64
import ssl
import uuid
from pathlib import Path

import httpx
import ollama
import pytest

from tests.fakes import ollama_chat
from tests.fakes.ollama_chat import run_agent

EXPECTED_ANSWER = "Refunded 42.5 for order 1234 (Ana Ruiz)."
EXPECTED_CALLS = [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]


class Client:
    """An `ollama.Client` that also notes butter's verdict on each reply."""

    def __init__(self, api_key: str):
        self.cache: list[str] = []
        self.client = ollama.Client(host="https://ollama.local", headers={"authorization": f"Bearer {api_key}"},
                                    timeout=20, event_hooks={"response": [self._note]})

    def _note(self, response: httpx.Response) -> None:
        self.cache.append(response.headers.get("butter-cache", ""))

    def chat(self, **kwargs):
        return self.client.chat(**kwargs)


@pytest.fixture
def ollama_key() -> str:
    return "ollama-test-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def _ollama_provider(provider):
    provider.handler = ollama_chat.handler


def chat_calls(provider) -> int:
    return len(provider.calls_to("/api/chat"))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_second_run_is_served_from_the_tree_with_zero_provider_calls(shared_proxy, through, provider, ollama_key, stream):
    through(shared_proxy)
    first_client = Client(ollama_key)
    first = run_agent(first_client, "1234", stream=stream)
    assert (first["answer"], first["calls"]) == (EXPECTED_ANSWER, EXPECTED_CALLS)
    assert first["thinking"] == "The refund went through."
    assert first_client.cache == ["miss"] * 3
    recorded = chat_calls(provider)
    assert recorded == 3

    again = Client(ollama_key)
    second = run_agent(again, "1234", stream=stream)
    assert chat_calls(provider) == recorded, "the second run reached the provider"
    assert again.cache == ["hit"] * 3
    assert second == first  # answer, thinking, tool calls, counts and durations


@pytest.mark.parametrize("recorded_as,replayed_as", [(False, True), (True, False)],
                         ids=["plain-to-streamed", "streamed-to-plain"])
def test_a_recording_replays_in_the_other_form(shared_proxy, through, provider, ollama_key, recorded_as, replayed_as):
    through(shared_proxy)
    first = run_agent(Client(ollama_key), "9876", stream=recorded_as)
    recorded = chat_calls(provider)
    again = Client(ollama_key)
    second = run_agent(again, "9876", stream=replayed_as)
    assert chat_calls(provider) == recorded
    assert again.cache == ["hit"] * 3
    assert second == first


def test_a_body_without_stream_is_recorded_and_replayed_as_ndjson(shared_proxy, provider, ollama_key):
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "Please refund order 5555."}]}
    context = ssl.create_default_context(cafile=shared_proxy.ca_cert)
    with httpx.Client(proxy=shared_proxy.url, verify=context, timeout=20) as http:
        first = http.post("https://ollama.local/api/chat", json=body, headers={"authorization": f"Bearer {ollama_key}"})
        second = http.post("https://ollama.local/api/chat", json=body, headers={"authorization": f"Bearer {ollama_key}"})
    assert [first.headers["butter-cache"], second.headers["butter-cache"]] == ["miss", "hit"]
    assert second.headers["content-type"] == "application/x-ndjson"
    lines = [ln for ln in second.text.splitlines() if ln]
    assert len(lines) > 1 and '"done":true' in lines[-1]


def assert_not_in_files(folder: Path, *needles: bytes) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{needle!r} found in {path}"


def test_offline_replay_after_restart_with_no_credential_or_image_bytes_stored(start_proxy, through, provider, ollama_key, tmp_path):
    db = tmp_path / "db"
    image = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes * 4
    recording = start_proxy(db)
    through(recording)
    first = run_agent(Client(ollama_key), "1234", stream=True, image=image)
    recording.stop()

    before = len(provider.calls)
    offline = start_proxy(db, mode="replay", forward=False)
    through(offline)
    replay_client = Client(ollama_key)
    assert run_agent(replay_client, "1234", stream=False, image=image) == first
    assert replay_client.cache == ["hit"] * 3

    with pytest.raises(ollama.ResponseError) as other_image:
        run_agent(Client(ollama_key), "1234", image=image + b"!")
    assert other_image.value.status_code == 404
    with pytest.raises(ollama.ResponseError):
        run_agent(Client(ollama_key + "-other"), "1234", image=image)
    assert len(provider.calls) == before
    offline.stop()
    assert_not_in_files(db, ollama_key.encode(), image, base64.b64encode(image))


def test_another_credential_misses(shared_proxy, through, provider, ollama_key):
    through(shared_proxy)
    run_agent(Client(ollama_key), "5555")
    before = chat_calls(provider)
    other = Client(ollama_key + "-b")
    run_agent(other, "5555")
    assert other.cache == ["miss"] * 3
    assert chat_calls(provider) == before + 3


def test_a_local_http_ollama_is_recorded_and_replayed_through_http_proxy(shared_proxy, through, provider, ollama_key):
    # The usual setup: `ollama serve` on http://localhost:11434, reached with HTTP_PROXY.
    through(shared_proxy)
    verdicts: list[str] = []

    def note(response: httpx.Response) -> None:
        verdicts.append(response.headers.get("butter-cache", ""))

    def local() -> ollama.Client:
        return ollama.Client(host="http://ollama.local:11434", headers={"authorization": f"Bearer {ollama_key}"},
                             timeout=20, event_hooks={"response": [note]})

    first = run_agent(local(), "9876", stream=True)
    before = chat_calls(provider)
    assert run_agent(local(), "9876", stream=True) == first
    assert chat_calls(provider) == before
    assert verdicts == ["miss"] * 3 + ["hit"] * 3
