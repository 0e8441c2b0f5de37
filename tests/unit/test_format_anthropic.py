"""The Anthropic Messages adapter: keys, assembly, rendering, in plain values.

Where a rendered body must satisfy the SDK, the real `anthropic` client reads
it in-process (httpx2's MockTransport stands in for the network only).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from butter.addon.formats import NotUnderstood, ParsedRequest, WireRequest, recognise, sse
from butter.addon.formats.anthropic_messages import FORMAT, STREAM_KEY, _MISSING, partial_json
from butter.store.canonical import canonical_json
from butter.store.model import Conversation

STREAMS = Path(__file__).resolve().parents[1] / "data" / "anthropic-streams"
FIXTURES = sorted(p.name for p in STREAMS.glob("*.txt"))


def wire(body: dict | bytes, path: str = "/v1/messages", headers: dict | None = None, query: dict | None = None) -> WireRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WireRequest("POST", path, query or {}, headers or {}, raw)


def key(body: dict, **kw: Any) -> Conversation:
    return FORMAT.parse_request(wire(body, **kw)).conversation


BASE = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}]}


def fixture(name: str) -> bytes:
    raw = (STREAMS / name).read_bytes()
    return raw if raw.endswith(b"\n\n") else raw.rstrip(b"\n") + b"\n\n"


def as_stream(stream: bool) -> ParsedRequest:
    return ParsedRequest(Conversation({}, ()), stream=stream)


def sdk_reads(body: bytes, content_type: str = "text/event-stream") -> Any:
    """What the real SDK makes of a response body: (events, final message) for a stream, else the message."""
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, content=body, headers={"content-type": content_type}))
    client = anthropic.Anthropic(api_key="k", max_retries=0, http_client=httpx2.Client(transport=transport))
    request = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    if content_type == "application/json":
        return client.messages.create(**request).model_dump(mode="json", warnings=False)
    with client.messages.stream(**request) as s:
        events = [e.model_dump(mode="json", warnings=False) for e in s]
        return events, s.get_final_message().model_dump(mode="json", warnings=False)


def without_ids(value: Any) -> Any:
    """Message ids and tool_use ids blanked: butter regenerates exactly those."""
    if isinstance(value, dict):
        return {k: ("<id>" if k == "id" and value.get("type") in ("message", "tool_use") else without_ids(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_ids(v) for v in value]
    return value


# -- recognising --------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/messages", "/anthropic/v1/messages", "/api/v1/messages/"])
def test_messages_is_recognised_on_any_prefix(path):
    assert recognise("POST", path) is FORMAT


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/messages/batches", "/v1/models"])
def test_other_anthropic_endpoints_pass_through(path):
    assert recognise("POST", path) is not FORMAT


# -- the key ------------------------------------------------------------------------

def test_a_system_string_keys_like_one_text_block_and_cache_hints_do_not_count():
    blocks = {**BASE, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
              "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}]}
    assert key(BASE) == key(blocks)
    assert key(BASE).messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}


@pytest.mark.parametrize("field,value", [("stream", True), ("metadata", {"user_id": "u-1"}), ("service_tier", "auto"),
                                         ("cache_control", {"type": "ephemeral"})])
def test_fields_that_do_not_change_the_answer_are_out_of_the_key(field, value):
    assert key({**BASE, field: value}) == key(BASE)


@pytest.mark.parametrize("field,value", [("temperature", 0.2), ("top_k", 5), ("max_tokens", 10), ("stop_sequences", ["x"]),
                                         ("thinking", {"type": "enabled", "budget_tokens": 2048}),
                                         ("tools", [{"name": "f", "input_schema": {"type": "object"}}]),
                                         ("tool_choice", {"type": "any"}), ("output_config", {"effort": "low"}),
                                         ("some_future_field", 1)])
def test_fields_that_change_the_answer_and_unknown_extras_are_in_the_key(field, value):
    assert key({**BASE, field: value}) != key(BASE)


def test_cache_control_on_a_tool_is_a_hint_but_a_schema_property_of_that_name_is_content():
    tool = {"name": "f", "input_schema": {"type": "object", "properties": {"cache_control": {"type": "string"}}}}
    assert key({**BASE, "tools": [tool]}) == key({**BASE, "tools": [{**tool, "cache_control": {"type": "ephemeral"}}]})
    assert key({**BASE, "tools": [tool]}) != key({**BASE, "tools": [{**tool, "input_schema": {"type": "object"}}]})


@pytest.mark.parametrize("header", ["anthropic-version", "anthropic-beta"])
def test_version_and_beta_headers_are_in_the_key(header):
    assert key(BASE, headers={header: "a"}) != key(BASE, headers={header: "b"})
    assert key(BASE, headers={header: "a"}) != key(BASE)


def test_other_headers_are_not_in_the_key():
    assert key(BASE, headers={"x-stainless-retry-count": "1", "user-agent": "x"}) == key(BASE)


def test_the_beta_query_is_in_the_key():
    assert key(BASE, query={"beta": "true"}) != key(BASE)


def tool_turns(ids: tuple[str, str], answers: tuple[str, str]) -> dict:
    return {**BASE, "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking.", "citations": None},
            {"type": "tool_use", "id": ids[0], "name": "weather", "input": {"city": "Paris"}, "caller": {"type": "direct"}},
            {"type": "tool_use", "id": ids[1], "name": "weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": ids[0], "content": answers[0]},
                                     {"type": "tool_result", "tool_use_id": ids[1], "content": answers[1]}]}]}


def test_tool_use_ids_are_out_of_the_key_but_which_result_answers_which_call_is_in():
    one = key(tool_turns(("toolu_01AAA", "toolu_01BBB"), ("sunny", "rain")))
    other = key(tool_turns(("toolu_01XYZ", "toolu_01QRS"), ("sunny", "rain")))
    swapped = key(tool_turns(("toolu_01AAA", "toolu_01BBB"), ("rain", "sunny")))
    assert one == other and one != swapped
    assert "toolu_01" not in canonical_json(list(one.messages)).decode()


def test_a_tool_result_string_keys_like_one_text_block():
    a = tool_turns(("t1", "t2"), ("sunny", "rain"))
    b = copy.deepcopy(a)
    b["messages"][2]["content"][0]["content"] = [{"type": "text", "text": "sunny"}]
    assert key(a) == key(b)


def image_request(data: str) -> dict:
    return {**BASE, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data + "pdf"}},
        {"type": "text", "text": "What is this?"}]}]}


def test_images_and_documents_are_keyed_by_a_hash_of_their_bytes_which_stay_out_of_the_tree():
    data = "iVBORw0KGgo" + "A" * 5000
    conversation = key(image_request(data))
    stored = canonical_json(list(conversation.messages)).decode()
    assert data[:100] not in stored and '"sha256"' in stored
    assert key(image_request(data)) == conversation
    assert key(image_request(data[:-1] + "B")) != conversation


def test_an_mcp_servers_token_never_reaches_the_key():
    server = {"type": "url", "url": "https://mcp.example/sse", "name": "ex", "authorization_token": "secret-token-123"}
    conversation = key({**BASE, "mcp_servers": [server]})
    assert "secret-token-123" not in canonical_json(conversation.context).decode()
    assert conversation != key(BASE)


def test_thinking_blocks_sent_back_are_keyed_byte_exact():
    turn = lambda sig: {**BASE, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": sig},
                                          {"type": "redacted_thinking", "data": "EmwK"}, {"type": "text", "text": "Hello"}]},
        {"role": "user", "content": "More"}]}
    assert key(turn("EqQBCgIYAh")) != key(turn("EqQBCgIYAi"))


@pytest.mark.parametrize("body", [b"not json", b"[1]", json.dumps({"messages": []}).encode(),
                                  json.dumps({"model": "m", "messages": "hi"}).encode()])
def test_requests_that_cannot_be_keyed_are_not_understood(body):
    with pytest.raises(NotUnderstood):
        FORMAT.parse_request(wire(body))


def test_stream_is_taken_from_the_request():
    assert FORMAT.parse_request(wire({**BASE, "stream": True})).stream is True
    assert FORMAT.parse_request(wire(BASE)).stream is False


# -- replies -------------------------------------------------------------------------

RICH = {"id": "msg_01Abc", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxDEn/+=="},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"},
            {"type": "server_tool_use", "id": "srvtoolu_01X", "name": "web_search", "input": {"query": "butter"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01X",
             "content": [{"type": "web_search_result", "url": "https://e.x", "title": "E", "encrypted_content": "Eq8C"}]},
            {"type": "text", "text": "Butter is made from cream.",
             "citations": [{"type": "web_search_result_location", "url": "https://e.x", "title": "E",
                            "encrypted_index": "Eo8B", "cited_text": "cream"}]},
            {"type": "a_future_block", "payload": {"opaque": [1, 2, 3]}},
            {"type": "tool_use", "id": "toolu_01Q", "name": "get_order", "input": {"order_id": "1234", "nested": {"a": [1]}}},
            {"type": "tool_use", "id": "toolu_01R", "name": "noop", "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 0, "service_tier": "standard"}}


def test_a_plain_reply_loses_its_message_id_and_keeps_everything_else_byte_exact():
    reply = FORMAT.reply_from_body(json.dumps(RICH).encode(), streamed=False)
    assert "id" not in reply
    # Tool-use ids are kept for exact hits (bookkeeping to agreement: see the template test below).
    assert [b.get("id") for b in reply["content"] if b["type"] == "tool_use"] == ["toolu_01Q", "toolu_01R"]
    assert reply == {k: v for k, v in RICH.items() if k != "id"}


@pytest.mark.parametrize("body", [{"type": "error", "error": {"type": "overloaded_error", "message": "x"}},
                                  {"type": "message"}, [1]])
def test_a_plain_error_or_odd_body_is_not_recordable(body):
    assert FORMAT.reply_from_body(json.dumps(body).encode(), streamed=False) is None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_rendered_reply_reads_in_the_sdk_as_the_recorded_message_with_a_fresh_message_id(stream):
    reply = FORMAT.reply_from_body(json.dumps(RICH).encode(), streamed=False)
    response = FORMAT.render(reply, as_stream(stream))
    assert response.status == 200 and response.headers["request-id"].startswith("req_")
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream")
        _, message = sdk_reads(response.body)
    else:
        assert response.headers["content-type"] == "application/json"
        message = sdk_reads(response.body, "application/json")
    direct = sdk_reads(json.dumps(RICH).encode(), "application/json")
    assert without_ids(message) == without_ids(direct)
    tool_ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
    assert message["id"].startswith("msg_01") and message["id"] != RICH["id"]
    assert tool_ids == ["toolu_01Q", "toolu_01R"]  # an exact hit: the ids the agent saw when it was recorded
    assert [b["id"] for b in message["content"] if b["type"] == "server_tool_use"] == ["srvtoolu_01X"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_template_render_has_fresh_tool_use_ids_consistent_within_the_reply(stream):
    reply = FORMAT.bound_reply(FORMAT.reply_from_body(json.dumps(RICH).encode(), streamed=False), {"x": "1"})
    response = FORMAT.render(reply, as_stream(stream))
    message = sdk_reads(response.body)[1] if stream else sdk_reads(response.body, "application/json")
    tool_ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
    assert all(i.startswith("toolu_01") for i in tool_ids) and len(set(tool_ids)) == 2
    assert not set(tool_ids) & {"toolu_01Q", "toolu_01R"}


def test_every_rendered_event_is_named_after_its_type_and_carries_the_usage_the_sdk_needs():
    reply = FORMAT.reply_from_body(json.dumps(RICH).encode(), streamed=False)
    events = list(sse.parse(FORMAT.render(reply, as_stream(True)).body))
    assert all(e.event == json.loads(e.data)["type"] for e in events)
    data = [json.loads(e.data) for e in events]
    assert data[0]["type"] == "message_start" and data[0]["message"]["usage"]["input_tokens"] == 10
    delta = next(d for d in data if d["type"] == "message_delta")
    assert delta["usage"]["output_tokens"] == 20 and delta["delta"]["stop_reason"] == "tool_use"
    assert data[-1] == {"type": "message_stop"}
    starts = [d["content_block"] for d in data if d["type"] == "content_block_start"]
    tool_ids = [s["id"] for s in starts if s["type"] == "tool_use"]
    message_id = data[0]["message"]["id"]
    again = list(sse.parse(FORMAT.render(reply, as_stream(True)).body))
    assert json.loads(again[0].data)["message"]["id"] != message_id, "ids are fresh on every render"
    assert len(tool_ids) == 2


def test_a_streamed_reply_is_assembled_into_the_plain_shape():
    streamed = FORMAT.reply_from_body(FORMAT.render(FORMAT.reply_from_body(json.dumps(RICH).encode(), False), as_stream(True)).body, True)
    plain = FORMAT.reply_from_body(json.dumps(RICH).encode(), False)
    assert {k: v for k, v in streamed.items() if k != STREAM_KEY} == plain


def stream_of(*events: dict, named: bool = True) -> bytes:
    return b"".join(sse.encode(e, event=e["type"] if named else None) for e in events)


START = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                                              "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}
TEXT = [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0}]
DELTA = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}}
STOP = {"type": "message_stop"}
ERROR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_a_whole_stream_is_recordable():
    reply = FORMAT.reply_from_body(stream_of(START, *TEXT, DELTA, STOP), True)
    assert reply["content"] == [{"type": "text", "text": "Hi"}] and reply["usage"] == {"input_tokens": 3, "output_tokens": 2}


@pytest.mark.parametrize("events", [
    [START, *TEXT, DELTA],                                   # no message_stop
    [START, *TEXT, STOP],                                    # no message_delta with a stop_reason
    [START, *TEXT, {**DELTA, "delta": {"stop_reason": None}}, STOP],
    [START, TEXT[0], ERROR],                                 # an error event
    [START, *TEXT, DELTA, ERROR, STOP],
    [*TEXT, DELTA, STOP],                                    # no message_start
    [START, START, *TEXT, DELTA, STOP],
    [START, {**TEXT[1], "index": 3}, DELTA, STOP],           # a delta for a block that never started
    [START, *TEXT, {**TEXT[1], "index": -1}, DELTA, STOP],
    [START, TEXT[1], DELTA, STOP],
    [START, {**TEXT[0], "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
     {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": nope}"}},
     TEXT[2], DELTA, STOP],                                  # a closed tool block whose JSON the SDK rejects
], ids=["no-stop", "no-delta", "null-stop-reason", "error", "error-late", "no-start", "two-starts", "bad-index", "negative-index",
    "delta-before-start", "bad-json"])
def test_incomplete_or_failed_streams_are_never_recorded(events):
    assert FORMAT.reply_from_body(stream_of(*events), True) is None


def test_a_stream_cut_mid_event_is_not_recorded():
    body = stream_of(START, *TEXT, DELTA, STOP)
    assert FORMAT.reply_from_body(body[:-12], True) is None


def test_unnamed_events_and_pings_are_ignored_as_the_sdk_ignores_them():
    body = stream_of(START, *TEXT) + stream_of({"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": "ignored"}}, named=False)
    body += b"event: ping\ndata: {\"type\": \"ping\"}\n\n" + stream_of(DELTA, STOP)
    assert FORMAT.reply_from_body(body, True)["content"] == [{"type": "text", "text": "Hi"}]


def test_a_replay_stream_falls_back_to_a_synthesised_one_when_the_reply_changed():
    reply = FORMAT.reply_from_body(fixture("basic_response.txt"), True)
    reply["content"][0]["text"] = "Hello there, Ana!"  # e.g. a template binding substituted
    events, final = sdk_reads(FORMAT.render(reply, as_stream(True)).body)
    assert final["content"][0]["text"] == "Hello there, Ana!"
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "Hello there, Ana!"


# -- the SDK's own recorded streams ------------------------------------------------------

@pytest.mark.parametrize("name", FIXTURES)
def test_each_sdk_fixture_replays_to_the_sdk_as_it_was_sent(name):
    try:
        direct = sdk_reads(fixture(name))
    except ValueError:
        assert FORMAT.reply_from_body(fixture(name), True) is None, "a stream the SDK rejects was recordable"
        return
    reply = FORMAT.reply_from_body(fixture(name), True)
    assert reply is not None
    reply = json.loads(canonical_json(reply))  # as it comes back from the store
    replayed = sdk_reads(FORMAT.render(reply, as_stream(True)).body)
    assert without_ids(replayed) == without_ids(direct)
    plain = sdk_reads(FORMAT.render(reply, as_stream(False)).body, "application/json")
    assert plain["content"][0]["type"] == direct[1]["content"][0]["type"]
    assert plain["stop_reason"] == direct[1]["stop_reason"] and plain["usage"]["output_tokens"] == direct[1]["usage"]["output_tokens"]


def test_opaque_stream_content_is_kept_byte_exact():
    reply = FORMAT.reply_from_body(fixture("server_tool_use_response.txt"), True)
    result = reply["content"][1]
    assert result["tool_use_id"] == reply["content"][0]["id"] == "srvtoolu_01Uz7MGoWkFSzxwLydECtuz5"
    assert result["content"][0]["encrypted_content"] == "Eq8C_opaque_encrypted_content_0"
    assert reply["content"][2]["citations"][0]["encrypted_index"] == "Eo8B_opaque_encrypted_index"
    compaction = FORMAT.reply_from_body(fixture("compaction_response.txt"), True)["content"][0]
    assert compaction == {"type": "compaction", "content": "Earlier conversation summarized.",
                          "encrypted_content": "EpwBCioIDxgCEAEYASJALd_opaque_compaction_payload"}


def test_a_message_cut_off_inside_a_tool_block_keeps_the_complete_part_of_its_input():
    reply = FORMAT.reply_from_body(fixture("incomplete_partial_json_response.txt"), True)
    assert reply["stop_reason"] == "max_tokens"
    assert reply["content"][1]["input"] == {"filename": "taxes.txt", "lines_of_text": [
        "# COMPREHENSIVE TAX GUIDE FOR INDIVIDUALS WITH MULTIPLE W-2s", "", "## INTRODUCTION", ""]}


@pytest.mark.parametrize("text,expected", [
    ('{"a": "x', {}), ('{"a": [1, 2', {"a": [1, 2]}), ('{"a": 1', {"a": 1}), ('{"a": 12.', {}), ('{"a":', {}),
    ('{"a": tr', {}), ('["a", "b', ["a"]), ('{"a": {"b": "c"}, "d": ["e", "f', {"a": {"b": "c"}, "d": ["e"]}),
    ('{"a": null, "b": -', {"a": None}), ('{"a": true}', {"a": True}),
    ('"abc', _MISSING), ('{"a": celsius}', _MISSING), ('{"a": 1}}', _MISSING)])
def test_partial_json_keeps_what_the_sdks_partial_parser_keeps(text, expected):
    assert partial_json(text) == expected if expected is not _MISSING else partial_json(text) is _MISSING


# -- errors -------------------------------------------------------------------------------

def test_errors_have_anthropics_shape_and_the_sdk_reads_them():
    response = FORMAT.error(404, "butter replay mode: never recorded", "butter_replay_miss")
    assert response.status == 404
    assert json.loads(response.body) == {"type": "error", "error": {"type": "butter_replay_miss",
                                                                     "message": "butter replay mode: never recorded"}}
    transport = httpx2.MockTransport(lambda r: httpx2.Response(response.status, content=response.body, headers=response.headers))
    client = anthropic.Anthropic(api_key="k", max_retries=0, http_client=httpx2.Client(transport=transport))
    with pytest.raises(anthropic.NotFoundError, match="never recorded"):
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
