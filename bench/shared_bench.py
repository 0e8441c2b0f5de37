"""The shared store's benchmark (a script, not a test): `.venv/bin/python bench/shared_bench.py`.

Starts its own redis-server on loopback (Debian's `redis-server`), then, in
one run, each figure a ratio against a baseline measured in the same run:

(a) warm hits through mitmdump: a proxy whose `butter_db` is a shared store
    (its local replica already in step) against a proxy on a plain LMDB
    holding the same tree; rounds alternate, the best of each counts.
    Target: >= 0.9x the LMDB-only throughput.
(b) cold hits, in process: replica A records a conversation; replica B
    (background reader off, so nothing arrives early) looks it up: a local
    miss, one read of the shared log, the entry applied, the hit. Compared
    with a warm LMDB lookup of the same conversation; the end-to-end p50 of
    a cold hit is estimated as the LMDB-only proxy's hit p50 plus the
    measured difference. Target: within 2x of the LMDB-only hit p50.
(c) propagation: from A's record returning to B's background reader having
    applied it (what the other proxies of a fleet wait for), p50 and p99.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bulk_load, workload  # noqa: E402
from bench.bench import BUTTER, best_of, drive, mitmdump, say, summary  # noqa: E402
from butter.store import Cache, Hit  # noqa: E402
from butter.store.shared_backend import SharedBackend  # noqa: E402
from butter.store.tree import plan_record  # noqa: E402
from tests.fakes.redis_server import RedisServer  # noqa: E402

TARGET_WARM = 0.9
TARGET_COLD = 2.0


def build(cache: Cache, conversations: int) -> None:
    ns = bulk_load.namespace(cache)
    for i in range(conversations):
        cache.record(ns, bulk_load.parse(workload.request_bytes(i)), workload.reply(i))


def bench_warm(workdir: Path, url: str, conversations: int, args: argparse.Namespace) -> dict:
    lmdb_db = workdir / "lmdb"
    for where in (str(lmdb_db), url):
        cache = Cache(where)
        try:
            build(cache, conversations)
        finally:
            cache.close()
    bodies = [workload.request_bytes(i) for i in range(conversations)]
    targets = {"lmdb": {"butter_db": str(lmdb_db), "butter_mode": "replay"},
               "shared": {"butter_db": url, "butter_mode": "replay"}}
    runs: dict[str, list] = {name: [] for name in targets}
    with ExitStack() as stack:
        proxies = {name: stack.enter_context(mitmdump(BUTTER, workdir, options, name))
                   for name, options in targets.items()}
        for n in range(args.rounds):
            for name in targets:
                say(f"  warm hits, {name:6} round {n + 1}/{args.rounds} ...")
                runs[name].append(drive(proxies[name], workdir, "intercept", bodies, 1, args.seconds, args.warmup,
                                        b"butter-cache: hit"))
    row = {name: summary(best_of(results)) for name, results in runs.items()}
    row["ratio"] = round(row["shared"]["rps"] / row["lmdb"]["rps"], 3)
    return row


def bench_cold(workdir: Path, url: str, samples: int) -> dict:
    writer = Cache(f"{url}&local={workdir / 'cold-a'}")
    reader = Cache("", backend=SharedBackend(f"{url}&local={workdir / 'cold-b'}", background=False))
    warm = Cache(workdir / "cold-lmdb")
    ns = bulk_load.namespace(writer)
    assert bulk_load.namespace(reader) == ns
    cold_us, warm_us = [], []
    try:
        for i in range(samples):
            conversation = bulk_load.parse(workload.request_bytes(10_000 + i))
            writer.record(ns, conversation, workload.reply(i))
            warm.record(bulk_load.namespace(warm), conversation, workload.reply(i))
            while writer.backend.queued():  # acknowledged by Redis: "after the write completes"
                time.sleep(0.0005)
            started = time.perf_counter()
            found = reader.lookup(ns, conversation)
            cold_us.append((time.perf_counter() - started) * 1e6)
            assert isinstance(found, Hit), found
            started = time.perf_counter()
            assert isinstance(warm.lookup(bulk_load.namespace(warm), conversation), Hit)
            warm_us.append((time.perf_counter() - started) * 1e6)
    finally:
        for cache in (writer, reader, warm):
            cache.close()
    return {"cold_p50_us": round(statistics.median(cold_us), 1), "warm_lmdb_p50_us": round(statistics.median(warm_us), 1),
            "extra_p50_us": round(statistics.median(cold_us) - statistics.median(warm_us), 1)}


def bench_propagation(workdir: Path, url: str, samples: int) -> dict:
    a = Cache(f"{url}&local={workdir / 'prop-a'}")
    b = Cache(f"{url}&local={workdir / 'prop-b'}")
    ns = bulk_load.namespace(a)
    delays = []
    try:
        for i in range(samples):
            conversation = bulk_load.parse(workload.request_bytes(20_000 + i))
            a.record(ns, conversation, workload.reply(i))
            node = plan_record(conversation, ns)[1]
            started = time.perf_counter()
            while not b.backend.replies(node):
                if time.perf_counter() - started > 5:
                    raise RuntimeError("an entry took over 5 s to reach another replica")
                time.sleep(0.0002)
            delays.append((time.perf_counter() - started) * 1000)
    finally:
        a.close()
        b.close()
    delays.sort()
    return {"p50_ms": round(statistics.median(delays), 2), "p99_ms": round(delays[int(len(delays) * 0.99) - 1], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=100, help="recorded conversations the warm load cycles through")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=300, help="cold lookups and propagation samples")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="butter-shared-bench-"))
    server = RedisServer(workdir / "redis")
    try:
        url = f"{server.url}?prefix=bench&local={workdir / 'replica'}"
        say("(a) warm hits through mitmdump: shared store vs LMDB only")
        warm = bench_warm(workdir, url, args.conversations, args)
        say("(b) cold hits in process")
        cold = bench_cold(workdir, f"{server.url}?prefix=cold", args.samples)
        say("(c) propagation between replicas")
        propagation = bench_propagation(workdir, f"{server.url}?prefix=prop", args.samples)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    lmdb_p50_ms = warm["lmdb"]["p50_ms"]
    cold_e2e_ms = lmdb_p50_ms + cold["extra_p50_us"] / 1000
    report = {"warm": warm, "cold": {**cold, "lmdb_hit_p50_ms": lmdb_p50_ms,
                                     "estimated_cold_hit_p50_ms": round(cold_e2e_ms, 3),
                                     "ratio": round(cold_e2e_ms / lmdb_p50_ms, 3)},
              "propagation": propagation}
    if args.json:
        print(json.dumps(report, indent=2))
    print(f"(a) warm hits: shared {warm['shared']['rps']} req/s vs LMDB {warm['lmdb']['rps']} req/s: "
          f"{warm['ratio']}x (target >= {TARGET_WARM}x); p50 {warm['shared']['p50_ms']} vs {lmdb_p50_ms} ms",
          file=sys.stderr if args.json else sys.stdout)
    print(f"(b) cold hit lookup p50 {cold['cold_p50_us']} us vs warm LMDB {cold['warm_lmdb_p50_us']} us "
          f"(+{cold['extra_p50_us']} us); end to end ~{cold_e2e_ms:.3f} ms vs {lmdb_p50_ms} ms: "
          f"{report['cold']['ratio']}x (target <= {TARGET_COLD}x)", file=sys.stderr if args.json else sys.stdout)
    print(f"(c) a write reaches another replica's background reader in p50 {propagation['p50_ms']} ms, "
          f"p99 {propagation['p99_ms']} ms", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
