"""`butter clear --namespace N`: remove one namespace's trees (or, with --all, every tree)."""
from __future__ import annotations

import argparse

from butter.cli.output import CliError, Progress, add_common, emit, open_cache, run
from butter.store import admin


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "clear", help="remove a namespace's trees (or all of them)",
        description="Remove every tree of a namespace: its roots, nodes, replies and statistics, and its "
                    "side-table rows (with --all: every tree and side-table row; the namespace secret stays, "
                    "so keys keep their namespaces). NAME is as `butter stats` shows it (ns:team, key:…, "
                    "anon) or a bare name for ns:NAME (the butter-namespace header). Safe while proxies "
                    "serve and record from the same database.")
    add_common(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--namespace", metavar="NAME", help="the namespace to clear")
    which.add_argument("--all", action="store_true", help="clear every namespace")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    parser.set_defaults(func=run(clear))


def clear(args: argparse.Namespace) -> int:
    with open_cache(args) as cache, Progress("clearing") as bar:
        namespace = None
        if not args.all:
            try:
                namespace = admin.resolve_namespace(admin.namespaces(admin.usage(cache.backend)), args.namespace)
            except LookupError as e:
                raise CliError(str(e)) from e

        def planned(total: int) -> None:
            bar.total = total

        removed = admin.clear(cache.backend, namespace, dry_run=args.dry_run, on_plan=planned,
                              on_batch=bar.advance)
    verb = "would clear" if removed.dry_run else "cleared"
    which = ", ".join(removed.namespaces) or "nothing (the tree is empty)"
    data = {"namespaces": removed.namespaces, "dry_run": removed.dry_run, "roots": removed.tops,
            "nodes": removed.nodes, "replies": removed.replies}
    emit(args, data, f"{verb} {which}: {removed.tops} root(s), {removed.nodes} node(s), {removed.replies} repl(ies)")
    return 0
