"""Induction bookkeeping over the backend, and records of declared bindings.

`store/induction.py` decides (plain values in, a proposal out); this module
finds its inputs in the tree and writes its outputs back:

- every recorded miss is indexed as an *observation* of its root and depth
  (side table `induction-obs/<root>/<depth>`), so siblings are found without
  scanning the tree;
- a set of observations that failed the evidence is remembered
  (`induction-failed`) and not tried again until new evidence arrives;
- an accepted proposal becomes template nodes under the exact node where the
  observations diverge, with the reply template at the last one, and the
  same runs' earlier requests get their replies on those nodes when the
  accepted later step proves their values (`propose_prefix`);
- a proposal that gives a template live traffic demoted gives way to the
  proposal of the runs that share this run's values of what decided the
  disagreement (`decided_by`, store/trust.py): those values literal, a
  branch of their own.

Nothing here runs on a request's path: the addon calls `Learner.induce` on a
worker thread after the miss's own record is written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import trust, trust_ledger
from .canonical import digest
from .induction import Observation, Proposal, Rejected, choose, propose, propose_prefix
from .lmdb_backend import LmdbBackend
from .model import Conversation
from .declared import bound_contents
from .tree import NodeWrite, child_id, plan_record, reply_id, root_id

OBS_TABLE = "induction-obs"
FAILED_TABLE = "induction-failed"
MAX_SIBLINGS = 16  # the closest siblings are the evidence; more add cost, not insight
MAX_CANDIDATES = 64  # how many of the newest observations are read to find them


@dataclass(frozen=True)
class InductionOutcome:
    """What one induction run did, for the log and for tests."""

    accepted: Proposal | None = None
    rejected: tuple[Rejected, ...] = ()
    skipped: str = ""  # why nothing was tried
    template_nodes: tuple[bytes, ...] = field(default=())
    earlier_replies: int = 0  # earlier steps of the same runs now answered (see `_earlier_steps`)


def _shared_prefix(a: tuple, b: tuple) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _set_key(keys: tuple[bytes, ...]) -> bytes:
    return digest(b"induction-set", *sorted(keys))


class Learner:
    def __init__(self, backend: LmdbBackend):
        self.backend = backend

    # -- observations ------------------------------------------------------------
    def _observation(self, node: bytes) -> Observation | None:
        """The exact path to `node` and its one reply (None if ambiguous or gone)."""
        with self.backend.snapshot() as snap:
            replies = [r for r in snap.replies(node) if not r.bad]
            if len({r.reply_id for r in replies}) != 1:
                return None  # no reply, or the provider said different things: no evidence
            messages = []
            current = snap.node(node)
            while current is not None and current.kind != "root":
                if current.kind != "message":
                    return None  # only exact paths are observations
                messages.append(current.content)
                current = snap.node(current.parent) if current.parent else None
            if current is None:
                return None
        return Observation(node, tuple(reversed(messages)), replies[0].reply)

    def observe(self, namespace: str, conversation: Conversation) -> bool:
        """Index this recorded miss as an observation of its root and depth.

        False when it already was (the same path recorded again: no new
        evidence). Cheap, so the proxy does it as it records: a learning job
        that is coalesced away (addon/induction_queue.py) still leaves its run
        findable as a sibling of the next.
        """
        writes, node = plan_record(conversation, namespace)
        table = f"{OBS_TABLE}/{writes[0].node_id.hex()}/{len(conversation.messages)}"
        if self.backend.get_aux(table, node) is not None:
            return False
        self.backend.put_aux(table, node, {"t": time.time()})
        return True

    def induce(self, namespace: str, conversation: Conversation, min_observations: int = 2,
               observed: bool = False, explained: bool = False) -> InductionOutcome:
        """Index this recorded miss (unless `observed` already) and try to learn a template from its siblings.

        `explained`: a learned template already gives this run's reply (a
        verification that agreed). The run is indexed, as evidence for later
        proposals, but proposes nothing now: a template re-learned from one
        more run would be a new node, back on probation, and the agreements
        its predecessor earned would be lost.
        """
        writes, node = plan_record(conversation, namespace)
        root = writes[0].node_id
        depth = len(conversation.messages)
        table = f"{OBS_TABLE}/{root.hex()}/{depth}"
        if not observed and not self.observe(namespace, conversation):
            return InductionOutcome(skipped="already observed: no new evidence")
        new = self._observation(node)
        if new is None:
            return InductionOutcome(skipped="this node has no single reply to learn from")
        if explained:
            return InductionOutcome(skipped="a learned template already gives this reply")
        newest = sorted(((v.get("t", 0), k) for k, v in self.backend.iter_aux(table) if k != node), reverse=True)
        candidates = [o for o in (self._observation(k) for _, k in newest[:MAX_CANDIDATES]) if o is not None]
        # The closest relatives first (longest shared prefix), newest among equals:
        # runs of another workflow at the same depth are no evidence for this one.
        candidates.sort(key=lambda o: _shared_prefix(o.messages, new.messages), reverse=True)
        others = candidates[:MAX_SIBLINGS]
        if not others:
            return InductionOutcome(skipped="no sibling observations yet")

        def known_failure(keys: tuple[bytes, ...]) -> bool:
            return self.backend.get_aux(FAILED_TABLE, _set_key(keys)) is not None

        proposal, failures = choose(new, others, min_observations, known_failure)
        if failures:
            now = time.time()
            self.backend.put_aux_many(FAILED_TABLE, [(_set_key(f.keys), {"reason": f.reason, "t": now})
                                                     for f in failures])
        if proposal is None:
            return InductionOutcome(rejected=tuple(failures))
        proposal = self._past_demotion(proposal, new, others, writes, min_observations)
        if proposal is None:
            return InductionOutcome(rejected=tuple(failures), skipped="the template these runs give was demoted; "
                                    "no two of them share this run's values of what decided it")
        ids = self._write(proposal, writes, namespace)
        earlier = self._earlier_steps(proposal, writes, namespace)
        return InductionOutcome(accepted=proposal, rejected=tuple(failures), template_nodes=ids,
                                earlier_replies=earlier)

    def _past_demotion(self, proposal: Proposal, new: Observation, others: list[Observation],
                       exact: list[NodeWrite], min_observations: int) -> Proposal | None:
        """The proposal, unless the template it gives was demoted: then, when the
        disagreement named the decision inputs that explain it (`decided_by`: a shipped
        order's status, after pending and processing ones gave the same reply), the
        proposal of the runs that share this run's values of them, which keeps those
        values literal: the value becomes a branch of its own, learned and verified
        anew. None when there is no such branch (yet)."""
        demoted_at = _template_path(proposal, exact)[-1], reply_id(proposal.reply)
        entry = trust_ledger.read(self.backend, *demoted_at)
        if not entry or entry.get("state") != trust.DEMOTED:
            return proposal
        runs = {o.key: o for o in (new, *others)}
        values = dict(zip(proposal.keys, proposal.bindings))
        if new.key not in values:
            return None
        pinned = {name: values[new.key][name] for name in entry.get("decided_by") or () if name in values[new.key]}
        if not pinned:
            return None
        group = [runs[key] for key in proposal.keys
                 if key in runs and all(values[key].get(n) == v for n, v in pinned.items())]
        if len(group) < max(2, min_observations):
            return None
        branch = propose(group, min_observations)
        if not isinstance(branch, Proposal) or (_template_path(branch, exact)[-1], reply_id(branch.reply)) == demoted_at:
            return None
        return branch

    def _ancestor(self, node: bytes, depth: int) -> bytes | None:
        with self.backend.snapshot() as snap:
            record = snap.node(node)
            while record is not None and record.depth > depth:
                record = snap.node(record.parent) if record.parent else None
            return record.node_id if record is not None and record.depth == depth else None

    def _earlier_steps(self, proposal: Proposal, writes: list[NodeWrite], namespace: str) -> int:
        """Replies for the earlier requests of the proposal's runs, on its template nodes.

        A step whose own proposal failed only because a value reaches a later
        reply (the customer's name, unused by the first tool call) is served
        once the later step proves the value is one (`propose_prefix`).
        """
        written = 0
        deepest = proposal.start + len(proposal.nodes)
        for depth in range(deepest - 1, proposal.start, -1):
            nodes = [self._ancestor(key, depth) for key in proposal.keys]
            if any(n is None for n in nodes):
                continue
            prefix = [self._observation(n) for n in nodes]
            if any(o is None for o in prefix):
                continue  # a step the agent never asked about (after an assistant message)
            found = propose_prefix(proposal, prefix)
            if isinstance(found, Proposal) and self._write(found, writes, namespace, only_new=True):
                written += 1
        return written

    def _write(self, proposal: Proposal, exact: list[NodeWrite], namespace: str,
               only_new: bool = False) -> tuple[bytes, ...]:
        rows = [(w.node_id, w.parent, w.depth, w.kind, w.content, namespace if w.kind == "root" else "")
                for w in exact[: proposal.start + 1]]
        ids = _template_path(proposal, exact)
        parent = exact[proposal.start].node_id
        for depth, (node, (kind, content)) in enumerate(zip(ids, proposal.nodes), start=proposal.start + 1):
            rows.append((node, parent, depth, kind, content, ""))
            parent = node
        rid = reply_id(proposal.reply)
        if only_new:
            with self.backend.snapshot() as snap:
                if any(r.reply_id == rid for r in snap.replies(parent)):
                    return ()  # derived before from the same runs: no new evidence
        # One observation per recorded run: the count is the evidence behind it.
        for _ in proposal.keys:
            self.backend.record(rows, parent, rid, proposal.reply, False, False)
        # Learned on syntax alone: served only once live traffic agrees (store/trust.py).
        trust_ledger.note_learned(self.backend, parent, rid, proposal.slots, proposal.reply, proposal.bindings,
                                  [content for _, content in proposal.nodes])
        return tuple(ids)


def _template_path(proposal: Proposal, exact: list[NodeWrite]) -> list[bytes]:
    """The ids of the proposal's template nodes, under the exact node where its runs diverge."""
    ids, parent = [], exact[proposal.start].node_id
    for _, content in proposal.nodes:
        parent = child_id(parent, content)
        ids.append(parent)
    return ids


# -- client-declared bindings ----------------------------------------------------------

def plan_bound_record(conversation: Conversation, namespace: str, bindings: dict[str, str],
                      reply: dict) -> tuple[list[NodeWrite], bytes, dict]:
    """The path with every declared value as its placeholder, and the reply template.

    Messages without a declared value stay exact nodes; the others become
    template nodes, so a later request with other values (or without the
    header at all) matches them. Values a tool result of the run returned and
    its later output repeats are slots too (store/declared.py).
    """
    root = root_id(namespace, conversation.context)
    writes = [NodeWrite(root, None, 0, "root", conversation.context)]
    node = root
    contents, template = bound_contents(conversation.context, conversation.messages, bindings, reply)
    for depth, (message, content) in enumerate(zip(conversation.messages, contents), start=1):
        kind, content = ("message", message) if content is None else ("template", content)
        nxt = child_id(node, content)
        writes.append(NodeWrite(nxt, node, depth, kind, content))
        node = nxt
    return writes, node, template
