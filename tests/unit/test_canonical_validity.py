"""Canonical forms drop what does not change the answer, and never more: a
request a provider would reject must not key like one it accepts (invalid
tool-call JSON, invalid base64), in any wire format."""
from __future__ import annotations

import json

import pytest

from butter.addon import formats
from butter.addon.formats import WireRequest
from butter.store.canonical import base64_digest, json_argument

IMAGE = "iVBORw0KGgo="  # valid base64
LENIENT_TWIN = "iVBO!Rw0K Ggo="  # what a lenient decoder (validate=False) reads as the same bytes


def conversation(path: str, body: dict):
    fmt = formats.recognise("POST", path)
    return fmt.parse_request(WireRequest("POST", path, {}, {"content-type": "application/json"},
                                         json.dumps(body).encode())).conversation


def chat_with_arguments(arguments: str) -> dict:
    return {"model": "m", "messages": [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "lookup", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}


def responses_with_arguments(arguments: str) -> dict:
    return {"model": "m", "input": [
        {"role": "user", "content": "look it up"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": arguments},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}


@pytest.mark.parametrize("invalid,valid", [
    ("abc", '"abc"'), ("null", '"null"'), ("NaN", "null"), ("Infinity", "1e400"), ("{'a': 1}", '"{\'a\': 1}"'),
    ('{"a": 1', '{"a": 1}'), ('{"butter:invalid-json": "abc"}', "abc"),
])
@pytest.mark.parametrize("path,body", [("/v1/chat/completions", chat_with_arguments),
                                       ("/v1/responses", responses_with_arguments)])
def test_tool_call_arguments_that_are_not_json_never_key_like_json_that_is(path, body, invalid, valid):
    assert conversation(path, body(invalid)) != conversation(path, body(valid))


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", chat_with_arguments),
                                       ("/v1/responses", responses_with_arguments)])
def test_spacing_and_key_order_inside_valid_arguments_still_do_not_count(path, body):
    assert conversation(path, body('{"a": 1, "b": [2]}')) == conversation(path, body('{ "b":[2],"a":1 }'))


def test_no_two_different_argument_texts_share_a_key_value():
    texts = ["abc", '"abc"', "null", '"null"', '{"butter:invalid-json": "abc"}',
             '{"butter:json": {"butter:invalid-json": "abc"}}', '{"butter:json": 1}', "1", "NaN"]
    values = [json.dumps(json_argument(t), sort_keys=True) for t in texts]
    assert len(set(values)) == len(texts)


def chat_image(data: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]}]}


def responses_image(data: str) -> dict:
    return {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{data}"}]}]}


def gemini_image(data: str) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": "what is this"},
                                                    {"inlineData": {"mimeType": "image/png", "data": data}}]}]}


def ollama_image(data: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "what is this", "images": [data]}]}


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", chat_image), ("/v1/responses", responses_image),
    ("/v1beta/models/gemini-2.0-flash:generateContent", gemini_image), ("/api/chat", ollama_image),
])
def test_invalid_base64_media_never_keys_like_the_valid_bytes_a_lenient_decoder_makes_of_it(path, body):
    assert conversation(path, body(LENIENT_TWIN)) != conversation(path, body(IMAGE))
    assert conversation(path, body(IMAGE)) == conversation(path, body(IMAGE))
    assert LENIENT_TWIN not in json.dumps(conversation(path, body(LENIENT_TWIN)).messages)  # bytes still not stored


def test_gemini_still_reads_url_safe_and_unpadded_base64_as_the_same_bytes():
    assert base64_digest("-_8", urlsafe=True) == base64_digest("+/8=")
    assert base64_digest("-_8") != base64_digest("+/8=")  # elsewhere that is not valid base64
