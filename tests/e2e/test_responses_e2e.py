"""OpenAI Responses API through a real mitmdump with butter, the real openai
SDK (`responses.create` plain and as raw events, and `responses.stream()`),
and a fake provider over TLS that keeps server-side state like the real API."""
from __future__ import annotations

import httpx2
import openai
import pytest

from tests.fakes import openai_responses
from tests.fakes.openai_chat import ORDERS
from tests.fakes.openai_responses import INSTRUCTIONS, TOOLS, FakeResponsesModel, run_agent
from tests.fakes.provider import StreamReply

EXPECTED_1234 = {"answer": "Refunded 42.5 for order 1234 (Ana Ruiz).",
                 "calls": [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]}
STATE = [False, True]
STATE_IDS = ["stateless", "stateful"]


def client(api_key: str, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=api_key, timeout=20, **kwargs)


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


@pytest.fixture
def model(provider) -> FakeResponsesModel:
    fake = FakeResponsesModel()
    provider.handler = fake
    return fake


@pytest.mark.parametrize("stateful", STATE, ids=STATE_IDS)
@pytest.mark.parametrize("mode", openai_responses.MODES)
def test_second_run_is_served_from_the_tree_with_the_recorded_ids(shared_proxy, through, provider, model, api_key,
                                                                  mode, stateful):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", mode=mode, stateful=stateful)
    assert outcome(first) == EXPECTED_1234
    assert len(provider.calls) == 3
    assert first["cache"] == ["miss"] * 3

    second = run_agent(client(api_key), "1234", mode=mode, stateful=stateful)
    assert len(provider.calls) == 3, "the second run reached the provider"
    assert second["cache"] == ["hit"] * 3
    assert outcome(second) == EXPECTED_1234
    # The recorded ids, so a stateful client's next turn names ids butter knows.
    assert second["ids"] == first["ids"] and second["items"] == first["items"]


@pytest.mark.parametrize("stateful", STATE, ids=STATE_IDS)
@pytest.mark.parametrize("recorded,replayed", [("plain", "events"), ("events", "helper"), ("helper", "plain")])
def test_a_recording_replays_in_the_other_form(shared_proxy, through, provider, model, api_key, recorded, replayed,
                                               stateful):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", mode=recorded, stateful=stateful)
    second = run_agent(client(api_key), "1234", mode=replayed, stateful=stateful)
    assert len(provider.calls) == 3
    assert outcome(second) == outcome(first) == EXPECTED_1234
    assert second["ids"] == first["ids"]


def test_a_stateless_recording_serves_a_stateful_run_and_back(shared_proxy, through, provider, model, api_key):
    # One tree for both: a stateful turn is expanded into the conversation a
    # stateless client would have resent (same `include`, which is keyed).
    through(shared_proxy)
    stateless = run_agent(client(api_key), "1234", stateful=False)
    stateful = run_agent(client(api_key), "1234", mode="helper", stateful=True, encrypted_reasoning=True)
    again = run_agent(client(api_key), "1234", mode="events", stateful=False)
    assert len(provider.calls) == 3
    assert outcome(stateless) == outcome(stateful) == outcome(again) == EXPECTED_1234


@pytest.mark.parametrize("stateful", STATE, ids=STATE_IDS)
def test_a_run_that_leaves_the_tree_continues_at_the_provider_with_the_replayed_ids(
        shared_proxy, through, provider, model, api_key, stateful):
    # Only the first turn is recorded; the agent's second turn misses and
    # carries what butter replayed (call ids, the reasoning blob byte for
    # byte, or the recorded response id), which the provider verifies.
    through(shared_proxy)
    sdk = client(api_key)
    first_turn = {"model": "gpt-4.1-mini", "instructions": INSTRUCTIONS, "tools": TOOLS,
                  "input": [{"role": "user", "content": "Please refund order 1234."}]}
    if not stateful:
        first_turn.update(store=False, include=["reasoning.encrypted_content"])
    recorded = sdk.responses.create(**first_turn)
    run = run_agent(sdk, "1234", mode="events", stateful=stateful)
    assert run["cache"] == ["hit", "miss", "miss"]
    assert run["ids"][0] == recorded.id
    assert outcome(run) == EXPECTED_1234
    assert len(provider.calls) == 3


@pytest.mark.parametrize("mode", openai_responses.MODES)
def test_a_stateful_turn_after_a_hit_reaches_a_provider_that_never_issued_the_served_id(
        shared_proxy, through, provider, model, api_key, mode):
    # The first turn was recorded in another provider session (expired, another run's): the provider
    # answering now never issued the id butter serves. The miss after it goes up stateless, whole.
    through(shared_proxy)
    sdk = client(api_key)
    recorded = sdk.responses.create(model="gpt-4.1-mini", instructions=INSTRUCTIONS, tools=TOOLS,
                                    input=[{"role": "user", "content": "Please refund order 1234."}])
    provider.handler = forgetful = FakeResponsesModel()
    run = run_agent(sdk, "1234", mode=mode, stateful=True)
    assert run["cache"] == ["hit", "miss", "miss"]
    assert run["ids"][0] == recorded.id and recorded.id not in forgetful.stored
    assert outcome(run) == EXPECTED_1234
    second, third = provider.calls[-2].json, provider.calls[-1].json
    assert "previous_response_id" not in second
    assert second["input"][0] == {"role": "user", "content": "Please refund order 1234."}
    assert (second["instructions"], second["tools"], second.get("stream")) == (
        INSTRUCTIONS, TOOLS, True if mode != "plain" else None)
    # The provider issued (and stored) the second turn's id: the third turn names it as the client sent it.
    assert third["previous_response_id"] == run["ids"][1]
    assert len(provider.calls) == 3


