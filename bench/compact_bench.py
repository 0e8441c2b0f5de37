"""Joining a shared store from its whole log vs from a snapshot: `.venv/bin/python bench/compact_bench.py`.

Starts its own redis-server on loopback, records the same N exchanges into
two trees (prefixes `full` and `compacted`), compacts the second
(`butter compact`'s API), then times a brand-new replica joining each tree
(opening a SharedBackend with an empty local folder until it is in step),
alternating between them; the best of each counts. The figure is the ratio
of the two join times in the same run, plus the log and snapshot sizes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bulk_load  # noqa: E402,F401 - first, as bench/shared_bench.py does
from bench.bench import say  # noqa: E402
from bench.shared_bench import build  # noqa: E402
from butter.store import Cache  # noqa: E402
from butter.store.shared_backend import SharedBackend  # noqa: E402
from butter.store.shared_snapshot import compact  # noqa: E402
from tests.fakes.redis_server import RedisServer  # noqa: E402


def join_seconds(url: str, local: Path) -> tuple[float, int]:
    started = time.perf_counter()
    backend = SharedBackend(f"{url}&local={local}", background=False)
    took = time.perf_counter() - started
    nodes = backend.counts()["nodes"]
    backend.close()
    shutil.rmtree(local)
    return took, nodes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exchanges", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="butter-compact-bench-"))
    server = RedisServer(workdir / "redis")
    try:
        urls = {name: f"{server.url}?prefix={name}" for name in ("full", "compacted")}
        for name, url in urls.items():
            say(f"recording {args.exchanges} exchanges into {name}")
            cache = Cache(f"{url}&local={workdir / ('writer-' + name)}")
            build(cache, args.exchanges)
            cache.close()
        log_bytes = server_memory_of(server, "full")
        done = compact(f"{urls['compacted']}&local={workdir / 'unused'}")
        times: dict[str, list[float]] = {"full": [], "compacted": []}
        nodes = {}
        for _ in range(args.rounds):
            for name, url in urls.items():
                took, nodes[name] = join_seconds(url, workdir / f"join-{name}")
                times[name].append(took)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert nodes["full"] == nodes["compacted"], nodes
    full, snap = min(times["full"]), min(times["compacted"])
    report = {"exchanges": args.exchanges, "nodes": nodes["full"], "log_entries_trimmed": done["trimmed"],
              "log_bytes": log_bytes, "snapshot_bytes": done["bytes"], "snapshot_rows": done["rows"],
              "join_from_log_s": round(full, 3), "join_from_snapshot_s": round(snap, 3),
              "speedup": round(full / snap, 1)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"a new replica joins a tree of {args.exchanges} exchanges ({nodes['full']} nodes) in "
              f"{full:.3f} s from the whole log ({done['trimmed']} entries, {log_bytes / 1e6:.1f} MB) and in "
              f"{snap:.3f} s from a snapshot ({done['bytes'] / 1e6:.2f} MB compressed): {full / snap:.1f}x faster")
    return 0


def server_memory_of(server: RedisServer, prefix: str) -> int:
    import redis

    return int(redis.Redis(port=server.port).memory_usage(f"butter:{{{prefix}}}:log", samples=0) or 0)


if __name__ == "__main__":
    sys.exit(main())
