"""The template index and the per-process template lists change no lookup's answer.

`store/template_index.py` proposes only some of a node's template children
for a message; `store/cache.py` keeps each node's list in memory for one
template generation of the database; `store/tree.py` remembers match
results. Each is there for speed only: the properties below compare them
with the plain walk (every template child read from the snapshot and
matched every time), over many generated templates and messages, and show
that a template another process adds or deletes is seen by the next lookup.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import butter.store.tree as tree
from butter.store import Cache, Conversation, Hit, Miss
from butter.store.model import NodeRecord
from butter.store.template_index import TemplateSet
from butter.store.templates import (SHAPES, RenderError, escape_literal, explain_mismatch, json_marker, match_message, match_stored,
                             number_marker,
                             render_reply, slots_in, template_content, text_marker)
from butter.store.tree import child_id, reply_id, root_id
from butter.store.trust import TrustRules

# These tests are about what induction learns and how lookups find it: templates
# are served on induction's word (trust has its own tests, tests/unit/test_trust.py).
ON_INDUCTIONS_WORD = TrustRules(verify=False)

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = {"api": "test", "model": "m"}
NS = "ns:index"

# Few literals, so that siblings share heads and tails and the index must
# tell them apart by the rest (or give up and propose them all).
LITERALS = ["", "Refund order ", "Refund ", "order ", " for ", ".", "{{", "}}", "{", " ", "ö", "a", "ab",
            "[desk 0] ", "[desk 1] ", "Please ", "please ", "x" * 30, "x" * 31 + "y", "東京 "]
NAMES = ["a", "b", "c", "order_id"]
VALUES = {"number": ["7", "12", "3.5", "-2"], "date": ["2024-05-01", "10:31"],
          "email": ["ana@example.com"], "identifier": ["ORD-12", "a1b2"],
          "text": ["Ana Ruiz", "Bo", "order 7", "{{a}}", "x", ".", "Refund"]}
ANY_VALUES = [v for vs in VALUES.values() for v in vs]


def _text(rng: random.Random, slots: dict[str, str]) -> str:
    out = [escape_literal(rng.choice(LITERALS))]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        name = rng.choice(NAMES)
        slots.setdefault(name, rng.choice(SHAPES))
        out.append("{{" + name + "}}")
        out.append(escape_literal(rng.choice(LITERALS)))
    return "".join(out)


def _leaf(rng: random.Random, slots: dict[str, str]) -> object:
    roll = rng.random()
    if roll < 0.55:
        return text_marker(_text(rng, slots))
    if roll < 0.65:
        name = rng.choice(NAMES)
        slots[name] = "number"
        return number_marker(name)
    if roll < 0.75:
        return json_marker({"status": rng.choice(["paid", "shipped"]), "id": text_marker(_text(rng, slots))})
    return rng.choice(LITERALS)  # a literal string


def random_template_message(rng: random.Random) -> tuple[dict, dict[str, str]]:
    slots: dict[str, str] = {}
    kind = rng.choice(["user-parts", "user-plain", "call", "tool", "opaque"])
    if kind == "user-parts":
        message = {"role": rng.choice(["user", "user", "system"]),
                   "content": [{"type": "text", "text": _leaf(rng, slots)}
                               for _ in range(rng.choice([1, 1, 2]))]}
    elif kind == "user-plain":
        message = {"role": "user", "content": _leaf(rng, slots)}
    elif kind == "call":
        message = {"role": "assistant", "tool_calls": [{"type": "function", "ref": "call#0", "function": {
            "name": rng.choice(["get_order", "refund", "get_orders"]),
            "arguments": {k: _leaf(rng, slots) for k in rng.sample(["order_id", "amount", "note"], 2)}}}]}
    elif kind == "opaque":  # nothing literal at all: no probe to index it by
        slots.update(b="text", c=rng.choice(SHAPES))
        message = {"role": text_marker("{{b}}"), "content": text_marker("{{c}}")}
    else:
        message = {"role": "tool", "tool_call_ref": rng.choice(["call#0", "call#1"]),
                   "content": [{"type": "text", "text": _leaf(rng, slots)}]}
    return message, slots


def _values(rng: random.Random, slots: dict[str, str]) -> dict[str, str]:
    # Mostly values of the slot's shape, sometimes any value at all.
    return {name: rng.choice(VALUES[shape] if rng.random() < 0.8 else ANY_VALUES) for name, shape in slots.items()}


def _mutate(rng: random.Random, value: object) -> object:
    """The concrete message with one string changed a little, or unchanged."""
    if isinstance(value, dict):
        if value and rng.random() < 0.7:
            key = rng.choice(sorted(value))
            return {**value, key: _mutate(rng, value[key])}
        return value
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        return value[:i] + [_mutate(rng, value[i])] + value[i + 1:]
    if isinstance(value, str):
        roll = rng.random()
        if roll < 0.3:
            return value[1:]
        if roll < 0.6:
            return value[:-1]
        if roll < 0.8:
            return rng.choice(LITERALS) + value
        return value + rng.choice(LITERALS)
    return value


def concrete_messages(rng: random.Random, templates: list[tuple[dict, dict[str, str]]], n: int) -> list[dict]:
    """Messages rendered from the siblings (so many match), mutated copies and messages rendered with other slot values."""
    out = []
    for _ in range(n):
        message, slots = rng.choice(templates)
        try:
            concrete = render_reply(message, _values(rng, {**{k: "text" for k in NAMES}, **slots}))
        except RenderError:  # a number marker drew a value that is not a number
            concrete = render_reply(message, {k: "7" for k in NAMES})
        out.append(concrete if rng.random() < 0.5 else _mutate(rng, concrete))
    return out


def node_record(content: dict, parent: bytes = b"p" * 16) -> NodeRecord:
    return NodeRecord(child_id(parent, content), parent, 1, "template", content)


def test_the_index_never_hides_a_template_that_matches_and_keeps_the_stored_order():
    rng = random.Random(20261127)
    proposed = total = matched = 0
    for _ in range(400):
        siblings = [random_template_message(rng) for _ in range(rng.randint(2, 12))]
        records = sorted((node_record(template_content(m, s)) for m, s in siblings), key=lambda r: r.node_id)
        records = list({r.node_id: r for r in records}.values())
        index = TemplateSet(records)
        for message in concrete_messages(rng, siblings, 25):
            for bindings in ({}, _values(rng, {rng.choice(NAMES): "text"})):
                fitting = [r.node_id for r in records if match_message(r.content, message, bindings) is not None]
                candidates = [r.node_id for r in index.candidates(message)]
                assert set(fitting) <= set(candidates), (message, bindings)
                order = [r.node_id for r in records]
                assert candidates == [i for i in order if i in set(candidates)]  # stored order, no repeats
                proposed += len(candidates)
                total += len(records)
                matched += len(fitting)
    assert matched > 1000  # the generator makes plenty of messages that fit
    assert proposed < total * 0.6  # and the index does leave most templates out


def test_a_message_seen_before_gets_the_same_candidates_from_memory_and_each_message_its_own():
    rng = random.Random(20261203)
    siblings = [random_template_message(rng) for _ in range(10)]
    index = TemplateSet([node_record(template_content(m, s)) for m, s in siblings])
    messages = concrete_messages(rng, siblings, 60)
    expected = [[r.node_id for r in index.candidates(m)] for m in messages]
    for _ in range(2):  # the second pass is answered from memory
        for message, want in zip(messages, expected):
            text = tree._memo_text(message)
            assert [r.node_id for r in index.candidates(message, text)] == want


def test_probes_come_from_literals_and_text_marker_ends_only():
    shipped = template_content({"role": "tool", "content": json_marker({"status": "shipped", "id": text_marker("{{a}}")})},
                               {"a": "text"})
    paid = template_content({"role": "tool", "content": json_marker({"status": "paid", "id": text_marker("{{a}}")})},
                            {"a": "text"})
    # Both differ only inside a JSON marker: neither may be left out.
    index = TemplateSet([node_record(shipped), node_record(paid)])
    message = {"role": "tool", "content": json.dumps({"status": "paid", "id": "7"})}
    assert len(index.candidates(message)) == 2
    refund = template_content({"role": "user", "content": text_marker("Refund order {{a}} now.")}, {"a": "number"})
    cancel = template_content({"role": "user", "content": text_marker("Cancel order {{a}} now.")}, {"a": "number"})
    index = TemplateSet([node_record(refund), node_record(cancel)])
    assert [r.content for r in index.candidates({"role": "user", "content": "Cancel order 7 now."})] == [cancel]
    assert index.candidates({"role": "user", "content": ["Cancel order 7 now."]}) == []
    # A template with no literal anywhere is proposed for every message.
    anything = template_content({"role": text_marker("{{r}}"), "content": text_marker("{{a}}")}, {"r": "text", "a": "text"})
    index = TemplateSet([node_record(refund), node_record(anything), node_record(cancel)])
    assert [r.content for r in index.candidates({"role": "user", "content": "Hello."})] == [anything]



def test_the_compiled_matcher_lookups_use_binds_exactly_what_match_message_binds():
    rng = random.Random(20261204)
    matched = 0
    for _ in range(300):
        siblings = [random_template_message(rng) for _ in range(4)]
        contents = [template_content(m, s) for m, s in siblings]
        for message in concrete_messages(rng, siblings, 10):
            for bindings in ({}, _values(rng, {rng.choice(NAMES): "text"})):
                for content in contents:
                    want = match_message(content, message, bindings)
                    got = match_stored(content, message, bindings)
                    # The same bindings in the same order (memo keys and trust read them in order).
                    assert got == want and (want is None or list(got) == list(want)), (content, message, bindings)
                    matched += want is not None
    assert matched > 500


# -- whole lookups: the indexed, cached, memoised walk against the plain one ------------------

class _NoMemo:
    def get(self, key):
        return None

    def put(self, *args) -> None:
        pass


class _ServableTemplates:
    """The snapshot minus the catch-alls a lookup never serves (templates.free_text_in_words)."""

    def __init__(self, snap):
        self.snap = snap

    def __getattr__(self, name: str):
        return getattr(self.snap, name)

    def template_children(self, node_id: bytes):
        from butter.store.templates import free_text_in_words
        return [t for t in self.snap.template_children(node_id) if not free_text_in_words(t.content)]


def plain_lookup(cache: Cache, conversation: Conversation, bindings: dict | None, monkeypatch) -> Hit | Miss:
    """The walk as it was: template children read from the snapshot, every match computed."""
    with monkeypatch.context() as m:
        m.setattr(tree, "_MATCHES", _NoMemo())
        with cache.backend.snapshot() as snap:
            return tree.lookup(conversation, NS, _ServableTemplates(snap), cache.policy, match_template=match_message,
                               bindings=bindings, explain_template=explain_mismatch)


def write_path(cache: Cache, steps: list[tuple[str, dict]], reply: dict) -> list[bytes]:
    """Record a path of ("message" | "template", content) steps under the test root."""
    parent = root_id(NS, CONTEXT)
    rows = [(parent, None, 0, "root", CONTEXT, NS)]
    ids = []
    for depth, (kind, content) in enumerate(steps, start=1):
        node = child_id(parent, content)
        rows.append((node, parent, depth, kind, content, ""))
        ids.append(node)
        parent = node
    cache.backend.record(rows, parent, reply_id(reply), reply, False, False)
    return ids


def test_indexed_lookups_give_the_plain_walks_hits_misses_bindings_and_explanations(tmp_path, monkeypatch):
    rng = random.Random(4)
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    system = {"role": "system", "content": "be brief"}
    first_level = [random_template_message(rng) for _ in range(24)]
    second_level = [random_template_message(rng) for _ in range(6)]
    for i, (message, slots) in enumerate(first_level):
        content = template_content(message, slots)
        names = sorted(slots_in(message))
        reply = {"content": text_marker(" ".join("{{" + n + "}}" for n in names) + f" #{i}")}
        write_path(cache, [("message", system), ("template", content)], reply)
        for j, (second, second_slots) in enumerate(second_level[: 1 + i % 3]):
            # Slots shared with the first message must agree along the walk.
            write_path(cache, [("message", system), ("template", content),
                               ("template", template_content(second, second_slots))],
                       {"content": text_marker(f"second {j}")})
    conversations = []
    for first in concrete_messages(rng, first_level, 120):
        conversations.append(Conversation(CONTEXT, (system, first)))
        for second in concrete_messages(rng, second_level, 2):
            conversations.append(Conversation(CONTEXT, (system, first, second)))
    hits = misses_with_template = 0
    for _ in range(2):  # the second pass is served from the memos
        for conversation in conversations:
            for bindings in (None, {"a": "7"}):
                expected = plain_lookup(cache, conversation, bindings, monkeypatch)
                assert cache.lookup(NS, conversation, bindings) == expected
                hits += isinstance(expected, Hit)
                misses_with_template += isinstance(expected, Miss) and expected.template is not None
    assert hits > 50 and misses_with_template > 50  # both kinds of answer were compared
    cache.close()


def test_a_miss_explains_the_first_template_even_when_the_index_skipped_it(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    contents = [template_content({"role": "user", "content": text_marker(f"Refund order {{{{a}}}} for desk {n}.")},
                                 {"a": "number"}) for n in range(5)]
    for content in contents:
        write_path(cache, [("template", content)], {"content": "ok"})
    conversation = Conversation(CONTEXT, ({"role": "user", "content": "Cancel order 7 for desk 3."},))
    miss = cache.lookup(NS, conversation)
    assert isinstance(miss, Miss) and miss.template is not None
    assert miss == plain_lookup(cache, conversation, None, monkeypatch)
    nearest = min(child_id(root_id(NS, CONTEXT), c) for c in contents)
    assert miss.template == nearest and "literal 'Refund order '" in miss.template_failure
    cache.close()


def test_a_number_slot_binds_one_and_one_point_zero_apart_through_the_memo(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    call = {"role": "assistant", "content": [{"type": "text", "text": "x"}],
            "tool_calls": [{"function": {"name": "pay", "arguments": {"amount": number_marker("n")}}}]}
    write_path(cache, [("template", template_content(call, {"n": "number"}))], {"content": text_marker("{{n}}")})

    def asking(amount) -> Conversation:
        return Conversation(CONTEXT, ({**call, "tool_calls": [{"function": {"name": "pay", "arguments": {"amount": amount}}}]},))

    for amount, text in ((1, "1"), (1.0, "1.0"), (1, "1"), (1.0, "1.0")):
        hit = cache.lookup(NS, asking(amount))
        assert isinstance(hit, Hit) and hit.bindings == {"n": text}
    cache.close()


# -- the in-memory template lists follow the database -------------------------------------

REFUND = template_content({"role": "user", "content": text_marker("Refund order {{a}}.")}, {"a": "number"})
CANCEL = template_content({"role": "user", "content": text_marker("Cancel order {{a}}.")}, {"a": "number"})
SYSTEM = {"role": "system", "content": "be brief"}


def asking(text: str) -> Conversation:
    return Conversation(CONTEXT, (SYSTEM, {"role": "user", "content": text}))


def _add_in_another_process(db: Path, steps: list[tuple[str, dict]], reply: dict) -> None:
    """`write_path` in a separate Python process, through its own LmdbBackend."""
    script = f"""
