"""A shared store: LMDB replicas kept in step through a real redis-server."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from butter.store import Cache, Conversation, Hit, Miss, ServePolicy, admin, trust_ledger
from butter.store.shared_backend import SharedStoreError
from butter.store.trust import TrustRules
from butter.store.tree import plan_record
from tests.fakes.redis_server import RedisServer

CTX = {"api": "openai-chat", "model": "m", "params": {}}
SYSTEM = {"role": "system", "content": "You are a support agent."}


def conv(*texts: str) -> Conversation:
    return Conversation(CTX, (SYSTEM,) + tuple({"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                               for i, t in enumerate(texts)))


def eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.fixture
def replicas(shared_store_url):
    opened: list[Cache] = []

    def open_replica(name: str, policy: ServePolicy = ServePolicy()) -> Cache:
        cache = Cache(shared_store_url(name), policy)
        opened.append(cache)
        return cache

    yield open_replica
    for cache in opened:
        cache.close()


def comparable(cache: Cache) -> dict:
    """The tree's content without per-replica times."""
    rows = {}
    for table, key, value in cache.backend.dump():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("created", "first_seen", "last_seen", "last_hit",
                                                                 "last", "t")}
        rows[(table, key)] = value
    return rows


def test_a_recording_through_one_replica_is_a_hit_on_another_at_the_next_lookup(replicas):
    a, b = replicas("a"), replicas("b")
    namespace = a.namespace("sk-one")
    assert b.namespace("sk-one") == namespace, "every replica hashes a credential to the same namespace"
    a.record(namespace, conv("refund order 1234"), {"text": "done"})
    # a's publisher thread sends the write to Redis; on a loaded machine that can
    # take longer than this test takes to reach the next line.
    assert eventually(lambda: a.backend.queued() == 0)
    # No waiting on b's side: a lookup that would miss reads the shared log first.
    hit = b.lookup(namespace, conv("refund order 1234"))
    assert isinstance(hit, Hit) and hit.reply == {"text": "done"}


def test_observations_and_hit_counters_add_up_across_replicas(replicas):
    a, b = replicas("a", ServePolicy(min_observations=2)), replicas("b", ServePolicy(min_observations=2))
    ns = a.namespace(None)
    a.record(ns, conv("q"), {"text": "r"})
    assert isinstance(b.lookup(ns, conv("q")), Miss), "one observation is not enough for min_observations=2"
    b.record(ns, conv("q"), {"text": "r"})
    assert isinstance(eventually(lambda: isinstance(a.lookup(ns, conv("q")), Hit) and a.lookup(ns, conv("q"))), Hit)
    node = plan_record(conv("q"), ns)[1]
    a.backend.add_hits({node: 2})
    b.backend.add_hits({node: 3})
    assert eventually(lambda: a.backend.stats(node).get("hits") == 5 and b.backend.stats(node).get("hits") == 5)


def test_every_kind_of_write_converges_to_the_same_tree_on_every_replica(replicas, tmp_path):
    a, b = replicas("a"), replicas("b")
    ns = a.namespace("sk-x")
    for i in range(5):
        a.record(ns, conv(f"order {i}", "looking", "and?"), {"text": f"done {i}"})
    b.record(ns, conv("order 9"), {"text": "nine"})
    a.backend.put_aux("side", b"k", {"v": 1})
    a.backend.add_aux_counts("misses", {b"m": 4})
    node = plan_record(conv("order 1", "looking", "and?"), ns)[1]
    admin.vote(a.backend, node, "bad", None, a.policy)
    # b forgets a branch it holds: a forget made before a's recording of it reached b
    # would delete nothing (docs/shared-store.md, Limits), and the recording would stay.
    assert eventually(lambda: b.backend.has_node(plan_record(conv("order 2", "looking", "and?"), ns)[1])), \
        "a's recordings never reached b"
    admin.forget(b.backend, plan_record(conv("order 2"), ns)[1])
    a.backend.delete_aux("side", b"k")
    expected = eventually(lambda: comparable(a) == comparable(b) and comparable(a), timeout=10)
    assert expected, "the replicas did not converge"
    assert isinstance(b.lookup(ns, conv("order 1", "looking", "and?")), Miss), "a bad mark travels"
    assert isinstance(a.lookup(ns, conv("order 2", "looking", "and?")), Miss), "a forget travels"


