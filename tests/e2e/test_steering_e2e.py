"""Steering butter through a real mitmdump with the real openai SDK: feedback
over HTTP to butter.local and from the CLI, per-request control headers,
promotion after several observations, and the CLI deleting while a proxy
serves and records from the same database."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx2
import lmdb.verify
import openai
import pytest

from tests.e2e.harness import ROOT, Proxy
from tests.fakes import openai_chat
from tests.fakes.openai_chat import run_agent
from tests.fakes.provider import Call, FakeProvider, JSONReply

EXPECTED_1234 = {"answer": "Refunded 42.5 for order 1234 (Ana Ruiz).",
                 "calls": [("get_order", {"order_id": "1234"}), ("refund", {"order_id": "1234", "amount": 42.5})]}
EXPECTED_9876 = {"answer": "Refunded 17.0 for order 9876 (Bo Chen).",
                 "calls": [("get_order", {"order_id": "9876"}), ("refund", {"order_id": "9876", "amount": 17.0})]}
EXPECTED_5555 = {"answer": "Refunded 29.9 for order 5555 (Cy Diaz).",
                 "calls": [("get_order", {"order_id": "5555"}), ("refund", {"order_id": "5555", "amount": 29.9})]}


def client(api_key: str, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=api_key, timeout=20, **kwargs)


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


def first_step(sdk: openai.OpenAI, order: str = "1234"):
    """The agent's first request, raw, so a test can read butter's headers."""
    return sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", tools=openai_chat.TOOLS,
        messages=[{"role": "system", "content": openai_chat.SYSTEM},
                  {"role": "user", "content": f"Please refund order {order}."}])


def butter_local(proxy: Proxy) -> httpx2.Client:
    """An HTTP client that goes through the proxy, as any configured client does."""
    return httpx2.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_cert)), timeout=20)


def butter_cli(proxy: Proxy, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", str(proxy.db), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def first_step_answers(text: str):
    """A provider whose first step now answers `text`; the rest as before."""
    def handler(call: Call):
        body = call.json
        if not any(m.get("role") in ("assistant", "tool") for m in body["messages"]):
            reply = openai_chat.completion({"content": text}, body["model"])
            return JSONReply(reply)
        return openai_chat.handler(call)
    return handler


def no_control_header_reached(provider: FakeProvider) -> bool:
    return not any(name.startswith("butter-") for call in provider.calls for name in call.headers)


# -- feedback ---------------------------------------------------------------------------

def test_bad_feedback_over_http_sends_the_next_request_to_the_provider_then_serves_its_new_answer(
        shared_proxy, through, provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    assert outcome(run_agent(sdk, "1234")) == EXPECTED_1234
    hit = first_step(sdk)
    assert hit.headers["butter-cache"] == "hit"
    node = hit.headers["butter-node"]

    with butter_local(shared_proxy) as http:
        vote = http.post("http://butter.local/feedback", json={"node": node, "score": "bad"})
    assert vote.status_code == 200, vote.text
    assert vote.json()["servable"] is False and all(r["bad"] for r in vote.json()["replies"])

    provider.handler = first_step_answers("Which order do you mean?")
    calls = len(provider.calls)
    miss = first_step(sdk)
    assert miss.headers["butter-cache"] == "miss" and len(provider.calls) == calls + 1
    again = first_step(sdk)
    assert again.headers["butter-cache"] == "hit" and again.headers["butter-node"] == node
    assert again.parse().choices[0].message.content == "Which order do you mean?", "the bad reply was served"
    assert len(provider.calls) == calls + 1
    assert not provider.calls_to("/feedback"), "a butter.local request was forwarded"


def test_bad_feedback_from_the_cli_sends_the_next_request_to_the_provider_and_good_restores_it(
        shared_proxy, through, provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    run_agent(sdk, "9876")
    node = first_step(sdk, "9876").headers["butter-node"]

    marked = butter_cli(shared_proxy, "feedback", node[:12], "bad", "--json")
    assert marked.returncode == 0, marked.stderr
    assert json.loads(marked.stdout)["node"] == node and json.loads(marked.stdout)["servable"] is False

    calls = len(provider.calls)
    assert first_step(sdk, "9876").headers["butter-cache"] == "miss"
    # The provider said the same thing again: the same reply, still marked bad.
    assert first_step(sdk, "9876").headers["butter-cache"] == "miss"
    assert len(provider.calls) == calls + 2

    restored = butter_cli(shared_proxy, "feedback", node, "good")
    assert restored.returncode == 0 and "scored good" in restored.stdout and "is served" in restored.stdout
    assert first_step(sdk, "9876").headers["butter-cache"] == "hit"
    assert outcome(run_agent(sdk, "9876")) == EXPECTED_9876
    assert len(provider.calls) == calls + 2


def test_a_first_answer_scored_bad_straight_from_its_miss_is_never_served(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    provider.handler = first_step_answers("I cannot help with refunds.")
    miss = first_step(sdk)
    assert miss.headers["butter-cache"] == "miss"
    with butter_local(shared_proxy) as http:
        vote = http.post("https://butter.local/feedback", json={"node": miss.headers["butter-node"], "score": "bad"})
    assert vote.status_code == 200, vote.text
    provider.handler = openai_chat.handler
    run = run_agent(sdk, "1234")
    assert outcome(run) == EXPECTED_1234 and run["cache"] == ["miss"] * 3
    assert run_agent(sdk, "1234")["cache"] == ["hit"] * 3
    assert len(provider.calls) == 4

def test_feedback_on_an_unknown_node_is_a_clear_error_over_http_and_from_the_cli(shared_proxy, through):
    through(shared_proxy)
    with butter_local(shared_proxy) as http:
        answer = http.post("http://butter.local/feedback", json={"node": "0" * 32, "score": "bad"})
    assert answer.status_code == 404 and "no node" in answer.json()["error"]["message"]
    refused = butter_cli(shared_proxy, "feedback", "0" * 32, "bad")
    assert refused.returncode == 1 and "no node" in refused.stderr


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_butter_local_answers_health_itself_and_forwards_nothing(shared_proxy, provider, scheme):
    calls = len(provider.calls)
    with butter_local(shared_proxy) as http:
        health = http.get(f"{scheme}://butter.local/health")
        unknown = http.post(f"{scheme}://butter.local/v1/chat/completions", json={"model": "x", "messages": []})
    assert health.status_code == 200 and health.json()["butter"] == "ok" and health.json()["mode"] == "auto"
    assert unknown.status_code == 404 and "endpoints" in unknown.json()["error"]["message"]
    assert len(provider.calls) == calls


# -- per-request control headers ------------------------------------------------------------

def test_butter_mode_replay_on_a_miss_is_an_error_and_never_reaches_the_provider(shared_proxy, through, provider, api_key):
    through(shared_proxy)
    with pytest.raises(openai.NotFoundError) as raised:
        run_agent(client(api_key, default_headers={"butter-mode": "replay"}), "1234")
    assert raised.value.code == "butter_replay_miss"
    assert provider.calls == []


def test_butter_mode_off_forwards_records_nothing_and_the_header_never_reaches_the_provider(
        shared_proxy, through, provider, api_key):
    through(shared_proxy)
    off = run_agent(client(api_key, default_headers={"butter-mode": "off"}), "1234")
    assert outcome(off) == EXPECTED_1234 and off["cache"] == ["bypass (mode off)"] * 3
    assert len(provider.calls) == 3
    normal = run_agent(client(api_key), "1234")
    assert normal["cache"] == ["miss"] * 3, "an exchange made with butter-mode off was recorded"
    assert no_control_header_reached(provider)


def test_butter_namespace_is_shared_across_keys_isolated_from_the_rest_and_cleared_by_name(
        shared_proxy, through, provider, api_key):
    through(shared_proxy)
    team = "team-" + uuid.uuid4().hex[:8]
    first = run_agent(client(api_key, default_headers={"butter-namespace": team}), "1234")
    other_key = run_agent(client("sk-other-" + uuid.uuid4().hex, default_headers={"butter-namespace": team}), "1234")
    assert first["cache"] == ["miss"] * 3 and other_key["cache"] == ["hit"] * 3
    own = run_agent(client(api_key), "1234")
    assert own["cache"] == ["miss"] * 3, "the key's own namespace saw the team's recording"
    other_team = run_agent(client(api_key, default_headers={"butter-namespace": team + "-b"}), "1234")
    assert other_team["cache"] == ["miss"] * 3
    assert no_control_header_reached(provider)

    cleared = butter_cli(shared_proxy, "clear", "--namespace", team, "--json")
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout)["namespaces"] == [f"ns:{team}"] and json.loads(cleared.stdout)["roots"] == 1
    after = run_agent(client(api_key, default_headers={"butter-namespace": team}), "1234")
    assert after["cache"] == ["miss"] * 3
    assert run_agent(client(api_key), "1234")["cache"] == ["hit"] * 3, "clear touched another namespace"


@pytest.mark.parametrize("headers", [{"butter-mode": "replya"}, {"butter-namespace": "team a"}])
def test_an_invalid_control_header_is_an_openai_error_and_nothing_is_forwarded(shared_proxy, through, provider, api_key, headers):
    through(shared_proxy)
    with pytest.raises(openai.BadRequestError) as raised:
        run_agent(client(api_key, default_headers=headers), "1234")
    assert raised.value.code == "butter_invalid_header" and list(headers)[0] in raised.value.message
    assert provider.calls == []


# -- promotion -----------------------------------------------------------------------------

def test_with_min_observations_2_a_branch_is_served_only_after_two_agreeing_runs(start_proxy, through, provider, api_key, tmp_path):
    proxy = start_proxy(tmp_path / "staged-db", options={"butter_min_observations": 2})
    through(proxy)
    first = run_agent(client(api_key), "1234")
    second = run_agent(client(api_key), "1234")
    assert first["cache"] == second["cache"] == ["miss"] * 3
    assert len(provider.calls) == 6
    third = run_agent(client(api_key), "1234")
    assert third["cache"] == ["hit"] * 3 and outcome(third) == EXPECTED_1234
    assert len(provider.calls) == 6
    with butter_local(proxy) as http:
        assert http.get("http://butter.local/health").json()["min_observations"] == 2


# -- deleting while a proxy serves and records ---------------------------------------------------

def test_prune_and_forget_from_the_cli_while_a_proxy_serves_and_records(start_proxy, through, provider, tmp_path):
    proxy = start_proxy(tmp_path / "busy-db")
    through(proxy)
    old_key, busy_key, served_key = ("sk-" + name + uuid.uuid4().hex for name in ("old", "busy", "served"))
    run_agent(client(old_key), "1234")
    run_agent(client(served_key), "9876")
    victim = first_step(client(served_key), "9876").headers["butter-node"]

    # The busy agent's first request is held at the provider: a recording in flight.
    arrived, release = threading.Event(), threading.Event()

    def holding(call: Call):
        if call.headers.get("authorization") == f"Bearer {busy_key}" and not arrived.is_set():
            arrived.set()
            release.wait(60)
        return openai_chat.handler(call)

    provider.handler = holding
    stop_serving = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        busy = pool.submit(run_agent, client(busy_key), "5555")
        assert arrived.wait(30)

        def serve_until_stopped() -> list[dict]:
            runs = [run_agent(client(served_key), "9876")]
            while not stop_serving.is_set():
                runs.append(run_agent(client(served_key), "9876"))
            return runs

        served = pool.submit(serve_until_stopped)
        forgot = butter_cli(proxy, "forget", victim, "--json")
        pruned = butter_cli(proxy, "prune", "--unused-for", "0s", "--json")
        stop_serving.set()
        release.set()
        busy_run, served_runs = busy.result(60), served.result(60)

    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["nodes"] >= 1
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["nodes"] >= 1
    assert outcome(busy_run) == EXPECTED_5555
    assert all(outcome(run) == EXPECTED_9876 for run in served_runs)

    calls = len(provider.calls)
    assert run_agent(client(old_key), "1234")["cache"] == ["miss"] * 3, "prune kept an unused branch"
    assert len(provider.calls) == calls + 3
    assert run_agent(client(busy_key), "5555")["cache"] == ["hit"] * 3, "prune removed what was recorded while it ran"
    proxy.stop()
    assert lmdb.verify.verify(str(proxy.db)) == []


def test_forget_prune_and_clear_print_what_they_remove_for_people_and_dry_runs_remove_nothing(
        shared_proxy, through, provider, api_key):
    through(shared_proxy)
    team = "dry-" + uuid.uuid4().hex[:8]
    sdk = client(api_key, default_headers={"butter-namespace": team})
    run_agent(sdk, "1234")
    node = first_step(sdk).headers["butter-node"]

    forget = butter_cli(shared_proxy, "forget", node[:10], "--dry-run")
    assert forget.returncode == 0, forget.stderr
    # The node after the user message: the three replies and four messages that follow it.
    assert forget.stdout.strip() == f"would forget node {node}: 5 node(s), 3 repl(ies)"
    clear = butter_cli(shared_proxy, "clear", "--namespace", team, "--dry-run")
    assert clear.stdout.strip() == f"would clear ns:{team}: 1 root(s), 7 node(s), 3 repl(ies)"
    prune = butter_cli(shared_proxy, "prune", "--unused-for", "30d", "--dry-run")
    assert prune.returncode == 0 and prune.stdout.startswith("would remove 0 branch(es) unused for 30d")
    assert run_agent(sdk, "1234")["cache"] == ["hit"] * 3, "a dry run removed something"

    unknown = butter_cli(shared_proxy, "clear", "--namespace", team + "-typo")
    assert unknown.returncode == 1 and f"ns:{team}" in unknown.stderr
    neither = butter_cli(shared_proxy, "clear")
    assert neither.returncode == 2 and "--namespace" in neither.stderr
