"""Tenant isolation through the addon: the upstream server, every credential a
request carries (headers butter has no list for, query parameters) and where
secrets may never end up (the tree, exports, `butter show`, the log)."""
from __future__ import annotations

import json
import logging

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from butter.addon import credentials, exchange
from butter.addon.cache_addon import Butter
from butter.cli.main import main

from .exchange import send

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
REPLY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "recorded"}, "finish_reason": "stop"}]}
ANTHROPIC_BODY = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_REPLY = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                   "content": [{"type": "text", "text": "recorded"}], "stop_reason": "end_turn",
                   "usage": {"input_tokens": 1, "output_tokens": 1}}


def flow(host: str = "api.openai.com", port: int = 443, scheme: str = "https", headers: dict | None = None,
         path: str = "/v1/chat/completions", body: dict = BODY) -> http.HTTPFlow:
    request = tutils.treq(method=b"POST", host=host, port=port, scheme=scheme.encode(), path=path.encode(),
                          content=json.dumps(body).encode(),
                          headers=http.Headers(**{"content_type": "application/json", **(headers or {})}))
    return tflow.tflow(req=request)


async def served(addon: Butter, f: http.HTTPFlow) -> bool:
    """Send `f`; True when butter answered it from the tree."""
    await send(addon, f, REPLY if f.request.path.startswith("/v1/chat") else ANTHROPIC_REPLY)
    return f.response.headers.get("butter-cache") == "hit"


# -- 1. the upstream server is in the root ------------------------------------------

@pytest.mark.parametrize("other", [
    {"host": "evil.example"}, {"port": 8443}, {"scheme": "http", "port": 443},
    {"host": "my-resource.openai.azure.com"},
])
async def test_a_reply_recorded_from_one_server_is_never_served_for_another_without_a_key(butter, other):
    addon, _ = butter
    assert not await served(addon, flow(**other))  # recorded from the other server
    assert not await served(addon, flow())  # the same request to api.openai.com: a miss
    assert await served(addon, flow(**other)) and await served(addon, flow())  # each server has its own


async def test_a_shared_namespace_does_not_share_replies_between_servers(butter):
    addon, tctx = butter
    tctx.configure(addon, butter_namespace="team")
    await served(addon, flow(host="attacker.example", headers={"authorization": "Bearer sk-a"}))
    assert not await served(addon, flow(headers={"authorization": "Bearer sk-b"}))


async def test_the_same_key_on_two_servers_is_two_trees(butter):
    addon, _ = butter
    key = {"authorization": "Bearer sk-same"}
    await served(addon, flow(host="gateway.example", headers=key))
    assert not await served(addon, flow(headers=key))
    assert await served(addon, flow(host="gateway.example", headers=key))


async def test_host_names_are_case_free_and_the_port_is_always_written(butter):
    addon, _ = butter
    await served(addon, flow(host="API.OpenAI.com."))
    assert await served(addon, flow())
    assert exchange.upstream_of("HTTPS", "::1", 8443) == "https://[::1]:8443"


def test_the_root_context_names_the_server():
    request = flow(host="gateway.example", port=8443).request
    from butter.addon import formats
    _, parsed = exchange.read_request(formats.recognise("POST", "/v1/chat/completions"), request)
    assert parsed.conversation.context["upstream"] == "https://gateway.example:8443"


# -- 2. credentials in headers butter has no list for --------------------------------

GATEWAY_HEADERS = ["x-litellm-api-key", "x-portkey-api-key", "helicone-auth", "cf-aig-authorization",
                   "x-my-gateway-token", "x-tenant-auth", "x-company-api-key", "ocp-apim-subscription-key"]


@pytest.mark.parametrize("header", GATEWAY_HEADERS)
async def test_a_gateway_credential_header_namespaces_the_request(butter, header):
    addon, _ = butter
    await served(addon, flow(headers={header: "tenant-a-secret"}))
    assert not await served(addon, flow(headers={header: "tenant-b-secret"}))
    assert not await served(addon, flow())  # nor the anonymous namespace
    assert await served(addon, flow(headers={header: "tenant-a-secret"}))


