"""The Ollama /api/chat adapter with plain bytes: keys, NDJSON assembly, rendering."""
from __future__ import annotations

import base64
import json

import pytest

from butter.addon.formats import NotUnderstood, WireRequest, recognise
from butter.addon.formats.ollama_chat import FORMAT as OLLAMA
from butter.store.tree import root_id

BODY = {"model": "llama3.2", "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "weather in Paris?"}],
        "options": {"temperature": 0, "seed": 7}}


def request(body: dict, path: str = "/api/chat") -> WireRequest:
    return WireRequest("POST", path, {}, {"content-type": "application/json"}, json.dumps(body).encode())


def key(body: dict) -> tuple:
    parsed = OLLAMA.parse_request(request(body))
    return root_id("ns", parsed.conversation.context), json.dumps(parsed.conversation.messages, sort_keys=True)


def test_the_adapter_claims_api_chat_only():
    assert recognise("POST", "/api/chat") is OLLAMA
    assert recognise("POST", "/ollama/api/chat") is OLLAMA
    assert recognise("POST", "/api/generate") is None
    assert recognise("POST", "/v1/chat/completions") is not OLLAMA


def test_stream_defaults_to_true_when_absent():
    assert OLLAMA.parse_request(request(BODY)).stream is True
    assert OLLAMA.parse_request(request({**BODY, "stream": True})).stream is True
    assert OLLAMA.parse_request(request({**BODY, "stream": False})).stream is False


def test_stream_and_keep_alive_stay_out_of_the_key_and_options_format_think_tools_are_in_it():
    assert key({**BODY, "stream": False, "keep_alive": "5m"}) == key(BODY)
    for change in ({"options": {"temperature": 0.5, "seed": 7}}, {"format": "json"}, {"think": True},
                   {"tools": [{"type": "function", "function": {"name": "f"}}]}, {"model": "qwen3"}, {"raw_knob": 1}):
        assert key({**BODY, **change}) != key(BODY), change


def test_images_are_keyed_by_content_hash_and_not_kept():
    image = base64.b64encode(b"\x89PNG" + bytes(range(256))).decode()
    with_image = {**BODY, "messages": [{"role": "user", "content": "what is this?", "images": [image]}]}
    other = {**BODY, "messages": [{"role": "user", "content": "what is this?",
                                   "images": [base64.b64encode(b"\x89PNG" + bytes(range(255))).decode()]}]}
    parsed = OLLAMA.parse_request(request(with_image))
    assert image not in json.dumps(parsed.conversation.messages)
    assert "sha256" in parsed.conversation.messages[0]["images"][0]
    assert key(with_image) != key(other)


def test_tool_call_arguments_are_objects_and_ids_key_by_position():
    def history(call_id: str | None) -> dict:
        call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        if call_id:
            call["id"] = call_id
        tool = {"role": "tool", "content": "20C", "tool_name": "get_weather"}
        if call_id:
            tool["tool_call_id"] = call_id
        return {**BODY, "messages": BODY["messages"] + [{"role": "assistant", "content": "", "tool_calls": [call]}, tool]}
    assert key(history("call_a")) == key(history("call_b"))
    assert key(history(None)) != key(history("call_a"))
    msgs = OLLAMA.parse_request(request(history(None))).conversation.messages
    assert msgs[2] == {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}


def test_null_and_empty_fields_the_client_sends_key_like_absent_ones():
    padded = {**BODY, "messages": [{"role": "system", "content": "be brief", "images": None, "tool_calls": None},
                                   {"role": "user", "content": "weather in Paris?", "thinking": None}]}
    assert key(padded) == key(BODY)


@pytest.mark.parametrize("body", [b"nope", b"[1]", b'{"messages": []}', b'{"model": "m"}'])
def test_bodies_it_cannot_key_pass_through(body):
    with pytest.raises(NotUnderstood):
        OLLAMA.parse_request(WireRequest("POST", "/api/chat", {}, {}, body))


# -- replies ---------------------------------------------------------------------

