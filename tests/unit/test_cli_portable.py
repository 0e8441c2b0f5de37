"""Portable recordings (store/portable.py and `butter export` / `butter import`)
over temporary LMDB databases."""
from __future__ import annotations

import io
import json

import pytest

from butter.cli.main import main
from butter.store import Cache, Conversation, Hit
from butter.store import portable

CONTEXT = {"api": "openai-chat", "model": "m", "params": {}, "headers": {}}


def user(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def reply(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"total_tokens": 10}}


def conv(*messages: dict) -> Conversation:
    return Conversation(CONTEXT, tuple(messages))


def build(path, namespace: str = "ns:t") -> Cache:
    cache = Cache(path)
    cache.record(namespace, conv(user("hi")), reply("hello"))
    cache.record(namespace, conv(user("hi"), assistant("hello"), user("refund 1")), reply("done 1"))
    cache.record(namespace, conv(user("hi"), assistant("hello"), user("refund 2")), reply("done 2"))
    cache.record(namespace, conv(user("hi"), assistant("hello"), user("refund 2")), reply("done 2"))  # count 2
    cache.backend.add_hits({cache.lookup(namespace, conv(user("hi"))).node_id: 4})
    cache.backend.put_aux("notes", b"k1", {"café": "é"})
    return cache


def export_text(cache: Cache, **kwargs) -> str:
    out = io.StringIO()
    portable.write_export(cache.backend, out, **kwargs)
    return out.getvalue()


def test_an_export_is_one_sorted_json_object_per_line_with_a_versioned_header(tmp_path):
    cache = build(tmp_path / "db")
    try:
        lines = export_text(cache).splitlines()
    finally:
        cache.close()
    header = json.loads(lines[0])
    assert header["type"] == "butter-export" and header["version"] == portable.FORMAT_VERSION
    assert header["counts"] == {"nodes": 5, "replies": 3, "stats": 1, "aux": 1}
    records = [json.loads(line) for line in lines[1:]]
    assert [r["type"] for r in records][:2] == ["node", "node"]  # root, then depth first
    assert records[0]["kind"] == "root"
    assert "é" in lines[-1], "non-ASCII is kept readable"
    assert all(line.startswith('{"type": ') for line in lines)


def test_export_then_import_into_an_empty_database_round_trips_every_row_exactly(tmp_path):
    source = build(tmp_path / "a")
    try:
        text = export_text(source)
        header, records = portable.read_records(io.StringIO(text))
        target = Cache(tmp_path / "b")
        try:
            report = portable.import_records(target.backend, header, records)
            assert report.added == {"nodes": 5, "replies": 3, "stats": 1, "aux": 1} and report.rehashed == 0
            assert sorted(target.backend.dump()) == sorted(source.backend.dump())
            assert isinstance(target.lookup("ns:t", conv(user("hi"), assistant("hello"), user("refund 2"))), Hit)
        finally:
            target.close()
    finally:
        source.close()


def test_exporting_an_unchanged_tree_twice_gives_the_same_bytes(tmp_path):
    cache = build(tmp_path / "db")
    try:
        assert export_text(cache) == export_text(cache)
    finally:
        cache.close()


def test_import_merges_shared_prefixes_once_and_is_idempotent(tmp_path):
    a = build(tmp_path / "a")
    b = Cache(tmp_path / "b")
    try:
        # b shares the prefix "hi" / "hello" and has a branch of its own.
        b.record("ns:t", conv(user("hi")), reply("hello"))
        b.record("ns:t", conv(user("hi"), assistant("hello"), user("refund 3")), reply("done 3"))
        text = export_text(a)
        first = portable.import_records(b.backend, *portable.read_records(io.StringIO(text)))
        assert first.added["nodes"] == 2  # only "refund 1" and "refund 2"
        counts = b.backend.counts()
        second = portable.import_records(b.backend, *portable.read_records(io.StringIO(text)))
        assert second.added == {"nodes": 0, "replies": 0, "stats": 0, "aux": 0}
        assert b.backend.counts() == counts == {"nodes": 6, "replies": 4}
        replies = b.backend.replies(b.lookup("ns:t", conv(user("hi"), assistant("hello"), user("refund 2"))).node_id)
        assert [r.count for r in replies] == [2], "a merge keeps the higher count, it does not add"
    finally:
        a.close()
        b.close()


