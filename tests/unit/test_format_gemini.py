"""The Gemini adapter with plain bytes: keys, assembly and rendering."""
from __future__ import annotations

import base64
import json

import pytest

from butter.addon.formats import NotUnderstood, WireRequest, recognise
from butter.addon.formats.gemini import FORMAT as GEMINI
from butter.addon.formats.gemini import camel_case
from butter.store.tree import root_id

PATH = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
SIG = "Cq8BAXLI2nx+/abc_-=="  # opaque; must come back exactly as it went in


def request(body: dict, path: str = PATH, query: dict | None = None) -> WireRequest:
    return WireRequest("POST", path, query or {}, {"content-type": "application/json"}, json.dumps(body).encode())


def key(parsed) -> tuple:
    return root_id("ns", parsed.conversation.context), json.dumps(parsed.conversation.messages, sort_keys=True)


CAMEL = {
    "contents": [{"role": "user", "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}}]}],
    "systemInstruction": {"parts": [{"text": "be brief"}]},
    "tools": [{"functionDeclarations": [{"name": "lookup", "parameters": {
        "type": "OBJECT", "properties": {"order_id": {"type": "STRING", "maxLength": 9}}}}]}],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["lookup"]}},
    "generationConfig": {"temperature": 0.2, "maxOutputTokens": 50, "responseJsonSchema": {"additional_properties": False}},
}
SNAKE = {
    "contents": [{"role": "user", "parts": [{"text": "hi"}, {"inline_data": {"mime_type": "image/png", "data": "iVBORw=="}}]}],
    "system_instruction": {"parts": [{"text": "be brief"}]},
    "tools": [{"function_declarations": [{"name": "lookup", "parameters": {
        "type": "OBJECT", "properties": {"order_id": {"type": "STRING", "max_length": 9}}}}]}],
    "tool_config": {"function_calling_config": {"mode": "AUTO", "allowed_function_names": ["lookup"]}},
    "generation_config": {"temperature": 0.2, "max_output_tokens": 50, "response_json_schema": {"additional_properties": False}},
}


def test_a_changed_generation_config_changes_the_key():
    warmer = {**CAMEL, "generationConfig": {**CAMEL["generationConfig"], "temperature": 0.3}}
    assert key(GEMINI.parse_request(request(CAMEL))) != key(GEMINI.parse_request(request(warmer)))


def test_user_chosen_names_are_never_respelled():
    converted = camel_case({"function_call": {"name": "f", "args": {"order_id": 1}},
                            "parameters": {"properties": {"order_id": {"max_length": 3}}},
                            "parameters_json_schema": {"additional_properties": False}})
    assert converted == {"functionCall": {"name": "f", "args": {"order_id": 1}},
                         "parameters": {"properties": {"order_id": {"maxLength": 3}}},
                         "parametersJsonSchema": {"additional_properties": False}}


def test_snake_case_proto_names_key_like_camel_case():
    assert key(GEMINI.parse_request(request(SNAKE))) == key(GEMINI.parse_request(request(CAMEL)))


def test_model_comes_from_the_path_and_the_verb_and_alt_stay_out_of_the_key():
    plain = GEMINI.parse_request(request(CAMEL))
    streamed = GEMINI.parse_request(request(CAMEL, STREAM_PATH, {"alt": "sse"}))
    v1 = GEMINI.parse_request(request(CAMEL, "/v1/models/gemini-2.5-flash:streamGenerateContent"))
    other = GEMINI.parse_request(request(CAMEL, "/v1beta/models/gemini-2.5-pro:generateContent"))
    assert plain.conversation.context["model"] == "gemini-2.5-flash"
    assert key(plain) == key(streamed) == key(v1)
    assert key(other) != key(plain)
    assert (plain.stream, streamed.stream, v1.stream) == (False, True, True)
    assert (plain.render_options["form"], streamed.render_options["form"], v1.render_options["form"]) == ("plain", "sse", "array")


def test_adapter_is_chosen_by_path_suffix():
    assert recognise("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent") is GEMINI
    assert recognise("POST", "/v1beta1/projects/p/locations/us/publishers/google/models/gemini-2.5-flash:generateContent") is GEMINI
    assert recognise("POST", "/v1beta/models/gemini-2.5-flash:countTokens") is None
    assert recognise("GET", "/v1beta/models/gemini-2.5-flash:generateContent") is None


