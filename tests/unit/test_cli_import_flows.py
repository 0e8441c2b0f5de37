"""`butter import-flows` and addon/exchange.record_flow over mitmproxy's own
test flows and a real FlowWriter file."""
from __future__ import annotations

import json

import pytest
from mitmproxy import io
from mitmproxy.http import Headers
from mitmproxy.test import tflow, tutils

from butter.addon.exchange import record_flow
from butter.cli.main import main
from butter.store import Cache, Conversation, Hit
from tests.fakes import openai_chat

MESSAGES = [{"role": "system", "content": openai_chat.SYSTEM}, {"role": "user", "content": "Please refund order 1234."}]


def llm_flow(*, headers: dict | None = None, status: int = 200, body: dict | None = None, path: str = "/v1/chat/completions"):
    request = {"model": "gpt-4o-mini", "messages": MESSAGES}
    req = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https", path=path.encode(),
                      headers=Headers(**{"content-type": "application/json", **(headers or {})}),
                      content=json.dumps(request).encode())
    answer = body if body is not None else openai_chat.completion(openai_chat.decide(MESSAGES), "gpt-4o-mini")
    resp = tutils.tresp(status_code=status, headers=Headers(**{"content-type": "application/json"}),
                        content=json.dumps(answer).encode())
    flow = tflow.tflow(req=req, resp=resp)
    return flow


def conversation() -> Conversation:
    from butter.addon.exchange import read_request
    from butter.addon.formats import recognise

    fmt = recognise("POST", "/v1/chat/completions")
    return read_request(fmt, llm_flow().request)[1].conversation


@pytest.fixture
def cache(tmp_path):
    c = Cache(tmp_path / "db")
    yield c
    c.close()


def test_an_answered_llm_flow_is_recorded_under_its_credentials_namespace(cache):
    outcome = record_flow(cache, llm_flow(headers={"authorization": "Bearer sk-secret-1"}))
    assert outcome.status == "recorded" and outcome.fmt == "openai-chat" and outcome.model == "gpt-4o-mini"
    found = cache.lookup(cache.namespace("sk-secret-1"), conversation())
    assert isinstance(found, Hit) and found.node_id == outcome.node
    assert not isinstance(cache.lookup(cache.namespace("sk-other"), conversation()), Hit)
    assert "sk-secret-1" not in repr(list(cache.backend.dump())), "the credential was stored"


@pytest.mark.parametrize("make,reason", [
    (lambda: tflow.tflow(resp=True), "not-llm"),
    (lambda: llm_flow(status=500, body={"error": {"message": "boom"}}), "not-recordable"),
    (lambda: llm_flow(headers={"butter-mode": "sometimes"}), "invalid-butter-header"),
    (lambda: llm_flow(headers={"butter-mode": "off"}), "mode-off"),
])
def test_flows_that_are_not_provider_answers_are_skipped_with_a_reason(cache, make, reason):
    outcome = record_flow(cache, make())
    assert (outcome.status, outcome.reason) == ("skipped", reason)
    assert cache.backend.counts()["replies"] == 0


def test_a_reply_butter_itself_served_is_not_recorded_again(cache):
    flow = llm_flow()
    flow.response.headers["butter-cache"] = "hit"
    assert record_flow(cache, flow).reason == "served-by-butter"
    flow = llm_flow()
    flow.response = None
    assert record_flow(cache, flow).reason == "no-response"


def test_the_butter_namespace_header_wins_and_stays_in_the_saved_flow(cache):
    flow = llm_flow(headers={"authorization": "Bearer sk-1", "butter-namespace": "team"})
    record_flow(cache, flow, fixed_namespace="cli")
    assert isinstance(cache.lookup("ns:team", conversation()), Hit)
    assert flow.request.headers["butter-namespace"] == "team"
    record_flow(cache, llm_flow(headers={"authorization": "Bearer sk-1"}), fixed_namespace="cli")
    assert isinstance(cache.lookup("ns:cli", conversation()), Hit)


def test_butter_bindings_in_a_saved_flow_record_a_template(cache):
    record_flow(cache, llm_flow(headers={"butter-bindings": json.dumps({"order_id": "1234"})}))
    assert any(n.kind == "template" for n in cache.backend.iter_nodes())


def test_import_flows_reads_a_flow_file_and_reports_what_it_did(tmp_path, capsys):
    flows = tmp_path / "saved.flows"
    with open(flows, "wb") as f:
        writer = io.FlowWriter(f)
        writer.add(llm_flow(headers={"authorization": "Bearer sk-1"}))
        writer.add(tflow.tflow(resp=True))
    assert main(["--db", str(tmp_path / "db"), "import-flows", str(flows), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recorded"] == 1 and report["skipped"] == {"not-llm": 1} and report["formats"] == {"openai-chat": 1}

    assert main(["--db", str(tmp_path / "db"), "import-flows", str(flows)]) == 0
    assert "recorded 1 LLM exchange(s)" in capsys.readouterr().out


def test_a_file_that_is_not_a_flow_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, not flows")
    assert main(["--db", str(tmp_path / "db"), "import-flows", str(bad)]) == 1
    assert "not a readable flow file" in capsys.readouterr().err
    assert main(["--db", str(tmp_path / "db"), "import-flows", str(tmp_path / "missing")]) == 1
    assert "no flow file" in capsys.readouterr().err
