"""The web view's JSON, built from the store: plain values in, dicts out.

The proxy (`http://butter.local/`, addon/webview.py) and `butter ui`
(cli/commands/ui.py) serve the same API from these functions. Everything is
paged and bounded, so a 100 k-node database opens as fast as a small one:

- `overview` decodes only roots (the backend skips other rows by their bytes);
- `subtree` walks down from one node to a fixed depth, `limit` children per
  node, never the whole tree;
- `detail` is `butter show`'s data (store.inspect.node_detail) plus readable
  blocks (store.readable);
- `search` stops at `limit` matches.

Recent requests live in a bounded side table (`RECENT_TABLE`) the proxy's
writer thread appends to (addon/recent.py); nothing here writes but `vote`
and `forget`, which are store.admin's.
"""
from __future__ import annotations

import json
import re
import struct
from typing import Any, Iterable

from . import admin
from .inspect import (message_of, unmark, node_detail, node_summary, role_of, served_reply, summarise_context, text_of,
                      tokens_of, tool_calls_of, tool_names, _clip)
from .lmdb_backend import LmdbBackend
from .model import NodeRecord, StoredReply
from .readable import message_blocks, reply_blocks
from .tree import ServePolicy

RECENT_TABLE = "recent"
RECENT_KEEP = 500  # rows kept in the ring: minutes of busy traffic, bounded
HEX_ID = re.compile(r"[0-9a-fA-F]{4,32}")
MAX_LIMIT = 200
MAX_DEPTH = 64
# Cards in one answer at most: a bushy tree asked for deep and wide pages
# stops unfolding here (the page shows "+N" where it stopped).
MAX_CARDS = 1500


def recent_key(timestamp: float, sequence: int) -> bytes:
    """Ring keys sort by time; the sequence keeps one process's rows in one
    second apart and two processes' rows from overwriting each other's."""
    return struct.pack(">dQ", timestamp, sequence)


def _hex(node_id: bytes | None) -> str | None:
    return node_id.hex() if node_id is not None else None


def _trust(value: Any) -> Any:
    """A probation/verified state, when the store has one (another feature adds it)."""
    return getattr(value, "trust", None) if not isinstance(value, dict) else value.get("trust")


# -- the list of workflows ------------------------------------------------------------------

def workflow(root: NodeRecord, branches: int) -> dict:
    context = root.content
    params = {k: v for k, v in (context.get("params") or {}).items() if k != "tools"}
    return {"id": root.node_id.hex(), "namespace": root.namespace, "api": str(context.get("api", "?")),
            "model": str(context.get("model", "?")), "tools": tool_names(context),
            "params": _clip(json.dumps(params, ensure_ascii=False, sort_keys=True), 120) if params else "",
            "summary": summarise_context(context), "branches": branches, "created": root.created}


def overview(backend: LmdbBackend) -> dict:
    """Namespaces and their workflows (roots), newest first."""
    roots = list(backend.iter_roots())
    namespaces: dict[str, list[dict]] = {}
    with backend.snapshot() as snap:
        for root in roots:
            namespaces.setdefault(root.namespace, []).append(workflow(root, len(snap.children_of(root.node_id))))
    return {"generation": backend.generation(),
            "namespaces": [{"namespace": ns, "workflows": sorted(rows, key=lambda r: -r["created"])}
                           for ns, rows in sorted(namespaces.items())]}


# -- the graph -----------------------------------------------------------------------------

def card(snap: Any, node: NodeRecord, policy: ServePolicy) -> dict:
    """What a graph node shows: role, first words, tool calls, slots, replies and their standing."""
    out: dict[str, Any] = {"id": node.node_id.hex(), "kind": node.kind, "depth": node.depth,
                           "parent": _hex(node.parent)}
    if node.kind == "root":
        out.update(role="root", summary=summarise_context(node.content), text="", tools=tool_names(node.content))
    else:
        message = message_of(node)
        out.update(role=role_of(message), summary=node_summary(node, 90), text=_clip(text_of(message), 160),
                   tools=[name for name, _ in tool_calls_of(message)])
    if node.kind == "template":
        shapes = node.content.get("slots") if isinstance(node.content.get("slots"), dict) else {}
        out["slots"] = [{"name": name, "shape": shapes[name]} for name in sorted(shapes)]
        if _trust(node.content) is not None:
            out["trust"] = _trust(node.content)
    replies = snap.replies(node.node_id)
    stats = snap.stats(node.node_id)
    hits = int(stats.get("hits", 0))
    out["hits"] = hits
    out["replies"] = len(replies)
    if replies:
        shown = served_reply(replies, policy)
        out["reply"] = reply_card(shown, policy.choose(replies) is shown, hits)
        out["bad"] = any(r.bad for r in replies)
    return out


