"""`butter show NODE`: one node in full — its path, replies, observations, statistics."""
from __future__ import annotations

import argparse
import json

from butter.cli.output import add_common, emit, human_time, open_cache, resolve_node, run
from butter.store.inspect import message_of, node_detail, node_slots, role_of, summarise_context, text_of, tool_calls_of


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="one node in full: the messages on its path, its replies and statistics",
        description="NODE is a hex node id or a unique prefix of one (as `butter tree` and the "
                    "butter-node response header print them).")
    add_common(parser)
    parser.add_argument("node", metavar="NODE", help="hex node id or unique prefix (at least 4 digits)")
    parser.set_defaults(func=run(show))


KNOWN_KEYS = ("role", "content", "parts", "tool_calls", "tool_call_ref", "tool_call_id")


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _indent(text: str, by: str = "    ") -> str:
    return "\n".join(by + line for line in text.splitlines())


def show(args: argparse.Namespace) -> int:
    with open_cache(args) as cache:
        node_id = resolve_node(cache.backend, args.node)
        data, path, replies, children = node_detail(cache.backend, node_id, cache.policy)
    node, root = path[-1], (path[0] if path[0].kind == "root" else None)

    def human() -> str:
        out = [f"node      {node_id.hex()}  ({node.kind}, depth {node.depth}, created {human_time(node.created)})"]
        if root:
            out.append(f"namespace {root.namespace}")
            out.append(f"context   {summarise_context(root.content)}")
            for key, value in sorted(root.content.items()):
                if key in ("api", "model") or value in ({}, [], None):
                    continue
                if isinstance(value, dict):
                    for sub, inner in sorted(value.items()):
                        out.append(f"  {key}.{sub}: {_compact(inner)}")
                else:
                    out.append(f"  {key}: {_compact(value)}")
        out.append("")
        out.append(f"messages ({len(data['path'])})")
        for n in path:
            if n.kind == "root":
                continue
            slots = node_slots(n)
            message = message_of(n)
            ref = message.get("tool_call_ref") or message.get("tool_call_id")
            out.append(f"  [{n.depth}] {role_of(message)}" + (f" ({ref})" if ref else "") + f"  {n.node_id.hex()[:12]}"
                       + (f"  template, slots: {', '.join(slots)}" if slots else ""))
            text = text_of(message)
            if text:
                out.append(_indent(text, "      "))
            for name, arguments in tool_calls_of(message):
                out.append(f"      → {name} {_compact(arguments)}")
            rest = {k: v for k, v in message.items() if k not in KNOWN_KEYS}
            if rest:
                out.append(f"      {_compact(rest)}")
        out.append("")
        if replies:
            out.append(f"replies ({len(replies)})")
            for r in data["replies"]:
                flags = ", ".join(f for f in (("served" if r["served"] else ""), ("BAD" if r["bad"] else ""),
                                              ("recorded streamed" if r["streamed"] else "")) if f)
                out.append(f"  {r['id'][:12]}  seen {r['count']}×, first {human_time(r['first_seen'])}, "
                           f"last {human_time(r['last_seen'])}, score {r['score']}, tokens {r['tokens']}"
                           + (f"  ({flags})" if flags else ""))
                if r["trust"] is not None:
                    out.append(f"    trust     {r['trust']['summary']}")
                out.append(_indent(_pretty(r["reply"])))
        else:
            out.append("replies   none (an inner node: the conversation goes on below)")
        out.append("")
        out.append(f"stats     hits {data['stats']['hits']}, last hit {human_time(data['stats']['last_hit'])}, "
                   f"tokens saved {data['stats']['tokens_saved']}")
        if children:
            out.append(f"children ({len(children)})")
            for c in data["children"]:
                out.append(f"  {c['id'][:12]}  {c['summary']}" + ("  (template)" if c["kind"] == "template" else ""))
        return "\n".join(out)

    emit(args, data, human)
    return 0
