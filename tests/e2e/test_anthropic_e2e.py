"""Anthropic Messages through a real mitmdump with butter, the real `anthropic`
SDK as the client (HTTPS_PROXY to api.anthropic.com), and a fake provider over
TLS on loopback that speaks the real wire format."""
from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx2
import pytest

from tests.e2e.harness import Proxy
from tests.fakes import anthropic_messages as model
from tests.fakes.anthropic_messages import run_agent
from tests.fakes.provider import Call, JSONReply, StreamReply

STREAMS = Path(__file__).resolve().parents[1] / "data" / "anthropic-streams"
FIXTURES = sorted(p.name for p in STREAMS.glob("*.txt"))
EXPECTED_1234 = {"answer": "Refunded 42.5 for order 1234 (Ana Ruiz).",
                 "calls": [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]}


def client(api_key: str | None = None, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("max_retries", 0)
    return anthropic.Anthropic(api_key=api_key, timeout=20, **kwargs)


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


@pytest.fixture(autouse=True)
def _anthropic_model(provider, monkeypatch) -> None:
    provider.handler = model.handler
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)  # the tests choose how clients authenticate


# -- the agent, recorded and replayed -------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_second_run_is_served_from_the_tree_with_zero_provider_calls(shared_proxy, through, provider, api_key, stream):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", stream=stream)
    assert outcome(first) == EXPECTED_1234
    assert first["cache"] == ["miss", "miss", "miss"]
    assert len(provider.calls) == 3
    assert all(c.headers.get("authorization") == f"Bearer {api_key}" and c.path == "/v1/messages" for c in provider.calls)

    second = run_agent(client(api_key), "1234", stream=stream)
    assert len(provider.calls) == 3, "the second run reached the provider"
    assert second["cache"] == ["hit", "hit", "hit"]
    assert outcome(second) == outcome(first)


@pytest.mark.parametrize("recorded,replayed", [(False, True), (True, False)], ids=["plain-to-streamed", "streamed-to-plain"])
def test_a_recording_replays_in_the_other_form(shared_proxy, through, provider, api_key, recorded, replayed):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", stream=recorded)
    second = run_agent(client(api_key), "1234", stream=replayed)
    assert len(provider.calls) == 3
    assert second["cache"] == ["hit", "hit", "hit"]
    assert outcome(second) == outcome(first) == EXPECTED_1234
    # The whole message survives the change of form, ids aside.
    for a, b in zip(first["replies"], second["replies"]):
        assert comparable(a.model_dump(mode="json")) == comparable(b.model_dump(mode="json"))


def test_an_exact_replay_serves_the_recorded_tool_ids_and_fresh_message_ids(shared_proxy, through, provider, api_key):
    # Recorded tool ids, so an agent that writes them into its next prompt's text matches the recording.
    through(shared_proxy)
    first = run_agent(client(api_key), "1234")
    second = run_agent(client(api_key), "1234", stream=True)
    recorded_ids = [b.id for r in first["replies"] for b in r.content if b.type == "tool_use"]
    replayed = [b.id for r in second["replies"] for b in r.content if b.type == "tool_use"]
    assert replayed and replayed == recorded_ids and all(i.startswith("toolu_") for i in replayed)
    assert all(r.id.startswith("msg_") for r in second["replies"])
    assert {r.id for r in second["replies"]}.isdisjoint({r.id for r in first["replies"]})


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_thinking_signatures_and_redacted_thinking_round_trip_byte_exact(shared_proxy, through, provider, api_key, stream):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", stream=not stream, thinking=True)
    second = run_agent(client(api_key), "1234", stream=stream, thinking=True)
    assert len(provider.calls) == 3 and second["cache"] == ["hit", "hit", "hit"]
    opaque = lambda run: [(b.type, getattr(b, "thinking", None), getattr(b, "signature", None), getattr(b, "data", None))
                          for r in run["replies"] for b in r.content if "thinking" in b.type]
    assert len(opaque(second)) == 6 and opaque(second) == opaque(first)


