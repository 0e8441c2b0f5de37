"""`butter forget NODE`: remove a node, everything below it and their replies."""
from __future__ import annotations

import argparse

from butter.cli.output import add_common, emit, open_cache, resolve_node, run
from butter.store import admin


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "forget", help="remove a node, its subtree and their replies",
        description="Remove NODE, every node below it and all their replies and statistics, in one "
                    "transaction. Safe while proxies serve and record from the same database: they see the "
                    "subtree whole or gone, and a request that walks there again simply misses and records.")
    add_common(parser)
    parser.add_argument("node", help="node id: 32 hex digits, or a unique prefix of at least 4")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    parser.set_defaults(func=run(forget))


def forget(args: argparse.Namespace) -> int:
    with open_cache(args) as cache:
        node_id = resolve_node(cache.backend, args.node)
        removed = admin.forget(cache.backend, node_id, dry_run=args.dry_run)
    verb = "would forget" if removed.dry_run else "forgot"
    emit(args, {"node": node_id.hex(), "dry_run": removed.dry_run, "nodes": removed.nodes,
                "replies": removed.replies},
         f"{verb} node {node_id.hex()}: {removed.nodes} node(s), {removed.replies} repl(ies)")
    return 0
