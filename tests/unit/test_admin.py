"""forget, prune and clear over temp LMDBs, including while another process records."""
from __future__ import annotations

import multiprocessing
import time

import lmdb.verify
import pytest

from butter.store import Cache, Conversation, Hit, Miss, admin, trust, trust_ledger
from butter.store.admin import NodeUsage
from butter.store.lmdb_backend import ID, LmdbBackend
from butter.store.tree import child_id, root_id

CTX = {"api": "t", "model": "m"}
SYSTEM = {"role": "system", "content": "be brief"}


def conv(*texts: str) -> Conversation:
    messages = [SYSTEM]
    for i, text in enumerate(texts):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return Conversation(CTX, tuple(messages))


@pytest.fixture(params=["lmdb", "shared"])
def cache(request, tmp_path):
    # The same contract on both backends: an LMDB directory, and a replica of
    # a shared store on a real redis-server (store/shared_backend.py).
    where = request.getfixturevalue("shared_store_url")() if request.param == "shared" else tmp_path / "db"
    c = Cache(where)
    yield c
    c.close()


def consistent(backend: LmdbBackend) -> list[str]:
    """Every edge, reply and stats row points at nodes that exist; every parent exists."""
    problems = []
    with backend._read() as txn:
        nodes = {bytes(k): v for k, v in txn.cursor(db=backend.nodes)}
        for key, _ in txn.cursor(db=backend.children):
            if bytes(key[:ID]) not in nodes or bytes(key[ID:]) not in nodes:
                problems.append(f"edge {bytes(key).hex()} dangles")
        for key, _ in txn.cursor(db=backend.replies_db):
            if bytes(key[:ID]) not in nodes:
                problems.append(f"reply at missing node {bytes(key[:ID]).hex()}")
        for key, _ in txn.cursor(db=backend.stats_db):
            if bytes(key) not in nodes:
                problems.append(f"stats for missing node {bytes(key).hex()}")
    for key, _ in backend.iter_aux(trust.TABLE):
        if key[:ID] not in nodes:
            problems.append(f"trust for missing node {key[:ID].hex()}")
    for record in backend.iter_nodes():
        if record.parent is not None and record.parent not in nodes:
            problems.append(f"node {record.node_id.hex()} has no parent")
    return problems


def path_ids(namespace: str, c: Conversation) -> list[bytes]:
    ids = [root_id(namespace, c.context)]
    for m in c.messages:
        ids.append(child_id(ids[-1], m))
    return ids


# -- forget ---------------------------------------------------------------------

def test_forget_removes_the_node_its_subtree_and_replies_and_nothing_else(cache):
    a, ab, c_ = conv("refund 1"), conv("refund 1", "ok", "and 2"), conv("cancel 3")
    for x in (a, ab, c_):
        cache.record("ns:u", x, {"text": str(x.messages[-1])})
    cache.backend.add_hits({path_ids("ns:u", ab)[-1]: 2})
    target = path_ids("ns:u", a)[-1]  # the "refund 1" node: a and ab live under it
    before = cache.backend.counts()
    removed = admin.forget(cache.backend, target)
    assert (removed.nodes, removed.replies) == (3, 2)
    assert cache.backend.counts() == {"nodes": before["nodes"] - 3, "replies": before["replies"] - 2}
    assert isinstance(cache.lookup("ns:u", a), Miss) and isinstance(cache.lookup("ns:u", ab), Miss)
    assert isinstance(cache.lookup("ns:u", c_), Hit), "a sibling branch was touched"
    assert cache.backend.node(path_ids("ns:u", a)[-2]) is not None, "the parent went too"
    assert consistent(cache.backend) == []


def learn(cache: Cache, *questions: str) -> None:
    for question in questions:
        c = Conversation(CTX, ({"role": "user", "content": question},))
        cache.record("ns:u", c, {"text": "noted " + question.split()[-1]})
        cache.induce("ns:u", c)


def test_forget_takes_the_trust_of_the_templates_below_it_and_leaves_the_others(cache):
    learn(cache, "refund order 1001", "refund order 2002", "cancel booking ABC-1", "cancel booking XYZ-2")
    learned = trust_ledger.everything(cache.backend)
    assert len(learned) == 2, learned  # one template per flow, each on probation
    refund = next(node for node in learned if "refund" in str(cache.backend.node(node).content))
    admin.forget(cache.backend, refund)
    assert set(trust_ledger.everything(cache.backend)) == set(learned) - {refund}
    assert consistent(cache.backend) == []