def reply_card(reply: StoredReply, served: bool, hits: int) -> dict:
    out = {"id": reply.reply_id.hex(), "observations": reply.count, "reputation": reply.score, "bad": reply.bad,
           "servable": served, "tokens": tokens_of(reply.reply), "tokens_saved": hits * tokens_of(reply.reply) if served else 0}
    if _trust(reply) is not None:
        out["trust"] = _trust(reply)
    return out


def _ordered_children(snap: Any, node_id: bytes, offset: int = 0, limit: int | None = None) -> list[NodeRecord]:
    """Templates first, then the most used: the paths people care about on page one.

    Ordered by what the children index and the stats table say, without
    decoding a child; only the page asked for is decoded (a root of a big
    tree has thousands of children)."""
    ids = snap.children_of(node_id)
    hits = {cid: int(snap.stats(cid).get("hits", 0)) for cid, _ in ids}
    ordered = sorted(ids, key=lambda e: (e[1] != "template", -hits[e[0]], e[0]))
    page = ordered[offset:] if limit is None else ordered[offset:offset + limit]
    return [n for n in (snap.node(cid) for cid, _ in page) if n is not None]


def _build(snap: Any, node: NodeRecord, policy: ServePolicy, depth: int, limit: int, reveal: set[bytes],
           budget: list[int]) -> dict:
    out = card(snap, node, policy)
    budget[0] -= 1
    ids = [cid for cid, _ in snap.children_of(node.node_id)]
    out["children_total"] = len(ids)
    out["children"] = []
    if budget[0] <= 0:
        depth = 0  # only the path to a revealed node from here on
    if depth <= 0 and not (reveal & set(ids)):
        return out
    page = _ordered_children(snap, node.node_id, 0, min(limit, budget[0])) if depth > 0 else []
    shown = {k.node_id for k in page}
    page += [n for n in (snap.node(cid) for cid in ids if cid in reveal and cid not in shown) if n is not None]
    single = len(ids) == 1
    # A chain (one child each) is a single conversation: follow it to its end
    # however deep, so opening a workflow shows whole runs.
    out["children"] = [_build(snap, k, policy, max(depth - 1, 1) if single else depth - 1, limit, reveal, budget)
                       for k in page]
    return out


def subtree(backend: LmdbBackend, node_id: bytes, policy: ServePolicy = ServePolicy(), *, depth: int = 12,
            limit: int = 8, reveal: Iterable[bytes] = ()) -> dict:
    """A node with its descendants to `depth` (`limit` children each, plus any on
    the path to a node in `reveal`); single-child chains are followed to the end."""
    depth, limit = max(0, min(depth, MAX_DEPTH)), max(1, min(limit, MAX_LIMIT))
    with backend.snapshot() as snap:
        node = snap.node(node_id)
        if node is None:
            raise LookupError(f"no node {node_id.hex()}")
        wanted: set[bytes] = set()
        for target in reveal:
            wanted |= set(_path_ids(snap, target))
        return _build(snap, node, policy, depth, limit, wanted, [MAX_CARDS])


def children(backend: LmdbBackend, node_id: bytes, policy: ServePolicy = ServePolicy(), *, offset: int = 0,
             limit: int = 8, depth: int = 12) -> dict:
    """One page of a node's children (each with its own subtree), for "show more"."""
    offset, limit = max(0, offset), max(1, min(limit, MAX_LIMIT))
    depth = max(0, min(depth, MAX_DEPTH))
    with backend.snapshot() as snap:
        if snap.node(node_id) is None:
            raise LookupError(f"no node {node_id.hex()}")
        kids = _ordered_children(snap, node_id, offset, limit)
        budget = [MAX_CARDS]
        return {"id": node_id.hex(), "offset": offset, "total": len(snap.children_of(node_id)),
                "children": [_build(snap, k, policy, depth, limit, set(), budget) for k in kids]}