async def test_a_gateway_credential_beside_the_provider_key_still_separates_tenants(butter):
    addon, _ = butter
    await served(addon, flow(headers={"authorization": "Bearer sk-shared", "helicone-auth": "Bearer a"}))
    assert not await served(addon, flow(headers={"authorization": "Bearer sk-shared", "helicone-auth": "Bearer b"}))
    assert not await served(addon, flow(headers={"authorization": "Bearer sk-shared"}))


async def test_a_session_cookie_namespaces_but_a_cdn_cookie_does_not(butter):
    addon, _ = butter
    key = {"authorization": "Bearer sk-1"}
    await served(addon, flow(headers={**key, "cookie": "session=alice"}))
    assert not await served(addon, flow(headers={**key, "cookie": "session=bob"}))
    assert await served(addon, flow(headers={**key, "cookie": "session=alice; __cf_bm=abc; _cfuvid=x"}))
    await served(addon, flow(headers=key))
    assert await served(addon, flow(headers={**key, "cookie": "__cf_bm=rotated"}))


def test_the_provider_key_alone_keeps_the_namespace_it_always_had_in_any_header():
    for headers in ({"authorization": "Bearer k"}, {"x-api-key": "k"}, {"api-key": "k"}, {"x-goog-api-key": "k"},
                    {"authorization": "Bearer k", "x-api-key": "k"}):
        assert credentials.split(headers, {})[0] == "k"
    assert credentials.split({}, {"key": "k"})[0] == "k"
    assert credentials.split({"x-litellm-api-key": "k"}, {})[0] != "k"


def test_idempotency_keys_and_ordinary_headers_are_not_credentials():
    credential, headers, _ = credentials.split({"idempotency-key": "fresh-1", "openai-beta": "assistants=v2",
                                                "anthropic-version": "2023-06-01", "user-agent": "x"}, {})
    assert credential is None and set(headers) == {"idempotency-key", "openai-beta", "anthropic-version", "user-agent"}


# -- 4. credentials in the query ------------------------------------------------------

QUERY_NAMES = ["api_key", "api-key", "apikey", "key", "access_token", "token", "sig", "signature", "auth",
               "x-amz-security-token", "client_secret"]


@pytest.mark.parametrize("name", QUERY_NAMES)
async def test_a_query_credential_namespaces_the_request_on_anthropic(butter, name):
    addon, _ = butter
    path = "/v1/messages?beta=true&{}=".format(name)
    await served(addon, flow(host="api.anthropic.com", path=path + "tenant-a-secret", body=ANTHROPIC_BODY))
    assert not await served(addon, flow(host="api.anthropic.com", path=path + "tenant-b-secret", body=ANTHROPIC_BODY))
    assert await served(addon, flow(host="api.anthropic.com", path=path + "tenant-a-secret", body=ANTHROPIC_BODY))


async def test_a_query_credential_never_reaches_the_tree_exports_show_or_the_log(butter, tmp_path, capsys, caplog):
    addon, _ = butter
    caplog.set_level(logging.DEBUG, logger="butter")
    secrets = ["query-secret-1", "header-secret-2", "cookie-secret-3"]
    f = flow(host="api.anthropic.com", path=f"/v1/messages?beta=true&api_key={secrets[0]}", body=ANTHROPIC_BODY,
             headers={"x-portkey-api-key": secrets[1], "cookie": f"sid={secrets[2]}"})
    await served(addon, f)
    assert not any(s in f.request.url for s in secrets)  # scrubbed once sent: mitmdump's flow line shows no secret
    node = f.response.headers["butter-node"]
    assert await served(addon, flow(host="api.anthropic.com", path=f"/v1/messages?beta=true&api_key={secrets[0]}",
                                    body=ANTHROPIC_BODY, headers={"x-portkey-api-key": secrets[1],
                                                                  "cookie": f"sid={secrets[2]}"}))
    db = addon.cache.backend.path
    addon.done()
    export = tmp_path / "out.jsonl"
    assert main(["--db", db, "export", "--out", str(export)]) == 0
    assert main(["--db", db, "show", node]) == 0
    assert main(["--db", db, "tree"]) == 0
    seen = capsys.readouterr().out + export.read_text() + caplog.text
    files = b"".join(p.read_bytes() for p in (tmp_path / "db").iterdir() if p.is_file())
    for secret in secrets:
        assert secret not in seen and secret.encode() not in files
    assert "beta" in seen  # the rest of the query is still in the key, and shown


