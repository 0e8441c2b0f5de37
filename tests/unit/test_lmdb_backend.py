"""The LMDB backend: map growth, schema guard, sharing across processes."""
from __future__ import annotations

import multiprocessing

import lmdb
import lmdb.verify
import pytest

from butter.store import Cache, Conversation, Hit
from butter.store import lmdb_backend
from butter.store.lmdb_backend import SCHEMA_VERSION, LmdbBackend, SchemaTooNew


def conv(n: int) -> Conversation:
    return Conversation({"api": "t", "model": "m"}, ({"role": "user", "content": f"message {n} " + "x" * 500},))


def test_the_map_grows_by_itself_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(lmdb_backend, "INITIAL_MAP_SIZE", 64 * 1024)
    cache = Cache(tmp_path / "db")
    try:
        for n in range(400):
            cache.record("ns", conv(n), {"text": "y" * 500})
        assert cache.backend.env.info()["map_size"] > 64 * 1024
        assert all(isinstance(cache.lookup("ns", conv(n)), Hit) for n in range(400))
    finally:
        cache.close()


def test_a_database_from_a_newer_butter_is_refused(tmp_path):
    backend = LmdbBackend(tmp_path / "db")
    backend._write(lambda txn: txn.put(b"schema", b"999", db=backend.meta))
    backend.close()
    with pytest.raises(SchemaTooNew, match="Upgrade butter"):
        LmdbBackend(tmp_path / "db")


def test_an_older_database_is_read_and_marked_with_this_schema_so_older_butters_refuse_it(tmp_path):
    backend = LmdbBackend(tmp_path / "db")
    backend._write(lambda txn: txn.put(b"schema", b"1", db=backend.meta))
    backend.close()
    reopened = LmdbBackend(tmp_path / "db")
    try:
        with reopened.env.begin(db=reopened.meta) as txn:
            assert int(txn.get(b"schema")) == SCHEMA_VERSION > 1
    finally:
        reopened.close()


def test_two_handles_in_one_process_share_one_environment(tmp_path):
    a, b = LmdbBackend(tmp_path / "db"), LmdbBackend(tmp_path / "db")
    assert a.env is b.env and a.secret == b.secret
    a.close()
    assert b.counts()["nodes"] == 0  # still open for b
    b.close()


def _writer(path: str, start: int, count: int) -> None:
    lmdb_backend.INITIAL_MAP_SIZE = 256 * 1024  # a small map: both processes must grow it
    cache = Cache(path)
    for n in range(start, start + count):
        cache.record("ns", conv(n), {"text": f"reply {n}"})
    cache.close()


def test_two_processes_writing_one_database_lose_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, i * 300, 300)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert lmdb.verify.verify(path) == []
    cache = Cache(path)
    assert cache.backend.env.info()["map_size"] > 256 * 1024
    try:
        assert all(isinstance(cache.lookup("ns", conv(n)), Hit) for n in range(600))
    finally:
        cache.close()