def test_inline_image_is_keyed_by_content_hash_and_its_bytes_are_not_in_the_tree():
    data = base64.b64encode(b"\x89PNG" + bytes(range(200))).decode()
    body = {"contents": [{"role": "user", "parts": [{"text": "what is this"}, {"inlineData": {"mimeType": "image/png", "data": data}}]}]}
    other = json.loads(json.dumps(body))
    other["contents"][0]["parts"][1]["inlineData"]["data"] = base64.b64encode(b"\x89PNG" + bytes(range(199))).decode()
    parsed = GEMINI.parse_request(request(body))
    assert data not in json.dumps(parsed.conversation.messages)
    assert parsed.conversation.messages[0]["parts"][1]["inlineData"]["mimeType"] == "image/png"
    assert key(parsed) != key(GEMINI.parse_request(request(other)))
    urlsafe = json.loads(json.dumps(body))
    urlsafe["contents"][0]["parts"][1]["inlineData"]["data"] = base64.urlsafe_b64encode(base64.b64decode(data)).decode().rstrip("=")
    assert key(GEMINI.parse_request(request(urlsafe))) == key(parsed)  # same bytes, other alphabet


def test_function_call_ids_are_keyed_by_position_and_signatures_exactly():
    def history(call_id: str, sig: str) -> dict:
        return {"contents": [
            {"role": "user", "parts": [{"text": "refund 1"}]},
            {"role": "model", "parts": [{"functionCall": {"id": call_id, "name": "f", "args": {}}, "thoughtSignature": sig}]},
            {"role": "user", "parts": [{"functionResponse": {"id": call_id, "name": "f", "response": {"ok": True}}}]}]}
    a = GEMINI.parse_request(request(history("abc", SIG)))
    assert key(a) == key(GEMINI.parse_request(request(history("xyz", SIG))))
    assert key(a) != key(GEMINI.parse_request(request(history("abc", SIG + "A"))))
    assert a.conversation.messages[1]["parts"][0]["thoughtSignature"] == SIG


def test_text_split_over_parts_keys_like_one_text_part():
    split = {"contents": [{"role": "model", "parts": [{"text": "Hel"}, {"text": "lo"}, {"text": ""}]}]}
    whole = {"contents": [{"role": "model", "parts": [{"text": "Hello"}]}]}
    signed = {"contents": [{"role": "model", "parts": [{"text": "Hello"}, {"text": "", "thoughtSignature": SIG}]}]}
    assert key(GEMINI.parse_request(request(split))) == key(GEMINI.parse_request(request(whole)))
    assert key(GEMINI.parse_request(request(signed))) != key(GEMINI.parse_request(request(whole)))


def test_labels_stay_out_of_the_key_and_unknown_fields_in_it():
    base = GEMINI.parse_request(request(CAMEL))
    assert key(GEMINI.parse_request(request({**CAMEL, "labels": {"team": "a"}}))) == key(base)
    assert key(GEMINI.parse_request(request({**CAMEL, "cachedContent": "cachedContents/x"}))) != key(base)
    assert key(GEMINI.parse_request(request({**CAMEL, "newKnob": 1}))) != key(base)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"contents": "hi"}', b"{}"])
def test_bodies_it_cannot_key_pass_through(body):
    with pytest.raises(NotUnderstood):
        GEMINI.parse_request(WireRequest("POST", PATH, {}, {}, body))


# -- replies --------------------------------------------------------------------

