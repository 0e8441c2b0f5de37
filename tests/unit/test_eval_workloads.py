"""The evaluation's workload generators (bench/eval): a smoke test in CI.

The evaluation itself is a script (slow); this checks that its generated
runs mean what the evaluation says they mean. The tool workflows are also
played end to end in tests/e2e/test_structured_templates_e2e.py.
"""
from __future__ import annotations

import json

from bench.eval import lookalikes, tool_workflows


def outline(run, first_word: bool = True) -> tuple:
    """What a run does, values aside: tool names called, or the answer (its first word: yes or no)."""
    return tuple(s.reply.tool_calls[0][0] if s.reply.tool_calls else
                 (s.reply.content.split()[0] if first_word else "answer") for s in run.steps())


def test_each_look_alike_shares_its_flows_words_but_gets_another_answer():
    workload = lookalikes.build(recorded=2, held_out=2, negatives=2, probation=6, seed="smoke")
    assert [f.name for f in workload.flows] == list(lookalikes.SETS)
    flows = {f.name: f for f in workload.flows}
    for label, runs in workload.negatives.items():
        for run in runs:
            flow = flows[run.flow]
            assert run.system == flow.recorded[0].system
            same_outline = outline(run) == outline(flow.recorded[0])
            rewritten = json.dumps(run.steps()[0].reply.tool_calls) != json.dumps(flow.recorded[0].steps()[0].reply.tool_calls)
            # Either another decision, or (model-rewritten values) the same tools with a value the user never wrote.
            assert not same_outline or (run.flow == "weather-city" and rewritten), label
            if run.flow == "weather-city":
                query = run.steps()[0].reply.tool_calls[0][1]["query"]
                assert query not in run.turns[0].user
    for flow in workload.flows:  # recorded and held-out runs of a flow: one decision
        assert len({outline(r) for r in flow.recorded + flow.held_out}) == 1, flow.name
        if flow.name in lookalikes.FIXED_QUESTION:  # the same question; the tool's lists differ
            assert len({r.steps()[0].results[0] for r in flow.recorded}) == len(flow.recorded)
        else:
            assert len({r.turns[0].user for r in flow.recorded}) == len(flow.recorded)


def test_tool_workflows_have_four_or_more_steps_bare_ids_and_lists_of_varying_length():
    workload = tool_workflows.build(recorded=2, held_out=2, probation=6, seed="smoke")
    for flow in workload.flows:
        runs = flow.recorded + flow.held_out + flow.probation
        assert all(len(r.steps()) >= 4 for r in runs), flow.name
        assert len({outline(r, first_word=False) for r in runs}) == 1, flow.name
    order = next(f for f in workload.flows if f.name.startswith("order-status"))
    bare = order.recorded[0].steps()[0].results[0]
    assert not bare.startswith(("{", "[")) and " " not in bare  # the whole result is one id
    flights = next(f for f in workload.flows if f.name.startswith("flight-booking"))
    lengths = {len(json.loads(r.steps()[1].results[0])) for r in flights.recorded + flights.held_out + flights.probation}
    assert len(lengths) > 1


def test_late_look_alikes_open_with_live_runs_on_the_recorded_side_and_stated_sets_quote_the_deciding_value():
    workload = lookalikes.build_late(held_out=2, negatives=2, probation=8, lead=3)
    assert [f.name for f in workload.flows] == list(lookalikes.SETS)
    for flow in workload.flows:
        recorded = outline(flow.recorded[0])
        assert [outline(r) == recorded for r in flow.probation[:3]] == [True] * 3, flow.name
    stated = {f.name: f for f in workload.flows}["primes-stated"]
    for run in stated.recorded + workload.negatives[lookalikes.SETS["primes-stated"][0]]:
        number = run.turns[0].user.split()[1]
        assert number in run.steps()[0].reply.content  # the value reaches the reply, beside its verdict


def test_the_payment_look_alike_passes_the_amount_into_a_call_that_the_amount_decides():
    workload = lookalikes.build(recorded=2, held_out=2, negatives=2, probation=6, seed="smoke", only=("payment-limit",))
    (flow,) = workload.flows
    for run in flow.recorded + workload.negatives[lookalikes.SETS["payment-limit"][0]]:
        amount = run.turns[0].user.split()[1]
        (name, args), = run.steps()[0].reply.tool_calls
        assert str(args["amount"]) == amount  # the value reaches the call either way...
        assert name == ("send_payment" if float(amount) <= 1000 else "request_approval")  # ...and decides it
    assert {r.steps()[0].reply.tool_calls[0][0] for r in flow.recorded} == {"send_payment"}
