"""`butter tree`: the tree as an indented outline a person can read."""
from __future__ import annotations

import argparse
import sys

from butter.cli.output import add_common, emit, open_cache, run
from butter.store import trust, trust_ledger
from butter.store.inspect import TreeIndex, load_index, matches_text, node_slots, node_summary, served_reply, tokens_of


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tree", help="the recorded conversations as an indented outline",
        description="One line per node: role, first words, tool calls, hits, replies and template slots. "
                    "Node ids (first 12 hex digits) work with `butter show`.")
    add_common(parser)
    parser.add_argument("--namespace", help="only this namespace (e.g. ns:team or key:…)")
    parser.add_argument("--model", help="only roots of this model")
    parser.add_argument("--depth", type=int, help="show at most this many messages below each root")
    parser.add_argument("--match", metavar="TEXT",
                        help="only branches with a message containing TEXT (case-insensitive), "
                             "with their ancestors and everything below them")
    parser.add_argument("--width", type=int, default=70, help="characters of each message to show (default 70)")
    parser.set_defaults(func=run(tree))


def _keep(index: TreeIndex, root: bytes, needle: str | None, max_depth: int | None) -> set[bytes] | None:
    """Nodes to show under `root` for --match: matches, their ancestors and subtrees."""
    if not needle:
        return None
    keep: set[bytes] = set()
    stack: list[tuple[bytes, bool]] = [(root, False)]
    while stack:
        node_id, inside = stack.pop()
        node = index.nodes[node_id]
        if max_depth is not None and node.depth > max_depth:
            continue
        hit = inside or (node.kind != "root" and matches_text(node, needle))
        if hit:
            keep.update(n.node_id for n in index.path_to(node_id))
        for kid in index.kids(node_id):
            stack.append((kid.node_id, hit))
    return keep


def _trust_mark(entry: dict) -> str:
    """A template reply's trust in a few characters: `probation 1/2`, `trusted`, `demoted`."""
    state = entry.get("state", trust.PROBATION)
    if entry.get("source") == "declared":
        return "declared"
    if state == trust.PROBATION:
        return f"probation {entry.get('agreements', 0)}/{trust.TrustRules().needed}"
    if state == trust.TRUSTED and entry.get("inputs") and not entry.get("inputs_free"):
        return "trusted, inputs not free"
    return state


def _node_json(index: TreeIndex, node_id: bytes, keep: set[bytes] | None, max_depth: int | None,
               trusts: dict[bytes, dict[bytes, dict]] | None = None) -> dict:
    node = index.nodes[node_id]
    replies = index.replies.get(node_id, [])
    chosen = served_reply(replies)
    out = {"id": node_id.hex(), "kind": node.kind, "depth": node.depth, "summary": node_summary(node, 200),
           "hits": index.hits(node_id), "replies": len(replies),
           "observations": sum(r.count for r in replies), "slots": node_slots(node),
           "bad": any(r.bad for r in replies), "tokens": tokens_of(chosen.reply) if chosen else 0,
           # Template replies' trust (store/trust.py), by reply id.
           "trust": {rid.hex(): {"state": e.get("state"), "mark": _trust_mark(e), "agreements": e.get("agreements", 0),
                                 "why": e.get("why", "")}
                     for rid, e in (trusts or {}).get(node_id, {}).items()}}
    if node.kind == "root":
        out.update(namespace=node.namespace, api=node.content.get("api"), model=node.content.get("model"))
    kids = [k for k in index.kids(node_id) if (keep is None or k.node_id in keep)
            and (max_depth is None or k.depth <= max_depth)]
    out["children"] = [_node_json(index, k.node_id, keep, max_depth, trusts) for k in kids]
    return out


def _label(tree: dict, width: int) -> str:
    marks = []
    if tree["hits"]:
        marks.append(f"hits {tree['hits']}")
    if tree["replies"]:
        marks.append(f"reply ×{tree['observations']}" if tree["replies"] == 1
                     else f"{tree['replies']} replies ×{tree['observations']}")
    if tree["bad"] and not any(t["state"] == trust.DEMOTED for t in tree["trust"].values()):
        marks.append("BAD")
    marks.extend(t["mark"] for t in tree["trust"].values())
    if tree["kind"] == "template":
        marks.append("template")
    summary = tree["summary"]
    if len(summary) > width + 20:
        summary = summary[: width + 19] + "…"
    tail = f"  [{', '.join(marks)}]" if marks else ""
    return f"{summary}  {tree['id'][:12]}{tail}"


def _lines(root: dict, width: int) -> list[str]:
    """The outline. A conversation that does not branch stays in one column;
    only forks indent, so a long agent loop reads top to bottom."""
    lines = [f"{root['namespace']}  {_label(root, width)}"]
    # (node, prefix, connector): the node's text starts after prefix + connector.
    stack: list[tuple[dict, str, str]] = []

    def push_children(node: dict, column: str, always_branch: bool) -> None:
        kids = node["children"]
        if len(kids) == 1 and not always_branch:
            stack.append((kids[0], column, ""))
            return
        for i in reversed(range(len(kids))):
            stack.append((kids[i], column, "└─ " if i == len(kids) - 1 else "├─ "))

    push_children(root, "", True)
    while stack:
        node, prefix, connector = stack.pop()
        lines.append(f"{prefix}{connector}{_label(node, width)}")
        column = prefix + {"└─ ": "   ", "├─ ": "│  ", "": ""}[connector]
        push_children(node, column, False)
    return lines


def tree(args: argparse.Namespace) -> int:
    # The outline is built recursively, a level per message: leave room for
    # agent loops far longer than Python's default 1000 frames.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    with open_cache(args) as cache:
        index = load_index(cache.backend)
        trusts = trust_ledger.everything(cache.backend)
    roots = [r for r in index.roots()
             if (not args.namespace or r.namespace == args.namespace)
             and (not args.model or r.content.get("model") == args.model)]
    forest = []
    for root in roots:
        keep = _keep(index, root.node_id, args.match, args.depth)
        if keep is not None and len(keep) <= 1:
            continue  # nothing under this root matches
        forest.append(_node_json(index, root.node_id, keep, args.depth, trusts))

    def human() -> str:
        if not forest:
            return "(nothing recorded matches)" if (args.match or args.namespace or args.model) else "(the tree is empty)"
        out: list[str] = []
        for tree_ in forest:
            out.extend(_lines(tree_, args.width))
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    emit(args, {"roots": forest}, human)
    return 0
