"""The addon shell, driven with mitmproxy's own taddons/tflow fakes."""
from __future__ import annotations

import json
import logging

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from butter.addon.cache_addon import Butter

KEY = "sk-unit-secret-0123456789"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
REPLY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}


def llm_flow(body: dict | bytes = BODY, path: str = "/v1/chat/completions", key: str = KEY) -> http.HTTPFlow:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https", path=path.encode(),
                          content=raw, headers=http.Headers(authorization=f"Bearer {key}", content_type="application/json"))
    return tflow.tflow(req=request)


async def send(addon: Butter, flow: http.HTTPFlow, reply: dict | None = REPLY, status: int = 200) -> http.HTTPFlow:
    """One exchange: hooks in mitmproxy's order, the provider answering if asked."""
    addon.requestheaders(flow)
    await addon.request(flow)
    if flow.response is None and reply is not None:
        flow.response = http.Response.make(status, json.dumps(reply).encode(), {"content-type": "application/json"})
        addon.responseheaders(flow)
        addon.response(flow)
        addon._drain_future().result()
    return flow


async def test_a_miss_is_forwarded_uncompressed_and_recorded_then_served(butter):
    addon, _ = butter
    first = await send(addon, llm_flow())
    assert first.request.headers["accept-encoding"] == "identity"
    assert first.response.headers["butter-cache"] == "miss"
    second = await send(addon, llm_flow(), reply=None)
    assert second.response is not None and second.is_replay == "response"
    assert second.response.headers["butter-cache"] == "hit"
    assert json.loads(second.response.content)["choices"][0]["message"]["content"] == "hello"


async def test_replay_mode_answers_a_miss_with_an_error_and_never_forwards(butter):
    addon, tctx = butter
    tctx.configure(addon, butter_mode="replay")
    flow = await send(addon, llm_flow(), reply=None)
    assert flow.response.status_code == 404
    assert flow.response.headers["x-should-retry"] == "false"
    assert json.loads(flow.response.content)["error"]["code"] == "butter_replay_miss"


async def test_record_mode_forwards_even_what_it_could_serve(butter):
    addon, tctx = butter
    await send(addon, llm_flow())
    tctx.configure(addon, butter_mode="record")
    flow = await send(addon, llm_flow(), reply={**REPLY, "choices": [{**REPLY["choices"][0], "message": {"role": "assistant", "content": "fresh"}}]})
    assert flow.response.headers["butter-cache"] == "record"
    tctx.configure(addon, butter_mode="auto")
    served = await send(addon, llm_flow(), reply=None)
    assert json.loads(served.response.content)["choices"][0]["message"]["content"] == "fresh"


async def test_off_mode_is_pure_passthrough_and_says_so(butter):
    addon, tctx = butter
    await send(addon, llm_flow())
    tctx.configure(addon, butter_mode="off")
    flow = await send(addon, llm_flow())
    assert flow.response.headers["butter-cache"] == "bypass (mode off)"
    assert "accept-encoding" not in flow.request.headers


async def test_a_non_2xx_reply_is_not_recorded(butter):
    addon, tctx = butter
    await send(addon, llm_flow(), reply={"error": {"message": "boom"}}, status=500)
    tctx.configure(addon, butter_mode="replay")
    flow = await send(addon, llm_flow(), reply=None)
    assert flow.response.status_code == 404


async def test_an_unparseable_request_passes_through_and_is_logged_once(butter, caplog):
    addon, _ = butter
    caplog.set_level(logging.INFO, logger="butter")
    flows = [await send(addon, llm_flow(b"{not json"), reply={"ok": True}) for _ in range(2)]
    assert all(f.response.headers["butter-cache"] == "bypass (not understood)" for f in flows)
    assert all(f.request.content == b"{not json" for f in flows)
    assert len([r for r in caplog.records if "not understood" in r.getMessage()]) == 1


async def test_other_traffic_is_untouched(butter):
    addon, _ = butter
    flow = await send(addon, llm_flow(path="/v1/embeddings"), reply={"data": []})
    assert "butter-cache" not in flow.response.headers
    assert "accept-encoding" not in flow.request.headers


async def test_credentials_never_reach_the_log(butter, caplog):
    addon, _ = butter
    caplog.set_level(logging.DEBUG)
    await send(addon, llm_flow())
    await send(addon, llm_flow(), reply=None)
    await send(addon, llm_flow(b"{bad"), reply={"ok": True})
    assert caplog.records and KEY not in caplog.text and KEY[3:] not in caplog.text


async def test_an_internal_error_passes_the_request_through(butter, mocker):
    addon, _ = butter
    mocker.patch.object(addon.cache, "lookup", side_effect=RuntimeError("disk on fire"))
    flow = await send(addon, llm_flow())
    assert flow.response.status_code == 200 and flow.response.headers["butter-cache"] == "bypass (internal error)"


def test_butter_makes_mitmproxy_connect_upstream_lazily(tmp_path):
    addon = Butter()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, butter_db=str(tmp_path / "db"))
        assert tctx.options.connection_strategy == "lazy"
    addon.done()


def test_min_observations_below_one_is_refused(tmp_path):
    addon = Butter()
    with taddons.context(addon) as tctx:
        with pytest.raises(Exception, match="at least 1"):
            tctx.configure(addon, butter_db=str(tmp_path / "db"), butter_min_observations=0)
    addon.done()


async def test_a_gemini_key_in_the_url_moves_to_its_header_so_no_log_prints_it(butter):
    addon, _ = butter
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    request = tutils.treq(method=b"POST", host="generativelanguage.googleapis.com", port=443, scheme=b"https",
                          path=b"/v1beta/models/gemini-2.5-flash:generateContent?key=AIzaSecret123",
                          content=body, headers=http.Headers(content_type="application/json"))
    flow = tflow.tflow(req=request)
    addon.requestheaders(flow)
    await addon.request(flow)
    assert "AIzaSecret123" not in flow.request.pretty_url
    assert flow.request.headers["x-goog-api-key"] == "AIzaSecret123"
