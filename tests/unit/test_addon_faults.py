"""Faults that used to stall or break the proxy, driven through the addon's hooks
(mitmproxy's taddons/tflow) on a real temporary LMDB."""
from __future__ import annotations

import asyncio
import gzip
import json
import logging
import subprocess
import sys
import threading

from mitmproxy import http

from butter.addon import exchange, limits
from tests.unit.test_addon import BODY, REPLY, llm_flow
from tests.fakes.lmdb_holder import HOLD_WRITE_LOCK


async def exchange_once(addon, flow: http.HTTPFlow, reply: dict | None = REPLY, *, stream: bool = False):
    """One exchange in mitmproxy's hook order, without waiting for the writer."""
    addon.requestheaders(flow)
    await asyncio.wait_for(addon.request(flow), timeout=10)
    if flow.response is None and reply is not None:
        content_type = "text/event-stream" if stream else "application/json"
        flow.response = http.Response.make(200, json.dumps(reply).encode(), {"content-type": content_type})
        addon.responseheaders(flow)
        addon.response(flow)
    return flow


def body_with(text: str) -> dict:
    return {**BODY, "messages": [{"role": "user", "content": text}]}


# -- 7: compressed and large request bodies ------------------------------------------

def gzipped_flow(payload: bytes) -> http.HTTPFlow:
    flow = llm_flow(gzip.compress(payload))
    flow.request.headers["content-encoding"] = "gzip"
    return flow


async def test_a_gzip_bomb_passes_through_byte_for_byte_and_is_logged_once(butter, monkeypatch, caplog):
    addon, _ = butter
    monkeypatch.setattr(limits, "MAX_BODY_BYTES", 1 << 20)
    bomb = json.dumps(body_with("a" * (8 << 20))).encode()
    flows = [gzipped_flow(bomb) for _ in range(3)]
    sent = [f.request.raw_content for f in flows]
    with caplog.at_level(logging.WARNING, logger="butter"):
        for flow in flows:
            await exchange_once(addon, flow)
    assert [f.response.headers["butter-cache"] for f in flows] == ["bypass (body too large)"] * 3
    assert [f.request.raw_content for f in flows] == sent  # nothing decoded into the request
    assert all("accept-encoding" not in f.request.headers for f in flows)
    assert len([r for r in caplog.records if "was not read" in r.getMessage()]) == 1


async def test_a_gzip_request_within_the_limit_is_served_like_a_plain_one(butter):
    addon, _ = butter
    payload = json.dumps(BODY).encode()
    await exchange_once(addon, gzipped_flow(payload))
    addon._drain_future().result(timeout=10)
    served = await exchange_once(addon, llm_flow(BODY), reply=None)
    assert served.response.headers["butter-cache"] == "hit"


async def test_a_large_body_is_parsed_and_looked_up_off_the_event_loop(butter, monkeypatch):
    addon, _ = butter
    threads = []
    parse = exchange.read_request

    def spy(*args):
        threads.append(threading.current_thread())
        return parse(*args)

    monkeypatch.setattr(exchange, "read_request", spy)
    big = await exchange_once(addon, llm_flow(body_with("b" * (limits.LARGE_BODY_BYTES + 1))))
    small = await exchange_once(addon, llm_flow(body_with("small")))
    assert big.response.headers["butter-cache"] == small.response.headers["butter-cache"] == "miss"
    assert threads[0] is not threading.main_thread() and threads[1] is threading.main_thread()
    # The node a large miss is recorded at was worked out on that thread too.
    addon._drain_future().result(timeout=10)
    assert big.response.headers["butter-node"] == addon.cache.lookup(_namespace_of(addon),
                                                                      _conversation_of(big)).node_id.hex()


def _namespace_of(addon) -> str:
    from tests.unit.test_addon import KEY
    return addon.cache.namespace(KEY)


def _conversation_of(flow: http.HTTPFlow):
    from butter.addon import formats
    fmt = formats.recognise("POST", "/v1/chat/completions")
    return exchange.read_request(fmt, flow.request)[1].conversation


# -- 8: a miss never waits on a write it does not need ---------------------------------

