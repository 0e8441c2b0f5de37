"""Two recordings of one answer are one reply, whatever their bookkeeping says.

A real provider answering the same request the same way twice still differs
in `usage`, `system_fingerprint` or Ollama's durations; with
`butter_min_observations=2` those answers must agree, or nothing recorded
from a real provider would ever be served.
"""
from __future__ import annotations

import json

import pytest

from butter.addon.formats.openai_chat import FORMAT
from butter.store import Cache, Conversation, Hit, Miss, ServePolicy
from butter.store.agreement import answer_id, same_answer

CONTEXT = {"api": "openai-chat", "model": "m", "params": {}}
ASK = Conversation(CONTEXT, ({"role": "user", "content": "Refund order 1234."},))


def chat_reply(content: str | None, fingerprint: str, tokens: int, arguments: str | None = None) -> dict:
    """A canonical OpenAI Chat reply, as the real adapter reads it from a provider's body."""
    message: dict = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if arguments is not None:
        message["tool_calls"] = [{"id": "call_x", "type": "function",
                                  "function": {"name": "refund", "arguments": arguments}}]
    body = {"id": f"chatcmpl-{fingerprint}", "object": "chat.completion", "created": tokens, "model": "m-1",
            "system_fingerprint": fingerprint, "service_tier": "default",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": tokens, "completion_tokens": 3, "total_tokens": tokens + 3}}
    return FORMAT.reply_from_body(json.dumps(body).encode(), False)


@pytest.fixture
def strict(tmp_path):
    cache = Cache(tmp_path / "db", ServePolicy(min_observations=2))
    yield cache
    cache.close()


def test_the_same_answer_with_other_bookkeeping_is_one_reply_observed_twice(strict):
    strict.record("ns", ASK, chat_reply("Done.", "fp_a", 50))
    assert isinstance(strict.lookup("ns", ASK), Miss)
    strict.record("ns", ASK, chat_reply("Done.", "fp_b", 51))
    hit = strict.lookup("ns", ASK)
    assert isinstance(hit, Hit)
    [stored] = strict.backend.replies(hit.node_id)
    assert stored.count == 2


def test_different_answers_never_agree(strict):
    strict.record("ns", ASK, chat_reply("Done.", "fp_a", 50))
    strict.record("ns", ASK, chat_reply("Refused.", "fp_a", 50))
    assert isinstance(strict.lookup("ns", ASK), Miss)
    assert sorted(r.count for r in strict.backend.replies(strict.lookup("ns", ASK).deepest)) == [1, 1]


def test_tool_call_arguments_agree_as_json_not_as_bytes():
    compact = chat_reply(None, "fp_a", 50, '{"order_id":"1234","amount":42.5}')
    spaced = chat_reply(None, "fp_b", 52, '{"order_id": "1234", "amount": 42.5}')
    other = chat_reply(None, "fp_a", 50, '{"order_id": "1234", "amount": 40}')
    assert same_answer(compact, spaced) and answer_id(compact) == answer_id(spaced)
    assert not same_answer(compact, other) and answer_id(compact) != answer_id(other)


def test_a_plain_and_a_streamed_recording_of_one_answer_agree():
    plain = chat_reply("Done.", "fp_a", 50)
    streamed = {k: v for k, v in plain.items() if k != "usage"}  # usage only when a stream asks for it
    streamed["choices"] = [{**c, "message": {k: v for k, v in c["message"].items() if k != "annotations"}}
                           for c in plain["choices"]]
    assert answer_id(plain) == answer_id(streamed)


def test_a_refreshed_recording_keeps_what_the_provider_said_last(tmp_path):
    cache = Cache(tmp_path / "db")
    try:
        cache.record("ns", ASK, chat_reply("Done.", "fp_old", 50))
        cache.record("ns", ASK, chat_reply("Done.", "fp_new", 60), refresh=True)
        hit = cache.lookup("ns", ASK)
        assert isinstance(hit, Hit) and hit.reply["system_fingerprint"] == "fp_new"
    finally:
        cache.close()
