"""The `butter` CLI over databases built by a real mitmdump and real openai SDK
runs (fake provider over TLS on loopback): stats, tree, show, explain,
export/import, import-flows, and reading while a proxy serves and records."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import lmdb.verify
import openai
import pytest

from tests.e2e.harness import ROOT, Proxy
from tests.fakes import openai_chat
from tests.fakes.openai_chat import run_agent
from tests.fakes.provider import StreamReply

BUTTER = Path(sys.executable).with_name("butter")


def client(api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, timeout=20, max_retries=0)


def butter(*args: str, db: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """The installed `butter` command, as a person runs it (a separate process)."""
    done = subprocess.run([str(BUTTER), "--db", str(db), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == expect, f"butter {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def butter_json(*args: str, db: Path) -> dict:
    return json.loads(butter(*args, "--json", db=db).stdout)


def outcome(run: dict) -> dict:
    return {"answer": run["answer"], "calls": run["calls"]}


@dataclass
class Recorded:
    db: Path
    key: str
    plain: dict  # order 1234, recorded then served (3 hits)
    streamed: dict  # order 9876, recorded streamed
    bodies: list[bytes]  # what the SDK sent for order 1234, in order


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, confdir, provider, tls) -> Recorded:
    """One database per module: two refund runs recorded, one served again."""
    folder = tmp_path_factory.mktemp("cli-e2e")
    key = "sk-test-" + uuid.uuid4().hex
    # Induction off: templates are learned on a background thread, and a
    # shutdown may cut that short, so the counts below would not be fixed.
    proxy = Proxy(confdir, folder / "db", folder / "mitmdump.log", upstream=f"127.0.0.1:{provider.port}",
                  upstream_ca=tls[0], options={"butter_induction": "false"})
    provider.handler = openai_chat.handler
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in proxy.client_env().items():
                env.setenv(name, value)
            env.delenv("SSL_CERT_DIR", raising=False)
            before = len(provider.calls)
            plain = run_agent(client(key), "1234")
            bodies = [c.body for c in provider.calls[before:]]
            streamed = run_agent(client(key), "9876", stream=True)
            again = run_agent(client(key), "1234")
            assert again["cache"] == ["hit", "hit", "hit"]
    finally:
        proxy.stop()  # a clean stop flushes the hit counters
    return Recorded(folder / "db", key, plain, streamed, bodies)


# -- stats -----------------------------------------------------------------------------

def test_stats_counts_the_recorded_runs_hits_and_tokens_saved(recorded):
    data = butter_json("stats", db=recorded.db)
    [group] = data["groups"]
    assert (group["api"], group["model"], group["namespace"][:4]) == ("openai-chat", "gpt-4o-mini", "key:")
    # Two runs of three calls share system + tools: one root, the system message, 2 × 5 more.
    assert (group["roots"], group["nodes"], group["replies"], group["observations"]) == (1, 12, 6, 6)
    assert group["hits"] == group["provider_calls_saved"] == 3
    assert group["misses"] == 6  # the two first runs: three forwarded requests each
    assert group["tokens_saved"] == 3 * 62  # the fake reports 62 tokens per completion
    assert data["size"]["used_bytes"] > 0

    text = butter("stats", db=recorded.db).stdout
    assert "gpt-4o-mini" in text and "openai-chat" in text
    assert "hits served: 3" in text and "misses: 6" in text and "tokens saved: 186" in text


# -- tree -------------------------------------------------------------------------------

def test_tree_shows_roles_first_words_tool_names_and_hits(recorded):
    text = butter("tree", db=recorded.db).stdout
    assert "tools: get_order, refund" in text
    assert 'user: "Please refund order 1234."' in text and 'user: "Please refund order 9876."' in text
    assert "assistant: → get_order(order_id=1234)" in text
    assert "assistant: → refund(order_id=9876, amount=17.0)" in text
    assert "tool[call#0]:" in text and "hits 1" in text

    data = butter_json("tree", db=recorded.db)
    [root] = data["roots"]
    [system] = root["children"]
    assert system["summary"].startswith("system:")
    assert sorted(c["summary"] for c in system["children"]) == [
        'user: "Please refund order 1234."', 'user: "Please refund order 9876."']


def test_tree_filters_by_text_depth_namespace_and_model(recorded):
    only_9876 = butter("tree", "--match", "bo chen", db=recorded.db).stdout
    assert "9876" in only_9876 and "order 1234" not in only_9876

    shallow = butter_json("tree", "--depth", "2", db=recorded.db)
    users = shallow["roots"][0]["children"][0]["children"]
    assert len(users) == 2 and all(u["children"] == [] for u in users)

    assert butter_json("tree", "--model", "gpt-4o", db=recorded.db)["roots"] == []
    assert "(nothing recorded matches)" in butter("tree", "--namespace", "ns:other", db=recorded.db).stdout


# -- show -------------------------------------------------------------------------------

def test_show_prints_a_nodes_path_replies_and_statistics_from_an_id_prefix(recorded):
    tree = butter_json("tree", "--match", "Ana Ruiz", db=recorded.db)
    node = tree["roots"][0]["children"][0]["children"][0]["children"][0]["children"][0]  # the get_order result
    assert node["summary"].startswith("tool[call#0]")

    data = butter_json("show", node["id"][:8], db=recorded.db)
    assert data["id"] == node["id"]
    assert [m["content"]["role"] for m in data["path"]] == ["system", "user", "assistant", "tool"]
    [reply] = data["replies"]
    assert reply["served"] and reply["count"] == 1 and reply["tokens"] == 62
    assert reply["reply"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "refund"
    assert data["stats"]["hits"] == 1

    text = butter("show", node["id"][:8], db=recorded.db).stdout
    assert "Please refund order 1234." in text and "→ get_order" in text
    assert '"Ana Ruiz"' in text and "(served)" in text and "hits 1" in text


def test_show_refuses_an_unknown_or_malformed_node_clearly(recorded):
    assert "no node starts with" in butter("show", "ffffffffff", db=recorded.db, expect=1).stderr
    assert "not a node id" in butter("show", "xyz", db=recorded.db, expect=1).stderr


# -- explain ----------------------------------------------------------------------------

def test_explain_says_a_recorded_request_would_hit(recorded, tmp_path):
    request = tmp_path / "request.json"
    request.write_bytes(recorded.bodies[1])
    data = butter_json("explain", str(request), "--api-key", recorded.key, db=recorded.db)
    assert data["hit"] is True and data["matched"] == data["messages"] == 4
    assert "HIT" in butter("explain", str(request), "--api-key", recorded.key, db=recorded.db).stdout


def test_explain_pinpoints_the_one_tool_result_that_differs(recorded, tmp_path):
    body = json.loads(recorded.bodies[1])  # system, user, get_order call, its result
    result = json.loads(body["messages"][3]["content"])
    body["messages"][3]["content"] = json.dumps({**result, "amount": 43.5})
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))

    data = butter_json("explain", str(request), "--header", f"Authorization: Bearer {recorded.key}",
                       db=recorded.db)
    assert data["hit"] is False and data["reason"] == "diverged"
    assert data["matched"] == 3 and data["differing_index"] == 3
    assert data["node_summary"] == "assistant: → get_order(order_id=1234)"
    nearest = data["nearest"][0]
    assert nearest["first_difference"] == "content[0].text{}.amount"
    assert '-        "amount": 42.5,' in nearest["diff"] and '+        "amount": 43.5,' in nearest["diff"]

    text = butter("explain", str(request), "--api-key", recorded.key, db=recorded.db).stdout
    assert "MISS (diverged)" in text and "matched   3 of 4" in text
    assert "first difference at content[0].text{}.amount" in text


def test_explain_with_another_key_names_the_namespace_that_has_the_recording(recorded, tmp_path):
    request = tmp_path / "request.json"
    request.write_bytes(recorded.bodies[0])
    data = butter_json("explain", str(request), "--api-key", "sk-someone-else", db=recorded.db)
    assert data["hit"] is False and data["reason"] == "new-context"
    assert len(data["other_namespaces"]) == 1 and data["other_namespaces"][0].startswith("key:")


# -- export / import -------------------------------------------------------------------------

def test_export_then_import_into_a_fresh_database_serves_the_same_hits_offline(
        recorded, start_proxy, through, provider, tmp_path):
    export = tmp_path / "recording.jsonl"
    butter("export", "--out", str(export), "--with-secret", db=recorded.db)
    lines = export.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "butter-export" and json.loads(lines[0])["version"] == 1
    kinds = [json.loads(line)["type"] for line in lines[1:]]
    assert (kinds.count("node"), kinds.count("reply"), kinds.count("stats")) == (12, 6, 3)

    fresh = tmp_path / "fresh-db"
    report = butter_json("import", str(export), db=fresh)
    assert report["added"]["nodes"] == 12 and report["added"]["replies"] == 6 and report["secret_adopted"]
    # The whole tree round-trips: exporting the imported database gives the same lines.
    assert butter("export", "--with-secret", db=fresh).stdout.splitlines() == lines

    calls = len(provider.calls)
    offline = start_proxy(fresh, mode="replay", forward=False)
    through(offline)
    first = run_agent(client(recorded.key), "1234")
    second = run_agent(client(recorded.key), "9876", stream=True)
    assert outcome(first) == outcome(recorded.plain) and outcome(second) == outcome(recorded.streamed)
    assert first["cache"] == ["hit", "hit", "hit"]
    assert len(provider.calls) == calls


def test_export_clear_import_serves_the_same_hits_offline(recorded, start_proxy, through, provider, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(recorded.db, db)  # the module's database stays as it is for the other tests
    export = tmp_path / "recording.jsonl"
    butter("export", "--out", str(export), db=db)
    [group] = butter_json("stats", db=db)["groups"]
    butter("clear", "--namespace", group["namespace"], db=db)
    assert butter_json("stats", db=db)["groups"] == []

    report = butter_json("import", str(export), db=db)
    assert report["added"]["nodes"] == 12 and report["warnings"] == []  # same database, same secret
    calls = len(provider.calls)
    # Offline, nothing can verify a learned template: this suite serves them on induction's word.
    offline = start_proxy(db, mode="replay", forward=False, options={"butter_verify": "false"})
    through(offline)
    replayed = run_agent(client(recorded.key), "1234")
    assert outcome(replayed) == outcome(recorded.plain) and replayed["cache"] == ["hit", "hit", "hit"]
    assert outcome(run_agent(client(recorded.key), "9876", stream=True)) == outcome(recorded.streamed)
    assert len(provider.calls) == calls


def test_import_into_a_shared_namespace_serves_any_key_and_merges_without_duplicates(
        recorded, start_proxy, through, provider, tmp_path):
    export = tmp_path / "recording.jsonl"
    butter("export", "--out", str(export), db=recorded.db)
    ci = tmp_path / "ci-db"
    butter("import", str(export), "--namespace", "ci", db=ci)
    again = butter_json("import", str(export), "--namespace", "ci", db=ci)
    assert again["added"] == {"nodes": 0, "replies": 0, "stats": 0, "aux": 0}
    [group] = butter_json("stats", db=ci)["groups"]
    assert group["namespace"] == "ns:ci" and group["nodes"] == 12

    calls = len(provider.calls)
    offline = start_proxy(ci, mode="replay", forward=False, options={"butter_namespace": "ci"})
    through(offline)
    assert outcome(run_agent(client("sk-ci-" + uuid.uuid4().hex), "9876")) == outcome(recorded.streamed)
    assert len(provider.calls) == calls


def test_import_refuses_an_export_from_a_newer_butter(recorded, tmp_path):
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"type": "butter-export", "version": 99}) + "\n")
    fresh = tmp_path / "db"
    done = butter("import", str(newer), db=fresh, expect=1)
    assert "format version 99" in done.stderr and "Upgrade butter" in done.stderr
    assert not (fresh / "data.mdb").exists()


# -- import-flows ------------------------------------------------------------------------------

def test_import_flows_from_a_plain_mitmdump_recording_replays_offline(
        confdir, provider, tls, start_proxy, through, api_key, tmp_path):
    flows = tmp_path / "agent.flows"
    plain_mitmdump = Proxy(confdir, tmp_path / "unused", tmp_path / "mitmdump-w.log", butter=False,
                           upstream=f"127.0.0.1:{provider.port}", upstream_ca=tls[0],
                           options={"save_stream_file": str(flows), "connection_strategy": "lazy"})
    try:
        through(plain_mitmdump)
        plain = run_agent(client(api_key), "1234")
        streamed = run_agent(client(api_key), "5555", stream=True)
    finally:
        plain_mitmdump.stop()
    assert len(provider.calls) == 6

    db = tmp_path / "db"
    report = butter_json("import-flows", str(flows), db=db)
    assert report["recorded"] == 6 and report["formats"] == {"openai-chat": 6} and report["templates_learned"] > 0
    assert "recorded 6 LLM exchange(s)" in butter("import-flows", str(flows), db=tmp_path / "db2").stdout

    # Offline, nothing can verify a learned template: this suite serves them on induction's word.
    offline = start_proxy(db, mode="replay", forward=False, options={"butter_verify": "false"})
    through(offline)
    assert outcome(run_agent(client(api_key), "1234", stream=True)) == outcome(plain)
    replayed = run_agent(client(api_key), "5555")
    assert outcome(replayed) == outcome(streamed) and replayed["cache"] == ["hit", "hit", "hit"]
    # Import learned templates from the two runs, as the proxy would have:
    # an order never recorded is served offline with its own values.
    unseen = run_agent(client(api_key), "9876")
    assert unseen["answer"] == "Refunded 17.0 for order 9876 (Bo Chen)." and unseen["cache"] == ["hit"] * 3
    assert len(provider.calls) == 6


# -- reading while a proxy serves and records -----------------------------------------------------

def test_the_cli_reads_and_exports_while_a_proxy_is_mid_recording(start_proxy, through, provider, api_key, tmp_path):
    db = tmp_path / "live-db"
    proxy = start_proxy(db)
    through(proxy)
    run_agent(client(api_key), "1234")
    assert butter_json("stats", db=db)["totals"]["replies"] == 3

    # Hold a streamed reply half-way: the proxy is recording while the CLI reads.
    halfway, release = threading.Event(), threading.Event()

    def hold(i: int) -> None:
        if i == 3:
            halfway.set()
            release.wait(30)

    full = openai_chat.completion({"content": "Refunded 17.0 for order 9876 (Bo Chen)."}, "gpt-4o-mini")
    provider.handler = lambda call: StreamReply(openai_chat.stream_chunks(full, False), before_chunk=hold)
    answer: dict = {}
    sdk = threading.Thread(target=lambda: answer.setdefault("text", "".join(
        c.choices[0].delta.content or "" for c in client(api_key).chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "Please refund order 9876."}]))))
    sdk.start()
    try:
        assert halfway.wait(30)
        during = butter_json("stats", db=db)["totals"]
        tree = butter("tree", db=db).stdout
        export = butter("export", db=db).stdout.splitlines()
    finally:
        release.set()
        sdk.join(30)
    kinds = [json.loads(line)["type"] for line in export[1:]]
    assert during["replies"] == 3 and "order 1234" in tree and "order 9876" not in tree
    assert (kinds.count("node"), kinds.count("reply")) == (7, 3)
    assert answer["text"] == "Refunded 17.0 for order 9876 (Bo Chen)."

    # Once the stream has ended the proxy records it. Its `response` hook runs
    # after the client has the last byte, so wait (no timing assertion) for
    # the record's log line; a request to the same point then proves it landed.
    deadline = time.monotonic() + 30
    while proxy.log_text().count("butter: recorded ") < 4:
        assert time.monotonic() < deadline, proxy.log_text()[-2000:]
        time.sleep(0.05)
    again = client(api_key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Please refund order 9876."}])
    assert again.headers["butter-cache"] == "hit"
    assert butter_json("stats", db=db)["totals"]["replies"] == 4
    proxy.stop()
    assert lmdb.verify.verify(str(db)) == []
