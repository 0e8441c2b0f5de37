"""The store's front door: lookup and record over the LMDB tree.

Plain values in (namespace, Conversation, reply dict), decisions out (Hit or
Miss). The addon and the CLI both come through here.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from .lmdb_backend import LmdbBackend
from .shared_backend import open_backend
from .model import Conversation, Hit, Miss, NodeRecord
from .namespace import namespace_for
from .template_index import TemplateSet
from .declared import earlier_step_depths, reply_carries_over
from .learning import InductionOutcome, Learner, plan_bound_record
from .agreement import same_answer
from .templates import explain_mismatch, free_text_in_words, is_declared, match_stored, render_reply
from .tree import ServePolicy, lookup, memo_epoch, plan_record, reply_id
from . import trust_ledger
from .trust import TABLE as TRUST_TABLE, VERIFY_CONTESTED, Judgement, TrustRules, judge, prepare, with_rewritable, with_inputs

DEFAULT_DB_ENV = "BUTTER_DB"
_UNREAD = object()  # a trust entry not read yet at this generation (None: read, and there is none)


def default_db_path() -> str:
    """`$BUTTER_DB`, else `.butter/db` under the working directory.

    The working directory, not the home directory: a recording belongs to the
    project whose agent made it, and lives beside it (and can go into git as an
    export) like a vcrpy cassette does.
    """
    return os.environ.get(DEFAULT_DB_ENV) or str(Path(".butter") / "db")


class Cache:
    def __init__(self, path: str | os.PathLike[str], policy: ServePolicy = ServePolicy(),
                 trust: TrustRules = TrustRules(), *, backend: LmdbBackend | None = None):
        # An LMDB directory or a redis:// shared store; or a backend opened by the caller.
        self.backend: LmdbBackend = backend if backend is not None else open_backend(path)
        self.policy = policy
        self.set_trust(trust)
        # Trust entries prepared for judging, by key, for one template generation.
        self._trust_views: tuple[int | None, dict[bytes, object]] = (None, {})
        # Judgements of template hits by their values, for one template generation and memo epoch.
        self._judgements: tuple[tuple[int | None, int], dict[tuple, Judgement]] = ((None, 0), {})
        self._templates: dict[bytes, NodeRecord] = {}  # decoded template nodes, by id
        # Each node's template children with their index, valid for one
        # template generation of the database (see _DecodedTemplates).
        self._template_sets: tuple[int | None, dict[bytes, tuple[TemplateSet, bool]]] = (None, {})

    def close(self) -> None:
        self.backend.close()

    def set_trust(self, rules: TrustRules) -> None:
        """How learned templates earn trust (store/trust.py). With verification
        on, a template reply's count of runs is not what serves it: its
        verified agreements are."""
        self.trust = rules
        self.policy = replace(self.policy, template_min_observations=1 if rules.verify else None)
        self._trust_views = (None, {})  # prepared under the old rules (ranges kept or not)
        self._judgements = ((None, 0), {})

    def namespace(self, credential: str | None, fixed: str = "") -> str:
        return namespace_for(self.backend.secret, credential, fixed)

    def lookup(self, namespace: str, conversation: Conversation, bindings: dict[str, str] | None = None) -> Hit | Miss:
        """Exact children first, then templates; `bindings` are client-declared values."""
        result = self._lookup(namespace, conversation, bindings)
        if isinstance(result, Miss) and self.backend.catch_up():
            # A shared store: another proxy may have recorded this a moment ago.
            result = self._lookup(namespace, conversation, bindings)
        return result

    def _lookup(self, namespace: str, conversation: Conversation, bindings: dict[str, str] | None) -> Hit | Miss:
        with self.backend.snapshot() as snap:
            generation = snap.template_generation()
            sets = self._template_sets
            if sets[0] != generation:
                # Another process (or this one) added or deleted templates, or
                # changed a template's trust: start over. Replaced whole, so a
                # thread holding an older snapshot never mixes its lists with newer ones.
                sets = self._template_sets = (generation, {})
                self._trust_views = (generation, {})
            reader = _DecodedTemplates(snap, self._templates, sets[1])
            verdicts: dict[int, Judgement] = {}
            verifiable: list[Hit] = []

            def servable(hit: Hit) -> bool:
                # Several templates may match (a narrow one learned first, a
                # broader one later): the walk looks on past one that may not serve.
                verdicts[id(hit)] = verdict = self._verdict(snap, hit, generation)
                if verdict.action == "verify":
                    verifiable.append(hit)
                return verdict.action == "serve"

            # match_stored: the template contents are the decoded nodes kept in
            # self._templates, never changed, so each one's matcher is compiled once.
            result = lookup(conversation, namespace, reader, self.policy, match_template=match_stored,
                            bindings=bindings, explain_template=explain_mismatch, accept=servable)
            if type(result) is Hit and result.templated:
                others = {(h.node_id, h.reply_id): h for h in verifiable}  # each template reply once
                others.pop((result.node_id, result.reply_id), None)
                return self._judged(snap, result, len(conversation.messages), verdicts.get(id(result)),
                                    tuple(others.values()))
            return result

    MAX_JUDGEMENTS = 4096

    def _verdict(self, snap, hit: Hit, generation: int | None = None) -> Judgement:
        """`_judge`, remembered for the values an agent sends again and again.

        A judgement is a function of the template reply's trust entry and the
        node's other replies (both fixed within a template generation: every
        trust write bumps it), the rules (set_trust starts over) and the hit's
        bindings, so those key it. Forgotten with tree.forget_memos, as the
        template matches that led to the hit are.
        """
        if generation is None:
            generation = snap.template_generation()
        stamp = (generation, memo_epoch())
        judgements = self._judgements
        if judgements[0] != stamp:
            judgements = self._judgements = (stamp, {})
        try:
            key = (hit.node_id, hit.reply_id, tuple(hit.bindings.items()))
            found = judgements[1].get(key)
        except TypeError:  # a binding value that cannot be a key: judged every time
            return self._judge(snap, hit, generation)
        if found is None:
            found = self._judge(snap, hit, generation)
            if len(judgements[1]) >= self.MAX_JUDGEMENTS:
                judgements[1].clear()
            judgements[1][key] = found
        return found

    def _judge(self, snap, hit: Hit, generation: int) -> Judgement:
        """How this hit's template reply is judged (store/trust.py).

        The trust entries read at this template generation (every trust write
        bumps it) are kept prepared for `judge`: one dict lookup per hit.
        """
        views = self._trust_views
        if views[0] != generation:
            views = self._trust_views = (generation, {})
        key = hit.node_id + hit.reply_id
        view = views[1].get(key, _UNREAD)
        if view is _UNREAD:
            raw = snap.get_aux_raw(TRUST_TABLE, key)
            entry = None if raw is None else json.loads(raw)
            view = None if entry is None else prepare(with_rewritable(with_inputs(entry, hit.reply, hit.bindings), hit.reply,
                                                                      hit.bindings), self.trust.keep_to_ranges)
            # An entry from before rewritable slots is judged by this request's values (their
            # shapes say which slots are prose): prepared anew for each, never kept for the next.
            if len(views[1]) < 4096 and (entry is None or entry.get("source") != "learned" or "rewritable" in entry):
                views[1][key] = view
        verdict = judge(view, hit.bindings, self.trust)
        if verdict.kind == "new-inputs" and self._contested(snap, views[1], hit):
            return VERIFY_CONTESTED  # this template's values have led to another answer here
        return verdict

    @staticmethod
    def _contested(snap, kept: dict, hit: Hit) -> bool:
        """Whether the template node holds a reply besides this one. Kept per template
        generation like the trust views: a reply joins a template node only by induction or
        a declared recording, and each writes a trust entry, which bumps the generation."""
        key = ("others", hit.node_id, hit.reply_id)
        found = kept.get(key)
        if found is None:
            found = any(r != hit.reply_id for r in snap.reply_ids(hit.node_id))
            if len(kept) < 4096:
                kept[key] = found
        return found

    def _judged(self, snap, hit: Hit, depth: int, verdict: Judgement | None = None, also: tuple = ()) -> Hit | Miss:
        """A template reply is served only as far as its trust allows (store/trust.py).
        `also`: the other matching template replies that would be verified: one
        provider answer is evidence for each of them (which one the walk meets
        first is the order of node ids, not a choice)."""
        verdict = verdict or self._verdict(snap, hit)
        if verdict.action == "serve":
            # `hit` was made by this lookup's walk and nobody else holds it yet:
            # set how it was judged in place (a frozen dataclass; a copy costs more
            # than everything else here).
            object.__setattr__(hit, "trust", verdict.kind)
            return hit
        if verdict.action == "verify":
            return Miss("verify", depth, hit.node_id, f"a template would answer, but {verdict.why}", hit.path,
                        verify=replace(hit, trust=verdict.kind, also=also))
        return Miss("demoted", depth, hit.node_id, verdict.why, hit.path)

    def record_bound(self, namespace: str, conversation: Conversation, reply: dict, bindings: dict[str, str],
                     *, streamed: bool = False, refresh: bool = False) -> bytes:
        """Record with client-declared values as placeholders (Butter-Bindings)."""
        writes, node, template = plan_bound_record(conversation, namespace, bindings, reply)
        rows = [(w.node_id, w.parent, w.depth, w.kind, w.content, namespace if w.kind == "root" else "")
                for w in writes]
        self._carry_earlier_steps(namespace, conversation, bindings, writes, rows)
        self.backend.record(rows, node, reply_id(template), template, streamed, refresh)
        trust_ledger.note_declared(self.backend, node, reply_id(template))
        return node

    def state_table(self, table: str, namespace: str, upstream: str = "") -> "NamespacedTable":
        """A side table seen through one namespace and server (a wire format's server-side state)."""
        return NamespacedTable(self.backend, table, namespace, upstream)

    def observe(self, namespace: str, conversation: Conversation) -> bool:
        """Index a recorded miss for induction (cheap); False if it was already: nothing new to learn."""
        return Learner(self.backend).observe(namespace, conversation)

    def induce(self, namespace: str, conversation: Conversation, min_observations: int = 2,
               observed: bool = False) -> InductionOutcome:
        """Learn templates from this recorded miss and its siblings (slow: off the request path)."""
        return Learner(self.backend).induce(namespace, conversation, min_observations, observed,
                                            explained=self._template_gives_recorded(namespace, conversation))

    def _template_gives_recorded(self, namespace: str, conversation: Conversation) -> bool:
        """Whether a learned template, looked up as if this request had no record of
        its own, renders the reply just recorded for it (a verification that agreed):
        that run is evidence for the template, not the seed of another one."""
        writes, node = plan_record(conversation, namespace)
        with self.backend.snapshot() as snap:
            recorded = [r for r in snap.replies(node) if not r.bad]
            if len(recorded) != 1:
                return False
            reader = _WithoutReplies(_DecodedTemplates(snap, self._templates, {}), node)
            found = lookup(conversation, namespace, reader, self.policy, match_template=match_stored)
            if type(found) is not Hit or not found.templated:
                return False
            try:
                rendered = render_reply(found.reply, found.bindings)
            except ValueError:
                return False
            return same_answer(rendered, recorded[0].reply)

    def record(
        self,
        namespace: str,
        conversation: Conversation,
        reply: dict,
        *,
        streamed: bool = False,
        refresh: bool = False,
    ) -> bytes:
        """Store the conversation's path and its reply; returns the reply's node id."""
        writes, node = plan_record(conversation, namespace)
        rows = [(w.node_id, w.parent, w.depth, w.kind, w.content, namespace if w.kind == "root" else "")
                for w in writes]
        self.backend.record(rows, node, reply_id(reply), reply, streamed, refresh)
        return node

    def _carry_earlier_steps(self, namespace: str, conversation: Conversation, bindings: dict[str, str],
                             writes: list, rows: list) -> None:
        """This run's earlier replies onto its path where a later step carried a tool-result value.

        A value a tool returned and only the final answer repeats was literal
        when the earlier steps were recorded: without this, the next
        customer's earlier steps would miss (store/declared.py).
        """
        contents = [w.content if w.kind == "template" else None for w in writes[1:]]
        for depth in earlier_step_depths(contents, conversation.messages):
            target = writes[depth].node_id
            if self.backend.replies(target):
                continue  # answered there already (an earlier step's own recording carried it)
            prefix = conversation.messages[:depth]
            found = self.lookup(namespace, Conversation(conversation.context, prefix), bindings)
            if not isinstance(found, Hit) or found.node_id == target:
                continue
            source = self.backend.node(found.node_id)
            if source is None or (source.kind == "template" and not is_declared(source.content)):
                continue  # only the run's own word moves: a learned template's reply earns its trust where it is
            if reply_carries_over(found.reply, found.bindings, contents[:depth], prefix, bindings):
                self.backend.record(rows[: depth + 1], target, found.reply_id, found.reply, False, False)
                trust_ledger.note_declared(self.backend, target, found.reply_id)  # the client's word, like the step it copies


class NamespacedTable:
    """A side table whose keys are scoped to a namespace, so one credential
    never continues another's conversation (an adapter's `StateTable`), nor
    a conversation another server holds: ids one server made up say nothing
    about another's."""

    def __init__(self, backend: LmdbBackend, table: str, namespace: str, upstream: str = ""):
        self.backend, self.table, self.namespace = backend, table, namespace
        self._scope = f"{namespace}\x00{upstream}" if upstream else namespace  # `clear` drops `namespace\x00...`

    def get(self, key: str):
        return self.backend.get_aux(self.table, self._key(key))

    def put(self, key: str, value) -> None:
        self.backend.put_aux(self.table, self._key(key), value)

    def _key(self, key: str) -> bytes:
        return f"{self._scope}\x00{key}".encode("utf-8")


class _WithoutReplies:
    """A TreeReader that does not see the replies of one node (so a walk goes on into templates)."""

    def __init__(self, reader, hidden: bytes):
        self.reader, self.hidden = reader, hidden

    def __getattr__(self, name: str):
        return getattr(self.reader, name)

    def replies(self, node_id: bytes):
        return [] if node_id == self.hidden else self.reader.replies(node_id)


class _DecodedTemplates:
    """A TreeReader that reads each node's template children once per process.

    Node ids are content addresses, so a decoded node never goes stale. Which
    templates a node has does change, in this process or another: the lists
    in `sets` are only used with snapshots of the template generation they
    were read at (the backend bumps it in the same write transaction as any
    template edge it adds or deletes), so a lookup sees exactly what its
    snapshot holds. Each list comes with its index (store/template_index.py)
    so a message is matched only against templates it could fit, and, for a
    template node, whether it has any exact child at all (the generation
    moves with those too), so a walk below templates does not hash each
    message to look for an exact child that cannot be there.
    """

    MAX = 4096

    def __init__(self, snap, decoded: dict[bytes, NodeRecord],
                 sets: dict[bytes, tuple[TemplateSet, bool]] | None = None):
        self.snap, self.decoded = snap, decoded
        self.sets: dict[bytes, tuple[TemplateSet, bool]] = {} if sets is None else sets

    def __getattr__(self, name: str):  # every other read goes to the snapshot as is
        return getattr(self.snap, name)

    def has_node(self, node_id: bytes) -> bool:
        return self.snap.has_node(node_id)

    def replies(self, node_id: bytes):
        return self.snap.replies(node_id)

    def template_children(self, node_id: bytes) -> list[NodeRecord]:
        return self._entry(node_id)[0].templates

    def template_candidates(self, node_id: bytes, message, text: bytes | None = None) -> list[NodeRecord]:
        return self._entry(node_id)[0].candidates(message, text)

    def may_have_exact_child(self, node_id: bytes) -> bool:
        if node_id not in self.decoded:
            return True  # not known here as a template node: the generation does not cover its children
        return self._entry(node_id)[1]

    def _entry(self, node_id: bytes) -> tuple[TemplateSet, bool]:
        found = self.sets.get(node_id)
        if found is None:
            templates, exact = self._read_children(node_id)
            found = (TemplateSet(templates), exact)
            if len(self.sets) >= self.MAX:
                self.sets.clear()
            self.sets[node_id] = found
        return found

    def _read_children(self, node_id: bytes) -> tuple[list[NodeRecord], bool]:
        """The node's template children, decoded, and whether it has exact ones."""
        out = []
        exact = False
        for child, kind in self.snap.children_of(node_id):
            if kind != "template":
                exact = True
                continue
            record = self.decoded.get(child)
            if record is None:
                record = self.snap.node(child)
                if record is None:
                    continue
                if len(self.decoded) >= self.MAX:
                    self.decoded.clear()
                self.decoded[child] = record
            if free_text_in_words(record.content):
                continue  # a catch-all (an older database's whole-message binding): never served
            out.append(record)
        return out, exact
