"""Node 20 clients through a real mitmdump with butter.

Node 20's fetch ignores HTTPS_PROXY, so a Node agent reaches butter one of two
ways, and both are proved here with the official SDKs running as a `node`
subprocess against the fake provider over TLS:

1. reverse mode: a `--mode reverse:https://api.openai.com@PORT` listener and
   `OPENAI_BASE_URL=https://localhost:PORT/v1` (for Anthropic,
   `reverse:https://api.anthropic.com` and `ANTHROPIC_BASE_URL=https://localhost:PORT`),
   trusting mitmproxy's CA through `NODE_EXTRA_CA_CERTS`;
2. the undici preload (`NODE_OPTIONS=--import cli/node/proxy-preload.mjs`)
   that makes fetch honour `HTTPS_PROXY`, with the SDK's default base URL.

Each SDK is tested plain and streamed (the SDK's own stream accumulator),
recorded then replayed with zero provider calls, and across forms. The SDKs
come from tests/node/package.json (`npm install` there; scripts/setup-env.sh
does it); `openai` is pinned to 6.x because 7.x needs Node 22.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.e2e.harness import ROOT, Proxy
from tests.fakes import anthropic_messages, openai_chat
from tests.fakes.provider import FakeProvider

NODE_DIR = ROOT / "tests" / "node"
PRELOAD = ROOT / "cli" / "node" / "proxy-preload.mjs"  # the preload `butter run` gives Node agents
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node 20+ on PATH")


@pytest.fixture(scope="module", autouse=True)
def _sdks_installed() -> None:
    # With node present a missing install is a setup error, not a reason to skip.
    missing = [p for p in ("openai", "@anthropic-ai/sdk", "undici") if not (NODE_DIR / "node_modules" / p).is_dir()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed in tests/node: run scripts/setup-env.sh (or npm install there)")

EXPECTED_1234 = {"answer": "Refunded 42.5 for order 1234 (Ana Ruiz).",
                 "calls": [["get_order", {"order_id": "1234"}], ["refund", {"order_id": "1234", "amount": 42.5}]]}


@pytest.fixture(scope="module")
def node_proxies(tmp_path_factory: pytest.TempPathFactory, confdir: Path, provider: FakeProvider, tls) -> Iterator[Callable[[str], Proxy]]:
    """One mitmdump per provider for the module, started on first use: a
    regular listener (for HTTPS_PROXY) and a reverse listener for the
    provider's host (for *_BASE_URL). The test redirect addon sends whatever
    butter forwards to the fake provider."""
    started: dict[str, Proxy] = {}

    def get(reverse: str) -> Proxy:
        if reverse not in started:
            folder = tmp_path_factory.mktemp("node-proxy")
            started[reverse] = Proxy(confdir, folder / "db", folder / "mitmdump.log",
                                     upstream=f"127.0.0.1:{provider.port}", upstream_ca=tls[0], reverse=reverse)
        return started[reverse]

    yield get
    for proxy in started.values():
        proxy.stop()


@pytest.fixture
def openai_proxy(node_proxies) -> Proxy:
    return node_proxies("https://api.openai.com")


@pytest.fixture
def anthropic_proxy(node_proxies, provider: FakeProvider) -> Proxy:
    provider.handler = anthropic_messages.handler
    return node_proxies("https://api.anthropic.com")


BASE_URLS = {"openai": ("OPENAI_BASE_URL", "/v1"), "anthropic": ("ANTHROPIC_BASE_URL", "")}
USER_ENV = ("NODE_OPTIONS", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN")


def node_env(proxy: Proxy, how: str, sdk: str, api_key: str) -> dict[str, str]:
    """The environment a Node user sets for each way in; nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k not in USER_ENV}
    env["NODE_EXTRA_CA_CERTS"] = str(proxy.ca_cert)
    env[f"{sdk.upper()}_API_KEY"] = api_key
    if how == "reverse":
        variable, prefix = BASE_URLS[sdk]
        env[variable] = f"https://localhost:{proxy.reverse_port}{prefix}"
    elif how == "preload":
        env["NODE_OPTIONS"] = f"--import {PRELOAD.as_uri()}"
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = proxy.url
        env["NO_PROXY"] = ""
    else:
        raise ValueError(how)
    return env


