"""`butter run -- CMD` as a person types it: a real `butter` process starts its own mitmdump,
runs an unmodified openai-SDK agent (a Python subprocess) through it, and prints a summary.

The agent keeps the provider's real host name; the test-only redirect addon
(`--script tests/e2e/upstream_redirect.py`) sends what butter forwards to the
fake provider over TLS on loopback. HOME and the CA's config dir are temp dirs.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from butter.cli.proxy_process import free_port
from tests.e2e.harness import REDIRECT, ROOT
from tests.fakes import openai_chat, smolagents_chat
from tests.fakes.provider import FakeProvider

NODE = shutil.which("node")
NODE_DIR = ROOT / "tests" / "node"

AGENT = """
import json, sys
sys.path.insert(0, {root!r})
import openai
from tests.fakes.openai_chat import run_agent

order = sys.argv[1]
client = openai.OpenAI(api_key="sk-test-run", max_retries=0, timeout=20)
try:
    result = run_agent(client, order)
except openai.APIStatusError as e:
    print("agent error", e.status_code, e.message)
    sys.exit(0 if "--tolerant" in sys.argv else 1)
print(json.dumps(result))
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An agent's project directory: butter's database goes to .butter/db in it."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "agent.py").write_text(AGENT.format(root=str(ROOT)))
    monkeypatch.delenv("BUTTER_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return folder


def butter_run(project: Path, upstream: str, tls, *args: str, cmd: list[str] | None = None, cwd: Path | None = None,
               env: dict[str, str] | None = None, trust_upstream: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    report = project / f"report-{len(list(project.glob('report-*')))}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    trusted = ["--set", f"ssl_verify_upstream_trusted_ca={tls[0]}"] if trust_upstream else []
    done = subprocess.run(
        [sys.executable, "-m", "butter.cli.main", "run", "--script", str(REDIRECT), "--set", f"test_upstream={upstream}",
         *trusted, "--report", str(report), *args,
         "--", *(cmd or [sys.executable, "agent.py", "1234"])],
        cwd=cwd or project, env=env, capture_output=True, text=True, timeout=120)
    summary = json.loads(report.read_text()) if report.exists() else {}
    return done, summary


def test_second_run_of_the_same_agent_is_all_hits_and_the_summary_says_so(project: Path, provider: FakeProvider, tls):
    upstream = f"127.0.0.1:{provider.port}"
    first, s1 = butter_run(project, upstream, tls)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["answer"] == "Refunded 42.5 for order 1234 (Ana Ruiz)."
    assert (s1["requests"], s1["hits"], s1["misses"], s1["recorded"]) == (3, 0, 3, 3)
    assert len(provider.calls) == 3
    assert (project / ".butter" / "db" / "data.mdb").is_file()

    second, s2 = butter_run(project, upstream, tls)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["cache"] == ["hit", "hit", "hit"]
    assert (s2["requests"], s2["hits"], s2["misses"], s2["provider_calls_saved"]) == (3, 3, 0, 3)
    assert s2["tokens_saved"] == 3 * 62  # the fake provider's usage.total_tokens per reply
    assert len(provider.calls) == 3  # no provider call in the second run
    assert "butter run: 3 LLM request(s): 3 hit(s), 0 miss(es)" in second.stderr
    assert "provider calls saved 3, tokens saved 186" in second.stderr


def test_replay_strict_with_the_provider_down_serves_what_was_recorded_and_fails_on_the_rest(
        project: Path, provider: FakeProvider, tls):
    recorded, _ = butter_run(project, f"127.0.0.1:{provider.port}", tls)
    assert recorded.returncode == 0, recorded.stderr
    down = f"127.0.0.1:{free_port()}"  # nothing listens there

    replayed, s = butter_run(project, down, tls, "--mode", "replay", "--strict")
    assert replayed.returncode == 0, replayed.stderr
    assert (s["hits"], s["replay_misses"]) == (3, 0)

    # A conversation never recorded: the agent tolerates the error, --strict still fails the run.
    missed, s = butter_run(project, down, tls, "--mode", "replay", "--strict",
                           cmd=[sys.executable, "agent.py", "5555", "--tolerant"])
    assert "agent error 404" in missed.stdout
    assert missed.returncode == 3, missed.stderr
    assert s["replay_misses"] == 1 and s["exit_code"] == 0
    assert s["replay_miss_list"][0]["format"] == "openai-chat"
    assert s["replay_miss_list"][0]["where"] == "left the tree after 1 of 2 message(s): message 2 (user) is new at this point"
    assert "1 replay-miss(es)" in missed.stderr and "--strict: exiting 3" in missed.stderr
    assert len(provider.calls) == 3  # only the recording run reached the provider

    # `butter explain --last-miss` replays that miss from the database, with no credential given.
    explained = subprocess.run([sys.executable, "-m", "butter.cli.main", "explain", "--last-miss"], cwd=project,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert explained.returncode == 0, explained.stderr
    assert "MISS (diverged): message 2 (user) is new at this point" in explained.stdout
    assert 'differs   message 2: user: "Please refund order 5555."' in explained.stdout
    assert "last miss openai-chat /v1/chat/completions" in explained.stderr
    raw = b"".join(p.read_bytes() for p in (project / ".butter" / "db").glob("*.mdb"))
    assert b"sk-test-run" not in raw  # the kept request carries no credential


def test_replay_without_strict_exits_with_the_commands_code(project: Path, provider: FakeProvider, tls):
    done, s = butter_run(project, f"127.0.0.1:{free_port()}", tls, "--mode", "replay",
                         cmd=[sys.executable, "agent.py", "5555"])
    assert done.returncode == 1  # the agent's own failure (a 404 it did not catch)
    assert s["replay_misses"] == 1


def test_exit_code_and_output_are_the_commands(project: Path, provider: FakeProvider, tls):
    done, s = butter_run(project, f"127.0.0.1:{provider.port}", tls,
                         cmd=[sys.executable, "-c", "import os, sys; print(os.environ['HTTPS_PROXY']); sys.exit(7)"])
    assert done.returncode == 7
    assert done.stdout.startswith("http://127.0.0.1:")
    assert s["requests"] == 0 and s["exit_code"] == 7


def test_a_command_that_does_not_exist_exits_127(project: Path, provider: FakeProvider, tls):
    done, _ = butter_run(project, f"127.0.0.1:{provider.port}", tls, cmd=["no-such-command-for-butter"])
    assert done.returncode == 127
    assert "no-such-command-for-butter: command not found" in done.stderr


def test_curl_goes_through_butter_run_with_the_trust_bundle(project: Path, provider: FakeProvider, tls):
    # curl trusts butter's CA only through CURL_CA_BUNDLE, which butter run sets.
    done, _ = butter_run(project, f"127.0.0.1:{provider.port}", tls,
                         cmd=["curl", "-sS", "--fail", "https://butter.local/health"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["butter"] == "ok"


@pytest.mark.skipif(NODE is None or not (NODE_DIR / "node_modules" / "undici").is_dir(),
                    reason="needs Node 20+ and tests/node's npm install")
def test_node_openai_agent_through_butter_run_records_then_replays(project: Path, provider: FakeProvider, tls):
    # No proxy settings of its own: butter run's NODE_OPTIONS preload (undici found in the agent's
    # project, here tests/node) and NODE_EXTRA_CA_CERTS are all the Node agent gets.
    scenario = json.dumps({"model": "gpt-4o-mini", "system": openai_chat.SYSTEM, "user": "Please refund order 1234.",
                           "tools": openai_chat.TOOLS, "orders": openai_chat.ORDERS, "stream": True})
    cmd = [NODE, "openai_agent.mjs", scenario]
    env = {"OPENAI_API_KEY": "sk-test-node-run", "NODE_OPTIONS": "", "OPENAI_BASE_URL": ""}
    upstream = f"127.0.0.1:{provider.port}"
    first, s1 = butter_run(project, upstream, tls, "--db", str(project / "db"), cmd=cmd, cwd=NODE_DIR, env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["cache"] == ["miss", "miss", "miss"]
    second, s2 = butter_run(project, upstream, tls, "--db", str(project / "db"), cmd=cmd, cwd=NODE_DIR, env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1])["cache"] == ["hit", "hit", "hit"]
    assert (s1["misses"], s2["hits"], len(provider.calls)) == (3, 3, 3)


def test_upstream_insecure_reaches_a_self_signed_upstream_that_otherwise_fails_with_a_hint(
        project: Path, provider: FakeProvider, tls):
    # The fake provider's certificate comes from a CA nobody trusts unless told.
    upstream = f"127.0.0.1:{provider.port}"
    refused, s = butter_run(project, upstream, tls, "--log", str(project / "proxy.log"), trust_upstream=False,
                            cmd=[sys.executable, "agent.py", "1234", "--tolerant"])
    assert "agent error 502" in refused.stdout
    assert s["recorded"] == 0 and not provider.calls
    assert "--upstream-insecure" in (project / "proxy.log").read_text()

    served, s = butter_run(project, upstream, tls, "--upstream-insecure", trust_upstream=False)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)["answer"] == "Refunded 42.5 for order 1234 (Ana Ruiz)."
    assert s["recorded"] == 3 and len(provider.calls) == 3


def test_butter_proxy_prints_lines_that_work_when_pasted_and_stops_on_ctrl_c(project: Path, tmp_path: Path):
    # SIGINT as a terminal's Ctrl-C delivers it, even when the suite itself runs in the
    # background of a non-interactive shell (which starts every child with SIGINT ignored).
    proc = subprocess.Popen([sys.executable, "-m", "butter.cli.main", "proxy", "--port", "0", "--mode", "replay",
                             "--reverse", "openai"], cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C stops"):
                break
        text = "\n".join(lines)
        assert "mode      replay" in text
        assert f"database  {(project / '.butter' / 'db').resolve()}" in text
        exports = {}
        for line in lines:
            if line.strip().startswith("export "):
                for word in shlex.split(line.strip())[1:]:
                    name, _, value = word.partition("=")
                    exports[name] = value
        assert exports["OPENAI_BASE_URL"].startswith("https://localhost:") and exports["OPENAI_BASE_URL"].endswith("/v1")
        assert Path(exports["SSL_CERT_FILE"]).is_file() and Path(exports["NODE_EXTRA_CA_CERTS"]).is_file()
        assert Path(exports["SSL_CERT_FILE"]).parent == Path(os.environ["BUTTER_CONFDIR"])
        env = {**os.environ, **{k: v for k, v in exports.items() if k not in ("OPENAI_BASE_URL",)}}
        done = subprocess.run(["curl", "-sS", "--fail", "https://butter.local/health"], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["mode"] == "replay"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest


def test_smolagents_records_once_then_replays_offline_with_the_ids_it_echoed(project: Path, provider: FakeProvider, tls):
    pytest.importorskip("smolagents")
    # smolagents writes each tool call's id into its next request's text; an exact hit must serve
    # the recorded ids, or the replayed run's next request would name ids never recorded.
    provider.handler = smolagents_chat.handler
    cmd = [sys.executable, str(ROOT / "tests" / "e2e" / "smolagents_agent.py"), "1234"]
    first, s1 = butter_run(project, f"127.0.0.1:{provider.port}", tls, cmd=cmd)
    assert first.returncode == 0, first.stderr
    recorded = json.loads(first.stdout.splitlines()[-1])
    assert recorded["answer"] == "Refunded order 1234."
    assert recorded["calls"] == [["get_order", "1234"], ["refund", "1234", 42.5]]
    assert s1["recorded"] == 3 and len(provider.calls) == 3

    offline, s2 = butter_run(project, f"127.0.0.1:{free_port()}", tls, "--mode", "replay", "--strict", cmd=cmd)
    assert offline.returncode == 0, offline.stderr
    replayed = json.loads(offline.stdout.splitlines()[-1])
    assert (s2["hits"], s2["replay_misses"]) == (3, 0)
    assert replayed == recorded  # the same answer, calls and the very ids recorded
    assert len(provider.calls) == 3


def test_a_sigterm_to_butter_run_reaches_the_command_and_the_proxy_is_stopped(project: Path, tmp_path: Path):
    report = tmp_path / "report.json"
    sleeper = [sys.executable, "-c", "import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\nprint('ready', flush=True)\ntime.sleep(60)"]
    proc = subprocess.Popen([sys.executable, "-m", "butter.cli.main", "run", "--report", str(report), "--", *sleeper],
                            cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 42, err
    summary = json.loads(report.read_text())
    assert summary["exit_code"] == 42 and not summary.get("report_missing")  # the proxy stopped cleanly
