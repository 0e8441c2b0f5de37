"""OpenAI Chat Completions through a real mitmdump with butter, the real
openai SDK as the client, and a fake provider over TLS on loopback."""
from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_chat import run_agent


def client(api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_second_run_is_served_from_the_tree_with_zero_provider_calls(shared_proxy, through, provider, api_key, stream):
    through(shared_proxy)
    first = run_agent(client(api_key), "1234", stream=stream)
    assert first["answer"] == "Refunded 42.5 for order 1234 (Ana Ruiz)."
    assert first["calls"] == [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]
    recorded_calls = len(provider.calls)
    assert recorded_calls == 3

    second = run_agent(client(api_key), "1234", stream=stream)
    assert len(provider.calls) == recorded_calls, "the second run reached the provider"
    assert second["answer"] == first["answer"]
    assert second["calls"] == first["calls"]
