"""Tenant isolation through a real mitmdump, real SDKs and the fake provider:
a reply recorded from one server is never served for another; gateway
credentials in headers and credentials in the query keep tenants apart and
never reach the database, exports or the log."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import uuid

import anthropic
import httpx2
import openai
import pytest

from tests.e2e.harness import ROOT
from tests.fakes import anthropic_messages, openai_chat
from tests.fakes.openai_chat import run_agent
from tests.fakes.provider import Call, JSONReply

GENUINE = "Refunded 42.5 for order 1234 (Ana Ruiz)."
ATTACKER_HOST = "openrouter.ai"  # any server an attacker controls; the fake's certificate names it


def poisoning_handler(call: Call):
    """The real model, except that the attacker's server answers with a lie."""
    if call.headers.get("host", "").split(":")[0] == ATTACKER_HOST:
        reply = openai_chat.completion({"content": "POISONED: send your card number to evil.example"},
                                       call.json["model"])
        return JSONReply(reply)
    return openai_chat.handler(call)


def client(api_key: str, host: str = "api.openai.com", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=f"https://{host}/v1", max_retries=0, timeout=20, **kwargs)


def ask(sdk: openai.OpenAI) -> tuple[str, str]:
    """One question; (the answer, butter-cache)."""
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Please refund order 1234."}])
    return raw.parse().choices[0].message.content or "", raw.headers.get("butter-cache", "")


def secret_bytes_in(paths, secrets: list[str]) -> list[str]:
    found = []
    for path in paths:
        data = path.read_bytes()
        found += [f"{s} in {path.name}" for s in secrets if s.encode() in data]
    return found


# -- 1. the upstream server is in the root ------------------------------------------

def test_a_reply_from_an_attackers_server_is_never_served_for_the_real_one_with_the_same_key(
        shared_proxy, through, provider, api_key):
    through(shared_proxy)
    provider.handler = poisoning_handler
    assert ask(client(api_key, ATTACKER_HOST))[0].startswith("POISONED")
    answer, cache = ask(client(api_key))
    assert cache == "miss" and "POISONED" not in answer
    assert len(provider.calls) == 2


def test_a_shared_namespace_is_not_shared_across_servers(start_proxy, through, provider):
    proxy = start_proxy(options={"butter_namespace": "team"})
    through(proxy)
    provider.handler = poisoning_handler
    ask(client("sk-attacker", ATTACKER_HOST))
    answer, cache = ask(client("sk-victim"))
    assert cache == "miss" and "POISONED" not in answer
    assert ask(client("sk-another-member"))[1] == "hit"  # the namespace is still shared on one server


def test_a_keyless_request_is_not_served_a_reply_from_another_server(shared_proxy, provider):
    provider.handler = poisoning_handler
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"keyless {uuid.uuid4().hex}"}]}
    with httpx2.Client(proxy=shared_proxy.url, verify=ssl.create_default_context(cafile=str(shared_proxy.ca_cert)), timeout=20) as http:
        poisoned = http.post(f"https://{ATTACKER_HOST}/v1/chat/completions", json=body)
        genuine = http.post("https://api.openai.com/v1/chat/completions", json=body)
    assert "POISONED" in poisoned.text
    assert genuine.headers["butter-cache"] == "miss" and "POISONED" not in genuine.text


def test_offline_replay_still_serves_what_was_recorded_from_the_host_the_client_asked_for(
        start_proxy, through, provider, api_key, tmp_path):
    db = tmp_path / "offline"
    recording = start_proxy(db)
    through(recording)
    run_agent(client(api_key), "1234")
    recording.stop()
    offline = start_proxy(db, mode="replay", forward=False)  # no provider reachable at all
    through(offline)
    assert run_agent(client(api_key), "1234")["answer"] == GENUINE


# -- 2. credentials in headers butter has no list for --------------------------------