def test_prune_drops_trust_rows_whose_node_an_older_butter_deleted(cache):
    learn(cache, "refund order 1001", "refund order 2002")
    (kept,) = trust_ledger.everything(cache.backend)
    orphan = b"\x07" * ID  # a forget before trust went with its node left this
    cache.backend.put_aux(trust.TABLE, trust.trust_key(orphan, b"\x01" * ID), {"state": trust.TRUSTED})
    assert consistent(cache.backend) == [f"trust for missing node {orphan.hex()}"]
    admin.prune(cache.backend, 3600)  # nothing is that old: only the orphan goes
    assert set(trust_ledger.everything(cache.backend)) == {kept}
    assert consistent(cache.backend) == []


def test_a_forgotten_path_is_recorded_again_from_scratch(cache):
    a = conv("refund 1")
    cache.record("ns:u", a, {"text": "x"})
    admin.forget(cache.backend, path_ids("ns:u", a)[1])
    cache.record("ns:u", a, {"text": "y"})
    assert cache.lookup("ns:u", a).reply == {"text": "y"}
    assert [k for k, _ in cache.backend.children_of(path_ids("ns:u", a)[0])] == [path_ids("ns:u", a)[1]]
    assert consistent(cache.backend) == []


def test_a_dry_run_forget_counts_and_removes_nothing(cache):
    a = conv("refund 1", "ok", "and 2")
    cache.record("ns:u", a, {"text": "x"})
    before = cache.backend.counts()
    removed = admin.forget(cache.backend, path_ids("ns:u", a)[0], dry_run=True)
    assert removed.dry_run and (removed.nodes, removed.replies) == (5, 1)
    assert cache.backend.counts() == before


def test_hits_flushed_after_a_forget_leave_no_orphan_stats(cache):
    a = conv("refund 1")
    cache.record("ns:u", a, {"text": "x"})
    admin.forget(cache.backend, path_ids("ns:u", a)[0])
    cache.backend.add_hits({path_ids("ns:u", a)[-1]: 1})  # a proxy served it just before
    assert consistent(cache.backend) == []


# -- prune ------------------------------------------------------------------------

def usage(node: str, parent: str | None, depth: int, last_used: float) -> NodeUsage:
    return NodeUsage(node.encode().ljust(16, b"_"), parent.encode().ljust(16, b"_") if parent else None, depth,
                     "root" if parent is None else "message", "ns:u" if parent is None else "", last_used)


def test_prune_plans_the_highest_stale_branches_and_keeps_a_prefix_a_live_branch_needs():
    nodes = [usage("root", None, 0, 10), usage("sys", "root", 1, 10),
             usage("old", "sys", 2, 10), usage("old2", "old", 3, 20),
             usage("live", "sys", 2, 10), usage("live2", "live", 3, 500),
             usage("gone", None, 0, 5), usage("gone1", "gone", 1, 30)]
    tops = admin.plan_prune(nodes, cutoff=100)
    assert sorted(t.rstrip(b"_") for t in tops) == [b"gone", b"old"]


def test_prune_removes_what_was_unused_before_the_cutoff(cache):
    old, new = conv("refund 1"), conv("refund 2")
    cache.record("ns:u", old, {"text": "x"})
    cutoff = time.time()
    while time.time() <= cutoff:  # distinct timestamps; no sleep of a guessed length
        pass
    cache.record("ns:u", new, {"text": "y"})
    removed = admin.prune(cache.backend, 0, now=cutoff)
    assert removed.tops == 1 and removed.nodes == 1 and removed.replies == 1
    assert isinstance(cache.lookup("ns:u", old), Miss) and isinstance(cache.lookup("ns:u", new), Hit)
    assert consistent(cache.backend) == []


def test_a_branch_used_after_the_plan_is_kept_by_the_recheck(cache):
    a = conv("refund 1")
    cache.record("ns:u", a, {"text": "x"})
    cutoff = time.time()
    tops = admin.plan_prune(admin.usage(cache.backend), cutoff + 1)  # everything looks stale
    assert tops
    cache.record("ns:u", a, {"text": "x"})  # ... but a proxy records it again before the delete
    assert cache.backend.delete_subtrees(tops, unused_since=cutoff) == (0, 0, 0)
    assert isinstance(cache.lookup("ns:u", a), Hit)


