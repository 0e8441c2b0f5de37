"""How fast the web view opens on a big tree: a script, not a test.

    .venv/bin/python bench/webview_bench.py [--sizes 1000,100000] [--rounds 5] [--workdir DIR] [--json]

For each size, a database is filled through the real front door
(bench/bulk_load.py: the OpenAI Chat adapter and Cache.record; the bench
workload has four roots with a quarter of the conversations each, so every
root has thousands of children), then `butter ui`'s server (the same code the
proxy serves at butter.local) is started on a fresh Cache for each round and
what the page fetches when it opens is timed over real HTTP on loopback:

    GET /, /app.js, /app.css, /api/overview, /api/recent,
    /api/tree/<the biggest workflow> (depth 12, 8 children a node),
    /api/node/<a leaf on the first page>

"open" is the sum (wall time, sequential, as a cold page does it). Also timed:
paging (the next 8 children of the biggest root), a text search that has to
scan the database for a word that is not there (the worst case), and a node
id search. Figures are medians over --rounds; the ratio is against the
smallest size in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench import build_db  # noqa: E402
from butter.cli.commands.ui import serve  # noqa: E402
from butter.store import Cache  # noqa: E402


def get(base: str, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(base + path, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - started, body


def one_round(db: Path) -> dict[str, float]:
    cache = Cache(db)
    server = serve(cache, "127.0.0.1", 0, False)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        t: dict[str, float] = {}
        opened = 0.0
        for path in ("/", "/app.js", "/app.css"):
            opened += get(base, path)[0]
        seconds, body = get(base, "/api/overview")
        opened += seconds
        t["overview"] = seconds
        workflows = [w for ns in json.loads(body)["namespaces"] for w in ns["workflows"]]
        biggest = max(workflows, key=lambda w: w["branches"])
        seconds, _ = get(base, "/api/recent?limit=200")
        opened += seconds
        seconds, body = get(base, f"/api/tree/{biggest['id']}?depth=12&limit=8")
        opened += seconds
        t["tree"] = seconds
        tree = json.loads(body)
        leaf = tree
        while leaf["children"]:
            leaf = leaf["children"][0]
        seconds, _ = get(base, f"/api/node/{leaf['id']}")
        opened += seconds
        t["node"] = seconds
        t["open"] = opened
        t["more"] = get(base, f"/api/children/{tree['children'][0]['id'] if tree['children_total'] == 1 else tree['id']}"
                              "?offset=8&limit=8&depth=12")[0]
        t["search_text_miss"] = get(base, "/api/search?q=zebra-not-anywhere")[0]
        t["search_id"] = get(base, f"/api/search?q={leaf['id'][:8]}")[0]
        t["nodes_drawn"] = float(_count(tree))
        t["branches"] = float(biggest["branches"])
        return t
    finally:
        server.shutdown()
        server.server_close()
        cache.close()


def _count(card: dict) -> int:
    return 1 + sum(_count(c) for c in card["children"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000", help="tree sizes in nodes (default 1000,100000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", help="keep the databases here (default: a temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="butter-webview-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = {}
        for size in sizes:
            db = workdir / f"db-{size}"
            info = {"nodes": None}
            if not (db / "data.mdb").exists():
                db, _, info = build_db(workdir, size)
            rounds = [one_round(db) for _ in range(args.rounds)]
            medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            with _open(db) as cache:
                info["nodes"] = cache.backend.counts()["nodes"]
            report[size] = {"db": info, "median_seconds": medians, "worst_open": max(r["open"] for r in rounds)}
    base = report[sizes[0]]["median_seconds"]
    lines = [f"{'nodes':>9} {'open ms':>8} {'worst':>7} {'overview':>9} {'tree':>7} {'node':>6} {'more':>6} "
             f"{'search text':>12} {'search id':>10} {'open vs ' + str(sizes[0]):>12}"]
    for size in sizes:
        m = report[size]["median_seconds"]
        ratio = m["open"] / base["open"] if base["open"] else float("nan")
        report[size]["open_ratio"] = round(ratio, 2)
        lines.append(f"{report[size]['db']['nodes']:>9,} {m['open'] * 1000:>8.1f} {report[size]['worst_open'] * 1000:>7.1f} "
                     f"{m['overview'] * 1000:>9.1f} {m['tree'] * 1000:>7.1f} {m['node'] * 1000:>6.1f} {m['more'] * 1000:>6.1f} "
                     f"{m['search_text_miss'] * 1000:>12.1f} {m['search_id'] * 1000:>10.1f} {ratio:>11.2f}×")
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


class _open:
    def __init__(self, db: Path):
        self.cache = Cache(db)

    def __enter__(self) -> Cache:
        return self.cache

    def __exit__(self, *exc: object) -> None:
        self.cache.close()


if __name__ == "__main__":
    sys.exit(main())