def test_a_replayed_turn_continues_live_with_ids_and_signatures_the_provider_accepts(shared_proxy, through, provider, api_key, monkeypatch):
    through(shared_proxy)
    run_agent(client(api_key), "1234", thinking=True)
    # The order changed since: turn 1 is served from the tree, turn 2 (its tool
    # result differs) goes to the provider with butter's ids and signatures,
    # which the provider checks the way the real API does.
    monkeypatch.setitem(model.ORDERS, "1234", {**model.ORDERS["1234"], "amount": 50.0})
    run = run_agent(client(api_key), "1234", stream=True, thinking=True)
    assert run["cache"] == ["hit", "miss", "miss"]
    assert run["answer"] == "Refunded 50.0 for order 1234 (Ana Ruiz)."
    assert len(provider.calls) == 5


def test_reverse_mode_serves_clients_that_set_a_base_url(start_proxy, provider, api_key, tmp_path, monkeypatch):
    proxy = start_proxy(tmp_path / "reverse-db", reverse="https://api.anthropic.com")
    monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_cert))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    sdk = client(api_key, base_url=f"https://localhost:{proxy.reverse_port}")
    first = run_agent(sdk, "1234", stream=True)
    second = run_agent(sdk, "1234")
    assert outcome(first) == outcome(second) == EXPECTED_1234
    assert second["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == 3
    assert all(call.headers["host"] == "api.anthropic.com" for call in provider.calls)


# -- keys -------------------------------------------------------------------------

def test_another_api_key_does_not_see_this_keys_recordings(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    run_agent(client(api_key), "1234")
    run_agent(client(api_key + "-other"), "1234")
    assert len(provider.calls) == 6


def x_api_key_client(key: str) -> anthropic.Anthropic:
    """The SDK before 2.x sent `x-api-key`; many agents and gateways still do."""
    return anthropic.Anthropic(api_key=None, default_headers={"x-api-key": key}, max_retries=0, timeout=20)


def test_the_same_key_sent_as_x_api_key_shares_the_namespace(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    run_agent(client(api_key), "1234")
    assert outcome(run_agent(x_api_key_client(api_key), "1234")) == EXPECTED_1234
    assert len(provider.calls) == 3
    assert run_agent(x_api_key_client(api_key + "-other"), "1234")["cache"] == ["miss", "miss", "miss"]


def test_the_anthropic_beta_header_is_part_of_the_key(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    run_agent(client(api_key), "1234")
    beta = client(api_key, default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert run_agent(beta, "1234")["cache"] == ["miss", "miss", "miss"]
    assert run_agent(beta, "1234")["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == 6


def test_images_are_keyed_by_their_bytes_which_never_reach_the_database(start_proxy, through, provider, api_key, tmp_path):
    provider.handler = lambda call: JSONReply(model.message([{"type": "text", "text": "A red square."}], call.json["model"]))
    db = tmp_path / "image-db"
    proxy = start_proxy(db)
    through(proxy)
    red, blue = (bytes([n]) * 3000 + b"butter-image-marker" for n in (1, 2))

    def ask(image: bytes) -> str:
        data = base64.b64encode(image).decode()
        raw = client(api_key).messages.with_raw_response.create(
            model=model.MODEL, max_tokens=100, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                {"type": "text", "text": "What is this?"}]}])
        return raw.headers["butter-cache"]

    assert [ask(red), ask(red), ask(blue), ask(blue)] == ["miss", "hit", "miss", "hit"]
    proxy.stop()
    for path in (p for p in db.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for image in (red, blue):
            assert base64.b64encode(image)[:200] not in data, f"image bytes in {path.name}"


# -- offline replay, errors and secrets ---------------------------------------------

def test_replay_mode_after_restart_serves_recorded_runs_with_no_provider(start_proxy, through, provider, api_key, tmp_path):
    db = tmp_path / "offline-db"
    recording = start_proxy(db)
    through(recording)
    plain = run_agent(client(api_key), "1234")
    streamed = run_agent(client(api_key), "9876", stream=True)
    recording.stop()
    calls = len(provider.calls)

    offline = start_proxy(db, mode="replay", forward=False)
    through(offline)
    assert outcome(run_agent(client(api_key), "1234", stream=True)) == outcome(plain)
    assert outcome(run_agent(client(api_key), "9876")) == outcome(streamed)
    assert len(provider.calls) == calls

    with pytest.raises(anthropic.NotFoundError) as raised:
        # Not a refund: no recording, nor any template learned from the two runs, answers it.
        client(api_key, max_retries=2).messages.create(
            model=model.MODEL, max_tokens=100, messages=[{"role": "user", "content": "Tell me a joke."}])
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "butter_replay_miss"
    assert "never recorded" in raised.value.body["error"]["message"]
    assert raised.value.response.headers["butter-cache"] == "replay-miss"
    assert offline.log_text().count("butter: replay-miss") == 1, "the SDK retried a replay miss"
    assert len(provider.calls) == calls


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
def test_database_and_log_hold_no_credential_bytes(start_proxy, through, provider, tmp_path, auth):
    secret = "sk-ant-api03-" + "Zq9" * 20
    db = tmp_path / "secret-db"
    proxy = start_proxy(db)
    through(proxy)
    sdk = x_api_key_client(secret) if auth == "x-api-key" else client(secret)
    run_agent(sdk, "1234")
    run_agent(sdk, "1234", stream=True, thinking=True)
    proxy.stop()
    sent = provider.calls[0].headers
    assert sent.get("x-api-key") == secret or sent.get("authorization") == f"Bearer {secret}"
    needles = [secret.encode(), secret[13:].encode(), secret[13:45].encode()]
    files = [p for p in db.rglob("*") if p.is_file()]
    assert files
    for path in files + [proxy.log]:
        data = path.read_bytes()
        assert not any(n in data for n in needles), f"credential bytes in {path.name}"


def test_an_error_event_is_passed_through_and_not_recorded(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    head = model.stream_events(model.message([{"type": "text", "text": "Partial answer"}], model.MODEL))[:4]
    overloaded = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    provider.handler = lambda call: StreamReply(head + [overloaded])
    messages = [{"role": "user", "content": "Please refund order 1234."}]
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        with client(api_key).messages.stream(model=model.MODEL, max_tokens=100, messages=messages) as s:
            s.get_final_message()
    provider.handler = model.handler
    with client(api_key).messages.stream(model=model.MODEL, max_tokens=100, messages=messages) as s:
        assert s.response.headers["butter-cache"] == "miss"
        s.get_final_message()
    assert len(provider.calls) == 2


def test_a_stream_without_message_stop_is_not_recorded(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    whole = model.stream_events(model.message([{"type": "text", "text": "Refunded 42.5."}], model.MODEL))
    provider.handler = lambda call: StreamReply(whole[:-1])  # ends cleanly, but without message_stop
    messages = [{"role": "user", "content": "Please refund order 1234."}]
    for _ in range(2):
        with client(api_key).messages.stream(model=model.MODEL, max_tokens=100, messages=messages) as s:
            assert s.get_final_text() == "Refunded 42.5."
    assert len(provider.calls) == 2, "the incomplete stream was recorded and served"


def test_count_tokens_is_not_an_llm_request_and_passes_through(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    provider.handler = lambda call: JSONReply({"input_tokens": 7})
    result = client(api_key).messages.count_tokens(model=model.MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert result.input_tokens == 7
    assert provider.calls[-1].path == "/v1/messages/count_tokens"


# -- fidelity: the anthropic SDK's own recorded streams -------------------------------

def fixture_body(name: str) -> bytes:
    """The fixture as the API sends it: the files stop right after the last
    event's data line, and a stream's last event is only dispatched once a
    blank line ends it (the SDK's own tests add that newline too)."""
    text = (STREAMS / name).read_bytes()
    return text if text.endswith(b"\n\n") else text.rstrip(b"\n") + b"\n\n"


def small_chunks(body: bytes, size: int = 23) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def fixture_handler(call: Call) -> StreamReply:
    name = call.json["messages"][0]["content"].removeprefix("fixture ")
    return StreamReply(small_chunks(fixture_body(name)))


def comparable(value: Any, ids: dict[str, str] | None = None) -> Any:
    """`value` with the ids butter regenerates replaced by stable names.

    Butter gives every replay a fresh message id (`msg_...`) and fresh
    `tool_use` block ids (`toolu_...`): ids a client may use as keys must not
    repeat across replays, and tool-use ids are volatile in the API anyway.
    The replacement is by first appearance, so an id that appears in several
    events (message_start, content_block_start, content_block_stop's block,
    message_stop's snapshot) must be the same id each time. Nothing else is
    changed: every other field, server tool ids included, must be equal.
    """
    ids = {} if ids is None else ids
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            volatile = k == "id" and isinstance(v, str) and (
                v.startswith("msg_") and value.get("type") == "message" or value.get("type") == "tool_use")
            out[k] = ids.setdefault(v, f"<id {len(ids)}>") if volatile else comparable(v, ids)
        return out
    if isinstance(value, list):
        return [comparable(v, ids) for v in value]
    return value


def read_stream(sdk: anthropic.Anthropic, name: str) -> dict:
    """Everything `messages.stream` gives: each event, the final message, or what it raised."""
    events: list[Any] = []
    try:
        with sdk.messages.stream(model=model.MODEL, max_tokens=1024,
                                 messages=[{"role": "user", "content": f"fixture {name}"}]) as s:
            for event in s:
                events.append(event.model_dump(mode="json", warnings=False))
            final = s.get_final_message().model_dump(mode="json", warnings=False)
            cache = s.response.headers.get("butter-cache")
    except Exception as e:  # noqa: BLE001 - the failure itself is compared
        return {"raised": (type(e).__name__, str(e)), "events": events}
    ids: dict[str, str] = {}
    return {"events": comparable(events, ids), "final": comparable(final, ids), "cache": cache}


@pytest.fixture(scope="module")
def offline_replay(shared_proxy: Proxy, confdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A second proxy on the shared proxy's database: replay mode, no way to the provider."""
    proxy = Proxy(confdir, shared_proxy.db, tmp_path_factory.mktemp("offline") / "mitmdump.log", mode="replay")
    yield proxy
    proxy.stop()


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def via(proxy: Proxy, api_key: str) -> anthropic.Anthropic:
    return client(api_key, http_client=httpx2.Client(proxy=proxy.url, verify=trusting(proxy.ca_cert), trust_env=False))


@pytest.mark.parametrize("name", FIXTURES)
def test_sdk_stream_fixture_replays_with_the_same_events_and_final_message(
        name, shared_proxy, offline_replay, provider, tls, api_key):
    provider.handler = fixture_handler
    direct = read_stream(client(api_key, base_url=f"https://127.0.0.1:{provider.port}",
                                http_client=httpx2.Client(verify=trusting(tls[0]), trust_env=False)), name)
    recording = read_stream(via(shared_proxy, api_key), name)
    assert {k: v for k, v in recording.items() if k != "cache"} == {k: v for k, v in direct.items() if k != "cache"}
    assert len(provider.calls) == 2

    if "raised" in direct:
        # A stream the SDK rejects is passed through as it came and never
        # recorded: asked again, the recording proxy forwards it again (it
        # waits for its pending writes before it decides on a miss) ...
        assert read_stream(via(shared_proxy, api_key), name)["raised"] == direct["raised"]
        assert len(provider.calls) == 3
        # ... and the offline proxy has nothing to serve.
        with pytest.raises(anthropic.NotFoundError):
            read_stream_strict(via(offline_replay, api_key), name)
        return

    assert recording["cache"] == "miss"
    # A hit on the recording proxy proves the reply is committed to the tree.
    assert read_stream(via(shared_proxy, api_key), name)["cache"] == "hit"
    replayed = read_stream(via(offline_replay, api_key), name)
    assert replayed["cache"] == "hit"
    assert replayed["events"] == direct["events"]
    assert replayed["final"] == direct["final"]
    assert len(provider.calls) == 2


def read_stream_strict(sdk: anthropic.Anthropic, name: str) -> None:
    with sdk.messages.stream(model=model.MODEL, max_tokens=1024,
                             messages=[{"role": "user", "content": f"fixture {name}"}]) as s:
        s.get_final_message()


def test_every_sdk_fixture_is_here():
    assert len(FIXTURES) == 16
    assert (STREAMS / "README.md").is_file() and (STREAMS / "LICENSE").is_file()
