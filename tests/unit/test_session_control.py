"""addon/session_control.py with butter in mitmproxy's test context: the per-test switch the
pytest plugin drives, its token, and what it counts."""
from __future__ import annotations

import json

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from butter.addon.cache_addon import Butter
from butter.addon.session_control import HOST, TOKEN_HEADER, SessionControl

TOKEN = "t0ken"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}


@pytest.fixture
def proxy(tmp_path):
    butter, control = Butter(), SessionControl()
    with taddons.context(butter, control) as tctx:
        tctx.configure(butter, butter_db=str(tmp_path / "idle"))
        tctx.configure(control, butter_control_token=TOKEN)
        yield butter, control, tctx
    butter.done()


def control_flow(method: str, path: str, body: dict | None = None, token: str | None = TOKEN) -> http.HTTPFlow:
    headers = http.Headers(content_type="application/json")
    if token is not None:
        headers[TOKEN_HEADER] = token
    request = tutils.treq(method=method.encode(), host=HOST, port=80, scheme=b"http", path=path.encode(),
                          content=json.dumps(body).encode() if body is not None else b"", headers=headers)
    return tflow.tflow(req=request)


async def ask(control: SessionControl, method: str, path: str, body: dict | None = None, **kw) -> http.HTTPFlow:
    f = control_flow(method, path, body, **kw)
    await control.request(f)
    return f


def llm_flow(key: str = "sk-unit-secret") -> http.HTTPFlow:
    headers = http.Headers(authorization=f"Bearer {key}", content_type="application/json")
    request = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https",
                          path=b"/v1/chat/completions?key=x", content=json.dumps(BODY).encode(), headers=headers)
    return tflow.tflow(req=request)


async def through(butter: Butter, control: SessionControl, answer: dict | None = None) -> http.HTTPFlow:
    """One LLM exchange, both addons' hooks in mitmproxy's order (butter first)."""
    f = llm_flow()
    butter.requestheaders(f)
    control.requestheaders(f)
    await butter.request(f)
    if f.response is None:
        f.response = http.Response.make(200, json.dumps(answer).encode(), {"content-type": "application/json"})
        butter.responseheaders(f)
    butter.response(f)
    control.response(f)
    return f


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_a_control_request_without_the_sessions_token_is_refused_and_changes_nothing(proxy, tmp_path, token):
    butter, control, _ = proxy
    f = await ask(control, "POST", "/begin", {"db": str(tmp_path / "other"), "mode": "replay"}, token=token)
    assert f.response.status_code == 403
    assert butter.cache.backend.path.endswith("idle")


async def test_begin_switches_butter_to_the_tests_database_mode_and_namespace(proxy, tmp_path):
    butter, control, tctx = proxy
    f = await ask(control, "POST", "/begin", {"db": str(tmp_path / "t1"), "mode": "replay", "namespace": "mod/t1"})
    assert f.response.status_code == 200
    assert json.loads(f.response.content) == {"db": str(tmp_path / "t1"), "mode": "replay", "namespace": "mod/t1"}
    assert (tctx.options.butter_mode, tctx.options.butter_namespace) == ("replay", "mod/t1")
    assert butter.cache.backend.path == str(tmp_path / "t1")


async def test_end_reports_the_tests_responses_after_its_recordings_are_written(proxy, tmp_path):
    butter, control, _ = proxy
    await ask(control, "POST", "/begin", {"db": str(tmp_path / "t1"), "mode": "auto", "namespace": "t1"})
    await through(butter, control, ANSWER)
    await through(butter, control)  # served from what the first one recorded
    ended = json.loads((await ask(control, "POST", "/end")).response.content)
    assert ended["counts"] == {"miss": 1, "hit": 1} and ended["drained"] is True
    assert [n.kind for n in butter.cache.backend.iter_nodes()].count("root") == 1
    await ask(control, "POST", "/begin", {"db": str(tmp_path / "t2")})
    assert json.loads((await ask(control, "GET", "/report")).response.content)["counts"] == {}


async def test_a_replay_miss_is_kept_with_its_path_and_body_but_no_header_or_query(proxy, tmp_path):
    butter, control, _ = proxy
    await ask(control, "POST", "/begin", {"db": str(tmp_path / "t1"), "mode": "replay", "namespace": "t1"})
    await through(butter, control)
    report = json.loads((await ask(control, "GET", "/report")).response.content)
    assert report["counts"] == {"replay-miss": 1}
    [miss] = report["replay_misses"]
    assert (miss["method"], miss["host"], miss["path"]) == ("POST", "api.openai.com", "/v1/chat/completions")
    assert json.loads(miss["body"]) == BODY
    assert "never recorded" in miss["message"]
    assert "sk-unit-secret" not in json.dumps(report)


async def test_an_unknown_control_path_is_a_404_and_other_hosts_are_left_alone(proxy):
    _, control, _ = proxy
    assert (await ask(control, "GET", "/nope")).response.status_code == 404
    f = llm_flow()
    await control.request(f)
    assert f.response is None

