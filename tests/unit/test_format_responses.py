"""The OpenAI Responses adapter: keys, state expansion, assembly, rendering.

Rendered bodies are read back by the real openai SDK over an httpx2
MockTransport (the network edge), so "the SDK accepts it" is tested, not
assumed; the state hook is tested through the addon with mitmproxy's taddons.
"""
from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import httpx2
import openai
import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from butter.addon.cache_addon import Butter
from butter.addon.formats import NotUnderstood, WireRequest, recognise, sse
from butter.addon.formats.openai_responses import FORMAT
from tests.fakes.openai_responses import TOOLS, FakeResponsesModel, stream_events

USER = {"role": "user", "content": "Please refund order 1234."}
BASE = {"model": "gpt-4.1-mini", "input": [USER], "tools": TOOLS}
BLOB = "gAAAAB" + "x/+==" + "\\u00e9\u00e9" + "\\"


def wire(body: dict | bytes, path: str = "/v1/responses") -> WireRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WireRequest("POST", path, {}, {}, raw)


def parse(body: dict):
    return FORMAT.parse_request(wire(body))


def key(body: dict):
    return parse(body).conversation


class DictTable:
    """A StateTable in memory, as the addon's LMDB table behaves."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}

    def get(self, key: str) -> Any | None:
        return json.loads(self.rows[key]) if key in self.rows else None

    def put(self, key: str, value: Any) -> None:
        self.rows[key] = json.dumps(value)


def response(output: list[dict], rid: str | None = None, **extra) -> dict:
    return {"id": rid or "resp_" + secrets.token_hex(8), "object": "response", "created_at": 1760000000,
            "status": "completed", "error": None, "incomplete_details": None, "model": "gpt-4.1-mini-2025-04-14",
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "metadata": {},
            "store": True, "user": None, "previous_response_id": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}, **extra}


def call_item(name: str, args: dict, call_id: str | None = None) -> dict:
    return {"id": "fc_" + secrets.token_hex(6), "type": "function_call", "status": "completed", "name": name,
            "arguments": json.dumps(args), "call_id": call_id or "call_" + secrets.token_hex(6)}


def text_item(text: str, **part) -> dict:
    return {"id": "msg_" + secrets.token_hex(6), "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], **part}]}


def reasoning_item(blob: str = BLOB) -> dict:
    return {"id": "rs_" + secrets.token_hex(6), "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Look the order up first."}], "encrypted_content": blob}


def without_parsed(value: Any) -> Any:
    """The helper's final response minus the fields its parser adds."""
    if isinstance(value, dict):
        return {k: without_parsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
    if isinstance(value, list):
        return [without_parsed(v) for v in value]
    return value


def sdk_over(body: bytes, content_type: str) -> openai.OpenAI:
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, content=body,
                                                                    headers={"content-type": content_type}))
    return openai.OpenAI(api_key="sk-unit", http_client=httpx2.Client(transport=transport), max_retries=0)


# -- recognition and keys --------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/responses", "/openai/v1/responses", "/api/v1/responses", "/v1/responses/"])
def test_responses_create_is_recognised_on_any_prefix(path):
    assert recognise("POST", path) is FORMAT


@pytest.mark.parametrize("path", ["/v1/responses/resp_123", "/v1/responses/input_tokens", "/v1/responses/compact",
                                  "/v1/responses/resp_1/cancel"])
def test_other_responses_operations_are_not_claimed(path):
    assert recognise("POST", path) is not FORMAT


def test_input_as_a_string_is_one_user_message():
    easy = key({**BASE, "input": "Please refund order 1234."})
    typed = key({**BASE, "input": [{"type": "message", "role": "user",
                                    "content": [{"type": "input_text", "text": "Please refund order 1234."}]}]})
    assert easy == typed == key(BASE)


@pytest.mark.parametrize("field,value", [
    ("stream", True), ("stream_options", {"include_obfuscation": False}), ("store", False), ("metadata", {"a": "b"}),
    ("user", "u1"), ("safety_identifier", "s"), ("prompt_cache_key", "k-123"), ("prompt_cache_retention", "24h"),
    ("service_tier", "flex"), ("background", False)])
def test_fields_that_do_not_change_the_answer_are_out_of_the_key(field, value):
    assert key({**BASE, field: value}) == key(BASE)