def run_node(script: str, scenario: dict, env: dict[str, str]) -> dict:
    done = subprocess.run([NODE, str(NODE_DIR / script), json.dumps(scenario)], cwd=NODE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"node {script} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def openai_scenario(order_id: str, stream: bool) -> dict:
    return {"model": "gpt-4o-mini", "system": openai_chat.SYSTEM, "user": f"Please refund order {order_id}.",
            "tools": openai_chat.TOOLS, "orders": openai_chat.ORDERS, "stream": stream}


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


def essentials(completion: dict) -> dict:
    """What a chat completion says, in either form."""
    return {"model": completion["model"], "choices": [
        {"index": c["index"], "finish_reason": c["finish_reason"], "content": c["message"].get("content"),
         "refusal": c["message"].get("refusal"), "tool_calls": c["message"].get("tool_calls")}
        for c in completion["choices"]]}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("how", ["reverse", "preload"])
def test_node_openai_agent_is_recorded_then_replayed_with_zero_provider_calls(openai_proxy, provider, api_key, how, stream):
    env = node_env(openai_proxy, how, "openai", api_key)
    first = run_node("openai_agent.mjs", openai_scenario("1234", stream), env)
    assert outcome(first) == EXPECTED_1234
    assert first["cache"] == ["miss", "miss", "miss"]
    assert len(provider.calls) == 3
    assert all(call.headers["host"] == "api.openai.com" for call in provider.calls)

    second = run_node("openai_agent.mjs", openai_scenario("1234", stream), env)
    assert second["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == 3, "the replay reached the provider"
    assert outcome(second) == outcome(first)
    assert second["finals"] == first["finals"], "the replayed completions differ from the recorded ones"


@pytest.mark.parametrize("recorded,replayed", [(False, True), (True, False)], ids=["plain-to-streamed", "streamed-to-plain"])
def test_node_openai_recording_replays_in_the_other_form(openai_proxy, provider, api_key, recorded, replayed):
    env = node_env(openai_proxy, "reverse", "openai", api_key)
    first = run_node("openai_agent.mjs", openai_scenario("9876", recorded), env)
    second = run_node("openai_agent.mjs", openai_scenario("9876", replayed), env)
    assert second["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == 3
    assert outcome(second) == outcome(first)
    # What both forms carry (a stream has no usage without include_usage, and
    # the SDK's stream helper adds `parsed`) is the same.
    assert [essentials(c) for c in second["finals"]] == [essentials(c) for c in first["finals"]]


def anthropic_scenario(order_id: str, stream: bool) -> dict:
    return {"model": anthropic_messages.MODEL, "system": anthropic_messages.SYSTEM,
            "user": f"Please refund order {order_id}.", "tools": anthropic_messages.TOOLS,
            "orders": anthropic_messages.ORDERS, "stream": stream}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("how", ["reverse", "preload"])
def test_node_anthropic_agent_is_recorded_then_replayed_with_zero_provider_calls(anthropic_proxy, provider, api_key, how, stream):
    env = node_env(anthropic_proxy, how, "anthropic", api_key)
    first = run_node("anthropic_agent.mjs", anthropic_scenario("1234", stream), env)
    assert outcome(first) == EXPECTED_1234
    assert first["cache"] == ["miss", "miss", "miss"]
    assert len(provider.calls) == 3
    assert all(c.headers["host"] == "api.anthropic.com" and c.path == "/v1/messages" for c in provider.calls)

    second = run_node("anthropic_agent.mjs", anthropic_scenario("1234", stream), env)
    assert second["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == 3, "the replay reached the provider"
    assert outcome(second) == outcome(first)
    assert second["finals"] == first["finals"], "the replayed messages differ from the recorded ones"


@pytest.mark.parametrize("recorded,replayed", [(False, True), (True, False)], ids=["plain-to-streamed", "streamed-to-plain"])
def test_node_anthropic_recording_replays_in_the_other_form(anthropic_proxy, provider, api_key, recorded, replayed):
    env = node_env(anthropic_proxy, "reverse", "anthropic", api_key)
    first = run_node("anthropic_agent.mjs", anthropic_scenario("9876", recorded), env)
    second = run_node("anthropic_agent.mjs", anthropic_scenario("9876", replayed), env)
    assert second["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == 3
    assert outcome(second) == outcome(first)
    assert second["finals"] == first["finals"]
