"""A request met before, byte for byte, is answered from the hit memo only while the tree is unchanged.

addon/hit_memo.py: the memo skips parsing and walking; it must never serve
what a fresh lookup would not.
"""
from __future__ import annotations

import json
import subprocess
import sys

from mitmproxy import http

from butter.addon import credentials, formats
from butter.addon.hit_memo import VOLATILE_HEADERS, HitMemo, freeze
from tests.e2e.harness import ROOT
from tests.unit.test_addon import KEY, REPLY, llm_flow, send


async def recorded_then_served(addon) -> http.HTTPFlow:
    await send(addon, llm_flow())
    return await send(addon, llm_flow(), reply=None)


async def test_the_same_bytes_again_are_served_without_a_lookup_and_with_the_same_reply(butter, mocker):
    addon, _ = butter
    first = await recorded_then_served(addon)
    assert first.response.headers["butter-cache"] == "hit" and len(addon.memo) == 1
    spy = mocker.spy(addon.cache, "lookup")
    again = [await send(addon, llm_flow(), reply=None) for _ in range(3)]
    assert spy.call_count == 0
    bodies = [json.loads(f.response.content) for f in [first, *again]]
    assert all(b["choices"] == bodies[0]["choices"] and b["model"] == bodies[0]["model"] for b in bodies)
    assert all(f.response.headers["butter-node"] == first.response.headers["butter-node"] for f in again)


async def test_another_key_or_another_body_is_looked_up_afresh(butter, mocker):
    addon, _ = butter
    await recorded_then_served(addon)
    spy = mocker.spy(addon.cache, "lookup")
    other_key = await send(addon, llm_flow(key="sk-another-tenant-987654321"), reply=REPLY)
    assert spy.call_count == 1 and other_key.response.headers["butter-cache"] == "miss"  # another namespace
    other_body = await send(addon, llm_flow({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hey"}]}),
                            reply=REPLY)
    assert spy.call_count == 2 and other_body.response.headers["butter-cache"] == "miss"


async def test_hit_counts_and_the_recent_requests_ring_keep_remembered_hits(butter, mocker):
    addon, _ = butter
    await recorded_then_served(addon)
    addon._flush_hits(force=True)  # the writer folds hit counts into the tree's stats
    addon._flush_recent()  # and the web view's ring of recent requests
    addon._drain_future().result()
    spy = mocker.spy(addon.cache, "lookup")
    flow = await send(addon, llm_flow(), reply=None)
    assert spy.call_count == 0 and flow.response.headers["butter-cache"] == "hit"


async def test_a_node_forgotten_by_the_cli_in_another_process_is_no_longer_served(butter, mocker):
    addon, _ = butter
    served = await recorded_then_served(addon)
    node = served.response.headers["butter-node"]
    done = subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", addon.cache.backend.path, "forget", node],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    spy = mocker.spy(addon.cache, "lookup")
    after = await send(addon, llm_flow(), reply=REPLY)
    assert spy.call_count >= 1 and after.response.headers["butter-cache"] == "miss"


async def test_a_reply_recorded_at_the_node_forgets_the_remembered_hit(butter, mocker):
    addon, _ = butter
    await recorded_then_served(addon)
    # record mode refreshes the node with another reply: a write lookups read
    record = llm_flow()
    record.request.headers["butter-mode"] = "record"
    other = {**REPLY, "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello again"},
                                   "finish_reason": "stop"}]}
    await send(addon, record, reply=other)
    spy = mocker.spy(addon.cache, "lookup")
    flow = await send(addon, llm_flow(), reply=None)
    assert spy.call_count == 1
    assert flow.response.headers["butter-cache"] == "hit"


async def test_changing_an_option_forgets_every_remembered_hit(butter):
    addon, tctx = butter
    await recorded_then_served(addon)
    assert len(addon.memo) == 1
    tctx.configure(addon, butter_min_observations=2)
    assert len(addon.memo) == 0
    flow = await send(addon, llm_flow(), reply=REPLY)  # one observation no longer serves
    assert flow.response.headers["butter-cache"] == "miss"


async def test_a_request_with_butter_headers_never_uses_the_memo(butter, mocker):
    addon, _ = butter
    await recorded_then_served(addon)
    spy = mocker.spy(addon.cache, "lookup")
    flow = llm_flow()
    flow.request.headers["butter-namespace"] = "team-a"
    await send(addon, flow, reply=REPLY)
    assert spy.call_count == 1 and flow.response.headers["butter-cache"] == "miss"


def test_the_headers_left_out_of_the_key_are_read_by_no_wire_format_nor_credential_check():
    semantic = set()
    for fmt in formats.FORMATS:
        semantic |= set(getattr(sys.modules[type(fmt).__module__], "SEMANTIC_HEADERS", ()))
    assert {"anthropic-version", "openai-beta"} <= semantic
    for name in VOLATILE_HEADERS:
        text = name.decode()
        assert not credentials.is_secret_header(text) and text not in semantic, text


def test_the_key_differs_in_every_part_a_lookup_depends_on_and_not_in_a_retry_counter():
    def key(**change) -> bytes:
        flow = llm_flow(key=change.pop("key", KEY))
        for name, value in change.items():
            flow.request.headers[name.replace("_", "-")] = value
        return HitMemo.key("openai-chat", flow.request, flow.request.raw_content)

    base = key()
    assert key(x_stainless_retry_count="2") == base and key(traceparent="00-abc-def-01") == base
    assert key(key="sk-other") != base
    assert key(openai_beta="assistants=v2") != base
    assert key(x_custom="1") != base  # a header nobody listed: kept, missing is the safe side
    flow = llm_flow()
    assert HitMemo.key("anthropic", flow.request, flow.request.raw_content) != base
    flow.request.path = "/v1/chat/completions?api-version=2024-10-21"
    assert HitMemo.key("openai-chat", flow.request, flow.request.raw_content) != base
    assert HitMemo.key("openai-chat", llm_flow().request, b'{"model": "other"}') != base


def test_the_memo_keeps_within_its_entry_and_byte_bounds():
    memo = HitMemo(max_entries=3, max_total_bytes=10_000)
    from butter.store.model import Hit
    for i in range(6):
        memo.put(bytes([i]) * 32, 1, None, "ns", 1000, freeze(Hit(b"n" * 16, {"text": "x"}, b"r" * 16)))
    assert len(memo) == 3 and memo.get(bytes([5]) * 32, 1, lambda a, b: False) is not None
    assert memo.get(bytes([0]) * 32, 1, lambda a, b: False) is None  # oldest out first
    assert memo.get(bytes([5]) * 32, 2, lambda a, b: False) is None  # a write since: forgotten
    assert len(memo) == 2


def test_a_remembered_reply_is_the_one_taken_before_serving_and_each_use_gets_its_own_copy():
    from butter.store.model import Hit
    memo = HitMemo()
    hit = Hit(b"n" * 16, {"content": "hello", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}, b"r" * 16)
    frozen = freeze(hit)
    hit.reply["content"] = "changed by a renderer"  # after freezing: not what is remembered
    memo.put(b"k" * 32, 1, None, "ns", 10, frozen)
    first = memo.get(b"k" * 32, 1, lambda a, b: False).fresh_hit()
    assert first.reply["content"] == "hello"
    first.reply["tool_calls"][0]["arguments"]["a"] = 2
    assert memo.get(b"k" * 32, 1, lambda a, b: False).fresh_hit().reply["tool_calls"][0]["arguments"]["a"] == 1
