"""The readable table printed at the end of an evaluation."""
from __future__ import annotations

TARGET_HIT_RATE = 0.90  # held-out runs of purely substitutive flows, after 2 recordings
TARGET_AFTER_LIVE = 0.80  # held-out requests of multi-step tool workflows, once probation is paid
TARGET_TIMING_RATIO = 1.5


def _cell(tally: dict | None) -> str:
    if not tally or not tally["requests"]:
        return "-"
    return f"{tally['hits']}/{tally['requests']} {tally['hit_rate']:.0%}"


def table(out: dict, why: int = 4) -> str:
    lines = []
    head = f"{'workload / set':<48} {'k=1 hits':>14} {'k=2 hits':>14} {'k=3 hits':>14} {'wrong':>6}"
    lines += ["", head, "-" * len(head)]
    for res in out["results"]:
        per_k = {int(k): v for k, v in res["per_k"].items()}
        held = {k: v["held_out"] for k, v in per_k.items()}
        wrong = sum(t["wrong_hits"] for t in held.values())
        title = f"{res['workload']}: held-out ({res['flows']} flows x {res['held_out_runs_per_flow']})"
        lines.append(f"{title[:48]:<48} {_cell(held.get(1)):>14} {_cell(held.get(2)):>14} {_cell(held.get(3)):>14} {wrong:>6}")
        labels = []
        for v in per_k.values():
            labels += [label for label in v["negatives"] if label not in labels]
        for label in labels:
            sets = {k: v["negatives"].get(label) for k, v in per_k.items()}
            wrong = sum(t["wrong_hits"] for t in sets.values() if t)
            name = f"  look-alike: {label}"
            lines.append(f"{name[:48]:<48} {_cell(sets.get(1)):>14} {_cell(sets.get(2)):>14} {_cell(sets.get(3)):>14} {wrong:>6}")
            conflicts = sum(t.get("ground_truth_conflicts", 0) for t in sets.values() if t)
            if conflicts:
                lines.append(f"    + {conflicts} served replies the look-alike's ground truth contradicts for a request "
                             "identical to its recorded twin's (the data answers one request two ways; not counted)")
        conflicts = sum(t.get("ground_truth_conflicts", 0) for t in held.values()) + res["recording"].get("ground_truth_conflicts", 0)
        if conflicts:
            lines.append(f"    + {conflicts} served replies on held-out/recorded runs that this run's ground truth contradicts "
                         "for a request identical to a recorded run's (not counted as wrong)")
        control = res.get("control_exact_repeat")
        if control:
            lines.append(f"{'  control: recorded run 1 replayed unchanged':<48} {_cell(control):>14} {'':>14} {'':>14} {control['wrong_hits']:>6}")
        rec = res["recording"]
        lines.append(f"  recording (auto mode): {rec['requests']} requests, {res['provider_calls']} provider calls, "
                     f"{rec['hits']} served from the tree ({rec['wrong_hits']} wrong); {res['seconds']}s")
        if held.get(2):
            saved = held[2]["hits"]
            lines.append(f"  provider calls saved on held-out runs after 2 recordings: {saved} of {held[2]['requests']}")
        if held.get(2) and len(held[2].get("per_flow", {})) <= 8:
            cells = [f"{flow} {h}/{n}" for flow, (h, n) in held[2]["per_flow"].items()]
            lines.append("  held-out hits per flow after 2 recordings: " + ", ".join(cells))
        if held.get(2) and held[2].get("why_missed"):
            lines.append("  why held-out requests missed after 2 recordings (store's explanation, values elided):")
            for item in held[2]["why_missed"][:why]:
                lines.append(f"    {item['count']:>4} x {item['reason'][:150]}")
        induction = res.get("induction") or {}
        if induction.get("rejections"):
            lines.append(f"  induction: {induction['templates_learned']} templates learned; most frequent rejections:")
            for item in induction["rejections"][:why]:
                lines.append(f"    {item['count']:>4} x {item['reason'][:150]}")
        lines += _live_lines(res)
        errors = rec["harness_errors"] + sum(t["harness_errors"] for t in held.values())
        if errors:
            lines.append(f"  !! {errors} provider answers disagreed with the oracle (harness bug)")
    for name, why in (out.get("skipped") or {}).items():
        lines.append(f"{name}: {why}")
    lines.append("")
    lines += _verdict(out)
    timing = out.get("lookup_timing")
    if timing:
        lines.append("")
        lines.append("store lookups (store.Cache.lookup, same shape of tree):")
        for row in timing.get("rows", []):
            lines.append(f"  {row['label']:<44} {row['us_per_lookup']:>9.1f} us/lookup  ({row['lookups']} lookups, {row['result']})")
        if timing.get("ratio") is not None:
            ok = "meets" if timing["ratio"] <= TARGET_TIMING_RATIO else "MISSES"
            lines.append(f"  template/exact = {timing['ratio']:.2f}x ({ok} the {TARGET_TIMING_RATIO}x target)")
        if timing.get("note"):
            lines.append(f"  note: {timing['note']}")
    lines.append(f"\ntotal {out['seconds']}s")
    return "\n".join(lines)