@pytest.mark.parametrize("field,value", [
    ("instructions", "Be brief."), ("tools", []), ("tool_choice", "required"), ("text", {"format": {"type": "json_object"}}),
    ("reasoning", {"effort": "high"}), ("temperature", 0.2), ("top_p", 0.5), ("max_output_tokens", 50),
    ("max_tool_calls", 2), ("parallel_tool_calls", False), ("truncation", "auto"),
    ("include", ["reasoning.encrypted_content"]), ("prompt", {"id": "pmpt_1", "version": "2"}), ("top_k", 3),
    ("model", "gpt-5")])
def test_fields_that_change_the_answer_and_unknown_extras_are_in_the_key(field, value):
    assert key({**BASE, field: value}) != key(BASE)


def turn_two(call_id: str, item_ids: tuple[str, str, str], blob: str = BLOB) -> dict:
    fc = {**call_item("get_order", {"order_id": "1234"}, call_id), "id": item_ids[1]}
    rs = {**reasoning_item(blob), "id": item_ids[0]}
    return {**BASE, "input": [{**USER, "id": item_ids[2]}, rs, fc,
                              {"type": "function_call_output", "call_id": call_id, "output": '{"amount": 42.5}'}]}


def test_volatile_ids_are_out_of_the_key_but_opaque_reasoning_is_in_it():
    one = key(turn_two("call_a", ("rs_1", "fc_1", "msg_1")))
    two = key(turn_two("call_b", ("rs_2", "fc_2", "msg_2")))
    assert one == two
    assert key(turn_two("call_a", ("rs_1", "fc_1", "msg_1"), blob=BLOB + "x")) != one
    assert one.messages[1]["encrypted_content"] == BLOB, "encrypted_content is not kept byte-exact"


def test_parallel_tool_outputs_stay_linked_to_their_calls():
    a, b = call_item("get_order", {"order_id": "1"}, "call_a"), call_item("get_order", {"order_id": "2"}, "call_b")
    outputs = [{"type": "function_call_output", "call_id": "call_a", "output": "one"},
               {"type": "function_call_output", "call_id": "call_b", "output": "two"}]
    swapped = [dict(outputs[0], call_id="call_b"), dict(outputs[1], call_id="call_a")]
    assert key({**BASE, "input": [USER, a, b, *outputs]}) != key({**BASE, "input": [USER, a, b, *swapped]})


def test_argument_whitespace_and_item_statuses_do_not_change_the_key():
    compact = call_item("refund", {"order_id": "1", "amount": 2}, "call_x")
    spaced = {**compact, "arguments": '{ "amount": 2,  "order_id": "1" }', "status": "in_progress"}
    assert key({**BASE, "input": [USER, compact]}) == key({**BASE, "input": [USER, spaced]})


