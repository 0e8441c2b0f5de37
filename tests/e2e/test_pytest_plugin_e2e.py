"""The example project (examples/agent-tests) tested through butter's pytest plugin.

Each run is a real `pytest` subprocess in a copy of the example, with the
plugin (`-p butter.cli.pytest_plugin`, as the `butter` entry point loads it for a
user) starting a real mitmdump. In auto and record mode what butter forwards
goes to the fake OpenAI provider over TLS (tests/e2e/upstream_redirect.py, as
in every e2e test); in replay mode the redirect points at a closed port, so
any request that reached the network would fail. The suite has a plain, a
streamed, a Node subprocess and three shared-namespace tests (the third
answered by the template learned from the other two: verified against the
provider when recorded, replayed from the cassette after).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.harness import REDIRECT, ROOT
from tests.fakes import openai_chat
from tests.fakes.provider import Call, FakeProvider, JSONReply, StreamReply

EXAMPLE = ROOT / "examples" / "agent-tests"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"  # the example's Node SDKs (same pins as tests/node)
NODE = shutil.which("node")
TESTS = ["test_refund_is_made_and_confirmed", "test_refund_streamed", "test_node_agent_refunds",
         "test_refund_each_customer[2001]", "test_refund_each_customer[2002]",
         "test_a_new_customer_meets_the_learned_template"]
CASSETTES = ["refunds.jsonl", "test_support_agent/test_node_agent_refunds.jsonl",
             "test_support_agent/test_refund_is_made_and_confirmed.jsonl",
             "test_support_agent/test_refund_streamed.jsonl"]
FAKE_ID = re.compile(rb"\b(chatcmpl-|call_)[0-9a-f]{16}\b")
# Provider calls of a recording from scratch: three per agent run, the new
# customer's included: the template learned from the two before it is on
# probation, so its answers are checked against the provider (docs/trust.md).
RECORDED_CALLS = 3 * 6


@dataclass
class Run:
    returncode: int
    output: str

    def outcome(self, test: str) -> str | None:
        found = re.search(rf"^(PASSED|FAILED|SKIPPED|ERROR)\S* tests/test_support_agent\.py::{re.escape(test)}(?: |$)",
                          self.output, re.M)
        return found.group(1) if found else None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def copy_example(target: Path, *, cassettes: bool) -> Path:
    ignore = ["node_modules"] + ([] if cassettes else ["cassettes"])
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(*ignore))
    if NODE_MODULES.is_dir():
        (target / "node" / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    return target


def run_pytest(project: Path, mode: str, upstream: str, ca: Path, confdir: Path, *args: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(PYTHONPATH=str(ROOT), BUTTER_CONFDIR=str(confdir), OPENAI_API_KEY="sk-test-example",
               # Only this plugin (and pytest's own): as a user's run with butter installed.
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    # NAME=VALUE in one argument: pytest would take a separate path-like value for a test path.
    cmd = [sys.executable, "-m", "pytest", "-p", "butter.cli.pytest_plugin", "-p", "no:cacheprovider", "-rA",
           f"--butter-mode={mode}", f"--butter-proxy-script={REDIRECT}",
           f"--butter-proxy-option=test_upstream={upstream}",
           f"--butter-proxy-option=ssl_verify_upstream_trusted_ca={ca}", *args]
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    return Run(done.returncode, done.stdout + done.stderr)


def cassette_files(project: Path) -> dict[str, bytes]:
    folder = project / "tests" / "cassettes"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jsonl"))}


def mtimes(project: Path) -> dict[str, int]:
    folder = project / "tests" / "cassettes"
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*.jsonl")}


def same_answer_same_ids(call: Call) -> JSONReply | StreamReply:
    """The fake OpenAI model, with the ids it makes up derived from the request.

    butter keeps the provider's tool-call ids in a recording (an agent may echo
    them), so a provider with fresh ids on every call, like the real one (whose
    text varies too), never records the same cassette twice. This one answers
    the same request with the same bytes: what byte-identical re-recording needs.
    """
    reply = openai_chat.handler(call)
    stable: dict[bytes, bytes] = {}

    def fix(m: re.Match) -> bytes:
        if m.group(0) not in stable:
            stable[m.group(0)] = m.group(1) + hashlib.sha256(call.body + bytes([len(stable)])).hexdigest()[:16].encode()
        return stable[m.group(0)]

    if isinstance(reply, JSONReply):
        reply.body = json.loads(FAKE_ID.sub(fix, json.dumps(reply.body).encode()))
    else:
        reply.chunks = [FAKE_ID.sub(fix, chunk) for chunk in reply.chunks]
    return reply


@pytest.fixture(scope="module")
def fake(tls) -> Iterator[FakeProvider]:
    _, cert, key = tls
    provider = FakeProvider(cert, key, same_answer_same_ids)
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider, tls) -> tuple[Path, Run, int]:
    """The example without its cassettes, run once in auto mode against the fake provider."""
    if NODE and not NODE_MODULES.is_dir():
        pytest.fail("node is on PATH but tests/node has no node_modules: run scripts/setup-env.sh (or npm install there)")
    folder = tmp_path_factory.mktemp("plugin-example")
    project = copy_example(folder / "project", cassettes=False)
    before = len(fake.calls)
    run = run_pytest(project, "auto", f"127.0.0.1:{fake.port}", tls[0], folder / "conf")
    return project, run, len(fake.calls) - before


def expected_outcome(test: str) -> str:
    return "SKIPPED" if test == "test_node_agent_refunds" and NODE is None else "PASSED"


def test_auto_mode_records_a_cassette_per_test_and_one_per_shared_namespace(recorded):
    project, run, calls = recorded
    assert run.returncode == 0, run.output
    assert {t: run.outcome(t) for t in TESTS} == {t: expected_outcome(t) for t in TESTS}, run.output
    expected = [c for c in CASSETTES if NODE is not None or "node" not in c]
    assert sorted(cassette_files(project)) == expected
    assert calls == RECORDED_CALLS - (0 if NODE else 3)


def test_cassettes_hold_no_credential_and_no_run_to_run_values(recorded):
    project, _, _ = recorded
    text = b"".join(cassette_files(project).values()).decode()
    assert "sk-test-example" not in text
    assert not re.search(r"authorization|x-api-key|bearer", text, re.I)
    assert '"created"' not in text and '"stats"' not in text.replace('"stats": 0', "")
    assert '"first_seen": 0, "last_seen": 0' in text


def test_the_committed_example_cassettes_are_what_a_recording_from_scratch_writes(recorded):
    project, run, _ = recorded
    assert run.returncode == 0, run.output
    fresh = cassette_files(project)
    committed = cassette_files(EXAMPLE)
    assert committed.keys() == set(CASSETTES)
    assert {name: fresh[name] == committed[name] for name in fresh} == {name: True for name in fresh}


def test_replay_with_the_provider_down_passes_with_zero_network_and_writes_nothing(recorded, fake, tls, tmp_path):
    project, _, _ = recorded
    before_files, before_times, before_calls = cassette_files(project), mtimes(project), len(fake.calls)
    run = run_pytest(project, "replay", f"127.0.0.1:{closed_port()}", tls[0], tmp_path / "conf")
    assert run.returncode == 0, run.output
    assert {t: run.outcome(t) for t in TESTS} == {t: expected_outcome(t) for t in TESTS}, run.output
    assert len(fake.calls) == before_calls
    assert cassette_files(project) == before_files and mtimes(project) == before_times


def test_a_changed_prompt_fails_the_test_with_where_it_left_the_recording(recorded, fake, tls, tmp_path):
    project = tmp_path / "changed"
    shutil.copytree(recorded[0], project, symlinks=True)
    agent = project / "support_agent.py"
    agent.write_text(agent.read_text().replace("answer in one sentence", "answer in two sentences"))
    before_calls = len(fake.calls)
    run = run_pytest(project, "replay", f"127.0.0.1:{closed_port()}", tls[0], tmp_path / "conf",
                     "-k", "test_refund_is_made_and_confirmed")
    assert run.returncode == 1, run.output
    assert run.outcome("test_refund_is_made_and_confirmed") == "FAILED"
    cassette = project / "tests/cassettes/test_support_agent/test_refund_is_made_and_confirmed.jsonl"
    assert f"1 LLM request(s) of this test were never recorded in {cassette}" in run.output
    assert "request 1: POST api.openai.com/v1/chat/completions" in run.output
    assert "MISS (diverged): message 1 (system) is new at this point" in run.output
    assert '-      "text": "You are a support agent for a web shop. Use the tools, then answer in one sentence.",' \
        in run.output
    assert '+      "text": "You are a support agent for a web shop. Use the tools, then answer in two sentences.",' \
        in run.output
    assert "--butter-mode=auto" in run.output
    # The SDK's exception is a footnote, not the failure: no traceback into the SDK.
    assert "_base_client.py" not in run.output
    assert len(fake.calls) == before_calls


def test_re_recording_unchanged_tests_leaves_their_cassettes_byte_identical(recorded, fake, tls, tmp_path):
    project, _, _ = recorded
    before_files, before_times, before_calls = cassette_files(project), mtimes(project), len(fake.calls)
    run = run_pytest(project, "record", f"127.0.0.1:{fake.port}", tls[0], tmp_path / "conf",
                     "-k", "test_refund_is_made_and_confirmed or test_refund_streamed or test_node_agent_refunds")
    assert run.returncode == 0, run.output
    assert len(fake.calls) - before_calls == 3 * (3 if NODE else 2)  # really recorded again
    assert cassette_files(project) == before_files
    assert mtimes(project) == before_times  # not even rewritten
