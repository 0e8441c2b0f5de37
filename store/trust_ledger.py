"""Template trust in the database: what induction, declared bindings and
verifications write. store/trust.py decides; this module reads and writes
through the backend's side table `trust` (key: node id + reply id), each
update one write transaction that also bumps the template generation (lookups
keep trust in memory per generation), so every proxy process and the CLI see
the same state and concurrent verifications never lose a count.

    note_learned(backend, node, reply_id, slot_shapes, reply, run_bindings, messages)
    note_declared(backend, node, reply_id)
    read(backend, node, reply_id) -> entry | None
    conclude(backend, hit, actual_reply, rules) -> Outcome    after a verification
    at_node(backend, node) -> {reply_id: entry}
    everything(backend) -> {node_id: {reply_id: entry}}
    trust_everything(backend) -> int   every learned template trusted (benchmarks only)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from . import trust
from .agreement import same_answer
from .lmdb_backend import LmdbBackend
from .model import Hit
from .templates import VARYING, RenderError, render_reply, shape_of, slots_in, slots_in_data, slots_stated

ID = 16


def note_learned(backend: LmdbBackend, node: bytes, reply_id: bytes, slot_shapes: Mapping[str, str], reply: dict,
                 run_bindings: Iterable[Mapping[str, str]], messages: Any = ()) -> dict:
    """Induction wrote (or wrote again) a template reply: on probation, unless it
    already has a state. `messages`: the template nodes the reply hangs below."""
    now = time.time()
    run_bindings = list(run_bindings)
    rewritable = trust.rewritable_slots(slot_shapes, reply, slots_in_data(messages))
    # The fingerprint of what the template lets vary unbound is one more slot (a decision input).
    names = set(slot_shapes) | {VARYING for b in run_bindings if VARYING in b}
    fresh = trust.learned_entry(names, slots_in(reply), run_bindings, now, rewritable,
                                trust.typed_whole(reply, rewritable, messages), slots_stated(reply),
                                trust.carried_ordered(slot_shapes, reply), trust.quoted_slots(rewritable, messages))
    record = backend.node(node)
    created = record.created if record is not None else 0.0
    return backend.update_aux(trust.TABLE, trust.trust_key(node, reply_id),
                              lambda existing: trust.merge_learned(
                                  existing and trust.with_inputs(existing, reply, run_bindings[0] if run_bindings else None),
                                  fresh, created), bump_templates=True)


def note_declared(backend: LmdbBackend, node: bytes, reply_id: bytes) -> None:
    """A reply recorded with Butter-Bindings: the client's word, trusted at once."""
    entry = trust.declared_entry(time.time())
    backend.update_aux(trust.TABLE, trust.trust_key(node, reply_id), lambda _: entry, bump_templates=True)


def read(backend: LmdbBackend, node: bytes, reply_id: bytes) -> dict | None:
    return backend.get_aux(trust.TABLE, trust.trust_key(node, reply_id))


@dataclass(frozen=True)
class Outcome:
    agreed: bool
    event: str  # trust.after_verification's, or "not comparable"
    entry: dict | None
    why: str = ""  # for a disagreement: where the answers differ, with which values (conversation content)
    also: tuple[str, ...] = ()  # the events of the other matching template replies (`Hit.also`)


def conclude(backend: LmdbBackend, hit: Hit, actual: dict, rules: trust.TrustRules) -> Outcome:
    """The provider answered a request the template `hit` would have answered: compare, and update its trust."""
    try:
        expected = render_reply(hit.reply, hit.bindings)
    except RenderError as e:
        return Outcome(False, "not comparable", None, f"the template cannot be rendered: {e}")
    agreed = same_answer(expected, actual)
    why = "" if agreed else trust.disagreement(expected, actual, hit.bindings, sorted(hit.bindings)[:4])
    now = time.time()
    events: list[str] = []

    def change(existing: dict | None) -> dict:
        if existing:
            entry = trust.with_inputs(existing, hit.reply, hit.bindings)
        else:
            # Learned before trust was kept: its template nodes are not at hand, so the
            # shapes come from this request's values (`trust.rewritable_in_reply`).
            shapes = {n: shape_of(v) for n, v in hit.bindings.items()}
            entry = trust.learned_entry(set(hit.bindings), slots_in(hit.reply), (), now,
                                        trust.rewritable_slots(shapes, hit.reply), stated=slots_stated(hit.reply),
                                        carried=trust.carried_ordered(shapes, hit.reply))
        rewritten = () if agreed else trust.rewritten_slots(entry, expected, actual, hit.bindings)
        updated, event = trust.after_verification(entry, hit.bindings, agreed, rules, why, now, rewritten)
        events[:] = [event]
        return updated

    entry = backend.update_aux(trust.TABLE, trust.trust_key(hit.node_id, hit.reply_id), change, bump_templates=True)
    if events[0] == "demoted":
        # Marked bad as well: never chosen again at this node, so another reply there may be.
        backend.rescore(hit.node_id, lambda replies: {r.reply_id: (r.score, True) for r in replies
                                                      if r.reply_id == hit.reply_id})
    # The same answer judges every other template reply that matched this request, each
    # by its own rendering: the walk's order among them (node ids) must not split the evidence.
    also = tuple(conclude(backend, other, actual, rules).event for other in hit.also)
    return Outcome(agreed, events[0], entry, why, also)


def at_node(backend: LmdbBackend, node: bytes) -> dict[bytes, dict]:
    out = {}
    for reply in backend.replies(node):
        entry = read(backend, node, reply.reply_id)
        if entry is not None:
            out[reply.reply_id] = entry
    return out


def everything(backend: LmdbBackend) -> dict[bytes, dict[bytes, dict]]:
    out: dict[bytes, dict[bytes, dict]] = {}
    for key, entry in backend.iter_aux(trust.TABLE):
        if len(key) == 2 * ID:
            out.setdefault(key[:ID], {})[key[ID:]] = entry
    return out


def trust_everything(backend: LmdbBackend) -> int:
    """Mark every learned template trusted with its decision inputs free, as if
    verified. For benchmarks that time the hit path of trusted templates."""
    keys = [key for key, entry in backend.iter_aux(trust.TABLE) if entry.get("state") != trust.DEMOTED]
    for key in keys:
        # Each decision input as if any number of its values had agreed (`input_values`).
        backend.update_aux(trust.TABLE, key, lambda e: {**e, "state": trust.TRUSTED, "inputs_free": True,
                                                         "seen": [], "seen_inputs": [], "rewritable": [],
                                                         "input_values": {n: 1 << 30 for n in e.get("inputs") or ()}},
                               bump_templates=True)
    return len(keys)
