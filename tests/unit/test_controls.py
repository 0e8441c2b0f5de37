"""Per-request control headers: butter-mode and butter-namespace.

The header parser on its own, then through the addon with mitmproxy's
taddons/tflow: each header's effect, its removal before upstream, and the
400 an invalid value gets instead of a silent default.
"""
from __future__ import annotations

import json

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from butter.addon import controls
from tests.unit.exchange import send

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def reply(text: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def flow(headers: dict[str, str] | None = None, key: str = "sk-unit-a", path: str = "/v1/chat/completions",
         body: dict = BODY) -> http.HTTPFlow:
    h = http.Headers(authorization=f"Bearer {key}", content_type="application/json")
    for name, value in (headers or {}).items():
        h.add(name, value)
    request = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https", path=path.encode(),
                          content=json.dumps(body).encode(), headers=h)
    return tflow.tflow(req=request)


def content(f: http.HTTPFlow) -> str:
    return json.loads(f.response.content)["choices"][0]["message"]["content"]


# -- the parser -------------------------------------------------------------------

def test_take_returns_the_values_and_removes_the_headers_whatever_their_case():
    headers = http.Headers(**{"Butter-Mode": "Replay", "BUTTER-NAMESPACE": "team-a", "x-other": "1"})
    assert controls.take(headers) == controls.Controls("replay", "team-a")
    assert list(headers.keys()) == ["x-other"]


def test_take_without_control_headers_changes_nothing():
    headers = http.Headers(authorization="Bearer k")
    assert controls.take(headers) == controls.Controls()
    assert dict(headers) == {"authorization": "Bearer k"}


@pytest.mark.parametrize("name,value,words", [
    ("butter-mode", "replya", "not a mode"),
    ("butter-mode", "", "empty"),
    ("butter-namespace", "team a", "not a namespace name"),
    ("butter-namespace", "ns:team", "not a namespace name"),
    ("butter-namespace", "x" * 65, "not a namespace name"),
])
def test_an_invalid_value_is_an_error_and_the_header_is_still_removed(name, value, words):
    headers = http.Headers(**{name: value})
    with pytest.raises(controls.ControlError, match=words):
        controls.take(headers)
    assert name not in headers


def test_a_header_repeated_with_different_values_is_an_error_but_repeated_alike_is_fine():
    conflicting = http.Headers([(b"butter-mode", b"replay"), (b"butter-mode", b"record")])
    with pytest.raises(controls.ControlError, match="more than once"):
        controls.take(conflicting)
    assert "butter-mode" not in conflicting
    alike = http.Headers([(b"butter-mode", b"off"), (b"butter-mode", b"off")])
    assert controls.take(alike).mode == "off"


# -- through the addon ------------------------------------------------------------

async def test_butter_mode_replay_on_a_miss_answers_an_error_and_never_forwards(butter):
    addon, _ = butter
    f = await send(addon, flow({"butter-mode": "replay"}))
    assert f.response.status_code == 404
    assert json.loads(f.response.content)["error"]["code"] == "butter_replay_miss"
    assert "butter-mode" not in f.request.headers


async def test_butter_mode_off_forwards_and_records_nothing(butter):
    addon, _ = butter
    off = await send(addon, flow({"butter-mode": "off"}), answer=reply("hello"))
    assert off.response.headers["butter-cache"] == "bypass (mode off)"
    assert "butter-mode" not in off.request.headers
    assert "accept-encoding" not in off.request.headers, "off mode must not touch the request"
    again = await send(addon, flow(), answer=reply("hello"))
    assert again.response.headers["butter-cache"] == "miss", "a butter-mode off exchange was recorded"


async def test_butter_mode_off_on_a_recorded_request_still_forwards(butter):
    addon, _ = butter
    await send(addon, flow(), answer=reply("recorded"))
    f = await send(addon, flow({"butter-mode": "off"}), answer=reply("live"))
    assert content(f) == "live" and f.response.headers["butter-cache"] == "bypass (mode off)"


async def test_butter_mode_record_refreshes_a_recorded_reply(butter):
    addon, _ = butter
    await send(addon, flow(), answer=reply("old"))
    f = await send(addon, flow({"butter-mode": "record"}), answer=reply("new"))
    assert f.response.headers["butter-cache"] == "record"
    assert content(await send(addon, flow())) == "new"


async def test_butter_mode_auto_overrides_a_replay_proxy_for_one_request(butter):
    addon, tctx = butter
    tctx.configure(addon, butter_mode="replay")
    f = await send(addon, flow({"butter-mode": "auto"}), answer=reply("hello"))
    assert f.response.headers["butter-cache"] == "miss"
    assert content(await send(addon, flow())) == "hello", "the proxy's replay mode serves what auto recorded"


async def test_butter_namespace_is_shared_by_credentials_and_isolated_from_the_rest(butter):
    addon, _ = butter
    await send(addon, flow({"butter-namespace": "team-a"}, key="sk-unit-a"), answer=reply("team"))
    other_key = await send(addon, flow({"butter-namespace": "team-a"}, key="sk-unit-b"))
    assert other_key.response.headers["butter-cache"] == "hit" and content(other_key) == "team"
    assert "butter-namespace" not in other_key.request.headers
    own = await send(addon, flow(key="sk-unit-a"), answer=reply("own"))
    assert own.response.headers["butter-cache"] == "miss", "the key's own namespace saw the team's recording"
    other_team = await send(addon, flow({"butter-namespace": "team-b"}, key="sk-unit-a"), answer=reply("b"))
    assert other_team.response.headers["butter-cache"] == "miss"


async def test_butter_namespace_header_overrides_the_proxy_option(butter):
    addon, tctx = butter
    tctx.configure(addon, butter_namespace="shared")
    await send(addon, flow(), answer=reply("shared"))
    f = await send(addon, flow({"butter-namespace": "private"}), answer=reply("private"))
    assert f.response.headers["butter-cache"] == "miss"


@pytest.mark.parametrize("headers", [{"butter-mode": "sometimes"}, {"butter-namespace": "a/b"}])
async def test_an_invalid_control_header_is_a_400_in_the_providers_shape_and_not_forwarded(butter, headers):
    addon, _ = butter
    f = await send(addon, flow(headers))
    assert f.response.status_code == 400
    error = json.loads(f.response.content)["error"]
    assert error["code"] == "butter_invalid_header" and list(headers)[0] in error["message"]
    assert f.response.headers["butter-cache"] == "refused"
    assert not any(name in f.request.headers for name in controls.CONTROL_HEADERS)
    assert not addon.flows, "a refused flow left state behind"


async def test_control_headers_are_removed_from_traffic_butter_does_not_cache(butter):
    addon, _ = butter
    f = await send(addon, flow({"butter-mode": "replay", "butter-namespace": "t"}, path="/v1/embeddings"),
                   answer={"data": []})
    assert not any(name in f.request.headers for name in controls.CONTROL_HEADERS)
    refused = await send(addon, flow({"butter-mode": "nope"}, path="/v1/embeddings"))
    assert refused.response.status_code == 400
    assert json.loads(refused.response.content)["error"]["code"] == "butter_invalid_header"
