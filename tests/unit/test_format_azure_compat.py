"""Azure OpenAI and OpenAI-compatible servers (OpenRouter, Groq, vLLM, Ollama /v1):
paths, keys, and the extra fields and lines their replies carry."""
from __future__ import annotations

import base64
import json

import pytest

from butter.addon.formats import WireRequest, recognise, sse
from butter.addon.formats.azure_openai import FORMAT as AZURE
from butter.addon.formats.openai_chat import FORMAT as OPENAI
from butter.store.tree import root_id

DEPLOYMENT_PATH = "/openai/deployments/support-gpt4o/chat/completions"
V1_PATH = "/openai/v1/chat/completions"
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def request(path: str, body: dict = BODY, query: dict | None = None) -> WireRequest:
    return WireRequest("POST", path, query or {}, {"content-type": "application/json"}, json.dumps(body).encode())


def key(fmt, req: WireRequest) -> bytes:
    parsed = fmt.parse_request(req)
    return root_id("ns", parsed.conversation.context) + json.dumps(parsed.conversation.messages).encode()


def test_azure_deployment_paths_go_to_the_azure_adapter_and_the_rest_to_openai():
    assert recognise("POST", "/openai/deployments/d/chat/completions") is AZURE
    assert recognise("POST", "/openai/v1/chat/completions") is OPENAI  # Azure v1 and Groq: one path
    assert recognise("POST", "/api/v1/chat/completions") is OPENAI  # OpenRouter
    assert recognise("POST", "/v1/chat/completions") is OPENAI  # vLLM, Ollama /v1, Together
    assert recognise("POST", "/openai/deployments/d/embeddings") is None


def test_the_deployment_in_the_path_is_the_model_and_api_version_is_in_the_key():
    q = {"api-version": "2024-10-21"}
    parsed = AZURE.parse_request(request(DEPLOYMENT_PATH, query=q))
    assert parsed.conversation.context["model"] == "support-gpt4o"
    assert parsed.conversation.context["api-version"] == "2024-10-21"
    # Azure ignores the body's model on a deployment path; so does the key.
    assert key(AZURE, request(DEPLOYMENT_PATH, {**BODY, "model": "whatever"}, q)) == key(AZURE, request(DEPLOYMENT_PATH, query=q))
    assert key(AZURE, request(DEPLOYMENT_PATH, query={"api-version": "2025-04-01-preview"})) != key(AZURE, request(DEPLOYMENT_PATH, query=q))
    assert key(AZURE, request("/openai/deployments/other/chat/completions", query=q)) != key(AZURE, request(DEPLOYMENT_PATH, query=q))


def test_a_deployment_keys_apart_from_the_same_model_on_openai():
    q = {"api-version": "2024-10-21"}
    assert key(AZURE, request("/openai/deployments/gpt-4o/chat/completions", query=q)) != key(OPENAI, request("/v1/chat/completions"))


def test_a_deployment_path_without_api_version_passes_through():
    from butter.addon.formats import NotUnderstood

    with pytest.raises(NotUnderstood):
        AZURE.parse_request(request(DEPLOYMENT_PATH))


# -- Azure replies ----------------------------------------------------------------

FILTERS = {"hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}
PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": FILTERS}]


def chunk(choices: list, **top) -> dict:
    return {"choices": choices, "created": 1715000000, "id": "chatcmpl-A1", "model": "gpt-4o-2024-08-06",
            "object": "chat.completion.chunk", "system_fingerprint": "fp_az", **top}


def filter_chunk(choices: list, **top) -> dict:
    # Azure's own events: no id, no model, `object: ""`.
    return {"choices": choices, "created": 0, "id": "", "model": "", "object": "", **top}


AZURE_STREAM = [
    filter_chunk([], prompt_filter_results=PROMPT_FILTERS),
    chunk([{"content_filter_results": {}, "delta": {"content": "", "role": "assistant", "refusal": None},
            "finish_reason": None, "index": 0, "logprobs": None}]),
    chunk([{"content_filter_results": FILTERS, "delta": {"content": "Hello"}, "finish_reason": None, "index": 0, "logprobs": None}]),
    chunk([{"content_filter_results": FILTERS, "delta": {"content": " there"}, "finish_reason": None, "index": 0, "logprobs": None}]),
    chunk([{"content_filter_results": {}, "delta": {}, "finish_reason": "stop", "index": 0, "logprobs": None}]),
    filter_chunk([{"content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 11},
                   "content_filter_results": FILTERS, "finish_reason": None, "index": 0}]),
]


def sse_body(chunks: list[dict], done: bool = True) -> bytes:
    return b"".join(sse.encode(c) for c in chunks) + (b"data: [DONE]\n\n" if done else b"")


def test_azure_filter_chunks_do_not_break_assembly():
    reply = AZURE.reply_from_body(sse_body(AZURE_STREAM), streamed=True)
    assert reply is not None
    assert reply["model"] == "gpt-4o-2024-08-06"  # not the filter chunks' ""
    assert reply["prompt_filter_results"] == PROMPT_FILTERS
    choice = reply["choices"][0]
    assert choice["message"]["content"] == "Hello there"
    assert choice["finish_reason"] == "stop"
    assert choice["content_filter_results"] == FILTERS  # an empty {} later does not erase it


def test_a_replayed_azure_stream_is_chunks_the_sdk_stream_helper_accepts():
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    reply = AZURE.reply_from_body(sse_body(AZURE_STREAM), streamed=True)
    parsed = AZURE.parse_request(request(DEPLOYMENT_PATH, {**BODY, "stream": True}, {"api-version": "2024-10-21"}))
    out = AZURE.render(reply, parsed)
    state = ChatCompletionStreamState()
    events = [e.data for e in sse.parse(out.body) if e.data != "[DONE]"]
    for data in events:
        event = json.loads(data)
        assert event["object"] == "chat.completion.chunk"
        state.handle_chunk(ChatCompletionChunk.construct(**event))
    final = state.get_final_completion()
    assert final.choices[0].message.content == "Hello there"
    assert final.to_dict()["prompt_filter_results"] == PROMPT_FILTERS


def test_a_plain_azure_reply_keeps_its_filter_results():
    body = {"id": "chatcmpl-A2", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
            "prompt_filter_results": PROMPT_FILTERS,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "content_filter_results": FILTERS,
                         "message": {"role": "assistant", "content": "Hi"}}]}
    reply = AZURE.reply_from_body(json.dumps(body).encode(), streamed=False)
    plain = json.loads(AZURE.render(reply, OPENAI.parse_request(request(V1_PATH))).body)
    assert plain["prompt_filter_results"] == PROMPT_FILTERS
    assert plain["choices"][0]["content_filter_results"] == FILTERS