def test_a_stateful_verification_after_a_template_hit_reaches_the_provider_statelessly(
        shared_proxy, through, provider, api_key, monkeypatch):
    # A template learned from two stateful runs and promoted by two more. An order verified
    # before whose customer has changed since: the first turn (its order number, seen with the
    # template) is served with ids derived from the run's values, and the second, whose tool
    # result names a customer never seen (a decision input), goes to the provider as a
    # verification, naming one of those ids.
    from tests.e2e.test_templates_e2e import VERIFIERS, promote, settle

    through(shared_proxy)
    provider.handler = FakeResponsesModel()
    sdk = client(api_key)
    for order_id in ("1234", "9876"):
        run_agent(sdk, order_id, stateful=True)
    settle(shared_proxy, provider, api_key)
    promote(shared_proxy, lambda o: run_agent(sdk, o, stateful=True)["cache"], VERIFIERS[:2])
    order = VERIFIERS[0]
    monkeypatch.setitem(ORDERS, order, {**ORDERS[order], "customer": "Lu Moss"})
    calls = len(provider.calls)
    run = run_agent(sdk, order, stateful=True)
    assert run["cache"] == ["hit", "verify", "verify"]  # the answer states the new name: verified too
    amount = ORDERS[order]["amount"]
    assert run["calls"] == [("get_order", {"order_id": order}), ("refund", {"order_id": order, "amount": amount})]
    assert run["answer"] == f"Refunded {amount} for order {order} (Lu Moss)."
    verified = provider.calls[calls]  # the second turn's
    assert "previous_response_id" not in verified.json
    assert [i.get("type", "message") for i in verified.json["input"]] == ["message", "function_call",
                                                                          "function_call_output"]


def test_an_unknown_previous_response_id_passes_through_to_the_provider(shared_proxy, through, provider, model,
                                                                       api_key):
    through(shared_proxy)
    with pytest.raises(openai.BadRequestError) as raised:
        client(api_key).responses.create(model="gpt-4.1-mini", input="Please refund order 1234.",
                                         previous_response_id="resp_nobody_knows")
    assert raised.value.code == "previous_response_not_found"
    assert raised.value.response.headers["butter-cache"] == "bypass (not understood)"
    assert provider.calls[-1].json["previous_response_id"] == "resp_nobody_knows"


def test_replies_echo_this_requests_metadata_not_the_recorded_one(shared_proxy, through, provider, model, api_key):
    through(shared_proxy)
    ask = {"model": "gpt-4.1-mini", "input": "Please refund order 1234.", "tools": TOOLS}
    first = client(api_key).responses.create(**ask, metadata={"run": "one"}, user="alice")
    second = client(api_key).responses.create(**ask, metadata={"run": "two"})
    assert len(provider.calls) == 1
    assert (first.metadata, first.user) == ({"run": "one"}, "alice")
    assert (second.metadata, second.user) == ({"run": "two"}, None)
    assert second.id == first.id


def test_replay_mode_after_restart_serves_both_kinds_of_run_with_no_provider(start_proxy, through, provider, model,
                                                                             api_key, tmp_path):
    db = tmp_path / "offline-db"
    recording = start_proxy(db)
    through(recording)
    stateless = run_agent(client(api_key), "1234", mode="plain")
    stateful = run_agent(client(api_key), "9876", mode="helper", stateful=True)
    recording.stop()
    calls = len(provider.calls)

    offline = start_proxy(db, mode="replay", forward=False)  # api.openai.com is unreachable from here
    through(offline)
    assert outcome(run_agent(client(api_key), "1234", mode="events")) == outcome(stateless)
    replayed = run_agent(client(api_key), "9876", mode="plain", stateful=True)
    assert outcome(replayed) == outcome(stateful) and replayed["ids"] == stateful["ids"]
    assert len(provider.calls) == calls
    # A response id butter never saw is a replay miss, not a forwarded request.
    with pytest.raises(openai.NotFoundError) as raised:
        client(api_key).responses.create(model="gpt-4.1-mini", input="hi", previous_response_id="resp_unknown")
    assert raised.value.code == "butter_replay_miss"
    assert len(provider.calls) == calls


