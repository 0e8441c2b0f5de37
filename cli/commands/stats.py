"""`butter stats`: what the tree holds and what it has saved, per namespace and model."""
from __future__ import annotations

import argparse

from butter.cli.output import add_common, emit, human_size, human_time, open_cache, run, table
from butter.store.inspect import induction_skips, load_index, stats_rows

COLUMNS = ("namespace", "api", "model", "roots", "nodes", "templates", "replies", "observations", "hits",
           "misses", "tokens saved", "last hit")
NUMERIC = ("roots", "nodes", "templates", "replies", "observations", "hits", "misses", "tokens saved")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stats", help="roots, nodes, replies, hits and savings per namespace and model",
        description="Counts per namespace and model: roots, nodes, templates, replies, recorded observations "
                    "(provider answers that were recorded), hits served (provider calls saved), misses (requests "
                    "the tree could not answer: forwarded, or refused in replay mode) and the tokens the hits "
                    "would have cost, plus the database size. Proxies add hits and misses every few seconds "
                    "and when they stop.")
    add_common(parser)
    parser.add_argument("--namespace", help="only this namespace (e.g. ns:team or key:…)")
    parser.add_argument("--model", help="only this model")
    parser.set_defaults(func=run(stats))


def stats(args: argparse.Namespace) -> int:
    with open_cache(args) as cache:
        rows = stats_rows(load_index(cache.backend))
        usage = cache.backend.usage()
        skipped = induction_skips(cache.backend)
        path = getattr(cache.backend, "display", cache.backend.path)  # a shared store: its URL, without password
    if args.namespace:
        rows = [r for r in rows if r["namespace"] == args.namespace]
    if args.model:
        rows = [r for r in rows if r["model"] == args.model]
    totals = {k: sum(r[k] for r in rows) for k in ("roots", "nodes", "templates", "replies", "observations",
                                                   "hits", "misses", "provider_calls_saved", "tokens_saved")}
    data = {"database": path, "size": usage, "groups": rows, "totals": totals, "induction_skipped": skipped}

    def human() -> str:
        body = table([(r["namespace"], r["api"], r["model"], r["roots"], r["nodes"], r["templates"], r["replies"],
                       r["observations"], r["hits"], r["misses"], r["tokens_saved"], human_time(r["last_hit"]))
                      for r in rows], COLUMNS, right=NUMERIC) if rows else "(the tree is empty)"
        return "\n".join([
            f"database  {path}",
            f"size      {human_size(usage['used_bytes'])} used, {human_size(usage['file_bytes'])} on disk",
            "",
            body,
            "",
            f"hits served: {totals['hits']} (provider calls saved)   misses: {totals['misses']}   "
            f"tokens saved: {totals['tokens_saved']}   recorded observations: {totals['observations']}",
        ] + ([f"induction jobs skipped under load: {skipped.get('coalesced', 0)} coalesced into a newer job of "
              f"the same workflow, {skipped.get('dropped', 0)} dropped with the queue full"] if skipped else []))

    emit(args, data, human)
    return 0