# -- OpenAI-compatible servers ---------------------------------------------------------

def test_openrouter_comment_lines_are_ignored():
    body = (b": OPENROUTER PROCESSING\n\n" + sse.encode(chunk([{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                                                              "finish_reason": None}]))
            + b": OPENROUTER PROCESSING\n\n"
            + sse.encode(chunk([{"index": 0, "delta": {}, "finish_reason": "stop", "native_finish_reason": "STOP"}]))
            + b"data: [DONE]\n\n")
    reply = OPENAI.reply_from_body(body, streamed=True)
    assert reply["choices"][0]["message"]["content"] == "Hi"
    assert reply["choices"][0]["native_finish_reason"] == "STOP"


def test_an_openrouter_mid_stream_error_is_not_recorded():
    body = (sse.encode(chunk([{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]))
            + sse.encode({"id": "x", "object": "chat.completion.chunk", "error": {"code": 502, "message": "upstream died"},
                          "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}))
    assert OPENAI.reply_from_body(body, streamed=True) is None


GROQ_STREAM = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], x_groq={"id": "req_1"}),
    chunk([{"index": 0, "delta": {"reasoning": "Think "}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"reasoning": "more."}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"content": "Answer."}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}],
          x_groq={"id": "req_1", "usage": {"queue_time": 0.01, "prompt_tokens": 9, "completion_tokens": 4}}),
]


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_deltas_and_groq_extras_are_kept_and_replayed(field):
    stream = json.loads(json.dumps(GROQ_STREAM).replace('"reasoning"', json.dumps(field)))
    reply = OPENAI.reply_from_body(sse_body(stream), streamed=True)
    assert reply["choices"][0]["message"][field] == "Think more."
    assert reply["choices"][0]["message"]["content"] == "Answer."
    assert reply["x_groq"]["usage"]["completion_tokens"] == 4
    streamed = OPENAI.parse_request(request("/openai/v1/chat/completions", {**BODY, "stream": True}))
    again = OPENAI.reply_from_body(OPENAI.render(reply, streamed).body, streamed=True)
    assert again["choices"][0]["message"][field] == "Think more."
    assert again["x_groq"] == reply["x_groq"]
    plain = json.loads(OPENAI.render(reply, OPENAI.parse_request(request("/v1/chat/completions"))).body)
    assert plain["choices"][0]["message"][field] == "Think more." and plain["x_groq"] == reply["x_groq"]


@pytest.mark.parametrize("extra", [
    {"top_k": 20},  # vLLM sampling
    {"chat_template_kwargs": {"enable_thinking": False}},  # vLLM / Qwen
    {"guided_json": {"type": "object"}},  # vLLM structured output
    {"provider": {"order": ["groq"]}},  # OpenRouter routing
    {"reasoning": {"effort": "high"}},  # OpenRouter reasoning
    {"models": ["a/b", "c/d"]},  # OpenRouter fallbacks
    {"options": {"num_ctx": 8192}},  # Ollama /v1
])
def test_extra_request_fields_of_compatible_servers_are_in_the_key(extra):
    base = request("/api/v1/chat/completions")
    assert key(OPENAI, request("/api/v1/chat/completions", {**BODY, **extra})) != key(OPENAI, base)


def test_fields_that_never_change_the_answer_stay_out_of_the_key():
    base = request("/v1/chat/completions")
    quiet = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "user": "u1", "metadata": {"a": "b"}}
    assert key(OPENAI, request("/v1/chat/completions", quiet)) == key(OPENAI, base)


def test_inline_images_audio_and_files_are_keyed_by_hash_not_kept():
    png = base64.b64encode(b"\x89PNG" + bytes(range(256))).decode()
    other = base64.b64encode(b"\x89PNG" + bytes(range(255))).decode()

    def body(data: str) -> dict:
        return {"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{data}", "filename": "a.pdf"}}]}]}
    q = {"api-version": "2024-10-21"}
    parsed = AZURE.parse_request(request(DEPLOYMENT_PATH, body(png), q))
    assert png not in json.dumps(parsed.conversation.messages)
    image = parsed.conversation.messages[0]["content"][1]["image_url"]
    assert image["media_type"] == "image/png" and image["detail"] == "low" and len(image["sha256"]) == 64
    assert key(AZURE, request(DEPLOYMENT_PATH, body(other), q)) != key(AZURE, request(DEPLOYMENT_PATH, body(png), q))
    by_url = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}
    assert OPENAI.parse_request(request("/v1/chat/completions", by_url)).conversation.messages[0]["content"][0] == \
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
