"""The hit path's shortcuts give exactly what the slow way gave.

A memoised node id, the one-pass header dict and the skipped query parse are
there for speed only; each must be indistinguishable from what it replaced.
The per-hit log line became a periodic summary.
"""
from __future__ import annotations

import logging

from mitmproxy import http
from mitmproxy.test import taddons, tutils

from butter.addon import exchange, formats
from butter.addon.cache_addon import Butter
from butter.store.canonical import canonical_json, digest
from butter.store.tree import IdMemo, child_id, root_id
from tests.unit.test_addon import KEY, llm_flow, send


def slow_root(namespace: str, context: dict) -> bytes:
    return digest(b"root", namespace.encode("utf-8"), canonical_json(context))


def slow_child(parent: bytes, message: dict) -> bytes:
    return digest(b"node", parent, canonical_json(message))


CONTEXTS = [
    {"model": "m", "temperature": 0},
    {"model": "m", "temperature": 0.0},  # same id as the line above, another memo key
    {"temperature": 0.0, "model": "m"},  # key order
    {"model": "m", "temperature": 0.5},
    {"model": "m", "tools": [{"n": 1.0, "x": [2.0, {"y": 3e16}]}]},
    {"model": "m", "tools": [{"x": [2, {"y": 30000000000000000}], "n": 1}]},
    {"model": "m", "stop": ["1.0"]},  # a string, not a number: must stay apart from 1.0
    {"model": "m", "stop": [1.0]},
    {"model": "m", "flag": True},
    {"model": "m", "flag": 1},
]


def test_memoised_ids_equal_the_canonical_ids_for_floats_key_order_and_nesting():
    for _ in range(2):  # the second pass is served from the memo
        for context in CONTEXTS:
            for namespace in ("a", "b"):
                assert root_id(namespace, context) == slow_root(namespace, context)
            for parent in (b"p" * 16, b"q" * 16):
                assert child_id(parent, context) == slow_child(parent, context)
    assert root_id("a", CONTEXTS[0]) == root_id("a", CONTEXTS[1]) == root_id("a", CONTEXTS[2])
    assert root_id("a", CONTEXTS[4]) == root_id("a", CONTEXTS[5])
    assert root_id("a", CONTEXTS[6]) != root_id("a", CONTEXTS[7])
    assert root_id("a", CONTEXTS[8]) != root_id("a", CONTEXTS[9])
    assert root_id("a", CONTEXTS[0]) != root_id("b", CONTEXTS[0])
    assert child_id(b"p" * 16, CONTEXTS[0]) != child_id(b"q" * 16, CONTEXTS[0])


def test_a_value_the_memo_cannot_key_still_gets_its_canonical_id_or_error():
    odd = {"model": "m", 1: "int key", "2": "str key"}  # sorted dumps refuse mixed key types
    try:
        expected = slow_root("a", odd)
    except TypeError:
        expected = None
    if expected is None:
        try:
            root_id("a", odd)
        except TypeError:
            pass
        else:
            raise AssertionError("the memo must not invent an id canonical_json refuses")
    else:
        assert root_id("a", odd) == expected


def test_the_id_memo_stays_within_its_entry_and_size_bounds():
    memo = IdMemo(max_entries=3, max_chars=1600)
    for i in range(10):
        memo.put(("node", b"p", str(i)), bytes([i]), 10)
    assert len(memo._ids) == 3 and memo.get(("node", b"p", "9")) == bytes([9])
    assert memo.get(("node", b"p", "0")) is None  # oldest out first
    memo.put(("node", b"p", "big"), b"x", 1600)  # over a 16th of the budget: not kept
    assert memo.get(("node", b"p", "big")) is None
    memo.put(("node", b"p", "mid"), b"y", 100)
    assert memo._chars <= 1600 and memo.get(("node", b"p", "mid")) == b"y"


def test_the_one_pass_header_dict_equals_dict_of_headers_with_repeats_and_mixed_case():
    headers = http.Headers([(b"Content-Type", b"application/json"), (b"X-Tag", b"a"), (b"authorization", b"k"),
                            (b"x-tag", b"b"), (b"X-TAG", b"c"), (b"Accept", b"*/*"), (b"caf\xc3\xa9", b"\xff")])
    assert exchange.header_dict(headers) == dict(headers)
    assert list(exchange.header_dict(headers)) == list(dict(headers))
    assert exchange.header_dict(http.Headers()) == {}


def test_read_request_gives_the_same_query_with_and_without_one_in_the_url():
    fmt = formats.recognise("POST", "/v1/chat/completions")
    for path, query in (("/v1/chat/completions", {}), ("/v1/chat/completions?a=1&a=2&b=", {"a": "1", "b": ""})):
        request = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https", path=path.encode(),
                              content=b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
                              headers=http.Headers(authorization=f"Bearer {KEY}", content_type="application/json"))
        assert dict(request.query) == query
        credential, parsed = exchange.read_request(fmt, request)
        assert credential is not None and KEY not in repr(parsed)


async def test_hits_are_logged_as_one_summary_line_not_one_info_line_each(tmp_path, caplog):
    addon = Butter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=str(tmp_path / "db"))
        caplog.set_level(logging.INFO, logger="butter")
        await send(addon, llm_flow())  # a miss, recorded
        for _ in range(3):
            assert (await send(addon, llm_flow(), reply=None)).response.headers["butter-cache"] == "hit"
        infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert any(m.startswith("butter: miss") for m in infos)
        assert not any(m.startswith("butter: hit") for m in infos)
        addon.done()
    summaries = [r.getMessage() for r in caplog.records if "hits," in r.getMessage()]
    assert len(summaries) == 1 and summaries[0].startswith("butter: 3 hits, 1 misses in the last")