def test_a_hit_counts_as_use(cache):
    a = conv("refund 1")
    cache.record("ns:u", a, {"text": "x"})
    cutoff = time.time()
    while time.time() <= cutoff:
        pass
    cache.backend.add_hits({path_ids("ns:u", a)[-1]: 1})
    assert admin.prune(cache.backend, 0, now=cutoff).nodes == 0


# -- clear ------------------------------------------------------------------------

def test_clear_removes_one_namespace_and_its_side_table_rows_only(cache):
    a = conv("refund 1")
    for ns in ("ns:team", "key:abc"):
        cache.record(ns, a, {"text": ns})
    cache.backend.put_aux("openai-responses", b"ns:team\x00resp_1", {"x": 1})
    cache.backend.put_aux("openai-responses", b"key:abc\x00resp_2", {"x": 2})
    namespace = admin.resolve_namespace(admin.namespaces(admin.usage(cache.backend)), "team")
    assert namespace == "ns:team"
    removed = admin.clear(cache.backend, namespace)
    assert removed.tops == 1 and removed.nodes == 3 and removed.namespaces == ["ns:team"]
    assert isinstance(cache.lookup("ns:team", a), Miss) and isinstance(cache.lookup("key:abc", a), Hit)
    assert cache.backend.get_aux("openai-responses", b"ns:team\x00resp_1") is None
    assert cache.backend.get_aux("openai-responses", b"key:abc\x00resp_2") == {"x": 2}
    assert consistent(cache.backend) == []


def test_clear_all_empties_the_tree_and_its_side_tables_but_keeps_the_secret(cache):
    for ns in ("ns:team", "key:abc", "anon"):
        cache.record(ns, conv("x"), {"text": "y"})
    cache.backend.put_aux("induction/obs", b"\x01" * 16, {"t": 1})
    secret = cache.backend.secret
    removed = admin.clear(cache.backend, None)
    assert removed.namespaces == ["anon", "key:abc", "ns:team"]
    assert cache.backend.counts() == {"nodes": 0, "replies": 0}
    assert list(cache.backend.iter_aux("induction/obs")) == []
    reopened = Cache(cache.backend.path)
    try:
        assert reopened.backend.secret == secret, "a key's namespace would change after clear"
    finally:
        reopened.close()


def test_an_unknown_namespace_is_an_error_that_lists_the_known_ones():
    with pytest.raises(LookupError, match="namespaces: key:abc, ns:team"):
        admin.resolve_namespace(["ns:team", "key:abc"], "tema")


# -- while another process records ------------------------------------------------------

def _recorder(path: str, started, start: int, count: int) -> None:
    cache = Cache(path)
    for n in range(start, start + count):
        cache.record("ns:busy", conv(f"order {n % 7}", "ok", f"step {n}"), {"text": f"reply {n}"})
        started.set()
    cache.close()


def test_forget_prune_and_clear_while_another_process_records_leave_a_sound_database(tmp_path):
    path = str(tmp_path / "db")
    cache = Cache(path)
    for n in range(50):
        cache.record("ns:busy", conv(f"order {n % 7}", "ok", f"step {n}"), {"text": f"reply {n}"})
        cache.record("ns:other", conv(f"order {n}", "ok", "fine"), {"text": "x"})
    before_writer = time.time()
    spawn = multiprocessing.get_context("spawn")
    started = spawn.Event()
    writer = spawn.Process(target=_recorder, args=(path, started, 1000, 400))
    writer.start()
    rounds = 0
    try:
        assert started.wait(60)
        n = 0
        while writer.is_alive() or rounds == 0:
            admin.forget(cache.backend, path_ids("ns:other", conv(f"order {n % 50}"))[2])
            admin.prune(cache.backend, 0, now=before_writer)  # the writer's paths are newer: kept
            cache.record("ns:other", conv(f"order {n}", "ok", "fine"), {"text": "x"})
            rounds, n = rounds + 1, n + 1
        admin.clear(cache.backend, "ns:other")
    finally:
        writer.join(120)
    assert writer.exitcode == 0
    assert lmdb.verify.verify(path) == []
    assert consistent(cache.backend) == []
    assert all(isinstance(cache.lookup("ns:busy", conv(f"order {n % 7}", "ok", f"step {n}")), Hit)
               for n in range(1000, 1400)), "prune removed a path recorded while it ran"
    assert not any(isinstance(cache.lookup("ns:busy", conv(f"order {n % 7}", "ok", f"step {n}")), Hit)
                   for n in range(50)), "prune kept a stale branch"
    assert admin.namespaces(admin.usage(cache.backend)) == ["ns:busy"]
    cache.close()