def test_a_reply_marked_bad_on_either_side_stays_bad_after_a_merge():
    merged = portable.merge_row("replies", {"count": 3, "bad": False, "score": 2, "first_seen": 5, "last_seen": 9},
                                {"count": 1, "bad": True, "score": -1, "first_seen": 2, "last_seen": 7})
    assert merged == {"count": 3, "bad": True, "score": -1, "first_seen": 2, "last_seen": 9}
    assert portable.merge_row("stats", {"hits": 2, "last_hit": 5}, {"hits": 7, "last_hit": 1}) == {"hits": 7, "last_hit": 5}


def test_an_export_from_a_newer_butter_is_refused_before_anything_is_written(tmp_path, capsys):
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"type": "butter-export", "version": portable.FORMAT_VERSION + 1}) + "\n"
                     + json.dumps({"type": "node", "id": "00" * 16, "parent": None, "kind": "root", "depth": 0,
                                   "content": {}}) + "\n")
    assert main(["--db", str(tmp_path / "db"), "import", str(newer)]) == 1
    err = capsys.readouterr().err
    assert f"format version {portable.FORMAT_VERSION + 1}" in err and "Upgrade butter" in err
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("first_line,message", [("", "empty"), ("not json", "not a butter export"),
                                                 ('{"type": "something-else"}', "not a butter export")])
def test_a_file_that_is_not_an_export_is_refused_clearly(first_line, message):
    with pytest.raises(portable.ExportError, match=message):
        portable.read_records(io.StringIO(first_line + "\n" if first_line else ""))


def test_a_hand_edited_message_lands_where_a_lookup_finds_it(tmp_path):
    a = build(tmp_path / "a")
    try:
        text = export_text(a).replace("refund 1", "refund 9")
    finally:
        a.close()
    b = Cache(tmp_path / "b")
    try:
        report = portable.import_records(b.backend, *portable.read_records(io.StringIO(text)))
        assert report.rehashed == 1
        found = b.lookup("ns:t", conv(user("hi"), assistant("hello"), user("refund 9")))
        assert isinstance(found, Hit) and found.reply == reply("done 1")
    finally:
        b.close()


def test_import_into_a_named_namespace_moves_every_tree_there(tmp_path, capsys):
    a = build(tmp_path / "a", namespace="key:abc")
    try:
        a.backend.put_aux("state", b"key:abc\x00resp_1", {"node": "x"})  # a namespace-scoped side-table row
        (tmp_path / "x.jsonl").write_text(export_text(a))
    finally:
        a.close()
    assert main(["--db", str(tmp_path / "b"), "import", str(tmp_path / "x.jsonl"), "--namespace", "ci"]) == 0
    assert "recomputed" in capsys.readouterr().out
    b = Cache(tmp_path / "b")
    try:
        assert isinstance(b.lookup("ns:ci", conv(user("hi"), assistant("hello"), user("refund 1"))), Hit)
        assert not isinstance(b.lookup("key:abc", conv(user("hi"))), Hit)
        assert b.backend.get_aux("state", b"ns:ci\x00resp_1") == {"node": "x"}
        assert b.backend.get_aux("state", b"key:abc\x00resp_1") is None
    finally:
        b.close()


def test_with_secret_the_same_credential_reaches_its_namespace_in_a_fresh_database(tmp_path, capsys):
    a = Cache(tmp_path / "a")
    try:
        a.record(a.namespace("sk-mine"), conv(user("hi")), reply("hello"))
    finally:
        a.close()
    out = tmp_path / "x.jsonl"
    assert main(["--db", str(tmp_path / "a"), "export", "--out", str(out)]) == 0
    assert "secret" not in json.loads(out.read_text().splitlines()[0]), "the secret is opt-in"
    assert main(["--db", str(tmp_path / "b"), "import", str(out)]) == 0
    assert "another database's secret" in capsys.readouterr().out  # warned: key namespaces unreachable

    assert main(["--db", str(tmp_path / "a"), "export", "--out", str(out), "--with-secret"]) == 0
    capsys.readouterr()
    assert main(["--db", str(tmp_path / "c"), "import", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["secret_adopted"] is True
    c = Cache(tmp_path / "c")
    try:
        assert isinstance(c.lookup(c.namespace("sk-mine"), conv(user("hi"))), Hit)
    finally:
        c.close()


def test_export_of_one_namespace_leaves_the_others_out(tmp_path):
    cache = build(tmp_path / "db", namespace="ns:one")
    try:
        cache.record("ns:two", conv(user("other")), reply("x"))
        lines = export_text(cache, namespace="ns:two").splitlines()
    finally:
        cache.close()
    records = [json.loads(line) for line in lines[1:]]
    assert [r["type"] for r in records] == ["node", "node", "reply"]
    assert records[0]["namespace"] == "ns:two"