import json, sys
from butter.store.lmdb_backend import LmdbBackend
from butter.store.tree import child_id, reply_id, root_id
steps, reply, context = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
parent = root_id({NS!r}, context)
rows = [(parent, None, 0, "root", context, {NS!r})]
for depth, (kind, content) in enumerate(steps, start=1):
    node = child_id(parent, content)
    rows.append((node, parent, depth, kind, content, ""))
    parent = node
backend = LmdbBackend(sys.argv[4])
backend.record(rows, parent, reply_id(reply), reply, False, False)
backend.close()
"""
    subprocess.run([sys.executable, "-c", script, json.dumps(steps), json.dumps(reply), json.dumps(CONTEXT), str(db)],
                   cwd=ROOT, check=True, timeout=60)


def test_a_template_another_process_adds_is_found_by_the_next_lookup(tmp_path):
    db = tmp_path / "db"
    cache = Cache(db, trust=ON_INDUCTIONS_WORD)
    write_path(cache, [("message", SYSTEM), ("template", REFUND)], {"content": text_marker("refunded {{a}}")})
    assert isinstance(cache.lookup(NS, asking("Refund order 7.")), Hit)
    before = cache.lookup(NS, asking("Cancel order 7."))
    assert isinstance(before, Miss)  # and this process now holds the node's template list
    _add_in_another_process(db, [("message", SYSTEM), ("template", CANCEL)], {"content": text_marker("cancelled {{a}}")})
    after = cache.lookup(NS, asking("Cancel order 7."))
    assert isinstance(after, Hit) and after.reply == {"content": text_marker("cancelled {{a}}")}
    assert after.bindings == {"a": "7"}
    cache.close()


def test_an_exact_child_another_process_adds_below_a_template_is_found(tmp_path, monkeypatch):
    db = tmp_path / "db"
    cache = Cache(db, trust=ON_INDUCTIONS_WORD)
    thanks = {"role": "user", "content": "Thanks!"}
    write_path(cache, [("message", SYSTEM), ("template", REFUND)], {"content": "r"})
    write_path(cache, [("message", SYSTEM), ("template", REFUND),
                       ("template", template_content({"role": "user", "content": text_marker("Why {{b}}?")},
                                                     {"b": "text"}))], {"content": "because"})
    conversation = Conversation(CONTEXT, (SYSTEM, {"role": "user", "content": "Refund order 7."}, thanks))
    assert isinstance(cache.lookup(NS, conversation), Miss)  # the template node has no exact child yet
    _add_in_another_process(db, [("message", SYSTEM), ("template", REFUND), ("message", thanks)], {"content": "yw"})
    hit = cache.lookup(NS, conversation)
    assert isinstance(hit, Hit) and hit.reply == {"content": "yw"} and hit.bindings == {"a": "7"}
    assert hit == plain_lookup(cache, conversation, None, monkeypatch)
    cache.close()


def test_a_template_added_through_another_backend_on_the_same_path_is_found(tmp_path):
    cache, other = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD), Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    write_path(cache, [("message", SYSTEM), ("template", REFUND)], {"content": "r"})
    assert isinstance(cache.lookup(NS, asking("Cancel order 7.")), Miss)
    write_path(other, [("message", SYSTEM), ("template", CANCEL)], {"content": "c"})
    assert isinstance(cache.lookup(NS, asking("Cancel order 7.")), Hit)
    other.close()
    cache.close()


def test_a_deleted_template_is_not_served_from_the_in_memory_list(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    ids = write_path(cache, [("message", SYSTEM), ("template", CANCEL)], {"content": "c"})
    write_path(cache, [("message", SYSTEM), ("template", REFUND)], {"content": "r"})
    assert isinstance(cache.lookup(NS, asking("Cancel order 7.")), Hit)
    other = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    other.backend.delete_subtrees([ids[1]])
    miss = cache.lookup(NS, asking("Cancel order 7."))
    assert isinstance(miss, Miss) and miss.template == child_id(ids[0], REFUND)
    other.close()
    cache.close()


def test_the_template_generation_moves_only_when_templates_are_added_or_deleted(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)

    def generation() -> int:
        with cache.backend.snapshot() as snap:
            return snap.template_generation()

    assert generation() == 0
    cache.record(NS, asking("hello"), {"content": "hi"})
    assert generation() == 0  # exact recordings leave the lists as they are
    ids = write_path(cache, [("message", SYSTEM), ("template", REFUND)], {"content": "r"})
    assert generation() == 1
    write_path(cache, [("message", SYSTEM), ("template", REFUND)], {"content": "r2"})
    assert generation() == 1  # the node was there already
    write_path(cache, [("message", SYSTEM), ("template", REFUND), ("message", SYSTEM)], {"content": "r3"})
    assert generation() == 2  # an exact child below a template
    write_path(cache, [("message", SYSTEM), ("template", REFUND), ("message", SYSTEM), ("message", SYSTEM)],
               {"content": "r4"})
    assert generation() == 2  # below an exact node again
    cache.backend.delete_subtrees([ids[1]])
    assert generation() == 3
    cache.close()


@pytest.mark.parametrize("with_index", [True, False])
def test_every_template_child_is_tried_when_no_probe_can_tell_them_apart(tmp_path, with_index, monkeypatch):
    # Slots at both ends and everything else inside JSON: the index proposes them all.
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    for status in ("paid", "shipped", "lost"):
        content = template_content({"role": "tool", "content": json_marker({"status": status, "id": text_marker("{{a}}")})},
                                   {"a": "number"})
        write_path(cache, [("template", content)], {"content": text_marker(status + " {{a}}")})
    conversation = Conversation(CONTEXT, ({"role": "tool", "content": json.dumps({"status": "lost", "id": "9"})},))
    got = cache.lookup(NS, conversation) if with_index else plain_lookup(cache, conversation, None, monkeypatch)
    assert isinstance(got, Hit) and got.reply == {"content": text_marker("lost {{a}}")} and got.bindings == {"a": "9"}
    cache.close()