def _live_lines(res: dict) -> list[str]:
    """Live traffic after the recordings (the probation's price) and the measure after it."""
    live, after = res.get("live"), res.get("after_live")
    if not live or not after:
        return []
    templates = live.get("templates") or {}
    states = ", ".join(f"{n} {state}" for state, n in sorted(templates.items())) or "no trust kept"
    per = live.get("verifications_per_trusted_template")
    lines = [f"  live traffic after recording ({live['runs']} runs, {live['requests']} requests, through the recording "
             f"proxy): {live['served']} served ({live['wrong_served']} wrong), {live['verifications']} verified against "
             f"the provider (hits lost to probation), {live['misses']} misses",
             f"    provider calls {live['provider_calls']}: {live['verifications']} verifications, {live['misses']} misses, "
             f"{live['rechecks']} sampled re-checks; template replies: {states}"
             + (f"; {per} verifications per trusted template" if per is not None else "")]
    held = after["held_out"]
    lines.append(f"  after live traffic, held-out: {_cell(held)}, wrong {held['wrong_hits']}")
    for label, tally in after["negatives"].items():
        lines.append(f"  after live traffic, look-alike {label[:40]}: {_cell(tally)}, wrong {tally['wrong_hits']}")
    for example in live.get("wrong_examples", [])[:2]:
        lines.append(f"    wrong during live traffic: {example['run']} step {example['step']}: served "
                     f"{example['served'][:80]} expected {example['expected'][:80]}")
    return lines


def _verdict(out: dict) -> list[str]:
    lines = ["targets:"]
    wrong = 0
    for res in out["results"]:
        for v in res["per_k"].values():
            wrong += v["held_out"]["wrong_hits"] + sum(t["wrong_hits"] for t in v["negatives"].values())
        wrong += res["recording"]["wrong_hits"]
        if res.get("live"):
            wrong += res["live"]["wrong_served"]
        after = res.get("after_live")
        if after:
            wrong += after["held_out"]["wrong_hits"] + sum(t["wrong_hits"] for t in after["negatives"].values())
    lines.append(f"  zero wrong hits anywhere: {'met' if wrong == 0 else f'MISSED ({wrong} wrong hits)'}")
    for res in out["results"]:
        after = res.get("after_live")
        if not after or not res.get("substitutive", True):
            continue
        rate = after["held_out"]["hit_rate"]
        lines.append(f"  >= {TARGET_AFTER_LIVE:.0%} held-out hits after live traffic, {res['workload']}: {rate:.1%} "
                     f"({'met' if rate >= TARGET_AFTER_LIVE else 'MISSED'})")
    if str(out.get("verify", "default")) != "false":
        # Recordings alone never make a template trusted with verification on: its probation is paid in live traffic.
        return lines
    for res in out["results"]:
        held = res["per_k"].get(2) or res["per_k"].get("2")
        if not held or not res.get("substitutive", True):
            continue
        rate = held["held_out"]["hit_rate"]
        verdict = "met" if rate >= TARGET_HIT_RATE else "MISSED"
        lines.append(f"  >= {TARGET_HIT_RATE:.0%} held-out hits after 2 recordings, {res['workload']}: "
                     f"{rate:.1%} ({verdict})")
    return lines


def verify_comparison(runs: dict[str, list[dict]]) -> str:
    """One row per workload and setting: what verification costs and what it catches."""
    head = (f"{'workload':<40} {'verify':>6} {'held-out after live':>20} {'wrong (all)':>11} {'live served':>11} "
            f"{'verified':>9} {'trusted':>8} {'demoted':>8}")
    lines = ["", "verification off vs on", head, "-" * len(head)]
    for verify, results in runs.items():
        for res in results:
            wrong = res["recording"]["wrong_hits"]
            for v in res["per_k"].values():
                wrong += v["held_out"]["wrong_hits"] + sum(t["wrong_hits"] for t in v["negatives"].values())
            live, after = res.get("live") or {}, res.get("after_live")
            wrong += live.get("wrong_served", 0)
            if after:
                wrong += after["held_out"]["wrong_hits"] + sum(t["wrong_hits"] for t in after["negatives"].values())
            held = _cell(after["held_out"]) if after else "-"
            templates = live.get("templates") or {}
            lines.append(f"{res['workload'][:40]:<40} {verify:>6} {held:>20} {wrong:>11} {live.get('served', '-'):>11} "
                         f"{live.get('verifications', '-'):>9} {templates.get('trusted', '-'):>8} "
                         f"{templates.get('demoted', '-'):>8}")
    return "\n".join(lines)