def sse_body(chunks: list[dict]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


STREAM = [
    {"candidates": [{"content": {"parts": [{"text": "Thinking", "thought": True}], "role": "model"}, "index": 0}],
     "usageMetadata": {"promptTokenCount": 5}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
    {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}, "index": 0}],
     "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
    {"candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}, "index": 0}],
     "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
    {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": SIG}],
                                 "role": "model"}, "index": 0}],
     "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}, "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
    {"candidates": [{"content": {"parts": [{"text": "", "thoughtSignature": SIG + "2"}], "role": "model"},
                     "finishReason": "STOP", "index": 0}],
     "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9},
     "modelVersion": "gemini-2.5-flash", "responseId": "r1"},
]
ASSEMBLED_PARTS = [{"text": "Thinking", "thought": True}, {"text": "Hello"},
                   {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": SIG},
                   {"text": "", "thoughtSignature": SIG + "2"}]


def test_a_stream_assembles_into_one_response_with_the_last_usage():
    reply = GEMINI.reply_from_body(sse_body(STREAM), streamed=True)
    assert reply["candidates"][0]["content"]["parts"] == ASSEMBLED_PARTS
    assert reply["candidates"][0]["finishReason"] == "STOP"
    assert reply["usageMetadata"] == {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9}
    assert "responseId" not in reply


def test_a_json_array_stream_assembles_like_sse():
    array = ("[" + ",\r\n".join(json.dumps(c) for c in STREAM) + "]").encode()
    assert GEMINI.reply_from_body(array, streamed=False) == GEMINI.reply_from_body(sse_body(STREAM), streamed=True)


def test_a_cut_or_failed_stream_is_not_recorded():
    assert GEMINI.reply_from_body(sse_body(STREAM[:-1]), streamed=True) is None
    error = {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}
    assert GEMINI.reply_from_body(sse_body(STREAM[:2] + [error]), streamed=True) is None
    assert GEMINI.reply_from_body(b"", streamed=True) is None


def test_a_blocked_prompt_is_a_whole_reply():
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    reply = GEMINI.reply_from_body(json.dumps(blocked).encode(), streamed=False)
    assert reply == blocked
    rendered = GEMINI.render(reply, GEMINI.parse_request(request(CAMEL, STREAM_PATH, {"alt": "sse"})))
    assert json.loads(rendered.body[len(b"data: "):])["promptFeedback"] == {"blockReason": "SAFETY"}


def events(body: bytes) -> list[dict]:
    text = body.decode()
    assert "event:" not in text and "[DONE]" not in text
    blocks = [b for b in text.split("\r\n\r\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    return [json.loads(b[len("data: "):]) for b in blocks]


def test_a_streamed_render_is_data_lines_that_assemble_back_to_the_reply():
    reply = GEMINI.reply_from_body(sse_body(STREAM), streamed=True)
    out = GEMINI.render(reply, GEMINI.parse_request(request(CAMEL, STREAM_PATH, {"alt": "sse"})))
    assert out.headers["content-type"].startswith("text/event-stream")
    chunks = events(out.body)
    assert len(chunks) > 3
    assert len({c["responseId"] for c in chunks}) == 1
    assert "usageMetadata" in chunks[-1] and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert GEMINI.reply_from_body(out.body, streamed=True) == reply


def test_signatures_render_byte_exact_in_both_forms():
    reply = GEMINI.reply_from_body(sse_body(STREAM), streamed=True)
    for query, path in (({}, PATH), ({"alt": "sse"}, STREAM_PATH)):
        body = GEMINI.render(reply, GEMINI.parse_request(request(CAMEL, path, query))).body
        assert body.count(json.dumps(SIG).encode()) == 1 and body.count(json.dumps(SIG + "2").encode()) == 1


def test_a_plain_render_is_the_response_with_a_fresh_id():
    reply = GEMINI.reply_from_body(sse_body(STREAM), streamed=True)
    first = json.loads(GEMINI.render(reply, GEMINI.parse_request(request(CAMEL))).body)
    second = json.loads(GEMINI.render(reply, GEMINI.parse_request(request(CAMEL))).body)
    assert first["candidates"] == reply["candidates"]
    assert first["responseId"] != second["responseId"]


def test_function_call_ids_are_the_recorded_ones_on_an_exact_hit_and_fresh_on_a_template_hit():
    body = {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"id": "abc1", "name": "f", "args": {}}}]},
                            "finishReason": "STOP"}]}
    reply = GEMINI.reply_from_body(json.dumps(body).encode(), streamed=False)

    def rendered_id(r: dict) -> str:
        return json.loads(GEMINI.render(r, GEMINI.parse_request(request(CAMEL))).body)["candidates"][0]["content"]["parts"][0]["functionCall"]["id"]
    assert rendered_id(reply) == "abc1"
    ids = {rendered_id(GEMINI.bound_reply(reply, {"x": "1"})) for _ in range(3)}
    assert len(ids) == 3 and "" not in ids and "abc1" not in ids


def test_errors_have_googles_shape():
    out = GEMINI.error(404, "not recorded", "butter_replay_miss")
    assert out.status == 404
    assert json.loads(out.body)["error"]["status"] == "NOT_FOUND"


def test_a_tuned_model_keys_apart_from_a_base_model_of_the_same_name():
    base = GEMINI.parse_request(request(CAMEL, "/v1beta/models/m1:generateContent"))
    tuned = GEMINI.parse_request(request(CAMEL, "/v1beta/tunedModels/m1:generateContent"))
    assert tuned.conversation.context["model"] == "tunedModels/m1"
    assert key(base) != key(tuned)


def test_an_error_printed_as_bare_json_after_a_stream_began_is_not_recorded():
    body = sse_body(STREAM) + b'{\n  "error": {\n    "code": 503,\n    "status": "UNAVAILABLE"\n  }\n}\n'
    assert GEMINI.reply_from_body(body, streamed=True) is None
