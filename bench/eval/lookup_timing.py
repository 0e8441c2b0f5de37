"""Template lookups against exact lookups, at the store level.

Two trees of the same shape, built through `store.Cache` from our own
workflows (each flow repeated under several queue prefixes so that one node
has many template children to try, as a busy agent's tree does):

- exact tree: two recorded runs per flow, no induction; looked up with the
  recorded runs themselves (every message matches an exact child);
- template tree: the same two runs per flow, each recorded miss followed by
  induction (`Cache.induce`, as the addon does off the request path);
  looked up with fresh runs whose values were never seen, so every lookup
  goes through template children.

Each request an agent sends is looked up (every prefix of a run that ends
where the model answers), and the time per `Cache.lookup` is the median of
several passes. Only lookups are timed; rendering a template reply is timed
as a separate row.

The passes repeat the same requests, as agents resend the same prefix turn
after turn, so the per-process memos (node ids, template matches, trust
judgements) answer most of the hashing, matching and judging. The same pair
is therefore also timed cold, with those memos cleared before every single
lookup (`ratio_cold`): the cost of a request whose every message is new to
the process.

Ratios are of medians over passes (`ratio`); `ratio_best` is of each side's
fastest pass, the estimate least moved by other load on a shared machine
(what `timeit` recommends for the same reason). Both are reported.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from butter.addon.formats.base import WireRequest
from butter.addon.formats.openai_chat import FORMAT
from butter.store import Cache, Hit, trust_ledger
from butter.store.model import Conversation
from butter.store.tree import forget_memos
from tests.fakes.openai_chat import completion

from . import own_workflows
from .script import Run

NAMESPACE = "ns:timing"


def _requests(run: Run) -> list[tuple[Conversation, dict]]:
    """(conversation, canonical reply) for every request of a run, via the real adapter."""
    out = []
    messages: list[dict] = [{"role": "system", "content": run.system}]
    n = 0
    for turn in run.turns:
        if turn.user is not None:
            messages.append({"role": "user", "content": turn.user})
        for step in turn.steps:
            body = {"model": run.model, "messages": messages, "tools": list(turn.tools)}
            parsed = FORMAT.parse_request(WireRequest("POST", "/v1/chat/completions", {}, {}, json.dumps(body).encode()))
            raw = completion(step.reply.decision(), run.model)
            reply = FORMAT.reply_from_body(json.dumps(raw).encode(), False)
            out.append((parsed.conversation, reply))
            assistant = raw["choices"][0]["message"]
            messages = messages + [{k: v for k, v in assistant.items() if v is not None and k in ("role", "content", "tool_calls")}]
            for call, output in zip(assistant.get("tool_calls") or [], step.results):
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
            n += 1
    return out


def _flows(queues: int) -> dict[str, list[Run]]:
    """Runs per flow: 2 to record, 1 held out; each own flow under `queues` prefixes."""
    workload = own_workflows.build(recorded=2, held_out=1, negatives_per_kind=0, seed="timing")
    flows: dict[str, list[Run]] = {}
    for q in range(queues):
        for flow in workload.flows:
            runs = []
            for run in flow.recorded + flow.held_out:
                turns = [t.__class__(f"[desk {q}] {t.user}" if t.user else t.user, t.tools, t.steps) for t in run.turns]
                runs.append(Run(f"{run.run_id}/q{q}", f"{flow.name}/q{q}", run.system, turns))
            flows[f"{flow.name}/q{q}"] = runs
    return flows


def _time(cache: Cache, lookups: list[Conversation], passes: int) -> tuple[float, str]:
    median_us, _, result = _time_pair((cache, lookups), None, passes)[0]
    return median_us, result


def _time_pair(a: tuple[Cache, list[Conversation]], b: tuple[Cache, list[Conversation]] | None,
               passes: int, cold: bool = False) -> list[tuple[float, float, str]]:
    """(median, fastest pass) microseconds per lookup; with two sets, passes alternate between
    them so that load from other processes on the machine hits both alike.
    `cold`: the per-process memos are cleared before every lookup (and the
    clearing is not timed)."""
    sets = [a] + ([b] if b else [])
    per_pass: list[list[float]] = [[] for _ in sets]
    results: list[list] = [[] for _ in sets]
    for _ in range(passes):
        for i, (cache, lookups) in enumerate(sets):
            if cold:
                took, out = 0.0, []
                for c in lookups:
                    forget_memos()
                    start = time.perf_counter()
                    out.append(cache.lookup(NAMESPACE, c))
                    took += time.perf_counter() - start
                results[i] = out
                per_pass[i].append(took / len(lookups))
                continue
            start = time.perf_counter()
            results[i] = [cache.lookup(NAMESPACE, c) for c in lookups]
            per_pass[i].append((time.perf_counter() - start) / len(lookups))
    return [(statistics.median(per_pass[i]) * 1e6, min(per_pass[i]) * 1e6,
             f"{sum(isinstance(r, Hit) for r in results[i])}/{len(results[i])} hits") for i in range(len(sets))]


def measure(quick: bool = False) -> dict:
    """The comparison for trees of 4, 16 and 48 flows on one root (quick: 4, 12)."""
    sizes = (1, 3) if quick else (1, 4, 12)
    passes = 5 if quick else 15
    runs = [_measure(q, passes) for q in sizes]
    rows = []
    for r in runs:
        rows += [dict(row, label=f"{row['label']} [{r['flows']} flows]") for row in r["rows"]]
    ratios = {str(r["flows"]): r["ratio"] for r in runs}
    cold = {str(r["flows"]): r["ratio_cold"] for r in runs}
    best = {str(r["flows"]): r["ratio_best"] for r in runs}
    return {"rows": rows, "ratio": runs[-1]["ratio"], "ratios_by_flows": ratios,
            "ratio_cold": runs[-1]["ratio_cold"], "ratios_cold_by_flows": cold, "ratios_best_by_flows": best,
            "note": "flows share one root (same model and tools): each own workflow under several queue "
                    "prefixes, 2 recorded runs each; ratio at the largest tree; ratios by flows: "
                    + ", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items() if v)
                    + "; fastest passes: " + ", ".join(f"{k}: {v:.2f}x" for k, v in best.items() if v)
                    + "; cold (memos cleared before every lookup): "
                    + ", ".join(f"{k}: {v:.2f}x" for k, v in cold.items() if v)}


def _measure(queues: int, passes: int) -> dict:
    flows = _flows(queues)
    with tempfile.TemporaryDirectory(prefix="butter-timing-") as tmp:
        exact, templ = Cache(Path(tmp) / "exact"), Cache(Path(tmp) / "template")
        try:
            for runs in flows.values():
                for run in runs[:2]:
                    for conversation, reply in _requests(run):
                        exact.record(NAMESPACE, conversation, reply)
                        templ.record(NAMESPACE, conversation, reply)
                        templ.induce(NAMESPACE, conversation)
            # Time the hit path of templates live traffic has verified (store/trust.py): the
            # trust read and judgement are part of every template hit.
            trust_ledger.trust_everything(templ.backend)
            recorded = [c for runs in flows.values() for c, _ in _requests(runs[0])]
            fresh = [c for runs in flows.values() for c, _ in _requests(runs[2])]
            # Compare like with like: the requests the template tree serves, and
            # the recorded requests at the same places in the same flows.
            served = [i for i, c in enumerate(fresh) if isinstance(templ.lookup(NAMESPACE, c), Hit)]
            fresh_hits, recorded_same = [fresh[i] for i in served], [recorded[i] for i in served]
            rows = []
            cold_rows = []
            best = None
            if served:
                (exact_us, exact_best, exact_result), (templ_us, templ_best, templ_result) = _time_pair(
                    (exact, recorded_same), (templ, fresh_hits), passes)
                best = templ_best / exact_best
                rows += [
                    {"label": "exact tree, recorded values (exact nodes)", "us_per_lookup": exact_us,
                     "lookups": len(recorded_same), "result": exact_result},
                    {"label": "template tree, fresh values (template nodes)", "us_per_lookup": templ_us,
                     "lookups": len(fresh_hits), "result": templ_result},
                ]
                (exact_us, _, exact_result), (templ_us, _, templ_result) = _time_pair(
                    (exact, recorded_same), (templ, fresh_hits), passes, cold=True)
                cold_rows = [
                    {"label": "exact tree, recorded values, cold memos", "us_per_lookup": exact_us,
                     "lookups": len(recorded_same), "result": exact_result},
                    {"label": "template tree, fresh values, cold memos", "us_per_lookup": templ_us,
                     "lookups": len(fresh_hits), "result": templ_result},
                ]
            mixed_us, mixed_result = _time(templ, recorded, passes)
            all_us, all_result = _time(templ, fresh, passes)
            rows += [
                {"label": "template tree, recorded values (exact nodes)", "us_per_lookup": mixed_us,
                 "lookups": len(recorded), "result": mixed_result},
                {"label": "template tree, every fresh request (misses too)", "us_per_lookup": all_us,
                 "lookups": len(fresh), "result": all_result},
            ]
            render_us = _render_time(templ, fresh_hits)
            if render_us is not None:
                rows.append({"label": "render_reply of a template hit", "us_per_lookup": render_us,
                             "lookups": len(fresh_hits), "result": "rendered"})
        finally:
            exact.close()
            templ.close()
    ratio = rows[1]["us_per_lookup"] / rows[0]["us_per_lookup"] if served else None
    ratio_cold = cold_rows[1]["us_per_lookup"] / cold_rows[0]["us_per_lookup"] if served else None
    return {"rows": rows + cold_rows, "ratio": ratio, "ratio_cold": ratio_cold, "ratio_best": best,
            "flows": len(flows)}


def _render_time(cache: Cache, lookups: list[Conversation]) -> float | None:
    try:
        from butter.store.templates import render_reply
    except ImportError:
        return None
    hits = [r for r in (cache.lookup(NAMESPACE, c) for c in lookups) if isinstance(r, Hit)]
    if not hits:
        return None
    start = time.perf_counter()
    for hit in hits:
        render_reply(hit.reply, hit.bindings)
    return (time.perf_counter() - start) / len(hits) * 1e6
