"""How well butter's template cache serves runs it has not seen, and whether it
ever serves a wrong answer. An evaluation, not a CI test.

    .venv/bin/python bench/eval_templates.py            # the default run (< 10 min)
    .venv/bin/python bench/eval_templates.py --quick    # a smaller run (about 2 min)
    .venv/bin/python bench/eval_templates.py --json out.json
    .venv/bin/python bench/eval_templates.py --agentdojo .venv-agentdojo/bin/python
    .venv/bin/python bench/eval_templates.py --workloads tools,lookalikes --verify both

Workloads (see docs/evaluation.md): BFCL multi-turn (bfcl-eval, installed
into the running interpreter on first use with `pip install --no-deps
bfcl-eval mpmath==1.3.0`; the ground-truth calls are executed against
BFCL's own backends, entity values varied per run; `miss_param`,
`miss_func` and `long_context` are look-alike negatives), AgentDojo when a
Python with `agentdojo` is given (its tasks recorded once, its injected
versions as look-alikes; it is never installed into butter's .venv), and
our own order-handling and form-filling workflows with their look-alikes,
multi-step tool workflows with real-shaped data (`tools`: bare-id results,
JSON with optional fields and lists of varying length, 4-5 requests a run)
and look-alikes whose deciding value is absent from the reply
(`lookalikes`: thresholds, primes, date windows, statuses, list lengths,
model-rewritten values, an amount passed into the call it decides). Every
workload but AgentDojo also plays live traffic after the recordings through
the recording proxy (48 runs per flow by default, BFCL 12, `--quick` 12 and
4; `--live N` for all), which is where a template's probation is paid when
verification is on (`--verify both` compares). Every
request goes through a real mitmdump running butter to an oracle provider
that answers as the ground truth says; every reply butter serves is checked
against the oracle.

Printed per workload: the hit rate on held-out runs after recording k runs
per flow (k = 1, 2, 3), wrong hits (served replies that differ from the
ground truth) on held-out runs and on every look-alike set, and the provider
calls made and saved. Then lookup timings at the store level: a tree whose
nodes are templates against one whose nodes are exact.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The agent's SDK must not pick up a proxy from the shell; the eval sets its own.
for _name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
    os.environ.pop(_name, None)

from bench.eval import own_workflows, report  # noqa: E402
from bench.eval.env import EvalEnv  # noqa: E402
from bench.eval.runner import _progress, evaluate  # noqa: E402

VERIFICATION = ROOT / "addon" / "verification.py"  # shadow verification of learned templates (branch trust)


DEFAULT_LIVE = 48  # live runs per flow after the recordings (own, tools, look-alikes, late, rare)
DEFAULT_LIVE_BFCL = 12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer flows and runs (about 2 minutes)")
    parser.add_argument("--bfcl-tasks", type=int, default=None, help="BFCL base tasks to use (default 32; quick 8)")
    parser.add_argument("--held-out", type=int, default=None, help="held-out runs per flow (default 3; quick 2)")
    parser.add_argument("--workloads", default="own,bfcl,agentdojo,tools,lookalikes",
                        help="comma list of: own, bfcl, agentdojo, tools, lookalikes, rare (not in the default: "
                             "ordered look-alikes after one-sided live traffic, for butter_verify_ranges), late "
                             "(not in the default: look-alikes whose other side arrives after promotion)")
    parser.add_argument("--verify", choices=("default", "on", "off", "both"), default="default",
                        help="butter_verify for the proxies; 'both' runs every workload with it off, then on")
    parser.add_argument("--ks", default=None, help="comma list: after how many recorded runs to measure (default 1,2,3)")
    parser.add_argument("--live", type=int, default=None,
                        help="live-traffic (probation) runs per flow, for every workload (default: 48, what pays "
                             "the probation of the own, tool and look-alike flows; 12 for BFCL, whose 32 tasks "
                             "take longest and are paid off by then)")
    parser.add_argument("--agentdojo", metavar="PYTHON", default=os.environ.get("BUTTER_EVAL_AGENTDOJO_PYTHON"),
                        help="a Python with agentdojo installed (default .venv-agentdojo/bin/python if present)")
    parser.add_argument("--settled", action="store_true",
                        help="after each live run, wait until the proxy has concluded its verifications and "
                             "learned from it: the same counts on every run (for comparing two versions); "
                             "without it, as in production, a verification may conclude after the next request")
    parser.add_argument("--no-timing", action="store_true", help="skip the store-level lookup timing")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds after which no new k is started")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON ('-' for stdout)")
    parser.add_argument("--keep", metavar="DIR", help="keep the databases and proxy logs in DIR")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a butter option for both proxies (e.g. butter_induction_min=3)")
    args = parser.parse_args(argv)
    bfcl_tasks = args.bfcl_tasks if args.bfcl_tasks is not None else (8 if args.quick else 32)
    held_out = args.held_out if args.held_out is not None else (2 if args.quick else 3)
    wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
    # Live traffic after the recordings is where verification pays a template's
    # probation (without verification it is just more traffic): the hit
    # targets are "after the probation cost is paid", so that is the default.
    live = args.live if args.live is not None else (12 if args.quick else DEFAULT_LIVE)
    bfcl_live = args.live if args.live is not None else (4 if args.quick else DEFAULT_LIVE_BFCL)
    options = dict(o.split("=", 1) for o in args.option)

    started = time.monotonic()
    deadline = started + args.budget
    workloads = []
    if "own" in wanted:
        workloads.append(own_workflows.build(held_out=held_out, negatives_per_kind=held_out, probation=live))
    if "tools" in wanted:
        from bench.eval import tool_workflows
        workloads.append(tool_workflows.build(held_out=held_out + 1, probation=live))
    if "lookalikes" in wanted:
        from bench.eval import lookalikes
        workloads.append(lookalikes.build(held_out=held_out + 1, negatives=held_out + 1, probation=live))
    if "late" in wanted:
        from bench.eval import lookalikes
        workloads.append(lookalikes.build_late(held_out=held_out + 1, negatives=held_out + 1,
                                               probation=live))
    if "rare" in wanted:
        from bench.eval import lookalikes
        workloads.append(lookalikes.build_rare(held_out=held_out + 1, negatives=held_out + 1,
                                               probation=live))
    if "bfcl" in wanted:
        from bench.eval import bfcl
        _progress(f"BFCL: building runs from {bfcl_tasks} base tasks (executing ground truth on the real backends)")
        workloads.extend(bfcl.build(bfcl_tasks, held_out=held_out, progress=_progress, probation=bfcl_live))

    skipped = {}
    if "agentdojo" in wanted:
        from bench.eval import dojo as agentdojo
        python = args.agentdojo or (str(ROOT / ".venv-agentdojo/bin/python")
                                    if (ROOT / ".venv-agentdojo/bin/python").exists() else None)
        if python:
            _progress(f"AgentDojo: exporting tasks with {python}")
            workloads.append(agentdojo.build(python, progress=_progress))
        else:
            skipped["AgentDojo"] = f"skipped: no Python with agentdojo; make one with: {agentdojo.INSTALL_HINT}"
            _progress(f"AgentDojo {skipped['AgentDojo']}")

    settings = {"default": [None], "on": ["true"], "off": ["false"], "both": ["false", "true"]}[args.verify]
    if settings != [None] and not VERIFICATION.exists():
        parser.error("this butter has no verification (addon/verification.py); run with --verify default")
    runs = {}
    for verify in settings:
        results = []
        run_options = dict(options) if verify is None else {**options, "butter_verify": verify}
        keep = Path(args.keep) / f"verify-{verify or 'default'}" if args.keep else None
        env = EvalEnv(keep, run_options, settled=args.settled)
        try:
            _progress(f"proxies up (butter_verify={verify or 'default'}): auto on {env.auto.port}, replay on "
                      f"{env.replay.port}; provider on {env.provider.port}")
            for workload in workloads:
                ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else None
                results.append(evaluate(env, workload, ks=ks and tuple(k for k in ks if k <= max(workload.ks)),
                                        deadline=deadline))
        finally:
            env.close()
        runs[verify or "default"] = results
    timing = None
    if not args.no_timing:
        from bench.eval import lookup_timing
        _progress("timing store lookups: template nodes against exact nodes")
        timing = lookup_timing.measure(quick=args.quick)
    out = {"results": results, "skipped": skipped, "lookup_timing": timing, "seconds": round(time.monotonic() - started, 1),
           "options": options, "verify": list(runs)[-1]}
    if len(runs) > 1:
        out["by_verify"] = runs
        for verify, results in runs.items():
            print(f"\n== butter_verify={verify} ==")
            print(report.table({**out, "results": results, "lookup_timing": None, "verify": verify}))
        print(report.verify_comparison(runs))
        if timing:
            print(report.table({"results": [], "lookup_timing": timing, "seconds": out["seconds"]}).split("targets:")[-1])
    else:
        print(report.table(out))
    if args.json:
        text = json.dumps(out, indent=2, ensure_ascii=False)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