# -- the second round of shortcuts (bench/README.md, "Last measured") -----------

def test_the_direct_response_equals_response_make_field_for_field():
    from butter.addon.cache_addon import _make_response

    cases = [
        (200, b'{"a":1}', {"content-type": "application/json", "butter-cache": "hit", "butter-node": "ab" * 16}),
        (404, b"", {}),
        (599, b"x", {"X-Caf\u00e9": "\u00fc", "Content-Type": "text/plain"}),
        # framing headers: left to `make`, which rewrites or keeps them its own way
        (200, b"abc", {"Content-Length": "99"}),
        (200, b"abc", {"transfer-encoding": "chunked"}),
        (200, b"abc", {"content-encoding": "gzip"}),
    ]
    for status, body, headers in cases:
        fast, slow = _make_response(status, body, dict(headers)), http.Response.make(status, body, dict(headers))
        fast.timestamp_start, fast.timestamp_end = slow.timestamp_start, slow.timestamp_end
        assert fast.get_state() == slow.get_state()
        assert fast.trailers is None and bytes(fast.headers) == bytes(slow.headers)



def test_direct_responses_share_no_state_with_each_other():
    from butter.addon.cache_addon import _make_response

    first = _make_response(200, b"one", {"content-type": "application/json"})
    second = _make_response(201, b"two", {"content-type": "text/plain"})
    first.headers["x-added"] = "1"
    first.content = b"changed"
    first.status_code = 500
    assert (second.status_code, second.content, second.headers.get("x-added")) == (201, b"two", None)
    assert second.data is not first.data and second.headers is not first.headers
    third = _make_response(200, b"three", {})
    assert (third.status_code, third.content, list(third.headers.keys())) == (200, b"three", ["content-length"])


def test_compact_json_gives_the_bytes_json_dumps_gives():
    import json

    from butter.addon.formats.base import compact_json

    values = [{"b": 1, "a": [1.0, 2, "\u00e9\u2028\"\x00"], "c": None, "d": True}, "x", 3, 1.5, float("nan"),
              {1: 2, 2.5: 1, None: 3, True: 4}, [], {}, {"a": float("-inf")}, 10**30, (1, 2)]
    for value in values:
        assert compact_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    for bad in ({"a": object()}, {"a": {1, 2}}):
        try:
            compact_json(bad)
        except TypeError:
            continue
        raise AssertionError("compact_json must refuse what json.dumps refuses")


def test_memo_keys_tell_apart_what_canonical_json_tells_apart():
    from butter.store.tree import _memo_text

    distinct = [1, 1.0, True, "1", [1], (1,), {"a": 1}, {"a": 1.0}, {"a": True}, {1: "a"}, {"1": "a"}, -0.0, 0]
    keys = [_memo_text(v) for v in distinct]
    assert len(set(keys)) == len(keys)
    assert _memo_text({"a": 1, "b": 2}) != _memo_text({"b": 2, "a": 1})  # only a second key for the same id

    class Sub(dict):
        pass

    assert _memo_text(Sub(a=1)) is None  # not the exact builtin types: not memoised, computed as before
    assert root_id("a", Sub(model="m")) == slow_root("a", {"model": "m"})


async def test_a_request_without_butter_headers_and_one_with_them_are_both_honoured(tmp_path):
    addon = Butter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=str(tmp_path / "db"))
        assert (await send(addon, llm_flow())).response.headers["butter-cache"] == "miss"
        plain = await send(addon, llm_flow(), reply=None)
        assert plain.response.headers["butter-cache"] == "hit"
        off = llm_flow()
        off.request.headers["Butter-Mode"] = "off"  # any spelling of a butter header takes the full path
        off.request.headers["butter-disable-induction"] = "true"
        await send(addon, off)
        assert off.response.headers["butter-cache"] == "bypass (mode off)"
        assert "butter-mode" not in off.request.headers and "butter-disable-induction" not in off.request.headers
        bad = llm_flow()
        bad.request.headers["BUTTER-NAMESPACE"] = "no spaces allowed"
        await send(addon, bad, reply=None)
        assert bad.response.status_code == 400 and bad.response.headers["butter-cache"] == "refused"
        addon.done()


def test_read_request_still_decodes_a_compressed_body():
    import gzip

    fmt = formats.recognise("POST", "/v1/chat/completions")
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    plain = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https", path=b"/v1/chat/completions",
                        content=raw, headers=http.Headers(content_type="application/json"))
    packed = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https", path=b"/v1/chat/completions",
                         content=gzip.compress(raw),
                         headers=http.Headers(content_type="application/json", content_encoding="gzip"))
    assert exchange.read_request(fmt, packed)[1].conversation == exchange.read_request(fmt, plain)[1].conversation


async def test_a_served_flow_is_not_kept_alive_until_the_recent_list_is_written(tmp_path):
    import gc
    import weakref

    addon = Butter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=str(tmp_path / "db"))
        await send(addon, llm_flow())  # a miss, recorded
        flow = await send(addon, llm_flow(), reply=None)
        assert flow.response.headers["butter-cache"] == "hit"
        addon.response(flow)
        pending = list(addon.recent.pending)
        assert [row["status"] for row in pending][-1] == "hit", "the hit is in the list to be written"
        gone = weakref.ref(flow)
        del flow
        gc.collect()
        assert gone() is None, "something still holds the served flow"
        addon.done()