def test_the_rest_of_the_query_stays_in_the_key():
    credential, _, query = credentials.split({}, {"api-version": "2024-06-01", "alt": "sse", "beta": "true",
                                                  "api_key": "s"})
    assert credential == "s" and query == {"api-version": "2024-06-01", "alt": "sse", "beta": "true"}


# -- explain rebuilds the root as the proxy does ---------------------------------------

async def test_explain_finds_a_recording_only_with_its_server_and_every_credential(butter, tmp_path, capsys):
    addon, _ = butter
    headers = {"authorization": "Bearer sk-shared", "x-litellm-api-key": "tenant-a"}
    await served(addon, flow(host="gateway.example", port=8443, headers=headers))
    db = addon.cache.backend.path
    addon.done()
    request = tmp_path / "r.json"
    request.write_text(json.dumps(BODY))

    def explain(*args: str) -> dict:
        assert main(["--db", db, "explain", str(request), "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)

    url = "https://gateway.example:8443/v1/chat/completions"
    found = explain("--url", url, "-H", "x-litellm-api-key: tenant-a", "--api-key", "sk-shared")
    assert found["hit"] is True and found["upstream"] == "https://gateway.example:8443"
    assert explain("--upstream", "gateway.example:8443", "-H", "x-litellm-api-key: tenant-a",
                   "-H", "Authorization: Bearer sk-shared")["hit"] is True
    assert explain("--url", url, "-H", "x-litellm-api-key: tenant-b", "--api-key", "sk-shared")["hit"] is False
    assert explain("--url", url, "--api-key", "sk-shared")["hit"] is False
    elsewhere = explain("-H", "x-litellm-api-key: tenant-a", "--api-key", "sk-shared")
    assert elsewhere["hit"] is False and elsewhere["upstream"] == "https://api.openai.com:443"


async def test_a_responses_id_one_server_made_up_is_not_followed_on_another(butter):
    """The record of which conversation a `previous_response_id` continues is per server too."""
    addon, tctx = butter
    tctx.configure(addon, butter_namespace="team")
    first = {"model": "gpt-4.1-mini", "input": "Please refund order 1234."}
    reply = {"id": "resp_made_up_by_attacker", "object": "response", "created_at": 1, "status": "completed",
             "model": "gpt-4.1-mini", "output": [{"id": "msg_1", "type": "message", "status": "completed",
                                                  "role": "assistant", "content": [
                                                      {"type": "output_text", "text": "Which amount?", "annotations": []}]}]}
    attacker = flow(host="attacker.example", path="/v1/responses", body=first)
    await send(addon, attacker, reply)
    follow = {"model": "gpt-4.1-mini", "previous_response_id": "resp_made_up_by_attacker", "input": "All of it."}
    same_server = flow(host="attacker.example", path="/v1/responses", body=follow)
    await send(addon, same_server, {**reply, "id": "resp_2"})
    assert same_server.response.headers["butter-cache"] == "miss"  # followed where it was made
    elsewhere = flow(path="/v1/responses", body=follow)
    await send(addon, elsewhere, {**reply, "id": "resp_3"})
    assert elsewhere.response.headers["butter-cache"] == "bypass (not understood)"  # unknown here: passed through