def _path_ids(snap: Any, node_id: bytes) -> list[bytes]:
    out, current = [], snap.node(node_id)
    while current is not None and len(out) <= MAX_DEPTH * 64:
        out.append(current.node_id)
        current = snap.node(current.parent) if current.parent else None
    return out[::-1]


# -- one node ----------------------------------------------------------------------------------

def detail(backend: LmdbBackend, node_id: bytes, policy: ServePolicy = ServePolicy()) -> dict:
    """`butter show`'s data, with each message and reply also as readable blocks."""
    data, path, replies, _ = node_detail(backend, node_id, policy)
    data["root"] = path[0].node_id.hex() if path[0].kind == "root" else None
    data["workflow"] = workflow(path[0], 0) if path[0].kind == "root" else None
    by_id = {n.node_id.hex(): n for n in path}
    for step in data["path"]:
        node = by_id[step["id"]]
        message = message_of(node)
        step["role"] = role_of(message)
        step["blocks"] = message_blocks(message)
        shapes = node.content.get("slots") if node.kind == "template" else None
        step["shapes"] = shapes if isinstance(shapes, dict) else {}
    chosen = {r["id"]: r for r in data["replies"]}
    for stored in replies:
        row = chosen[stored.reply_id.hex()]
        row["blocks"] = reply_blocks(unmark(stored.reply))  # a template reply with {{slots}} as text
        if _trust(stored) is not None:
            row["trust"] = _trust(stored)
    if data["kind"] == "template" and _trust(path[-1].content) is not None:
        data["trust"] = _trust(path[-1].content)
    return data


# -- search, recent requests ----------------------------------------------------------------

def search(backend: LmdbBackend, query: str, policy: ServePolicy = ServePolicy(), limit: int = 30) -> dict:
    """Nodes by id (a hex prefix of 4+ digits) or by text in their message or a reply."""
    query = query.strip()
    limit = max(1, min(limit, MAX_LIMIT))
    ids: list[bytes] = []
    if HEX_ID.fullmatch(query):
        ids = backend.node_ids_with_prefix(query.lower(), limit)
    if not ids and query:
        # Stored JSON escapes quotes and the like: look for the text as JSON writes it.
        needle = json.dumps(query, ensure_ascii=False)[1:-1].encode("utf-8")
        ids = backend.find_raw(needle, limit)
    found = []
    with backend.snapshot() as snap:
        for node_id in ids:
            node = snap.node(node_id)
            if node is None:
                continue
            path = _path_ids(snap, node_id)
            root = snap.node(path[0]) if path else None
            found.append({**card(snap, node, policy), "root": _hex(path[0]) if path else None,
                          "workflow": summarise_context(root.content) if root and root.kind == "root" else ""})
    return {"query": query, "results": found, "more": len(ids) >= limit}


def recent(backend: LmdbBackend, limit: int = 100) -> dict:
    """The newest requests the proxies handled, newest first."""
    rows = [row for _, row in backend.iter_aux(RECENT_TABLE) if isinstance(row, dict)]
    rows.reverse()
    return {"requests": rows[:max(1, min(limit, RECENT_KEEP))], "generation": backend.generation()}


# -- writes (only where the page was started with writes allowed) ----------------------------------

def vote(backend: LmdbBackend, node_id: bytes, verdict: str, reply_id: bytes | None,
         policy: ServePolicy = ServePolicy()) -> dict:
    result = admin.vote(backend, node_id, verdict, reply_id, policy)
    return {"node": node_id.hex(), "score": result.verdict, "changed": [r.hex() for r in result.changed],
            "servable": result.servable}


def forget(backend: LmdbBackend, node_id: bytes) -> dict:
    if backend.node(node_id) is None:
        raise LookupError(f"no node {node_id.hex()}")
    removed = admin.forget(backend, node_id)
    return {"node": node_id.hex(), "nodes": removed.nodes, "replies": removed.replies}
