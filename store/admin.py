"""Steering the tree: votes, forget, prune, clear, as functions over the backend.

The CLI and the addon's `butter.local` endpoint come through here. What to
delete is planned from plain values (`plan_prune`, `plan_clear` are pure);
the backend then deletes each planned subtree in one short write transaction
and re-checks it there, so all of this is safe while proxies serve and record
from the same database:

- a proxy that reads during a deletion sees the subtree whole or gone;
- a path a proxy records after the plan was made is kept by `prune` (the
  re-check sees it used) and simply grows back after `forget`/`clear`;
- no read transaction is held between batches.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import feedback, trust
from .lmdb_backend import LmdbBackend
from .model import StoredReply
from .tree import ServePolicy

# Subtree tops deleted per write transaction: big enough to be quick, small
# enough that a proxy's queued recording never waits long behind a prune.
BATCH = 64
# Side tables keyed by node id: their rows say something about that node, so they
# go with it. Left behind, a template's trust only takes room and travels in every
# export (a template learned again starts over anyway: trust.merge_learned).
NODE_TABLES = (trust.TABLE,)


@dataclass(frozen=True)
class NodeUsage:
    node_id: bytes
    parent: bytes | None
    depth: int
    kind: str
    namespace: str
    last_used: float


@dataclass
class Removed:
    """What a forget, prune or clear removed (or, dry, would remove)."""

    tops: int = 0
    nodes: int = 0
    replies: int = 0
    dry_run: bool = False
    namespaces: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VoteResult:
    node_id: bytes
    verdict: str
    changed: tuple[bytes, ...]
    replies: tuple[StoredReply, ...]
    servable: bool  # whether the node still has a reply the policy would serve


# -- feedback -----------------------------------------------------------------

def vote(backend: LmdbBackend, node_id: bytes, verdict: str, reply_id: bytes | None = None,
         policy: ServePolicy = ServePolicy()) -> VoteResult:
    """Apply one good/bad vote (rules in store/feedback.py) atomically."""
    verdict = feedback.parse_verdict(verdict)
    if backend.node(node_id) is None:
        raise feedback.UnknownTarget(f"no node {node_id.hex()}")
    changed: list[bytes] = []

    def decide(replies: list[StoredReply]) -> dict[bytes, tuple[int, bool]]:
        changes = feedback.decide(replies, verdict, reply_id, policy)
        changed[:] = list(changes)  # the backend may retry: keep the last run's
        return changes

    replies = backend.rescore(node_id, decide)
    return VoteResult(node_id, verdict, tuple(changed), tuple(replies), policy.choose(replies) is not None)


# -- planning (pure) ----------------------------------------------------------------

def usage(backend: LmdbBackend) -> list[NodeUsage]:
    return [NodeUsage(*row) for row in backend.node_usage()]


def subtree_last_used(nodes: Iterable[NodeUsage]) -> dict[bytes, float]:
    """Each node's latest use counting everything below it."""
    nodes = sorted(nodes, key=lambda n: n.depth, reverse=True)
    latest = {n.node_id: n.last_used for n in nodes}
    for n in nodes:  # deepest first, so a child is final before its parent reads it
        if n.parent is not None and n.parent in latest:
            latest[n.parent] = max(latest[n.parent], latest[n.node_id])
    return latest


def plan_prune(nodes: Iterable[NodeUsage], cutoff: float) -> list[bytes]:
    """The highest nodes whose whole subtree went unused since `cutoff`.

    A node counts as used when it was created, recorded at or served from; a
    branch is pruned only when nothing below it was, so a workflow's shared
    prefix stays while any of its branches is alive.
    """
    nodes = list(nodes)
    latest = subtree_last_used(nodes)
    return [n.node_id for n in nodes
            if latest[n.node_id] < cutoff and (n.parent is None or latest.get(n.parent, 0.0) >= cutoff)]


def plan_clear(nodes: Iterable[NodeUsage], namespace: str | None) -> list[bytes]:
    """Every root of `namespace` (None: every root)."""
    return [n.node_id for n in nodes if n.kind == "root" and (namespace is None or n.namespace == namespace)]


def namespaces(nodes: Iterable[NodeUsage]) -> list[str]:
    return sorted({n.namespace for n in nodes if n.kind == "root"})


