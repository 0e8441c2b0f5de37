"""`butter prune --unused-for 30d`: remove branches nobody has used for a while."""
from __future__ import annotations

import argparse

from butter.cli.output import Progress, add_common, emit, open_cache, parse_duration, run
from butter.store import admin


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune", help="remove branches unused for a duration",
        description="Remove every branch of the tree that was not created, recorded at or served from "
                    "within the duration (a shared prefix stays while any branch below it is alive). Each "
                    "branch goes in one short transaction and is re-checked there, so a branch a proxy "
                    "records or serves while the prune runs is kept. (Proxies write hit counts in batches, "
                    "so use a duration of minutes or more to count the very latest hits.)")
    add_common(parser)
    parser.add_argument("--unused-for", required=True, type=parse_duration, metavar="DURATION",
                        help="e.g. 30d, 12h, 90m, 2w, 45s")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    parser.set_defaults(func=run(prune))


def prune(args: argparse.Namespace) -> int:
    with open_cache(args) as cache, Progress("pruning") as bar:
        def planned(total: int) -> None:
            bar.total = total

        removed = admin.prune(cache.backend, args.unused_for, dry_run=args.dry_run, on_plan=planned,
                              on_batch=bar.advance)
    verb = "would remove" if removed.dry_run else "removed"
    data = {"unused_for_seconds": args.unused_for, "dry_run": removed.dry_run, "branches": removed.tops,
            "nodes": removed.nodes, "replies": removed.replies}
    emit(args, data, f"{verb} {removed.tops} branch(es) unused for {_duration(args.unused_for)}: "
                     f"{removed.nodes} node(s), {removed.replies} repl(ies)")
    return 0


def _duration(seconds: float) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
