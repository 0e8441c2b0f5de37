"""Templates over real-shaped tool results, end to end: a real mitmdump with
butter, the openai SDK, and the evaluation's oracle as the fake provider
(tests/fakes over TLS on loopback), playing the evaluation's own multi-step
workflows (bench/eval/tool_workflows.py), so this is also the CI smoke test
of those generators.

A tool that answers with a bare id, JSON results whose lists differ in
length and whose objects have optional fields: after two recorded runs and
the live traffic that verifies a learned template (store/trust.py), a new
run is served from its first step to its last, with its own values, and no
provider call."""
from __future__ import annotations

import time
import uuid

import openai
import pytest

from bench.eval import tool_workflows
from bench.eval.driver import RunResult, play
from bench.eval.oracle import Oracle
from bench.eval.script import Run
from tests.e2e.harness import Proxy
from tests.fakes.openai_chat import completion
from tests.fakes.provider import JSONReply

VERIFIED = "butter: verified "


def sdk_for(proxy: Proxy, api_key: str) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(proxy=proxy.url, verify=str(proxy.ca_cert), trust_env=False)
    return openai.OpenAI(api_key=api_key, http_client=http, max_retries=0, timeout=30)


class Agent:
    """The evaluation's agent through one proxy, waiting (not timing) for the
    proxy's background work after each run: verifications concluded, every
    recorded miss learned from."""

    def __init__(self, proxy: Proxy, provider, oracle: Oracle):
        self.proxy, self.provider, self.oracle = proxy, provider, oracle
        self.sdk = sdk_for(proxy, "sk-test-" + uuid.uuid4().hex)
        self.verifications = 0

    def run(self, run: Run, stream: bool = False) -> RunResult:
        result = play(self.sdk, self.oracle, run, stream=stream)
        assert not result.wrong_misses, "the oracle and the scripted answer disagree (harness bug)"
        self.verifications += sum(1 for s in result.steps if s.status == "verify")
        self.settle()
        return result

    def settle(self) -> None:
        deadline = time.monotonic() + 60
        while self.proxy.log_text().count(VERIFIED) < self.verifications:
            assert time.monotonic() < deadline, self.proxy.log_text()[-3000:]
            time.sleep(0.05)
        model = f"settle-{uuid.uuid4().hex[:12]}"
        self.sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                         extra_headers={"x-eval-run": "settle"})
        while f"butter: induction openai-chat {model}:" not in self.proxy.log_text():
            assert time.monotonic() < deadline, self.proxy.log_text()[-3000:]
            time.sleep(0.05)


@pytest.fixture
def oracle(provider) -> Oracle:
    oracle = Oracle()
    answer = oracle.handler

    def handler(call):
        if call.headers.get("x-eval-run") == "settle":  # the settling request: any answer
            return JSONReply(completion({"content": "hi"}, call.json["model"]))
        return answer(call)

    provider.handler = handler
    return oracle


def workflow(name: str, oracle: Oracle):
    workload = tool_workflows.build(recorded=2, held_out=2, probation=20, seed="e2e")
    flow = next(f for f in workload.flows if f.name.startswith(name))
    for run in workload.runs():
        oracle.register(run)
    return flow


def statuses(result: RunResult) -> list[str]:
    return [s.status for s in result.steps]


# No sampled re-checks: a re-check is a provider call off the request path,
# and this test counts provider calls.
QUIET = {"butter_verify_inputs_sample": 0, "butter_verify_sample": 0}


@pytest.mark.parametrize("name", ["order-status", "flight-booking"], ids=["bare-id", "varying-list"])
def test_a_real_shaped_workflow_is_served_whole_after_its_templates_are_promoted(start_proxy, provider, oracle, name):
    # order-status: a tool answers with the bare user id, then JSON with
    # optional fields and lists of 1-4 orders, items and shipment events.
    # flight-booking: a search whose result list is 1-4 flights long, the
    # first one's number and price flowing into the booking call.
    flow = workflow(name, oracle)
    # Prices and zip codes drawn at random keep landing beyond the range verified so far, and
    # butter_verify_ranges (on by default) verifies each of those first: held-out runs are then
    # served only after many more live runs (docs/evaluation.md). This test is about the shapes
    # induction lines up, so freed values are served here as with the option off.
    agent = Agent(start_proxy(options={**QUIET, "butter_verify_ranges": "false"}), provider, oracle)
    for run in flow.recorded:
        assert "hit" not in statuses(agent.run(run))
    # Live traffic pays the probation: each learned template is verified
    # against the provider until promoted, and its decision inputs (values
    # that never reach its reply) until enough distinct ones agreed.
    live = []
    for run in flow.probation:
        live.append(agent.run(run))
        if all(statuses(r) == ["hit"] * len(r.steps) for r in live[-3:]) and len(live) >= 3:
            break
    assert not any(r.wrong_hits for r in live), "a template served a wrong reply during its probation"
    assert "verify" in statuses(live[0]), "learned templates were served unverified"
    calls = len(provider.calls)
    for run in flow.held_out:
        result = agent.run(run, stream=run is flow.held_out[-1])
        assert statuses(result) == ["hit"] * len(run.steps()), ([(s.step, s.status) for s in result.steps],
                                                                [statuses(r) for r in live])
        assert not result.wrong_hits
    assert len(provider.calls) == calls + len(flow.held_out), "only the settling requests reach the provider"


def test_with_verification_off_a_varying_list_workflow_is_served_after_two_runs(start_proxy, provider, oracle):
    flow = workflow("flight-booking", oracle)
    agent = Agent(start_proxy(options={"butter_verify": "false"}), provider, oracle)
    for run in flow.recorded:
        agent.run(run)
    result = agent.run(flow.held_out[0])
    assert statuses(result) == ["hit"] * len(flow.held_out[0].steps())
    assert not result.wrong_hits