def resolve_namespace(known: Iterable[str], name: str) -> str:
    """A namespace as the user types it -> as stored.

    Stored names are `ns:NAME` (a fixed name: the `butter_namespace` option
    or the `butter-namespace` header), `key:…` (a credential's hash) and
    `anon`; a bare NAME means `ns:NAME`.
    """
    known = set(known)
    if name in known:
        return name
    if f"ns:{name}" in known:
        return f"ns:{name}"
    listing = ", ".join(sorted(known)) or "none"
    raise LookupError(f"no namespace {name!r} in this database (namespaces: {listing})")


def subtree(nodes: Iterable[NodeUsage], tops: Iterable[bytes]) -> set[bytes]:
    """Every node in the subtrees under `tops` (for a dry run)."""
    kids: dict[bytes, list[bytes]] = {}
    for n in nodes:
        if n.parent is not None:
            kids.setdefault(n.parent, []).append(n.node_id)
    seen: set[bytes] = set()
    queue = list(tops)
    while queue:
        node_id = queue.pop()
        if node_id not in seen:
            seen.add(node_id)
            queue.extend(kids.get(node_id, ()))
    return seen


# -- deleting -------------------------------------------------------------------

Progress = Callable[[int], None]


def delete(backend: LmdbBackend, tops: list[bytes], unused_since: float | None = None,
           on_batch: Progress | None = None) -> Removed:
    removed = Removed()
    for start in range(0, len(tops), BATCH):
        batch = tops[start:start + BATCH]
        tops_deleted, nodes, replies = backend.delete_subtrees(batch, unused_since, NODE_TABLES)
        removed.tops += tops_deleted
        removed.nodes += nodes
        removed.replies += replies
        if on_batch is not None:
            on_batch(len(batch))
    return removed


def forget(backend: LmdbBackend, node_id: bytes, dry_run: bool = False) -> Removed:
    """The node, everything below it and all their replies."""
    if dry_run:
        return _dry(backend, usage(backend), [node_id])
    return delete(backend, [node_id])


def prune(backend: LmdbBackend, unused_for: float, *, now: float | None = None, dry_run: bool = False,
          on_plan: Callable[[int], None] | None = None, on_batch: Progress | None = None) -> Removed:
    """Every branch not used (created, recorded at or served from) for `unused_for` seconds."""
    cutoff = (time.time() if now is None else now) - unused_for
    nodes = usage(backend)
    tops = plan_prune(nodes, cutoff)
    if on_plan is not None:
        on_plan(len(tops))
    if dry_run:
        return _dry(backend, nodes, tops)
    removed = delete(backend, tops, unused_since=cutoff, on_batch=on_batch)
    for table in NODE_TABLES:  # what a prune or forget by an older butter left behind
        backend.delete_orphaned_aux(table)
    return removed


def clear(backend: LmdbBackend, namespace: str | None, *, dry_run: bool = False,
          on_plan: Callable[[int], None] | None = None, on_batch: Progress | None = None) -> Removed:
    """Every tree of one namespace (as stored, see `resolve_namespace`), or of all with None."""
    nodes = usage(backend)
    tops = plan_clear(nodes, namespace)
    cleared = [namespace] if namespace is not None else namespaces(nodes)
    if on_plan is not None:
        on_plan(len(tops))
    if dry_run:
        return _dry(backend, nodes, tops, cleared)
    removed = delete(backend, tops, on_batch=on_batch)
    removed.namespaces = cleared
    # Side-table rows scoped to a namespace (keys `namespace\x00…`, e.g. the
    # Responses API's response-id map) go with it; clearing everything also
    # drops the rest (induction bookkeeping), which only describes the tree.
    if namespace is None:
        backend.delete_aux_prefix(b"")
    else:
        backend.delete_aux_prefix(namespace.encode("utf-8") + b"\x00")
    return removed


def _dry(backend: LmdbBackend, nodes: list[NodeUsage], tops: list[bytes], namespaces: list[str] | None = None) -> Removed:
    ids = subtree(nodes, tops)
    replies = sum(len(backend.replies(node_id)) for node_id in ids)
    return Removed(len(tops), len(ids), replies, True, namespaces or [])
