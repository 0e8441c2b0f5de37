"""butter's benchmark (a script, not a test): `make bench` or `.venv/bin/python bench/bench.py`.

In one run, through a real `mitmdump`:

(a) cache hits vs the floor: requests per second and p50 latency of butter
    serving recorded OpenAI Chat replies (plain, an 8-message tool-calling
    request) against `bench/constant_addon.py`, which answers every request
    with a constant body: the most a mitmproxy addon can do. Same load
    generator for both; target: hits >= 0.8x the floor's throughput.
(b) store lookup time per request at 1 thousand, 100 thousand and 1 million
    stored nodes, in process (`Cache.lookup`, what the addon calls per
    request) and, unless --no-e2e, as the p50 of hits through mitmdump on
    each database. Target: 1M within 1.5x of 1k.

See bench/README.md for what each number means.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from butter.addon.formats.openai_chat import FORMAT  # noqa: E402
from bench import bulk_load, loadgen, workload  # noqa: E402
from bench.eval import lookup_timing  # noqa: E402
from butter.store import Cache, Hit  # noqa: E402
from butter.store.tree import child_id, forget_memos, root_id  # noqa: E402

MITMDUMP = Path(sys.executable).with_name("mitmdump")
BUTTER = ROOT / "addon" / "butter.py"
CONSTANT = ROOT / "bench" / "constant_addon.py"
TARGET_HIT_RATIO = 0.8
TARGET_LOOKUP_RATIO = 1.5


def say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    ports: dict[str, int]  # "intercept" and "reverse"
    pid: int


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and all its threads (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def mitmdump(script: Path, workdir: Path, options: dict[str, str], label: str,
             profile: Path | None = None) -> Iterator[Running]:
    """A mitmdump with a regular and a reverse (api.openai.com) listener."""
    ports = {"intercept": free_port(), "reverse": free_port()}
    # Under cProfile mitmdump still shuts down cleanly on SIGTERM, and the profile is written then.
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
    args = prefix + [str(MITMDUMP), "-s", str(script), "--listen-host", "127.0.0.1",
            "--mode", f"regular@{ports['intercept']}", "--mode", f"reverse:https://api.openai.com@{ports['reverse']}",
            "--set", f"confdir={workdir / 'confdir'}", "--set", "connection_strategy=lazy",
            "--set", "termlog_verbosity=warn", "--set", "flow_detail=0"]
    for key, value in options.items():
        args += ["--set", f"{key}={value}"]
    log = open(workdir / f"mitmdump-{label}.log", "ab")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        for port in ports.values():
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mitmdump exited: see {log.name}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"mitmdump did not listen: see {log.name}")
                    time.sleep(0.05)
        yield Running(ports, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- (b) the store ---------------------------------------------------------------

def build_db(workdir: Path, nodes: int) -> tuple[Path, int, dict]:
    db = workdir / f"db-{nodes}"
    conversations = workload.conversations_for(nodes)
    cache = Cache(db)
    try:
        # Room for the whole load up front, so no batch is redone after a MapFullError.
        cache.backend.env.set_mapsize(max(cache.backend.env.info()["map_size"], nodes * 2048 + (64 << 20)))
        seconds = bulk_load.populate(cache, conversations, progress=bulk_load.print_progress(f"{nodes:,} nodes"))
        counts = cache.backend.counts()
    finally:
        cache.close()
    size = sum(p.stat().st_size for p in db.iterdir() if p.is_file())
    return db, conversations, {"populate_seconds": round(seconds, 2), "db_bytes": size, **counts}


def measure_lookups(db: Path, conversations: int, sample: int, rounds: int, seed: int) -> dict:
    """Per-request lookup time over a random sample of the tree's conversations.

    `lookup` is `Cache.lookup` (hash each message, walk the tree, choose the
    reply) with the per-process id memo emptied first, what the addon pays the
    first time it sees a conversation, so every size is timed alike (a 1k tree's
    sample would otherwise fit the memo and a 1M tree's would not); `warm` is
    the same lookup repeated at once, from the memo; `reads` is the LMDB part alone
    (the same node and reply reads with ids computed beforehand). Each is
    the pass with the lowest median of `rounds`, the usual guard against a
    busy machine; parsing the request is not included (it does not depend on
    the tree's size).
    """
    rng = random.Random(seed)
    picks = [rng.randrange(conversations) for _ in range(sample)]
    parsed = {i: bulk_load.parse(workload.request_bytes(i)) for i in set(picks)}
    cache = Cache(db)
    try:
        ns = bulk_load.namespace(cache)
        paths = {}
        for i, conversation in parsed.items():
            node = root_id(ns, conversation.context)
            path = [node]
            for message in conversation.messages:
                node = child_id(node, message)
                path.append(node)
            paths[i] = path
        lookup_rounds, warm_rounds, read_rounds = [], [], []
        for _ in range(rounds):
            times, warm = [], []
            for i in picks:
                forget_memos()
                t0 = time.perf_counter_ns()
                result = cache.lookup(ns, parsed[i])
                t1 = time.perf_counter_ns()
                again = cache.lookup(ns, parsed[i])
                warm.append(time.perf_counter_ns() - t1)
                times.append(t1 - t0)
                if not isinstance(result, Hit) or not isinstance(again, Hit):
                    raise RuntimeError(f"conversation {i} missed: {result}")
            lookup_rounds.append(times)
            warm_rounds.append(warm)
            times = []
            for i in picks:
                path = paths[i]
                t0 = time.perf_counter_ns()
                with cache.backend.snapshot() as snap:
                    found = all(snap.has_node(n) for n in path) and snap.replies(path[-1])
                times.append(time.perf_counter_ns() - t0)
                if not found:
                    raise RuntimeError(f"conversation {i}: nodes missing")
            read_rounds.append(times)
    finally:
        cache.close()

    def best(rounds_ns: list[list[int]]) -> dict:
        chosen = min(rounds_ns, key=statistics.median)
        return {"mean_us": round(statistics.fmean(chosen) / 1000, 2),
                "p50_us": round(statistics.median(chosen) / 1000, 2)}

    return {"lookup": best(lookup_rounds), "warm": best(warm_rounds), "reads": best(read_rounds), "sampled": sample}


# -- (a) hits vs the floor, through mitmdump -------------------------------------

def butter_options(db: Path) -> dict[str, str]:
    # replay: a hit is served exactly as in auto mode, and a miss can never
    # leave the machine (it would be counted as an error).
    return {"butter_db": str(db), "butter_mode": "replay"}


def drive(proxy: Running, workdir: Path, via: str, bodies: list[bytes], concurrency: int,
          seconds: float, warmup: float, expect: bytes, nonce: bool = False) -> loadgen.Result:
    ca = workdir / "confdir" / "mitmproxy-ca-cert.pem"
    cpu_before = process_cpu_seconds(proxy.pid)
    result = asyncio.run(loadgen.run(via, proxy.ports[via], ca, bodies, concurrency=concurrency, seconds=seconds,
                                     warmup=warmup, api_key=workload.API_KEY, expect=expect, nonce=nonce))
    cpu_after = process_cpu_seconds(proxy.pid)
    if cpu_before is not None and cpu_after is not None:
        result.cpu_seconds = cpu_after - cpu_before
    if result.errors:
        raise RuntimeError(f"{result.errors} bad responses via {via}; first head: {result.first_headers[:300]!r}")
    return result


def summary(result: loadgen.Result) -> dict:
    cpu = result.cpu_ms_per_request
    return {"rps": round(result.rps, 1), "p50_ms": round(result.p50_ms, 3), "p99_ms": round(result.p99_ms, 3),
            "requests": result.requests, "cpu_ms_per_request": None if cpu is None else round(cpu, 3)}


def best_of(runs: list[loadgen.Result]) -> loadgen.Result:
    """The run least disturbed by the rest of the machine: the fastest."""
    return max(runs, key=lambda r: r.rps)


def paired_ratio(floor: list[loadgen.Result], other: list[loadgen.Result], by: str) -> float | None:
    """Median over rounds of other/floor throughput (`rps`) or floor/other CPU per request (`cpu`)."""
    ratios = []
    for base, run in zip(floor, other):
        if by == "rps":
            ratios.append(run.rps / base.rps if base.rps else None)
        else:
            a, b = base.cpu_ms_per_request, run.cpu_ms_per_request
            ratios.append(a / b if a and b else None)
    ratios = [r for r in ratios if r is not None]
    return round(statistics.median(ratios), 3) if ratios else None


def bench_hits(workdir: Path, db: Path, conversations: int, args: argparse.Namespace) -> list[dict]:
    bodies = [workload.request_bytes(i) for i in range(min(args.distinct, conversations))]
    # The floor answers with a body the size of butter's rendered reply.
    parsed = FORMAT.parse_request(bulk_load.WireRequest("POST", bulk_load.PATH, {}, {}, bodies[0]))
    constant = workdir / "constant.json"
    constant.write_bytes(FORMAT.render(workload.reply(0), parsed).body)
    # (name, script, options, expected head bytes, a nonce header on every request)
    targets = (("floor", CONSTANT, {"bench_body": str(constant)}, b"", False),
               ("hits", BUTTER, butter_options(db), b"butter-cache: hit", False),
               # the same proxy, every request bytes it never saw: the hit memo never answers
               ("new", BUTTER, butter_options(db), b"butter-cache: hit", True))
    rows = []
    with ExitStack() as stack:
        # The proxies run at once (an idle one costs nothing) and the load
        # alternates between them, so a burst of other work on the machine
        # hurts all alike; the best of the rounds counts for each.
        proxies = {script: stack.enter_context(mitmdump(script, workdir, options, name))
                   for name, script, options, *_ in targets[:2]}
        for via in args.via:
            for concurrency in args.concurrency:
                runs: dict[str, list[loadgen.Result]] = {name: [] for name, *_ in targets}
                for n in range(args.proxy_rounds):
                    for name, script, _, expect, nonce in targets:
                        say(f"  {name:5} via {via}, {concurrency} connection(s), {args.seconds:g} s, "
                            f"round {n + 1}/{args.proxy_rounds} ...")
                        runs[name].append(drive(proxies[script], workdir, via, bodies, concurrency, args.seconds,
                                                args.warmup, expect, nonce))
                row = {"via": via, "concurrency": concurrency}
                for name in runs:
                    row[name] = summary(best_of(runs[name]))
                    row[name]["rounds_rps"] = [round(r.rps, 1) for r in runs[name]]
                # Each round of hits against the floor round run just before it, the
                # median over rounds: a burst of other work hits a pair alike, and one
                # lucky floor round does not decide the ratio (as a best-of-rounds would).
                row["ratio"] = paired_ratio(runs["floor"], runs["hits"], "rps")
                row["ratio_new"] = paired_ratio(runs["floor"], runs["new"], "rps")
                # CPU per request in the proxy process: what throughput is when the
                # proxy is the bottleneck, and unlike req/s not swayed by other load.
                row["cpu_ratio"] = paired_ratio(runs["floor"], runs["hits"], "cpu")
                row["cpu_ratio_new"] = paired_ratio(runs["floor"], runs["new"], "cpu")
                row["ratio_best_of"] = round(row["hits"]["rps"] / row["floor"]["rps"], 3)  # the old statistic
                rows.append(row)
    return rows


def bench_hits_by_size(workdir: Path, dbs: list[tuple[int, Path, int]], args: argparse.Namespace) -> list[dict]:
    """Hit latency through mitmdump on each database, over random recorded conversations."""
    rng = random.Random(args.seed + 1)
    bodies = {nodes: [workload.request_bytes(rng.randrange(conversations)) for _ in range(args.distinct)]
              for nodes, _, conversations in dbs}
    runs: dict[int, list[loadgen.Result]] = {nodes: [] for nodes, _, _ in dbs}
    with ExitStack() as stack:
        proxies = {nodes: stack.enter_context(mitmdump(BUTTER, workdir, butter_options(db), f"hits-{nodes}"))
                 for nodes, db, _ in dbs}
        for n in range(args.proxy_rounds):
            for nodes, _, _ in dbs:
                say(f"  hits on {nodes:,} nodes via {args.via[0]}, 1 connection, {args.seconds:g} s, "
                    f"round {n + 1}/{args.proxy_rounds} ...")
                runs[nodes].append(drive(proxies[nodes], workdir, args.via[0], bodies[nodes], 1, args.seconds,
                                         args.warmup, b"butter-cache: hit"))
    return [{"nodes": nodes, **summary(best_of(runs[nodes]))} for nodes, _, _ in dbs]


# butter's own code, plus the two library calls its hit path makes that matter.
PROFILED = r"main/(addon|store)/|http\.py:\d+\(make\)|logging/__init__\.py:\d+\(_log\)"


def profile_hits(workdir: Path, db: Path, conversations: int, args: argparse.Namespace, nonce: bool) -> str:
    """butter's hit path under cProfile: where a hit's time goes, per hit.

    With `nonce`, every request is bytes never seen (the whole path); without,
    the cycled requests are answered by the hit memo. The profiler slows Python
    code several times over, so these figures are for proportions, not for
    comparing with the runs above.
    """
    import io
    import pstats

    bodies = [workload.request_bytes(i) for i in range(min(args.distinct, conversations))]
    kind = "new" if nonce else "memo"
    out = workdir / f"hits-{kind}.prof"
    with mitmdump(BUTTER, workdir, butter_options(db), f"profile-{kind}", profile=out) as proxy:
        say(f"  profiling {kind} hits via {args.via[0]}, 1 connection, {args.seconds:g} s ...")
        result = drive(proxy, workdir, args.via[0], bodies, 1, args.seconds, args.warmup, b"butter-cache: hit",
                       nonce)
    stats = pstats.Stats(str(out))
    hits = next((calls for (path, _, name), (_, calls, *_rest) in stats.stats.items()
                 if name == "request" and path.endswith("cache_addon.py")), 0) or 1
    text = io.StringIO()
    stats.stream = text
    stats.sort_stats("cumulative").print_stats(PROFILED, args.profile_lines + 15)
    lines = [f"(profile, {kind} hits) {hits} hits under cProfile ({result.rps:.0f} req/s, slowed by the profiler); "
             f"cumulative ms over all hits, and us per hit:"]
    for line in text.getvalue().splitlines():
        parts = line.split(None, 5)
        if (len(parts) == 6 and parts[0].replace("/", "").isdigit() and parts[3].replace(".", "", 1).isdigit()
                and not parts[5].endswith("(<module>)")):  # imports at startup are not the hit path
            cumulative = float(parts[3])
            lines.append(f"    {cumulative * 1000:9.1f} ms {cumulative / hits * 1e6:8.1f} us  {parts[0]:>12}  "
                         f"{parts[5].replace(str(ROOT) + '/', '')[-90:]}")
    return "\n".join(lines)


# -- output ---------------------------------------------------------------------

def table(report: dict) -> str:
    out = []
    hits = report.get("hits_vs_floor")
    if hits:
        out.append("(a) cache hits vs the floor (constant-body addon), through mitmdump, plain OpenAI Chat")
        out.append(f"    request {report['request_bytes']} B, reply {report['reply_bytes']} B, "
                   f"{report['distinct_requests']} distinct recorded requests cycled")
        out.append(f"    req/s, p50 and cpu ms: best of {report['settings']['proxy_rounds']} alternating rounds per row; "
                   "ratios: each round against the floor")
        out.append("    round just before it, the median over rounds")
        out.append("    cpu ms = the proxy process's CPU time per request; cpu ratio = floor cpu / hits cpu,")
        out.append("    the throughput ratio when the proxy is the bottleneck, unswayed by other load on the machine")
        out.append(f"    {'via':10} {'conns':>5} {'floor req/s':>12} {'p50 ms':>7} {'cpu ms':>7} {'hits req/s':>11} "
                   f"{'p50 ms':>7} {'cpu ms':>7} {'ratio':>6} {'cpu ratio':>9}  target >= {TARGET_HIT_RATIO}")

        def cpu(value: float | None) -> str:
            return f"{value:>7.2f}" if value is not None else f"{'-':>7}"

        for r in hits:
            ok = "ok" if r["ratio"] >= TARGET_HIT_RATIO else "BELOW"
            cpu_ratio = f"{r['cpu_ratio']:>9.2f}" if r.get("cpu_ratio") else f"{'-':>9}"
            out.append(f"    {r['via']:10} {r['concurrency']:>5} {r['floor']['rps']:>12.0f} {r['floor']['p50_ms']:>7.2f} "
                       f"{cpu(r['floor']['cpu_ms_per_request'])} {r['hits']['rps']:>11.0f} {r['hits']['p50_ms']:>7.2f} "
                       f"{cpu(r['hits']['cpu_ms_per_request'])} {r['ratio']:>6.2f} {cpu_ratio}  {ok}")
        out.append("    the same hits, every request bytes the proxy never saw (a nonce header; the hit memo never answers):")
        out.append(f"    {'via':10} {'conns':>5} {'hits req/s':>12} {'p50 ms':>7} {'cpu ms':>7} {'ratio':>6} {'cpu ratio':>9}")
        for r in hits:
            if "new" not in r:
                continue
            cpu_ratio = f"{r['cpu_ratio_new']:>9.2f}" if r.get("cpu_ratio_new") else f"{'-':>9}"
            out.append(f"    {r['via']:10} {r['concurrency']:>5} {r['new']['rps']:>12.0f} {r['new']['p50_ms']:>7.2f} "
                       f"{cpu(r['new']['cpu_ms_per_request'])} {r['ratio_new']:>6.2f} {cpu_ratio}")
    store = report.get("store")
    if store:
        base = store[0]
        out.append("")
        out.append("(b) store lookup per request, in process (Cache.lookup: hash + walk + reply; best of rounds),")
        out.append("    id memo emptied before each; `warm` repeats it from the memo; ratios are of the p50")
        out.append("    against the smallest tree; `reads` is the LMDB part alone")
        out.append(f"    {'nodes':>10} {'convs':>8} {'db MB':>7} {'fill s':>7} {'p50 us':>7} {'mean us':>8} "
                   f"{'ratio':>6} {'warm p50':>9} {'reads p50':>10} {'ratio':>6}")
        for s in store:
            out.append(f"    {s['nodes']:>10,} {s['conversations']:>8,} {s['db_bytes'] / 1e6:>7.0f} "
                       f"{s['populate_seconds']:>7.1f} {s['lookup']['p50_us']:>7.1f} {s['lookup']['mean_us']:>8.1f} "
                       f"{s['lookup_ratio']:>6.2f} {s['warm']['p50_us']:>9.1f} {s['reads']['p50_us']:>10.1f} "
                       f"{s['reads_ratio']:>6.2f}")
        worst = max(s["lookup_ratio"] for s in store)
        out.append(f"    worst lookup ratio {worst:.2f} (target <= {TARGET_LOOKUP_RATIO}: "
                   f"{'ok' if worst <= TARGET_LOOKUP_RATIO else 'ABOVE'})")
    templates = report.get("templates")
    if templates:
        out.append("")
        out.append("(c) template lookups vs exact lookups, in process (Cache.lookup on trees of the same shape:")
        out.append("    own workflows, 2 recorded runs per flow; exact tree looked up with recorded values,")
        out.append("    template tree with fresh ones; `cold` clears the per-process memos before each lookup)")
        out.append(f"    {'flows per node':>14} {'ratio':>6} {'fastest':>8} {'cold ratio':>11}")
        for flows, ratio in templates["ratios_by_flows"].items():
            cold = templates["ratios_cold_by_flows"].get(flows)
            best = templates.get("ratios_best_by_flows", {}).get(flows) or 0.0
            out.append(f"    {flows:>14} {ratio:>6.2f} {best:>8.2f} {cold:>11.2f}" if ratio and cold
                       else f"    {flows:>14} -")
        worst = max([r for r in templates["ratios_by_flows"].values() if r]
                    + [r for r in templates["ratios_cold_by_flows"].values() if r])
        out.append(f"    worst ratio {worst:.2f} (target <= {TARGET_LOOKUP_RATIO}: "
                   f"{'ok' if worst <= TARGET_LOOKUP_RATIO else 'ABOVE'})")
    by_size = report.get("hits_by_size")
    if by_size:
        out.append("")
        out.append("    hits through mitmdump on each tree (1 connection, random recorded conversations, best of rounds)")
        out.append(f"    {'nodes':>10} {'req/s':>8} {'p50 ms':>8} {'ratio':>6}")
        for r in by_size:
            out.append(f"    {r['nodes']:>10,} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p50_ratio']:>6.2f}")
    return "\n".join(out)


class _Done(Exception):
    """Only part (c) was asked for."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,100000,1000000", help="tree sizes in nodes, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per proxy run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each proxy run")
    p.add_argument("--proxy-rounds", type=int, default=5,
                   help="alternating runs per proxy configuration: the best gives req/s and latency, "
                        "the median of each round against the floor round before it gives the ratios")
    p.add_argument("--concurrency", default="1,8", help="connections for (a), comma-separated")
    p.add_argument("--via", default="intercept", help="intercept (CONNECT + TLS), reverse (TLS), or both comma-separated")
    p.add_argument("--distinct", type=int, default=100, help="distinct recorded requests the proxy runs cycle through")
    p.add_argument("--sample", type=int, default=2000, help="lookups per tree size for (b)")
    p.add_argument("--rounds", type=int, default=3, help="passes over the sample; the best counts")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--only", choices=["hits", "store", "templates"], help="run only part (a), (b) or (c)")
    p.add_argument("--no-e2e", action="store_true", help="skip the per-size hit runs through mitmdump")
    p.add_argument("--workdir", type=Path, help="where databases go (default: a temporary directory, removed)")
    p.add_argument("--profile", action="store_true",
                   help="also run butter's mitmdump under cProfile and print where a hit's time goes")
    p.add_argument("--profile-lines", type=int, default=30, help="functions shown by --profile")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.via = [v.strip() for v in args.via.split(",")]
    if any(v not in ("intercept", "reverse") for v in args.via):
        p.error("--via takes intercept and/or reverse")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="butter-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()},
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    profile_text = ""
    try:
        if args.only in (None, "templates"):
            say("(c) template lookups vs exact lookups (bench/eval/lookup_timing.py)")
            report["templates"] = lookup_timing.measure()
        if args.only == "templates":
            raise _Done
        dbs: list[tuple[int, Path, int]] = []
        sizes = args.sizes if args.only != "hits" else args.sizes[:1]
        say("building trees (bulk load through Cache.record, batched transactions)")
        for nodes in sizes:
            db, conversations, info = build_db(workdir, nodes)
            dbs.append((nodes, db, conversations))
            if args.only != "hits":
                say(f"  measuring lookups on {nodes:,} nodes ...")
                report.setdefault("store", []).append(
                    {"nodes": nodes, "conversations": conversations, **info,
                     **measure_lookups(db, conversations, args.sample, args.rounds, args.seed)})
        if report.get("store"):
            base = report["store"][0]
            for s in report["store"]:
                s["lookup_ratio"] = round(s["lookup"]["p50_us"] / base["lookup"]["p50_us"], 3)
                s["reads_ratio"] = round(s["reads"]["p50_us"] / base["reads"]["p50_us"], 3)
        request = workload.request_bytes(0)
        report["request_bytes"] = len(request)
        report["distinct_requests"] = min(args.distinct, dbs[0][2])
        parsed = FORMAT.parse_request(bulk_load.WireRequest("POST", bulk_load.PATH, {}, {}, request))
        report["reply_bytes"] = len(FORMAT.render(workload.reply(0), parsed).body)
        if args.only != "store":
            say("(a) hits vs the floor through mitmdump")
            report["hits_vs_floor"] = bench_hits(workdir, dbs[0][1], dbs[0][2], args)
        if args.profile:
            say("(profile) butter's hit path under cProfile")
            profile_text = "\n\n".join(profile_hits(workdir, dbs[0][1], dbs[0][2], args, nonce)
                                         for nonce in (False, True))
            report["profile"] = profile_text.splitlines()
        if args.only != "hits" and not args.no_e2e:
            say("(b) hits through mitmdump on each tree")
            rows = bench_hits_by_size(workdir, dbs, args)
            for r in rows:
                r["p50_ratio"] = round(r["p50_ms"] / rows[0]["p50_ms"], 3)
            report["hits_by_size"] = rows
    except _Done:
        pass
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    text = table(report)
    if profile_text:
        text += "\n\n" + profile_text
    if args.json:
        say(text)
        print(json.dumps(report, indent=2))
    else:
        print(text)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