def test_database_and_log_hold_no_credential_bytes(start_proxy, through, provider, model, tmp_path):
    secret = "sk-proj-" + "Rs7" * 20
    db = tmp_path / "secret-db"
    proxy = start_proxy(db)
    through(proxy)
    run_agent(client(secret), "1234", mode="plain")
    run_agent(client(secret), "1234", mode="helper", stateful=True)
    proxy.stop()
    assert any(call.headers.get("authorization") == f"Bearer {secret}" for call in provider.calls)
    needles = [secret.encode(), secret[8:].encode(), secret[8:40].encode()]
    files = [p for p in db.rglob("*") if p.is_file()]
    assert files
    for path in files + [proxy.log]:
        data = path.read_bytes()
        assert not any(n in data for n in needles), f"credential bytes in {path.name}"


@pytest.mark.parametrize("stateful", STATE, ids=STATE_IDS)
def test_another_api_key_does_not_see_this_keys_recordings(shared_proxy, through, provider, model, api_key, stateful):
    through(shared_proxy)
    run_agent(client(api_key), "1234", stateful=stateful)
    other = run_agent(client(api_key + "-other"), "1234", stateful=stateful)
    assert other["cache"] == ["miss"] * 3
    assert len(provider.calls) == 6


def test_another_keys_response_id_is_not_continued_from_this_keys_tree(shared_proxy, through, provider, model, api_key):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", stateful=True)
    # The other key names a response id recorded under the first key: butter
    # must not expand it from the first key's state.
    raw = client(api_key + "-other").responses.with_raw_response.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, tools=TOOLS, previous_response_id=first["ids"][0],
        input=[{"type": "function_call_output", "call_id": first["items"][0][1][2],
                "output": '{"order_id": "1234", "amount": 42.5, "customer": "Ana Ruiz"}'}])
    assert raw.headers["butter-cache"] == "bypass (not understood)"
    assert len(provider.calls) == 4


def test_failed_and_cut_streams_are_not_recorded(shared_proxy, through, provider, model, api_key):
    through(shared_proxy)
    ask = {"model": "gpt-4.1-mini", "input": "Please refund order 1234.", "tools": TOOLS}
    events = openai_responses.stream_events(model._respond(ask, [{"role": "user", "content": ask["input"]}]))
    failed = events[:2] + [b'event: response.failed\ndata: {"type":"response.failed","sequence_number":2,'
                           b'"response":{"id":"resp_x","object":"response","status":"failed",'
                           b'"error":{"code":"server_error","message":"boom"},"output":[]}}\n\n']
    provider.handler = lambda call: StreamReply(failed)
    assert [e.type for e in client(api_key).responses.create(**ask, stream=True)][-1] == "response.failed"
    provider.handler = lambda call: StreamReply(events, abort_after=4)
    with pytest.raises((openai.APIError, httpx2.HTTPError)):
        list(client(api_key).responses.create(**ask, stream=True))
    provider.handler = model
    whole = client(api_key).responses.with_raw_response.create(**ask)
    assert whole.headers["butter-cache"] == "miss"
    assert len(provider.calls) == 3


@pytest.mark.parametrize("azure", ["v1", "api-version"])
def test_azure_responses_record_and_replay(shared_proxy, through, provider, model, api_key, azure):
    through(shared_proxy)
    if azure == "v1":
        sdk = openai.OpenAI(api_key=api_key, base_url="https://contoso.openai.azure.com/openai/v1/", max_retries=0)
    else:
        sdk = openai.AzureOpenAI(api_key=api_key, azure_endpoint="https://contoso.openai.azure.com",
                                 api_version="2025-04-01-preview", max_retries=0)
    first = run_agent(sdk, "1234", mode="helper", stateful=True, model="my-deployment")
    second = run_agent(sdk, "1234", mode="plain", stateful=True, model="my-deployment")
    assert outcome(first) == outcome(second) == EXPECTED_1234
    assert second["cache"] == ["hit"] * 3 and second["ids"] == first["ids"]
    assert len(provider.calls) == 3
    assert all(call.path.endswith("/responses") and call.headers["host"] == "contoso.openai.azure.com"
               for call in provider.calls)


@pytest.mark.parametrize("stateful", STATE, ids=STATE_IDS)
def test_a_declared_template_serves_another_order_with_ids_of_its_own(shared_proxy, through, provider, model, api_key,
                                                                       stateful):
    through(shared_proxy)
    recorded = run_agent(client(api_key), "1234", stateful=stateful, declare=True)
    served = run_agent(client(api_key), "9876", mode="helper", stateful=stateful, declare=True)
    assert len(provider.calls) == 3, "the second order reached the provider"
    assert served["answer"] == "Refunded 17.0 for order 9876 (Bo Chen)."
    assert served["calls"] == [("get_order", {"order_id": "9876"}), ("refund", {"order_id": "9876", "amount": 17.0})]
    # Ids the provider holds for order 1234's conversation are never handed
    # to the run about order 9876; replaying 9876 gives its ids again.
    assert not set(served["ids"]) & set(recorded["ids"])
    assert run_agent(client(api_key), "9876", stateful=stateful, declare=True)["ids"] == served["ids"]
    assert len(provider.calls) == 3