def test_a_template_learned_on_one_replica_reaches_another_with_its_trust(replicas, shared_store_url):
    a, b = replicas("a"), replicas("b")
    ns = a.namespace(None)
    for order, name in (("1234", "Ana Ruiz"), ("5678", "Bo Chen")):
        c = conv(f"Please refund order {order} for {name}.")
        a.record(ns, c, {"text": f"Refunded order {order} for {name}."})
        a.induce(ns, c)
    b.lookup(ns, conv("warm the replica"))  # any lookup first: b's template lists are now cached
    third = conv("Please refund order 9012 for Cy Dee.")
    # The template arrives on probation, as learned: b verifies rather than serves it.
    found = eventually(lambda: b.lookup(ns, third).reason == "verify" and b.lookup(ns, third))
    assert isinstance(found, Miss) and found.verify.trust in ("probation", "inputs"), found
    assert trust_ledger.read(b.backend, found.verify.node_id, found.verify.reply_id)["state"] == "probation"
    unchecked = Cache(shared_store_url("c"), trust=TrustRules(verify=False))
    try:
        served = unchecked.lookup(ns, third)
        assert isinstance(served, Hit) and served.bindings, getattr(served, "detail", served)
    finally:
        unchecked.close()


def test_writes_made_while_redis_is_down_reach_the_others_when_it_returns(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis")
    try:
        url = lambda name: f"{server.url}?prefix=outage&local={tmp_path / name}"  # noqa: E731
        a, b = Cache(url("a")), Cache(url("b"))
        ns = a.namespace(None)
        a.record(ns, conv("before"), {"text": "1"})
        # a's publisher thread sends the write; b's promise starts once it reached Redis.
        assert eventually(lambda: a.backend.queued() == 0)
        assert isinstance(b.lookup(ns, conv("before")), Hit)
        # Captured from the kill on: the replicas' background readers may notice the outage
        # at once, before the test's next line runs.
        with caplog.at_level(logging.WARNING, logger="butter"):
            server.kill()
            a.record(ns, conv("during"), {"text": "2"})
            assert isinstance(a.lookup(ns, conv("during")), Hit), "the local replica keeps serving"
            assert isinstance(b.lookup(ns, conv("before")), Hit)
            assert isinstance(b.lookup(ns, conv("during")), Miss)
            assert eventually(lambda: not a.backend.reachable), "a never noticed the outage"
        assert any("unreachable" in r.getMessage() for r in caplog.records)
        server.start()
        found = eventually(lambda: isinstance(b.lookup(ns, conv("during")), Hit), timeout=15)
        assert found, "the write queued during the outage never arrived"
        a.close()
        b.close()
    finally:
        server.stop()


def test_a_restarted_redis_keeps_what_it_acknowledged(tmp_path):
    server = RedisServer(tmp_path / "redis")
    try:
        url = lambda name: f"{server.url}?prefix=durable&local={tmp_path / name}"  # noqa: E731
        a = Cache(url("a"))
        ns = a.namespace(None)
        for i in range(20):
            a.record(ns, conv(f"q{i}"), {"text": str(i)})
        a.close()  # every write acknowledged by Redis
        server.kill()
        server.start()
        fresh = Cache(url("fresh"))  # an empty replica rebuilds from the log alone
        try:
            assert all(isinstance(fresh.lookup(ns, conv(f"q{i}")), Hit) for i in range(20))
        finally:
            fresh.close()
    finally:
        server.stop()


def test_first_use_with_redis_unreachable_is_a_clear_error_and_a_synced_replica_opens_offline(tmp_path):
    server = RedisServer(tmp_path / "redis")
    url = f"{server.url}?prefix=p&local={tmp_path / 'replica'}"
    Cache(url).close()  # synced once
    server.stop()
    with pytest.raises(SharedStoreError, match="cannot reach the shared store"):
        Cache(f"{server.url}?prefix=p&local={tmp_path / 'never-synced'}")
    offline = Cache(url)
    try:
        assert not offline.backend.reachable
    finally:
        offline.close()


def test_a_replica_of_another_tree_is_refused(redis_server, tmp_path):
    local = tmp_path / "replica"
    first = Cache(f"{redis_server.url}?prefix=one&local={local}")
    first.record(first.namespace(None), conv("q"), {"text": "r"})
    first.close()
    with pytest.raises(SharedStoreError, match="belongs to another tree"):
        Cache(f"{redis_server.url}?prefix=two&local={local}")


def test_the_redis_password_is_never_stored_nor_logged(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis", password="s3cret-redis-pass")
    try:
        url = f"redis://:s3cret-redis-pass@127.0.0.1:{server.port}/0?prefix=auth&local={tmp_path / 'replica'}"
        with caplog.at_level(logging.DEBUG, logger="butter"):
            cache = Cache(url)
            cache.record(cache.namespace(None), conv("q"), {"text": "r"})
            server.kill()
            eventually(lambda: not cache.backend.reachable, timeout=5) or cache.backend.catch_up()
            cache.close()
        assert "s3cret" not in caplog.text
        for path in Path(tmp_path / "replica").rglob("*"):
            assert b"s3cret" not in path.read_bytes()
        assert "s3cret" not in cache.backend.display
    finally:
        server.stop()


def test_the_cli_migrates_an_lmdb_tree_into_the_shared_store_and_reads_it_there(tmp_path, shared_store_url, capsys):
    from butter.cli.main import main

    lmdb_db = tmp_path / "lmdb"
    local = Cache(lmdb_db)
    ns = local.namespace("sk-team")
    local.record(ns, conv("refund order 1234"), {"text": "done"})
    local.close()
    export = tmp_path / "tree.jsonl"
    assert main(["--db", str(lmdb_db), "export", "--with-secret", "--out", str(export)]) == 0
    url = shared_store_url("cli")
    assert main(["--db", url, "import", str(export)]) == 0
    capsys.readouterr()
    assert main(["--db", url, "stats", "--json"]) == 0
    assert '"nodes"' in capsys.readouterr().out
    proxy_replica = Cache(shared_store_url("proxy"))  # another machine's replica
    try:
        assert proxy_replica.namespace("sk-team") == ns, "the imported secret is the fleet's"
        assert isinstance(proxy_replica.lookup(ns, conv("refund order 1234")), Hit)
    finally:
        proxy_replica.close()


def test_the_cli_inspects_and_steers_a_shared_tree_and_every_replica_sees_the_change(shared_store_url, capsys):
    from butter.cli.main import main

    proxy = Cache(shared_store_url("proxy"))
    ns = proxy.namespace(None)
    proxy.record(ns, conv("refund order 1234"), {"text": "done"})
    proxy.record(ns, conv("cancel order 77"), {"text": "cancelled"})
    assert eventually(lambda: proxy.backend.queued() == 0), "the proxy's writes reach Redis before the CLI opens"
    node = plan_record(conv("refund order 1234"), ns)[1].hex()
    url = shared_store_url("cli")
    try:
        assert main(["--db", url, "tree"]) == 0
        assert "refund order 1234" in capsys.readouterr().out
        assert main(["--db", url, "show", node[:12]]) == 0
        assert "done" in capsys.readouterr().out
        assert main(["--db", url, "feedback", node[:12], "bad"]) == 0
        assert eventually(lambda: isinstance(proxy.lookup(ns, conv("refund order 1234")), Miss))
        other = plan_record(conv("cancel order 77"), ns)[1].hex()
        assert main(["--db", url, "forget", other[:12]]) == 0
        assert eventually(lambda: not proxy.backend.has_node(bytes.fromhex(other)))
    finally:
        proxy.close()
