"""store/cassette.py: a test's recordings as a git-friendly file, the same bytes for the same recordings."""
from __future__ import annotations

import io
import json
import time

import pytest

from butter.store import Cache, Conversation, Hit
from butter.store import cassette, portable
from butter.store.inspect import MISSES_TABLE
from butter.store.learning import FAILED_TABLE

CONTEXT = {"api": "openai-chat", "model": "m", "params": {}, "headers": {}}
NS = "ns:tests/test_agent"


def user(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def reply(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def conv(*messages: dict) -> Conversation:
    return Conversation(CONTEXT, tuple(messages))


def record_run(cache: Cache, *, hits: int) -> None:
    """What one test run leaves in its database: recordings, induction bookkeeping, counters."""
    for n in ("1", "2"):
        conversation = conv(user(f"refund order {n}"))
        cache.record(NS, conversation, reply(f"refunded order {n}"))
        cache.induce(NS, conversation)
    cache.backend.add_hits({cache.lookup(NS, conv(user("refund order 1"))).node_id: hits})
    cache.backend.add_aux_counts(MISSES_TABLE, {b"k": hits})
    cache.backend.put_aux(FAILED_TABLE, b"set", {"reason": "x", "t": time.time()})


def test_the_same_recordings_made_at_other_times_give_a_byte_identical_cassette(tmp_path):
    first, second = Cache(tmp_path / "a"), Cache(tmp_path / "b")
    record_run(first, hits=1)
    time.sleep(0.01)
    record_run(second, hits=7)

    def export(cache: Cache) -> str:
        out = io.StringIO()
        portable.write_export(cache.backend, out)
        return out.getvalue()

    assert export(first) != export(second)  # timestamps, hits, secrets differ
    assert cassette.cassette_text(first.backend, "t") == cassette.cassette_text(second.backend, "t")


def test_a_cassette_keeps_recordings_and_leaves_out_what_describes_one_run(tmp_path):
    cache = Cache(tmp_path / "db")
    record_run(cache, hits=3)
    records = [json.loads(line) for line in cassette.cassette_text(cache.backend, "test_agent/test_refund").splitlines()]
    header, body = records[0], records[1:]
    assert header == {"type": "butter-export", "version": 1, "cassette": "test_agent/test_refund",
                      "counts": {"aux": 3, "nodes": 4, "replies": 3, "stats": 0}, "schema": header["schema"]}
    assert {r["type"] for r in body} == {"node", "reply", "aux"}
    # root, two runs and the template learned from them, with its reply
    assert sorted(r["kind"] for r in body if r["type"] == "node") == ["message", "message", "root", "template"]
    assert all("created" not in r for r in body if r["type"] == "node")
    assert all((r["first_seen"], r["last_seen"]) == (0, 0) for r in body if r["type"] == "reply")
    # two observations, and the learned template's trust (on probation) without its clock times
    assert {r["table"].split("/")[0] for r in body if r["type"] == "aux"} == {"induction-obs", "trust"}
    (trust,) = [r["value"] for r in body if r["type"] == "aux" and r["table"] == "trust"]
    assert trust["state"] == "probation" and trust["since"] == 0


def test_induction_observations_keep_their_order_as_ranks(tmp_path):
    cache = Cache(tmp_path / "db")
    record_run(cache, hits=0)
    observations = [json.loads(line) for line in cassette.cassette_text(cache.backend, "t").splitlines()
                    if '"induction-obs/' in line]
    by_time = sorted(cache.backend.iter_aux(observations[0]["table"]), key=lambda kv: kv[1]["t"])
    ranks = {r["key"]: r["value"]["t"] for r in observations}
    assert [ranks[key.hex()] for key, _ in by_time] == [1, 2]


def test_a_saved_cassette_loads_into_a_fresh_database_that_serves_it_and_saves_unchanged(tmp_path):
    cache = Cache(tmp_path / "a")
    record_run(cache, hits=2)
    path = tmp_path / "cassettes" / "test_agent" / "test_refund.jsonl"
    assert cassette.save(cache.backend, path, "t") is True
    fresh = Cache(tmp_path / "b")
    report = cassette.load(fresh.backend, path)
    assert report is not None and report.added == {"nodes": 4, "replies": 3, "stats": 0, "aux": 3}
    served = fresh.lookup(NS, conv(user("refund order 2")))
    assert isinstance(served, Hit) and served.reply == reply("refunded order 2")
    before = path.stat().st_mtime_ns
    assert cassette.save(fresh.backend, path, "t") is False  # same content: the file is not touched
    assert path.stat().st_mtime_ns == before


def test_a_new_recording_rewrites_the_cassette_and_nothing_recorded_writes_no_file(tmp_path):
    cache = Cache(tmp_path / "db")
    path = tmp_path / "c.jsonl"
    assert cassette.save(cache.backend, path, "t") is False and not path.exists()
    cache.record(NS, conv(user("a")), reply("b"))
    assert cassette.save(cache.backend, path, "t") is True
    cache.record(NS, conv(user("c")), reply("d"))
    assert cassette.save(cache.backend, path, "t") is True
    assert '"c"' in path.read_text() and not list(tmp_path.glob("*.partial"))


def test_a_missing_cassette_loads_nothing_and_a_foreign_file_is_refused(tmp_path):
    cache = Cache(tmp_path / "db")
    assert cassette.load(cache.backend, tmp_path / "none.jsonl") is None
    (tmp_path / "bad.jsonl").write_text('{"not": "a cassette"}\n')
    with pytest.raises(portable.ExportError):
        cassette.load(cache.backend, tmp_path / "bad.jsonl")