def line(message: dict, done: bool = False, **extra) -> dict:
    return {"model": "llama3.2", "created_at": "2024-01-01T00:00:00.1Z", "message": {"role": "assistant", **message},
            "done": done, **extra}


STATS = {"done_reason": "stop", "total_duration": 1_200_000, "load_duration": 1000, "prompt_eval_count": 5,
         "prompt_eval_duration": 20_000, "eval_count": 3, "eval_duration": 900_000}
STREAM = [
    line({"content": "", "thinking": "Hmm, "}),
    line({"content": "", "thinking": "Paris."}),
    line({"content": "Let me "}),
    line({"content": "check."}),
    line({"content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
    line({"content": ""}, done=True, **STATS),
]


def ndjson(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def test_an_ndjson_stream_assembles_into_the_plain_reply():
    reply = OLLAMA.reply_from_body(ndjson(STREAM), streamed=True)
    assert reply == {"model": "llama3.2",
                     "message": {"role": "assistant", "content": "Let me check.", "thinking": "Hmm, Paris.",
                                 "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                     "done": True, **STATS}
    plain = {"model": "llama3.2", "created_at": "2024-01-01T00:00:00Z", "message": reply["message"], "done": True, **STATS}
    assert OLLAMA.reply_from_body(json.dumps(plain).encode(), streamed=False) == reply


def test_a_cut_or_failed_stream_is_not_recorded():
    assert OLLAMA.reply_from_body(ndjson(STREAM[:-1]), streamed=True) is None
    assert OLLAMA.reply_from_body(ndjson(STREAM[:2] + [{"error": "model crashed"}]), streamed=True) is None
    assert OLLAMA.reply_from_body(b"", streamed=True) is None
    assert OLLAMA.reply_from_body(b'{"error": "model not found"}', streamed=False) is None


def test_a_streamed_render_is_ndjson_that_assembles_back_with_counts_and_durations():
    reply = OLLAMA.reply_from_body(ndjson(STREAM), streamed=True)
    out = OLLAMA.render(reply, OLLAMA.parse_request(request(BODY)))
    assert out.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in out.body.decode().splitlines()]
    assert len(lines) > 3 and all(not x["done"] for x in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == 3 and lines[-1]["total_duration"] == 1_200_000
    assert all(x["created_at"].endswith("Z") for x in lines)
    assert OLLAMA.reply_from_body(out.body, streamed=True) == reply


def test_a_plain_render_is_one_object_with_a_fresh_time():
    reply = OLLAMA.reply_from_body(ndjson(STREAM), streamed=True)
    out = OLLAMA.render(reply, OLLAMA.parse_request(request({**BODY, "stream": False})))
    body = json.loads(out.body)
    assert out.headers["content-type"] == "application/json"
    assert body["message"] == reply["message"] and body["done"] is True
    assert body["created_at"] != "2024-01-01T00:00:00.1Z"


def test_tool_call_ids_are_the_recorded_ones_on_an_exact_hit_and_fresh_on_a_template_hit():
    stream = STREAM[:-2] + [line({"content": "", "tool_calls": [{"id": "call_x1", "function": {"name": "f", "arguments": {}}}]}),
                            STREAM[-1]]
    reply = OLLAMA.reply_from_body(ndjson(stream), streamed=True)
    plain = OLLAMA.parse_request(request({**BODY, "stream": False}))
    assert json.loads(OLLAMA.render(reply, plain).body)["message"]["tool_calls"][0]["id"] == "call_x1"
    bound = OLLAMA.bound_reply(reply, {"x": "1"})
    ids = {json.loads(OLLAMA.render(bound, plain).body)["message"]["tool_calls"][0]["id"] for _ in range(3)}
    assert len(ids) == 3 and "" not in ids and "call_x1" not in ids


def test_errors_have_ollamas_shape():
    out = OLLAMA.error(404, "not recorded", "butter_replay_miss")
    assert out.status == 404 and json.loads(out.body) == {"error": "not recorded"}