def test_inline_images_are_keyed_by_content_hash_and_not_kept():
    def with_image(data: bytes) -> dict:
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        return {**BASE, "input": [{"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                                              {"type": "input_image", "image_url": url, "detail": "auto"}]}]}
    png = b"\x89PNG" + b"pixels" * 200
    first = key(with_image(png))
    assert first == key(with_image(png))
    assert first != key(with_image(png + b"!"))
    assert base64.b64encode(png).decode()[:40] not in json.dumps(first.messages)


@pytest.mark.parametrize("body", [
    {**BASE, "conversation": "conv_123"}, {**BASE, "background": True}, {**BASE, "input": 7},
    {"input": "no model"}, b"not json", {**BASE, "previous_response_id": 5}])
def test_what_butter_cannot_key_is_not_understood(body):
    with pytest.raises(NotUnderstood):
        FORMAT.parse_request(wire(body))


# -- replies ---------------------------------------------------------------------

def test_a_plain_reply_keeps_its_ids_and_drops_what_the_request_echoes():
    body = response([call_item("get_order", {"order_id": "1234"})], metadata={"run": "1"}, user="alice")
    reply = FORMAT.reply_from_body(json.dumps(body).encode(), streamed=False)
    assert reply["id"] == body["id"] and reply["output"] == body["output"]
    assert reply["metadata"] is None and reply["user"] is None


@pytest.mark.parametrize("change", [{"status": "failed", "error": {"code": "server_error", "message": "x"}},
                                    {"status": "in_progress"}, {"status": "queued"}])
def test_unfinished_or_failed_plain_replies_are_not_recorded(change):
    body = response([text_item("hi")], **change)
    assert FORMAT.reply_from_body(json.dumps(body).encode(), streamed=False) is None


def provider_stream(output: list[dict], **extra) -> tuple[dict, bytes]:
    full = response(output, **extra)
    return full, b"".join(stream_events(full))


def test_a_streamed_reply_assembles_to_the_plain_reply():
    full, raw = provider_stream([reasoning_item(), text_item("Refunded 42.5 for order 1234.")])
    assert FORMAT.reply_from_body(raw, streamed=True) == FORMAT.reply_from_body(json.dumps(full).encode(), streamed=False)


def test_a_terminal_event_without_output_takes_the_items_from_their_done_events():
    full, raw = provider_stream([call_item("get_order", {"order_id": "1"})])
    events = [json.loads(e.data) for e in sse.parse(raw)]
    del events[-1]["response"]["output"]
    trimmed = b"".join(sse.encode(e, event=e["type"]) for e in events)
    assert FORMAT.reply_from_body(trimmed, streamed=True)["output"] == full["output"]


def test_cut_failed_and_error_streams_are_not_recorded():
    _, raw = provider_stream([text_item("one two three")])
    events = list(sse.parse(raw))
    cut = b"".join(sse.encode(e.data, event=e.event) for e in events[:-1])
    failed = cut + sse.encode({"type": "response.failed", "sequence_number": 99,
                               "response": response([], status="failed")}, event="response.failed")
    error = b"".join(sse.encode(e.data, event=e.event) for e in events[:3]) + \
        sse.encode({"type": "error", "sequence_number": 3, "code": "server_error", "message": "boom"}, event="error")
    for body in (cut, failed, error):
        assert FORMAT.reply_from_body(body, streamed=True) is None


def test_an_incomplete_response_is_an_answer_and_replays_as_incomplete():
    full, _ = provider_stream([text_item("cut by max_output_tokens")], status="incomplete",
                              incomplete_details={"reason": "max_output_tokens"})
    reply = FORMAT.reply_from_body(json.dumps(full).encode(), streamed=False)
    rendered = FORMAT.render(reply, parse({**BASE, "stream": True}))
    kinds = [json.loads(e.data)["type"] for e in sse.parse(rendered.body)]
    assert kinds[-1] == "response.incomplete" and "response.completed" not in kinds


# -- rendering, read back by the real SDK ------------------------------------------

RICH = [
    reasoning_item(),
    {**text_item("Hi there.", logprobs=[{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []},
                                         {"token": " there.", "logprob": -0.2, "bytes": [], "top_logprobs": []}]),
     "phase": "final_answer"},
    {"id": "msg_ref", "type": "message", "status": "completed", "role": "assistant",
     "content": [{"type": "refusal", "refusal": "I cannot help with that."}]},
    {**text_item("See the docs.", annotations=[{"type": "url_citation", "url": "https://example.com", "title": "Ex",
                                                "start_index": 0, "end_index": 3}])},
    call_item("get_order", {"order_id": "1234", "note": "ünïcode \"quoted\""}),
    {"id": "ws_1", "type": "web_search_call", "status": "completed", "action": {"type": "search", "query": "refunds"}},
]


def test_a_streamed_render_gives_the_sdk_helper_the_same_final_response_as_plain():
    full = response(RICH, metadata={"recorded": "yes"})
    reply = FORMAT.reply_from_body(json.dumps(full).encode(), streamed=False)
    parsed_plain = parse({**BASE, "metadata": {"now": "this"}})
    parsed_stream = parse({**BASE, "metadata": {"now": "this"}, "stream": True})
    plain = FORMAT.render(reply, parsed_plain)
    streamed = FORMAT.render(reply, parsed_stream)
    direct = sdk_over(plain.body, plain.headers["content-type"]).responses.create(**BASE)
    with sdk_over(streamed.body, streamed.headers["content-type"]).responses.stream(**BASE) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert without_parsed(final.model_dump()) == direct.model_dump()
    assert direct.metadata == {"now": "this"}
    assert direct.output[0].encrypted_content == BLOB
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta" and e.output_index == 1)
    assert deltas == "Hi there."


def test_a_streamed_render_assembles_back_to_the_recorded_reply():
    reply = FORMAT.reply_from_body(json.dumps(response(RICH)).encode(), streamed=False)
    streamed = FORMAT.render(reply, parse({**BASE, "stream": True}))
    assert FORMAT.reply_from_body(streamed.body, streamed=True) == reply


def test_raw_stream_events_carry_names_and_numbers():
    reply = FORMAT.reply_from_body(json.dumps(response(RICH[:2])).encode(), streamed=False)
    body = FORMAT.render(reply, parse({**BASE, "stream": True})).body
    events = list(sse.parse(body))
    assert all(e.event == json.loads(e.data)["type"] for e in events)
    seen = set()
    for e in events:
        data = json.loads(e.data)
        if data["type"] == "response.output_item.added":
            seen.add(data["output_index"])
        elif data["type"].endswith(".delta"):
            assert data["output_index"] in seen


# -- server-side state -------------------------------------------------------------

def stateless_turns() -> tuple[list[dict], list[dict]]:
    """Two turns of a run: each request's input and the reply it got."""
    first_reply = response([reasoning_item(), call_item("get_order", {"order_id": "1234"})])
    second_input = [USER, *first_reply["output"],
                    {"type": "function_call_output", "call_id": first_reply["output"][1]["call_id"],
                     "output": '{"amount": 42.5}'}]
    return [[USER], second_input], [first_reply]


def test_a_stateful_turn_expands_to_the_conversation_a_stateless_client_resends():
    table = DictTable()
    inputs, replies = stateless_turns()
    first = parse({**BASE, "input": inputs[0]})
    FORMAT.remember(first, FORMAT.reply_from_body(json.dumps(replies[0]).encode(), False), table)
    follow_up = parse({**BASE, "previous_response_id": replies[0]["id"], "input": inputs[1][-1:]})
    assert follow_up.conversation != key({**BASE, "input": inputs[1]}), "unexpanded, it must not match anything"
    expanded = FORMAT.expand(follow_up, table)
    assert expanded.conversation == key({**BASE, "input": inputs[1]})


def test_a_chain_is_stored_as_links_not_as_whole_copies():
    table = DictTable()
    parsed, previous = parse({**BASE, "input": [USER]}), None
    for n in range(6):
        fc = call_item("get_order", {"order_id": str(n)})
        reply = response([fc])
        FORMAT.remember(parsed, reply, table)
        previous = reply["id"]
        parsed = FORMAT.expand(parse({**BASE, "previous_response_id": previous, "input": [
            {"type": "function_call_output", "call_id": fc["call_id"], "output": f"result {n}"}]}), table)
    assert len(parsed.conversation.messages) == 1 + 6 * 2
    assert max(len(json.loads(row)["messages"]) for row in table.rows.values()) == 2
    assert parsed.conversation.messages[-1]["call"] == "call#5"


def test_an_unknown_previous_response_id_is_not_understood():
    with pytest.raises(NotUnderstood):
        FORMAT.expand(parse({**BASE, "previous_response_id": "resp_never"}), DictTable())


def test_an_item_reference_is_keyed_by_what_it_refers_to():
    fc = call_item("get_order", {"order_id": "1"})
    direct = key({**BASE, "input": [USER, fc]})
    referenced = key({**BASE, "input": [USER, fc, {"type": "item_reference", "id": fc["id"]}]})
    assert referenced.messages[-1] == direct.messages[-1]
    with pytest.raises(NotUnderstood):
        parse({**BASE, "input": [USER, {"type": "item_reference", "id": "msg_elsewhere"}]})


# -- the hook through the addon ------------------------------------------------------

def responses_flow(body: dict, key: str = "sk-unit-a") -> http.HTTPFlow:
    request = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https", path=b"/v1/responses",
                          content=json.dumps(body).encode(),
                          headers=http.Headers(authorization=f"Bearer {key}", content_type="application/json"))
    return tflow.tflow(req=request)


async def exchange(addon: Butter, flow: http.HTTPFlow, model: FakeResponsesModel | None) -> http.HTTPFlow:
    addon.requestheaders(flow)
    await addon.request(flow)
    if flow.response is None and model is not None:
        from tests.fakes.provider import Call
        reply = model(Call("POST", "/v1/responses", {}, {}, flow.request.content))
        flow.response = http.Response.make(reply.status, json.dumps(reply.body).encode(),
                                           {"content-type": "application/json"})
        addon.responseheaders(flow)
        addon.response(flow)
    return flow


async def test_the_addon_expands_a_chain_it_recorded_and_serves_it_with_the_recorded_ids(butter):
    addon, _ = butter
    model = FakeResponsesModel()
    ask = {**BASE, "instructions": "Be brief."}
    first = await exchange(addon, responses_flow(ask), model)
    rid = json.loads(first.response.content)["id"]
    call_id = json.loads(first.response.content)["output"][1]["call_id"]
    follow = {**ask, "previous_response_id": rid,
              "input": [{"type": "function_call_output", "call_id": call_id,
                         "output": '{"order_id": "1234", "amount": 42.5, "customer": "Ana Ruiz"}'}]}
    # No drain in between: the expansion waits for the writer by itself.
    second = await exchange(addon, responses_flow(follow), model)
    assert second.response.headers["butter-cache"] == "miss"
    served = [await exchange(addon, responses_flow(body), None) for body in (ask, follow)]
    assert [f.response.headers["butter-cache"] for f in served] == ["hit", "hit"]
    assert json.loads(served[0].response.content)["id"] == rid
    assert json.loads(served[1].response.content)["id"] == json.loads(second.response.content)["id"]
    # Another credential has no state under this id.
    other = await exchange(addon, responses_flow(follow, key="sk-unit-b"), None)
    assert other.response is None and other.metadata.get("butter") is None
    assert addon.flows[other.id].status == "bypass (not understood)"


def test_an_id_served_for_two_different_conversations_is_no_longer_expanded():
    # A templated hit renders the recorded reply (and its id) with other
    # values; butter cannot tell which conversation a follow-up continues.
    table = DictTable()
    reply = response([call_item("get_order", {"order_id": "1234"})])
    FORMAT.remember(parse(BASE), reply, table)
    FORMAT.remember(parse(BASE), reply, table)  # an exact hit: the same conversation
    follow = {**BASE, "previous_response_id": reply["id"], "input": "thanks"}
    assert FORMAT.expand(parse(follow), table).conversation.messages[0] == key(BASE).messages[0]
    other = {**BASE, "input": "Please refund order 9876."}
    FORMAT.remember(parse(other), {**reply, "output": [call_item("get_order", {"order_id": "9876"}, "call_x")]}, table)
    with pytest.raises(NotUnderstood):
        FORMAT.expand(parse(follow), table)


def test_a_templated_hit_gets_ids_of_its_own_that_are_stable_per_value():
    reply = response([reasoning_item(), call_item("get_order", {"order_id": "9876"})])
    first = FORMAT.bound_reply(reply, {"order_id": "9876"})
    again = FORMAT.bound_reply(reply, {"order_id": "9876"})
    other = FORMAT.bound_reply(reply, {"order_id": "5555"})
    assert first == again
    ids = lambda r: [r["id"]] + [i.get(k) for i in r["output"] for k in ("id", "call_id") if i.get(k)]
    assert not set(ids(first)) & set(ids(reply)) and not set(ids(first)) & set(ids(other))
    assert [i.split("_")[0] for i in ids(first)] == [i.split("_")[0] for i in ids(reply)]
    assert first["output"][0]["encrypted_content"] == BLOB


# -- continuing a served response at the provider (upstream_body) ---------------------------------

def served_first_turn(issued: bool = False, first: dict | None = None) -> tuple[DictTable, dict, dict]:
    """The first turn's reply remembered as butter served it (or as the provider just answered it)."""
    table = DictTable()
    first = first or {**BASE, "instructions": "Be brief."}
    reply = response([reasoning_item(), {**reasoning_item(), "encrypted_content": None},
                      call_item("get_order", {"order_id": "1234"})])
    FORMAT.remember(parse(first), FORMAT.reply_from_body(json.dumps(reply).encode(), False), table, issued=issued)
    return table, first, reply


def follow_up(first: dict, reply: dict, **extra) -> dict:
    return {**first, "previous_response_id": reply["id"], "stream": True, **extra,
            "input": [{"type": "function_call_output", "call_id": reply["output"][2]["call_id"], "output": "{}"}]}


def upstream(body: dict, table: DictTable) -> dict | None:
    parsed = FORMAT.expand(parse(body), table)
    sent = FORMAT.upstream_body(parsed, json.dumps(body).encode(), table)
    return None if sent is None else json.loads(sent)


def test_a_turn_continuing_a_served_response_goes_up_stateless_with_the_whole_conversation():
    table, first, reply = served_first_turn()
    body = follow_up(first, reply, metadata={"run": "7"})
    sent = upstream(body, table)
    assert "previous_response_id" not in sent
    # Every other field as the client sent it.
    assert {k: v for k, v in sent.items() if k != "input"} == {
        k: v for k, v in body.items() if k not in ("input", "previous_response_id")}
    blob_reasoning, _, call = reply["output"]
    assert sent["input"] == [
        USER,
        blob_reasoning,  # the provider decrypts it; its id is required
        # the reasoning item without a blob is left out: the provider would look its id up
        {k: v for k, v in call.items() if k != "id"},  # call_id kept, the served item id gone
        body["input"][0],
    ]


def test_a_turn_continuing_a_response_the_provider_issued_and_stored_goes_as_sent():
    table, first, reply = served_first_turn(issued=True)
    assert upstream(follow_up(first, reply), table) is None
    # ... but not once butter has served that id (an exact hit), nor when the provider did not store it.
    FORMAT.remember(parse(first), FORMAT.reply_from_body(json.dumps(reply).encode(), False), table)
    assert "previous_response_id" not in upstream(follow_up(first, reply), table)
    unstored, first, reply = served_first_turn(issued=True, first={**BASE, "store": False})
    assert "previous_response_id" not in upstream(follow_up(first, reply), unstored)


def test_a_request_without_previous_response_id_is_never_rewritten():
    table = DictTable()
    assert FORMAT.upstream_body(parse(BASE), json.dumps(BASE).encode(), table) is None


def test_a_long_served_chain_is_rebuilt_link_by_link_and_item_references_become_their_items():
    said = text_item("Which order?")
    table, first, reply = served_first_turn(first={**BASE, "input": [USER, said, {"type": "item_reference",
                                                                                   "id": said["id"]}]})
    second = follow_up(first, reply)
    answer = response([text_item("Refunded.")])
    FORMAT.remember(FORMAT.expand(parse(second), table), answer, table)
    third = {**first, "previous_response_id": answer["id"], "input": [{"role": "user", "content": "Thanks!"}]}
    sent = upstream(third, table)
    resent = lambda item: {k: v for k, v in item.items() if k != "id"}
    assert sent["input"] == [USER, resent(said), resent(said), reply["output"][0], resent(reply["output"][2]),
                             second["input"][0], resent(answer["output"][0]), third["input"][0]]


def test_a_chain_holding_inline_media_is_not_resent_but_forwarded_as_it_is():
    image = {"role": "user", "content": [{"type": "input_image",
                                          "image_url": "data:image/png;base64," + base64.b64encode(b"png").decode()}]}
    table, first, reply = served_first_turn(first={**BASE, "input": [image]})
    assert b"cG5n" not in json.dumps(table.rows).encode(), "inline bytes were stored"
    with pytest.raises(NotUnderstood, match="no resendable copy"):
        upstream(follow_up(first, reply), table)


async def test_a_miss_after_a_served_response_reaches_a_provider_that_never_issued_it_statelessly(butter):
    addon, _ = butter
    ask = {**BASE, "instructions": "Be brief."}
    recorded = await exchange(addon, responses_flow(ask), FakeResponsesModel())
    # Another provider session (expired, or another run's): it never issued the served id.
    provider = FakeResponsesModel()
    served = await exchange(addon, responses_flow(ask), None)
    assert served.response.headers["butter-cache"] == "hit"
    rid = json.loads(served.response.content)["id"]
    assert rid == json.loads(recorded.response.content)["id"] and rid not in provider.stored
    call_id = json.loads(served.response.content)["output"][1]["call_id"]
    follow = {**ask, "previous_response_id": rid,
              "input": [{"type": "function_call_output", "call_id": call_id,
                         "output": '{"order_id": "1234", "amount": 42.5, "customer": "Ana Ruiz"}'}]}
    second = await exchange(addon, responses_flow(follow), provider)
    assert second.response.status_code == 200, second.response.content
    assert second.response.headers["butter-cache"] == "miss"
    sent = json.loads(second.request.content)
    assert "previous_response_id" not in sent and sent["input"][-1] == follow["input"][0]
    # The provider's own new id: the next turn naming it goes as the client sent it.
    new_id = json.loads(second.response.content)["id"]
    assert new_id in provider.stored
    for pending in list(addon.pending):
        pending.result()
    third = {**ask, "previous_response_id": new_id,
             "input": [{"type": "function_call_output", "call_id": json.loads(second.response.content)["output"][1]
                        ["call_id"], "output": '{"refunded": true}'}]}
    last = await exchange(addon, responses_flow(third), provider)
    assert last.response.status_code == 200
    assert json.loads(last.request.content)["previous_response_id"] == new_id
    assert json.loads(last.response.content)["output"][1]["content"][0]["text"].startswith("Refunded 42.5")


async def test_a_served_chain_butter_cannot_rebuild_is_forwarded_unchanged_with_a_warning(butter, caplog):
    addon, _ = butter
    image = {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(b"png").decode()}
    ask = {**BASE, "input": [{"role": "user", "content": [{"type": "input_text", "text": USER["content"]}, image]}]}
    await exchange(addon, responses_flow(ask), FakeResponsesModel())
    served = await exchange(addon, responses_flow(ask), None)
    rid = json.loads(served.response.content)["id"]
    follow = {**ask, "previous_response_id": rid, "input": "Thanks!"}
    flow = responses_flow(follow)
    with caplog.at_level("WARNING", logger="butter"):
        await exchange(addon, flow, None)
    assert flow.response is None and json.loads(flow.request.content) == follow
    assert addon.flows[flow.id].status == "miss"
    assert any("forwarded unchanged" in r.getMessage() and rid in r.getMessage() for r in caplog.records)


async def test_a_sampled_recheck_of_a_served_turn_continuing_a_served_id_goes_up_stateless(butter):
    from butter.addon import verification
    from tests.fakes.openai_chat import ORDERS

    addon, _ = butter

    def customer(order_id: str) -> tuple[dict, dict]:
        order = ORDERS[order_id]
        declared = {"order_id": order_id, "customer": order["customer"], "amount": str(order["amount"])}
        first = {**BASE, "input": [{"role": "user", "content": f"Please refund order {order_id}."}]}
        return declared, first

    def bound(body: dict, declared: dict) -> http.HTTPFlow:
        flow = responses_flow(body)
        flow.request.headers["butter-bindings"] = json.dumps(declared)
        return flow

    def answer(flow: http.HTTPFlow, order_id: str) -> dict:
        reply = json.loads(flow.response.content)
        return {**BASE, "input": [{"type": "function_call_output", "call_id": reply["output"][1]["call_id"],
                                   "output": json.dumps(ORDERS[order_id])}],
                "previous_response_id": reply["id"]}

    declared, first = customer("1234")
    recording = FakeResponsesModel()
    turn1 = await exchange(addon, bound(first, declared), recording)
    await exchange(addon, bound(answer(turn1, "1234"), declared), recording)
    declared, first = customer("9876")
    served = await exchange(addon, bound(first, declared), None)
    assert served.response.headers["butter-cache"] == "hit"
    # What `Verifier.after_serve` hands to replay.client: a copy of a served flow, marked.
    copy = bound(answer(served, "9876"), declared)
    copy.metadata[verification.RECHECK] = True
    provider = FakeResponsesModel()  # the served id is not one it issued
    rechecked = await exchange(addon, copy, provider)
    assert rechecked.response.status_code == 200, rechecked.response.content
    assert "previous_response_id" not in json.loads(copy.request.content)
    assert rechecked.response.headers["butter-cache"] == verification.STATUS


async def test_record_mode_sends_a_turn_continuing_a_served_id_stateless_too(butter):
    addon, _ = butter
    await exchange(addon, responses_flow(BASE), FakeResponsesModel())
    served = await exchange(addon, responses_flow(BASE), None)
    reply = json.loads(served.response.content)
    follow = responses_flow({**BASE, "previous_response_id": reply["id"],
                             "input": [{"type": "function_call_output", "call_id": reply["output"][1]["call_id"],
                                        "output": '{"order_id": "1234", "amount": 42.5, "customer": "Ana Ruiz"}'}]})
    follow.request.headers["butter-mode"] = "record"
    recorded = await exchange(addon, follow, FakeResponsesModel())
    assert recorded.response.status_code == 200 and recorded.response.headers["butter-cache"] == "record"
    assert "previous_response_id" not in json.loads(recorded.request.content)