async def test_misses_are_forwarded_promptly_while_another_process_holds_the_write_lock(butter):
    addon, _ = butter
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, addon.cache.backend.path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        first = await exchange_once(addon, llm_flow(body_with("first")))  # its write now waits for the lock
        later = [await exchange_once(addon, llm_flow(body_with(f"question {i}"))) for i in range(6)]
        assert first.response.headers["butter-cache"] == "miss"
        assert [f.response.headers["butter-cache"] for f in later] == ["miss"] * 6
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=10)
    addon._drain_future().result(timeout=10)  # the lock is free: every recording lands
    again = [await exchange_once(addon, llm_flow(body_with(t)), reply=None)
             for t in ["first"] + [f"question {i}" for i in range(6)]]
    assert [f.response.headers["butter-cache"] for f in again] == ["hit"] * 7


# -- 12: a lone surrogate ---------------------------------------------------------------

SURROGATE_BODY = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"private words \\ud800 here"}]}'


async def test_a_lone_surrogate_passes_through_streamed_and_is_logged_once_without_its_text(butter, caplog):
    addon, _ = butter
    with caplog.at_level(logging.DEBUG, logger="butter"):
        flows = [await exchange_once(addon, llm_flow(SURROGATE_BODY), stream=True) for _ in range(3)]
    assert [f.response.headers["butter-cache"] for f in flows] == ["bypass (not understood)"] * 3
    assert all(f.response.stream is True for f in flows)  # chunk by chunk, never buffered whole
    assert all(f.request.raw_content == SURROGATE_BODY for f in flows)
    assert "private words" not in caplog.text
    assert len([r for r in caplog.records if "surrogate" in r.getMessage()]) == 1


# -- 15: log once by kind ---------------------------------------------------------------

async def test_many_differently_broken_bodies_give_one_warning(butter, caplog):
    addon, _ = butter
    with caplog.at_level(logging.WARNING, logger="butter"):
        for i in range(300):
            await exchange_once(addon, llm_flow(b'{"model": "m", "messages": [' + b"1" * i), reply=None)
    assert len([r for r in caplog.records if "not understood" in r.getMessage()]) == 1
    assert len(addon._once) <= 256


# -- 17: butter_durable ------------------------------------------------------------------

async def test_with_butter_durable_a_reply_is_released_only_once_it_is_recorded(butter):
    addon, tctx = butter
    tctx.configure(addon, butter_durable=True)
    release = threading.Event()
    addon.writer.submit(release.wait, 30)  # the writer is busy: the recording waits behind this
    flow = llm_flow()
    addon.requestheaders(flow)
    await addon.request(flow)
    flow.response = http.Response.make(200, json.dumps(REPLY).encode(), {"content-type": "application/json"})
    addon.responseheaders(flow)
    waiting = addon.response(flow)
    assert waiting is not None
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0.2)
    assert not task.done()  # the client would still be waiting
    release.set()
    await asyncio.wait_for(task, 10)
    assert not addon.pending or all(f.done() for f in addon.pending)
    served = await exchange_once(addon, llm_flow(), reply=None)
    assert served.response.headers["butter-cache"] == "hit"


async def test_without_butter_durable_the_reply_is_not_held_for_its_recording(butter):
    addon, _ = butter
    flow = llm_flow()
    addon.requestheaders(flow)
    await addon.request(flow)
    flow.response = http.Response.make(200, json.dumps(REPLY).encode(), {"content-type": "application/json"})
    addon.responseheaders(flow)
    assert addon.response(flow) is None


async def test_a_body_over_the_learning_limit_is_recorded_and_served_but_not_learned_from(butter, monkeypatch):
    addon, _ = butter
    monkeypatch.setattr(limits, "LEARN_BODY_BYTES", 1000)
    jobs = []
    monkeypatch.setattr(addon.inducer, "submit", lambda *a, **k: jobs.append(a))
    await exchange_once(addon, llm_flow(body_with("c" * 2000)))
    await exchange_once(addon, llm_flow(body_with("short")))
    addon._drain_future().result(timeout=10)
    assert len(jobs) == 1  # only the short one
    served = await exchange_once(addon, llm_flow(body_with("c" * 2000)), reply=None)
    assert served.response.headers["butter-cache"] == "hit"
