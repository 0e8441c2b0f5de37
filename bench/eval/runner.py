"""Record k runs per flow, measure held-out runs and look-alikes after each k.

For k = 1, 2, 3: the k-th recorded run of every flow goes through the `auto`
proxy (as production traffic would: misses reach the oracle provider and are
recorded, hits are served); then, once the proxy is quiet (induction runs off
the request path), every held-out run of every flow and every look-alike run
goes through the `replay` proxy, which never contacts the provider and
records nothing, so the numbers for k are not polluted by the measurement.
All runs of a workload share one credential, hence one namespace: flows of
one agent can confuse each other, as they would for real.
"""
from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .driver import RunResult, play
from .env import EvalEnv
from .script import Run, request_keys
from .workloads import Workload

MAX_EXAMPLES = 5


@dataclass
class Tally:
    runs: int = 0
    requests: int = 0
    hits: int = 0
    wrong_hits: int = 0
    # Wrong by the look-alike's ground truth, but the request was identical to
    # its recorded twin's and the reply is what the twin's ground truth says.
    conflicts: int = 0
    harness_errors: int = 0
    # Where held-out requests missed: "user" (the turn's first request) or
    # "after <tool>" (the request that carries that tool's result).
    misses_at: Counter = field(default_factory=Counter)
    wrong_examples: list[dict] = field(default_factory=list)
    # Why held-out requests missed, as the store explains it (normalised so
    # that the same failure with other values counts once), with one example.
    per_flow: dict = field(default_factory=dict)  # flow -> [hits, requests]
    why: Counter = field(default_factory=Counter)
    why_example: dict = field(default_factory=dict)

    def explain(self, result: RunResult, explain: Callable[[dict], str]) -> None:
        for s in result.steps:
            if s.status == "hit" or s.request is None:
                continue
            try:
                text = explain(s.request)
            except Exception as e:  # an explanation must never stop the measurement
                text = f"(could not explain: {e!r})"
            key = _normalise(text)
            self.why[key] += 1
            self.why_example.setdefault(key, f"{result.run_id} step {s.step}: {text}")

    def add(self, run: Run, result: RunResult, known: dict[str, set[str]] | None = None) -> None:
        """`known`: request key -> the replies recorded runs' ground truths give it."""
        self.runs += 1
        self.requests += len(result.steps)
        self.hits += result.hits
        tally = self.per_flow.setdefault(run.flow, [0, 0])
        tally[0] += result.hits
        tally[1] += len(result.steps)
        self.harness_errors += len(result.wrong_misses)
        triggers = _triggers(run)
        for s in result.steps:
            if s.status != "hit":
                self.misses_at[triggers[s.step]] += 1
        known = dict(known or {})
        if run.twin:
            for key, step in zip(request_keys(run.twin), run.twin.steps()):
                known.setdefault(key, set()).add(step.reply.describe())
        keys = request_keys(run) if result.wrong_hits else []
        for s in result.wrong_hits:
            if s.served in known.get(keys[s.step], ()):
                self.conflicts += 1
                continue
            self.wrong_hits += 1
            if len(self.wrong_examples) < MAX_EXAMPLES:
                self.wrong_examples.append({"run": run.run_id, "step": s.step, "at": triggers[s.step],
                                            "expected": s.expected, "served": s.served})

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def as_dict(self) -> dict:
        return {"runs": self.runs, "requests": self.requests, "hits": self.hits,
                "hit_rate": round(self.hit_rate, 4), "wrong_hits": self.wrong_hits,
                "ground_truth_conflicts": self.conflicts,
                "harness_errors": self.harness_errors, "misses_at": dict(self.misses_at.most_common(8)),
                "wrong_examples": self.wrong_examples, "per_flow": self.per_flow,
                "why_missed": [{"count": n, "reason": k, "example": self.why_example[k][:400]}
                               for k, n in self.why.most_common(8)]}


def _normalise(text: str) -> str:
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r'"[^"]*"', '"…"', text)
    return re.sub(r"\d+", "#", text)


def _induction_reasons(log: str, failures: list[str]) -> dict:
    learned = sum(1 for line in log.splitlines() if "induction" in line and "learned a template" in line)
    reasons: Counter = Counter()
    examples: dict[str, str] = {}
    for reason in failures:
        key = _normalise(reason)[:300]
        reasons[key] += 1
        examples.setdefault(key, reason[:400])
    return {"templates_learned": learned,
            "rejections": [{"count": n, "reason": r, "example": examples[r]} for r, n in reasons.most_common(8)]}


