"""`butter feedback NODE good|bad`: score a node's reply, as a person."""
from __future__ import annotations

import argparse
import re

from butter.cli.output import CliError, add_common, emit, open_cache, resolve_node, run, short_id, table
from butter.store import ServePolicy, admin
from butter.store.feedback import VERDICTS, FeedbackError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "feedback", help="score a node good or bad (bad: no longer served)",
        description="Score what butter serves at NODE (the butter-node header of a served reply). "
                    "bad marks every reply at the node (or only --reply) so it is no longer served: the next "
                    "request at that point goes to the provider and its answer is recorded beside it. good "
                    "raises the reputation of the reply served there (or --reply) and lifts a bad mark while "
                    "its reputation is not negative. Works while proxies serve from the same database.")
    add_common(parser)
    parser.add_argument("node", help="node id: 32 hex digits, or a unique prefix of at least 4")
    parser.add_argument("score", choices=VERDICTS, type=str.lower, help="good or bad")
    parser.add_argument("--reply", help="only this reply (the butter-reply header), 32 hex digits")
    parser.add_argument("--min-observations", type=int, default=1, metavar="N",
                        help="the proxies' butter_min_observations, to report whether the node is still "
                             "servable and which reply 'good' scores (default 1)")
    parser.set_defaults(func=run(feedback))


def feedback(args: argparse.Namespace) -> int:
    reply_id = None
    if args.reply is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{32}", args.reply):
            raise CliError(f"{args.reply!r} is not a reply id (32 hex digits)")
        reply_id = bytes.fromhex(args.reply)
    if args.min_observations < 1:
        raise CliError("--min-observations must be at least 1")
    with open_cache(args) as cache:
        node_id = resolve_node(cache.backend, args.node)
        try:
            result = admin.vote(cache.backend, node_id, args.score, reply_id,
                                ServePolicy(min_observations=args.min_observations))
        except FeedbackError as e:
            raise CliError(str(e)) from e
    data = {"node": node_id.hex(), "score": result.verdict, "changed": list(result.changed),
            "servable": result.servable,
            "replies": [{"reply": r.reply_id.hex(), "reputation": r.score, "bad": r.bad, "observations": r.count}
                        for r in result.replies]}

    def human() -> str:
        changed = set(result.changed)
        rows = [("*" if r.reply_id in changed else "", short_id(r.reply_id), r.score, "bad" if r.bad else "",
                 r.count) for r in result.replies]
        if result.servable:
            after = "The node is served (the best-reputed servable reply)."
        else:
            after = "Nothing at this node is served now: the next request there goes to the provider."
        return "\n".join([
            f"node {node_id.hex()}: scored {result.verdict} ({len(changed)} repl{'y' if len(changed) == 1 else 'ies'})",
            "",
            table(rows, ("", "reply", "reputation", "mark", "observations"), right=("reputation", "observations")),
            "",
            after,
        ])

    emit(args, data, human)
    return 0
