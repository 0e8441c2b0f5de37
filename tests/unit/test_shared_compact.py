"""Compacting a shared store (store/shared_snapshot.py): a snapshot in a real redis-server, the log trimmed
behind it, and replicas that join or come back after it built from the snapshot plus what follows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import redis

from butter.store import Cache, Hit, admin
from butter.store.shared_backend import SharedBackend
from butter.store.shared_location import parse
from butter.store.shared_snapshot import CompactionLost, compact, snapshot_and_trim
from butter.store.tree import plan_record
from tests.e2e.harness import ROOT
from tests.fakes.redis_server import RedisServer
from tests.unit.test_shared_store import comparable, conv, eventually, replicas  # noqa: F401 - a fixture


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(parse(url).client_url())


def log_key(url: str) -> str:
    return parse(url).key("log")


def record_some(cache: Cache, ns: bytes, start: int, n: int) -> None:
    for i in range(start, start + n):
        cache.record(ns, conv(f"order {i}", "looking", "and?"), {"text": f"done {i}"})


def converged(*caches: Cache) -> bool:
    for cache in caches:
        cache.backend.catch_up()
    first = comparable(caches[0])
    return all(comparable(c) == first for c in caches[1:])


def test_compaction_trims_the_log_and_a_new_replica_built_from_the_snapshot_has_the_same_tree(
        replicas, shared_store_url):
    a = replicas("a")
    ns = a.namespace("sk-x")
    record_some(a, ns, 0, 6)
    node = plan_record(conv("order 1", "looking", "and?"), ns)[1]
    a.backend.add_hits({node: 3})
    a.backend.put_aux("side", b"k", {"v": 1})
    a.backend.add_aux_counts("misses", {b"m": 4})
    admin.vote(a.backend, plan_record(conv("order 2", "looking", "and?"), ns)[1], "bad", None, a.policy)
    assert eventually(lambda: a.backend.queued() == 0)
    r = client(shared_store_url("a"))
    assert r.xlen(log_key(shared_store_url("a"))) >= 10

    done = compact(shared_store_url("compactor"))

    assert done["compacted"] and done["trimmed"] >= 10 and done["rows"] > 0, done
    assert r.xlen(log_key(shared_store_url("a"))) == 0, "every entry up to the snapshot is gone"
    c = replicas("c")  # a new machine: the log alone would give it nothing
    assert comparable(c) == comparable(a), "the snapshot is the whole tree, counters and side tables included"
    assert isinstance(c.lookup(ns, conv("order 4", "looking", "and?")), Hit)
    # Writes after the snapshot reach everyone, both ways.
    record_some(a, ns, 100, 1)
    c.backend.add_hits({node: 2})
    assert eventually(lambda: converged(a, c), timeout=10), "writes after the snapshot did not converge"
    assert a.backend.stats(node)["hits"] == 5, "no counter is counted twice"
    first = r.xrange(log_key(shared_store_url("a")), count=1)[0][0].decode()
    assert first > done["snapshot_id"]


def test_a_replica_closed_before_the_compaction_rebuilds_from_the_snapshot_and_converges(
        replicas, shared_store_url, monkeypatch):
    from butter.store import shared_snapshot

    monkeypatch.setattr(shared_snapshot, "CHUNK_BYTES", 2048)  # a snapshot of several chunks
    a = replicas("a")
    ns = a.namespace(None)
    record_some(a, ns, 0, 3)
    b = Cache(shared_store_url("b"))
    assert isinstance(b.lookup(ns, conv("order 0", "looking", "and?")), Hit)
    b.close()  # offline from here on
    record_some(a, ns, 3, 4)
    admin.forget(a.backend, plan_record(conv("order 0"), ns)[1])
    assert eventually(lambda: a.backend.queued() == 0)
    assert compact(shared_store_url("compactor"))["chunks"] > 2
    record_some(a, ns, 50, 2)  # after the snapshot: in the log b follows next
    b = replicas("b")  # its cursor is now before the first entry of the log
    assert eventually(lambda: converged(a, b), timeout=10), "b did not converge after the compaction"
    assert isinstance(b.lookup(ns, conv("order 5", "looking", "and?")), Hit), "an entry that was trimmed"
    assert isinstance(b.lookup(ns, conv("order 51", "looking", "and?")), Hit), "an entry after the snapshot"
    assert not b.backend.has_node(plan_record(conv("order 0"), ns)[1]), "a trimmed forget still holds"


def test_a_replica_loading_a_snapshot_keeps_its_own_writes_sent_and_unsent(replicas, shared_store_url, monkeypatch):
    a = replicas("a")
    ns = a.namespace(None)
    record_some(a, ns, 0, 2)
    b = Cache("", backend=SharedBackend(shared_store_url("b"), background=False))  # reads only when asked
    try:
        record_some(a, ns, 2, 2)  # b has not read these
        assert eventually(lambda: a.backend.queued() == 0)
        compact(shared_store_url("compactor"))
        b.record(ns, conv("b sent"), {"text": "in the log, after the snapshot"})
        monkeypatch.setattr(b.backend, "_flush_queue", lambda: False)  # Redis refuses b's next writes
        b.record(ns, conv("b unsent"), {"text": "queued"})
        b.record(ns, conv("b unsent"), {"text": "queued"})
        assert b.backend.queued() == 2

        b.backend.catch_up()  # the pointer is past b's cursor: b loads the snapshot

        for texts in (("order 3", "looking", "and?"), ("b sent",), ("b unsent",)):
            assert b.backend.has_node(plan_record(conv(*texts), ns)[1]), f"{texts} missing after the load"
        monkeypatch.undo()
        assert b.backend._flush_queue() and b.backend.queued() == 0
        assert eventually(lambda: converged(a, b), timeout=10), "b's writes were lost or counted twice"
        unsent = plan_record(conv("b unsent"), ns)[1]
        assert [r.count for r in b.backend.replies(unsent)] == [2], "unsent writes applied exactly once"
    finally:
        b.close()


def test_a_compaction_that_loses_the_race_changes_nothing_and_its_chunks_expire(replicas, shared_store_url):
    a = replicas("a")
    ns = a.namespace(None)
    record_some(a, ns, 0, 4)
    assert eventually(lambda: a.backend.queued() == 0)
    slow = SharedBackend(shared_store_url("slow"), background=False)
    try:
        catch_up = slow._catch_up_all

        def meanwhile_another_compacts(r):
            record_some(a, ns, 10, 1)
            assert eventually(lambda: a.backend.queued() == 0)
            compact(shared_store_url("fast"))
            return catch_up(r)

        slow._catch_up_all = meanwhile_another_compacts
        with pytest.raises(CompactionLost):
            snapshot_and_trim(slow)
    finally:
        slow.close()
    r = client(shared_store_url("a"))
    pointer = json.loads(r.get(parse(shared_store_url("a")).key("snapshot")))
    stray = [k for k in r.scan_iter(parse(shared_store_url("a")).key("snapshot") + ":*")
             if not k.decode().startswith(pointer["key"] + ":")]
    assert stray and all(0 < r.ttl(k) for k in stray), "the loser's chunks stay only until they expire"
    c = replicas("c")
    assert eventually(lambda: converged(a, c), timeout=10)


def test_two_compactions_at_once_leave_one_whole_snapshot(replicas, shared_store_url):
    a = replicas("a")
    ns = a.namespace(None)
    record_some(a, ns, 0, 20)
    assert eventually(lambda: a.backend.queued() == 0)
    results, errors = [], []
    start = threading.Barrier(2)

    def run(name: str) -> None:
        start.wait()
        try:
            results.append(compact(shared_store_url(name)))
        except CompactionLost as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
        record_some(a, ns, 40, 1)  # writes while they run
    for t in threads:
        t.join()
    assert len(results) + len(errors) == 2 and any(r["compacted"] for r in results), (results, errors)
    c = replicas("c")
    assert eventually(lambda: converged(a, c), timeout=10)


def test_an_empty_log_after_compaction_is_not_an_empty_tree_for_import_with_secret(replicas, shared_store_url):
    a = replicas("a")
    a.record(a.namespace(None), conv("q"), {"text": "r"})
    assert eventually(lambda: a.backend.queued() == 0)
    compact(shared_store_url("compactor"))
    fresh = SharedBackend(shared_store_url("c"), background=False)
    try:
        assert not fresh.adopt_secret(os.urandom(32)), "the fleet's secret must not change under its recordings"
    finally:
        fresh.close()


def butter_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "butter.cli.main", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_the_cli_compacts_a_shared_store_with_json_and_human_output_and_never_shows_the_password(tmp_path):
    server = RedisServer(tmp_path / "redis", password="s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0?prefix=cli&local={tmp_path / 'a'}"
        a = Cache(url)
        record_some(a, a.namespace(None), 0, 5)
        assert eventually(lambda: a.backend.queued() == 0)
        first = butter_cli("--db", url, "compact", "--json")
        assert first.returncode == 0, first.stderr
        done = json.loads(first.stdout)
        assert done["compacted"] and done["log_length"] == 0 and done["trimmed"] >= 5
        again = butter_cli("compact", "--db", url)
        assert again.returncode == 0 and "nothing recorded since the last snapshot" in again.stdout, again
        a.record(a.namespace(None), conv("later"), {"text": "x"})
        assert eventually(lambda: a.backend.queued() == 0)
        third = butter_cli("compact", "--db", url)
        assert third.returncode == 0 and "compacted redis://127.0.0.1" in third.stdout, third
        assert "trimmed 1 log entries" in third.stdout
        for out in (first, again, third):
            assert "s3cret" not in out.stdout + out.stderr
        a.close()
        plain = butter_cli("compact", "--db", str(tmp_path / "lmdb"))
        assert plain.returncode == 1 and "compact works on a shared store" in plain.stderr
    finally:
        server.stop()


def test_compact_after_has_one_replica_compact_the_log_once_it_is_that_long(shared_store_url, monkeypatch):
    from butter.store import shared_backend

    monkeypatch.setattr(shared_backend, "COMPACT_CHECK_SECONDS", 0.05)
    url = shared_store_url("a") + "&compact_after=5"
    a = Cache(url)
    try:
        ns = a.namespace(None)
        record_some(a, ns, 0, 3)
        r = client(url)
        snapshot = parse(url).key("snapshot")
        assert not eventually(lambda: r.exists(snapshot), timeout=0.5), "3 entries are fewer than 5"
        record_some(a, ns, 3, 3)
        assert eventually(lambda: r.exists(snapshot) and r.xlen(log_key(url)) < 5, timeout=10)
        assert eventually(lambda: not r.exists(parse(url).key("compacting")), timeout=10), "the turn is released"
        c = Cache(shared_store_url("c"))
        try:
            assert eventually(lambda: converged(a, c), timeout=10)
        finally:
            c.close()
    finally:
        a.close()