@pytest.mark.parametrize("header", ["x-litellm-api-key", "x-portkey-api-key", "helicone-auth", "cf-aig-authorization"])
def test_a_gateway_key_in_a_header_keeps_tenants_apart_and_is_never_stored_or_logged(
        start_proxy, through, provider, tmp_path, header):
    db = tmp_path / "gateway-db"
    proxy = start_proxy(db)
    through(proxy)
    shared_provider_key = "sk-gateway-master-key"  # one upstream key behind the gateway for every tenant
    tenant_a, tenant_b = "tenant-a-" + uuid.uuid4().hex, "tenant-b-" + uuid.uuid4().hex
    a = client(shared_provider_key, default_headers={header: f"Bearer {tenant_a}"})
    b = client(shared_provider_key, default_headers={header: f"Bearer {tenant_b}"})
    assert ask(a)[1] == "miss"
    assert ask(b)[1] == "miss", "tenant b was served tenant a's recording"
    assert ask(a)[1] == "hit"
    assert provider.calls[0].headers[header] == f"Bearer {tenant_a}"  # forwarded untouched
    proxy.stop()
    assert not secret_bytes_in([p for p in db.iterdir() if p.is_file()] + [proxy.log], [tenant_a, tenant_b])


# -- 4. credentials in the query ------------------------------------------------------

def test_an_api_key_in_the_query_never_reaches_the_database_exports_show_or_the_log(
        start_proxy, through, provider, tmp_path, monkeypatch):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    provider.handler = anthropic_messages.handler
    monkeypatch.setenv("COLUMNS", "4000")  # mitmdump cuts flow_detail=1 URLs at the terminal's width
    db = tmp_path / "query-db"
    proxy = start_proxy(db, options={"flow_detail": "1"})  # mitmdump's default: one line per flow, URL included
    through(proxy)
    tenant_a, tenant_b = "qa-" + uuid.uuid4().hex, "qb-" + uuid.uuid4().hex

    def sdk(secret: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key="sk-ant-shared", default_query={"api_key": secret, "beta": "true"},
                                   max_retries=0, timeout=20)

    first = anthropic_messages.run_agent(sdk(tenant_a), "1234")
    assert first["cache"] == ["miss", "miss", "miss"]
    assert anthropic_messages.run_agent(sdk(tenant_b), "1234")["cache"] == ["miss", "miss", "miss"]
    again = anthropic_messages.run_agent(sdk(tenant_a), "1234")
    assert again["cache"] == ["hit", "hit", "hit"] and again["answer"] == first["answer"]
    assert all(c.query.get("api_key") in (tenant_a, tenant_b) for c in provider.calls)  # the provider still gets it
    proxy.stop()

    export = tmp_path / "export.jsonl"
    cli = [sys.executable, "-m", "butter.cli.main", "--db", str(db)]
    subprocess.run(cli + ["export", "--out", str(export)], check=True, cwd=ROOT, capture_output=True)
    node = json.loads(next(line for line in export.read_text().splitlines()
                           if '"kind":"root"' in line.replace(" ", "")))["id"]
    shown = subprocess.run(cli + ["show", node], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0 and "beta" in shown.stdout
    files = [p for p in db.iterdir() if p.is_file()] + [proxy.log, export]
    assert not secret_bytes_in(files, [tenant_a, tenant_b])
    assert tenant_a not in shown.stdout and tenant_b not in shown.stdout


# -- 6. butter.local tells no path and forwards nothing -----------------------------------

def test_butter_local_hides_the_database_path_and_answers_bad_feedback_bodies_itself(shared_proxy, provider):
    calls = len(provider.calls)
    with httpx2.Client(proxy=shared_proxy.url, verify=ssl.create_default_context(cafile=str(shared_proxy.ca_cert)), timeout=20) as http:
        health = http.get("http://butter.local/health")
        nested = http.post("http://butter.local/feedback", content=b"[" * 30_000 + b"]" * 30_000)
        huge = http.post("https://butter.local/feedback", content=b'{"node": "' + b"a" * 2_000_000 + b'"}')
    assert health.status_code == 200 and health.json()["db"] == shared_proxy.db.name
    assert str(shared_proxy.db.parent) not in health.text
    assert nested.status_code == 400 and huge.status_code == 413
    assert len(provider.calls) == calls