def _triggers(run: Run) -> list[str]:
    out = []
    for turn in run.turns:
        previous = "user" if turn.user is not None else "tools changed"
        for step in turn.steps:
            out.append(previous)
            if step.reply.tool_calls:
                previous = "after " + step.reply.tool_calls[-1][0]
    return out


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def evaluate(env: EvalEnv, workload: Workload, ks: tuple[int, ...] | None = None, stream_every: int = 2,
             deadline: float | None = None) -> dict:
    """The numbers for one workload: per k, held-out and look-alike tallies."""
    ks = ks or workload.ks
    for run in workload.runs():
        env.oracle.register(run)
    api_key = env.new_key()
    log_start, wall_start = env.log_size(), time.time()

    def explain(body: dict) -> str:
        return env.explain(api_key, body)

    auto, replay = env.client(env.auto, api_key), env.client(env.replay, api_key)
    calls_before = len(env.provider.calls)
    recording = Tally()
    per_k: dict[int, dict] = {}
    started = time.monotonic()
    control: dict = {}
    # What each recorded request's ground truth answers, per flow: a served
    # reply that is wrong for this run but right for a byte-identical request
    # of a recorded run shows the data answering one request two ways.
    known: dict[str, dict[str, set[str]]] = {}
    for flow in workload.flows:
        index = known.setdefault(flow.name, {})
        for run in flow.recorded:
            for request, step in zip(request_keys(run), run.steps()):
                index.setdefault(request, set()).add(step.reply.describe())
    for k in range(1, max(ks) + 1):
        for flow in workload.flows:
            if len(flow.recorded) >= k:
                recording.add(flow.recorded[k - 1], play(auto, env.oracle, flow.recorded[k - 1]), known[flow.name])
        _progress(f"{workload.name}: recorded run {k} of {len(workload.flows)} flows "
                  f"({recording.requests} requests so far, {recording.hits} served from the tree)")
        env.settle()
        if k not in ks:
            continue
        per_k[k] = _measure(env, replay, workload, known, explain, stream_every)
        negatives = per_k[k]["negatives"]
        held_out = per_k[k]["held_out"]
        if k == min(ks):
            # A control: recorded run 1, replayed as it was, must be served whole.
            repeat = Tally()
            for flow in workload.flows:
                repeat.add(flow.recorded[0], play(replay, env.oracle, flow.recorded[0]))
            control = repeat.as_dict()
        wrong = held_out["wrong_hits"] + sum(t["wrong_hits"] for t in negatives.values())
        _progress(f"{workload.name}: k={k}: held-out hits {held_out['hits']}/{held_out['requests']} "
                  f"({held_out['hit_rate']:.0%}), wrong hits {wrong}")
        if deadline is not None and time.monotonic() > deadline:
            _progress(f"{workload.name}: time budget spent, stopping after k={k}")
            break
    recording_calls = len(env.provider.calls) - calls_before
    live = after = None
    if any(flow.probation for flow in workload.flows):
        live = _live_traffic(env, auto, workload, known)
        after = _measure(env, replay, workload, known, explain, stream_every)
        _progress(f"{workload.name}: after live traffic: held-out hits {after['held_out']['hits']}/"
                  f"{after['held_out']['requests']} ({after['held_out']['hit_rate']:.0%}), wrong hits "
                  f"{after['held_out']['wrong_hits'] + sum(t['wrong_hits'] for t in after['negatives'].values())}")
    return {"workload": workload.name, "note": workload.note, "substitutive": workload.substitutive, "flows": len(workload.flows),
            "held_out_runs_per_flow": max((len(f.held_out) for f in workload.flows), default=0),
            "recording": recording.as_dict(), "control_exact_repeat": control, "provider_calls": recording_calls,
            "per_k": per_k, "live": live, "after_live": after,
            "induction": _induction_reasons(env.log_since(log_start), env.induction_failures(wall_start)), "seconds": round(time.monotonic() - started, 1)}


VERIFY_STATUS = "verify"  # butter-cache of a request a template on probation would answer (addon/verification.py)


def _live_traffic(env: EvalEnv, auto, workload: Workload, known: dict[str, dict[str, set[str]]]) -> dict:
    """Each flow's probation runs through the recording proxy, flows interleaved.

    This is where a template's probation is paid when verification is on: a
    request a template on probation would answer goes to the provider
    (`butter-cache: verify`) and its answer is compared with the template's.
    Hits served here reach the client, so a wrong one counts as wrong.
    """
    calls_before = len(env.provider.calls)
    tally, statuses = Tally(), Counter()
    longest = max(len(flow.probation) for flow in workload.flows)
    for i in range(longest):
        for flow in workload.flows:
            if i < len(flow.probation):
                run = flow.probation[i]
                result = play(auto, env.oracle, run)
                env.drain()  # with --settled: the next run meets this one's verdicts
                tally.add(run, result, known.get(flow.name))
                statuses.update(s.status for s in result.steps)
    env.settle()
    verified = statuses.get(VERIFY_STATUS, 0)
    misses = sum(n for status, n in statuses.items() if status not in ("hit", VERIFY_STATUS))
    calls = len(env.provider.calls) - calls_before
    trust = env.trust_states()
    trusted = trust.get("trusted", 0)
    return {"runs": tally.runs, "requests": tally.requests, "served": tally.hits, "wrong_served": tally.wrong_hits,
            "wrong_examples": tally.wrong_examples, "verifications": verified, "misses": misses,
            "provider_calls": calls, "rechecks": max(0, calls - verified - misses), "statuses": dict(statuses),
            "templates": trust, "verifications_per_trusted_template": round(verified / trusted, 2) if trusted else None}


def _measure(env: EvalEnv, replay, workload: Workload, known: dict[str, dict[str, set[str]]],
             explain: Callable[[dict], str], stream_every: int) -> dict:
    """Held-out runs and look-alikes through the replay proxy (no provider, nothing recorded)."""
    held = Tally()
    n = 0
    for flow in workload.flows:
        for run in flow.held_out:
            result = play(replay, env.oracle, run, stream=bool(stream_every) and n % stream_every == 1)
            held.add(run, result, known[flow.name])
            held.explain(result, explain)
            n += 1
    negatives = {}
    for label, runs in workload.negatives.items():
        tally = Tally()
        for run in runs:
            tally.add(run, play(replay, env.oracle, run), known.get(run.flow))
        negatives[label] = tally.as_dict()
    return {"held_out": held.as_dict(), "negatives": negatives}
