"""The OpenAI Chat adapter: normalisation, assembly, rendering, in plain values."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from butter.addon.formats import NotUnderstood, WireRequest, recognise
from butter.addon.formats import sse
from butter.addon.formats.openai_chat import FORMAT

STREAMS = Path(__file__).resolve().parents[1] / "data" / "openai-chat-streams"


def wire(body: dict | bytes, path: str = "/v1/chat/completions", headers: dict | None = None) -> WireRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WireRequest("POST", path, {}, headers or {}, raw)


def key(body: dict, **kw):
    parsed = FORMAT.parse_request(wire(body, **kw))
    return parsed.conversation


BASE = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/completions", "/openai/v1/chat/completions",
                                  "/chat/completions"])
def test_chat_completions_is_recognised_on_any_prefix(path):
    assert recognise("POST", path) is FORMAT


def test_other_paths_and_methods_are_not_llm_requests():
    assert recognise("POST", "/v1/embeddings") is None
    assert recognise("GET", "/v1/chat/completions") is None


def test_key_order_and_a_string_versus_one_text_part_do_not_change_the_key():
    parts = {"messages": [{"content": "Be brief.", "role": "system"},
                          {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "model": "gpt-4o-mini"}
    assert key(BASE) == key(parts)


@pytest.mark.parametrize("field,value", [("stream", True), ("stream_options", {"include_usage": True}),
                                         ("user", "u1"), ("metadata", {"a": "b"}), ("store", True),
                                         ("service_tier", "flex"), ("prompt_cache_key", "random-123"),
                                         ("safety_identifier", "x")])
def test_fields_that_do_not_change_the_answer_are_out_of_the_key(field, value):
    assert key({**BASE, field: value}) == key(BASE)


@pytest.mark.parametrize("field,value", [("temperature", 0.7), ("seed", 7), ("tools", [{"type": "function", "function": {"name": "f"}}]),
                                         ("tool_choice", "required"), ("response_format", {"type": "json_object"}),
                                         ("n", 2), ("top_k", 5), ("chat_template_kwargs", {"x": 1})])
def test_fields_that_change_the_answer_and_unknown_extras_are_in_the_key(field, value):
    assert key({**BASE, field: value}) != key(BASE)


def test_integral_floats_key_like_ints():
    assert key({**BASE, "temperature": 0}) == key({**BASE, "temperature": 0.0})


def test_the_openai_beta_header_is_in_the_key():
    assert key(BASE, headers={"openai-beta": "x"}) != key(BASE)


def test_tool_call_ids_are_out_of_the_key_but_their_links_are_kept():
    def history(a: str, b: str, answer_first: str) -> dict:
        calls = [{"id": a, "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                 {"id": b, "type": "function", "function": {"name": "f", "arguments": '{"x":2}'}}]
        return {"model": "m", "messages": [
            {"role": "user", "content": "go"}, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": answer_first, "content": "one"},
            {"role": "tool", "tool_call_id": b if answer_first == a else a, "content": "two"}]}
    assert key(history("call_1", "call_2", "call_1")) == key(history("call_9", "call_8", "call_9"))
    # Answering the second call first is a different conversation.
    assert key(history("call_1", "call_2", "call_1")) != key(history("call_1", "call_2", "call_2"))


def test_whitespace_inside_tool_call_arguments_is_not_meaning():
    def with_args(arguments: str) -> dict:
        return {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}]}
    assert key(with_args('{"a": 1, "b": 2}')) == key(with_args('{"b":2,"a":1}'))


def test_fields_an_sdk_echoes_back_as_null_or_empty_do_not_change_the_key():
    echoed = {"model": "m", "messages": [{"role": "assistant", "content": "ok", "refusal": None, "annotations": [],
                                          "audio": None, "function_call": None}]}
    assert key(echoed) == key({"model": "m", "messages": [{"role": "assistant", "content": "ok"}]})


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", json.dumps({"model": "m"}).encode(),
                                  json.dumps({"messages": []}).encode(),
                                  json.dumps({"model": "m", "messages": "hi"}).encode()])
def test_requests_that_are_not_chat_completions_are_not_understood(body):
    with pytest.raises(NotUnderstood):
        FORMAT.parse_request(wire(body))


def assemble_file(name: str) -> dict:
    return FORMAT.reply_from_body((STREAMS / f"{name}.sse").read_bytes(), streamed=True)


def test_a_stream_assembles_every_choice_logprob_and_tool_call():
    three = assemble_file("a491adda08c3d4fd")
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] for c in three["choices"])
    parallel = assemble_file("f82268f2fefd5cfb")["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parallel] == [
        ("GetWeatherArgs", {"city": "Edinburgh", "country": "GB", "units": "c"}),
        ("get_stock_price", {"ticker": "AAPL", "exchange": "NASDAQ"})]
    assert all(c["id"].startswith("call_") for c in parallel), "tool-call ids are kept for exact hits"
    logprobs = assemble_file("83b060bae42eb41c")["choices"][0]
    assert "".join(t["token"] for t in logprobs["logprobs"]["content"]) == logprobs["message"]["content"]


@pytest.mark.parametrize("name", sorted(p.stem for p in STREAMS.glob("*.sse")))
def test_rendering_a_stream_and_assembling_it_again_gives_the_same_reply(name):
    reply = assemble_file(name)
    parsed = FORMAT.parse_request(wire({**BASE, "stream": True, "stream_options": {"include_usage": True}}))
    rendered = FORMAT.render(reply, parsed)
    assert rendered.headers["content-type"].startswith("text/event-stream")
    assert FORMAT.reply_from_body(rendered.body, streamed=True) == reply


def test_a_streamed_render_carries_usage_only_when_asked():
    reply = assemble_file("4cc50a6135d25457")
    without = FORMAT.render(reply, FORMAT.parse_request(wire({**BASE, "stream": True})))
    events = [json.loads(e.data) for e in sse.parse(without.body) if e.data != "[DONE]"]
    assert all(e["choices"] and "usage" not in e for e in events)


def test_an_exact_render_serves_the_recorded_call_ids_and_a_fresh_completion_id():
    reply = assemble_file("f82268f2fefd5cfb")
    recorded = [c["id"] for c in reply["choices"][0]["message"]["tool_calls"]]
    assert len(set(recorded)) == 2 and all(i.startswith("call_") for i in recorded)
    parsed = FORMAT.parse_request(wire(BASE))
    one, two = (json.loads(FORMAT.render(reply, parsed).body) for _ in range(2))
    assert one["id"] != two["id"] and one["id"].startswith("chatcmpl-")
    assert [c["id"] for c in one["choices"][0]["message"]["tool_calls"]] == recorded
    streamed = FORMAT.render(reply, FORMAT.parse_request(wire({**BASE, "stream": True})))
    again = FORMAT.reply_from_body(streamed.body, streamed=True)
    assert [c["id"] for c in again["choices"][0]["message"]["tool_calls"]] == recorded


def test_a_template_render_has_fresh_call_ids_consistent_within_the_reply():
    reply = assemble_file("f82268f2fefd5cfb")
    recorded = {c["id"] for c in reply["choices"][0]["message"]["tool_calls"]}
    parsed = FORMAT.parse_request(wire(BASE))
    one, two = (json.loads(FORMAT.render(FORMAT.bound_reply(reply, {"x": "1"}), parsed).body) for _ in range(2))
    ids_one = [c["id"] for c in one["choices"][0]["message"]["tool_calls"]]
    ids_two = [c["id"] for c in two["choices"][0]["message"]["tool_calls"]]
    assert len(set(ids_one)) == 2 and all(i.startswith("call_") for i in ids_one)
    assert not (set(ids_one) & recorded) and not (set(ids_one) & set(ids_two))


def test_replies_that_differ_only_in_call_ids_are_one_answer():
    from butter.store.tree import reply_id
    reply = assemble_file("f82268f2fefd5cfb")
    other = FORMAT.bound_reply(reply, {"x": "1"})
    assert reply_id(reply) == reply_id(other)


def test_a_stream_cut_before_its_finish_is_not_recordable():
    events = list(sse.parse((STREAMS / "e2aad469b71d1d48.sse").read_bytes()))
    finish = next(i for i, e in enumerate(events) if '"finish_reason":"' in e.data)
    cut = b"".join(sse.encode(e.data) for e in events[:finish])
    assert FORMAT.reply_from_body(cut, streamed=True) is None
    whole = b"".join(sse.encode(e.data) for e in events)
    assert FORMAT.reply_from_body(whole, streamed=True) is not None


def test_error_payloads_are_not_recordable():
    assert FORMAT.reply_from_body(b'data: {"error": {"message": "x"}}\n\n', streamed=True) is None
    assert FORMAT.reply_from_body(b'{"error": {"message": "x"}}', streamed=False) is None
    assert FORMAT.reply_from_body(b"<html>bad gateway</html>", streamed=False) is None


def test_sse_comment_lines_and_crlf_are_tolerated():
    body = (STREAMS / "4cc50a6135d25457.sse").read_bytes()
    noisy = b": OPENROUTER PROCESSING\r\n\r\n" + body.replace(b"\n", b"\r\n")
    assert FORMAT.reply_from_body(noisy, streamed=True) == assemble_file("4cc50a6135d25457")


def test_errors_have_openais_shape():
    err = FORMAT.error(404, "nope", "butter_replay_miss")
    assert err.status == 404 and json.loads(err.body)["error"] == {
        "message": "nope", "type": "butter_error", "param": None, "code": "butter_replay_miss"}


def test_nulls_the_stream_helper_echoes_inside_tool_calls_are_out_of_the_key():
    # `client.chat.completions.stream(...).get_final_completion()` gives each call
    # `function.parsed_arguments: None` (and the message `parsed: None`); an agent that
    # appends `message.model_dump()` sends them back.
    def history(extra_call: dict, extra_fn: dict) -> dict:
        call = {"id": "call_1", "type": "function", **extra_call,
                "function": {"name": "f", "arguments": '{"x": 1}', **extra_fn}}
        return {"model": "m", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "parsed": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "one"}]}
    plain = key(history({}, {}))
    assert key(history({}, {"parsed_arguments": None})) == plain
    assert key(history({"index": 0}, {"parsed_arguments": None})) == plain
    assert key(history({}, {"parsed_arguments": {"x": 1}})) != plain  # a value is meaning; only nulls are echoes
