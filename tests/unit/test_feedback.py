"""Feedback: the scoring rules, votes on a temp LMDB, and butter.local in the addon."""
from __future__ import annotations

import json
import threading

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from butter.addon import feedback
from butter.store import Cache, Conversation, Hit, Miss, ServePolicy, StoredReply, admin
from butter.store import feedback as rules
from butter.store.tree import reply_id
from tests.unit.exchange import send

CONV = Conversation({"api": "t", "model": "m"}, ({"role": "user", "content": "refund 1234"},))
NS = "ns:unit"


def stored(rid: bytes, score: int = 0, bad: bool = False, count: int = 1, last_seen: float = 1.0) -> StoredReply:
    return StoredReply(rid, {"text": rid.hex()}, count, 0.0, last_seen, score=score, bad=bad)


@pytest.fixture
def cache(tmp_path):
    c = Cache(tmp_path / "db")
    yield c
    c.close()


# -- the rules, plain values ----------------------------------------------------------

def test_a_bad_vote_marks_and_lowers_and_a_good_vote_undoes_one_bad():
    score, bad = rules.scored(0, False, rules.BAD)
    assert (score, bad) == (-1, True)
    assert rules.scored(score, bad, rules.GOOD) == (0, False)


def test_a_good_vote_does_not_lift_the_mark_of_a_reply_most_voters_called_bad():
    assert rules.scored(-3, True, rules.GOOD) == (-2, True)


def test_a_bad_vote_on_a_well_liked_reply_still_stops_it_being_served():
    assert rules.scored(5, False, rules.BAD) == (4, True)


def test_bad_without_a_reply_targets_every_reply_at_the_node():
    replies = [stored(b"a" * 16), stored(b"b" * 16, count=3)]
    assert set(rules.decide(replies, rules.BAD)) == {b"a" * 16, b"b" * 16}


def test_good_without_a_reply_targets_the_reply_served_now():
    replies = [stored(b"a" * 16, count=1), stored(b"b" * 16, count=3)]
    assert list(rules.decide(replies, rules.GOOD)) == [b"b" * 16]


def test_good_targets_the_best_ranked_reply_when_none_is_servable():
    replies = [stored(b"a" * 16, score=-1, bad=True, count=2), stored(b"b" * 16, score=-1, bad=True)]
    assert list(rules.decide(replies, rules.GOOD)) == [b"a" * 16]


def test_a_named_reply_must_be_at_the_node():
    with pytest.raises(rules.UnknownTarget):
        rules.decide([stored(b"a" * 16)], rules.BAD, b"z" * 16)
    with pytest.raises(rules.FeedbackError, match="no recorded reply"):
        rules.decide([], rules.BAD)


@pytest.mark.parametrize("text", ["meh", "", None, 1])
def test_only_good_and_bad_are_verdicts(text):
    with pytest.raises(rules.FeedbackError):
        rules.parse_verdict(text)


def test_reputation_picks_between_servable_replies_and_bad_ones_are_never_chosen():
    liked, common = stored(b"a" * 16, score=2, count=1), stored(b"b" * 16, count=5)
    assert ServePolicy().choose([liked, common]) is liked
    assert ServePolicy().choose([stored(b"a" * 16, score=9, bad=True), common]) is common


# -- votes on a real LMDB ------------------------------------------------------------

def test_a_node_voted_bad_misses_and_the_next_different_reply_there_is_served(cache):
    node = cache.record(NS, CONV, {"text": "wrong"})
    result = admin.vote(cache.backend, node, "bad")
    assert not result.servable and result.replies[0].bad
    miss = cache.lookup(NS, CONV)
    assert isinstance(miss, Miss) and miss.reason == "no-reply"
    assert cache.record(NS, CONV, {"text": "right"}) == node, "the new reply belongs to the same node"
    hit = cache.lookup(NS, CONV)
    assert isinstance(hit, Hit) and hit.reply == {"text": "right"}


def test_the_same_answer_recorded_again_after_a_bad_vote_stays_bad(cache):
    node = cache.record(NS, CONV, {"text": "wrong"})
    admin.vote(cache.backend, node, "bad")
    cache.record(NS, CONV, {"text": "wrong"})
    assert isinstance(cache.lookup(NS, CONV), Miss)


def test_good_votes_on_a_named_reply_make_it_the_one_served(cache):
    node = cache.record(NS, CONV, {"text": "first"})
    cache.record(NS, CONV, {"text": "first"})
    cache.record(NS, CONV, {"text": "second"})
    assert cache.lookup(NS, CONV).reply == {"text": "first"}, "more observations win while reputations tie"
    admin.vote(cache.backend, node, "good", reply_id({"text": "second"}))
    assert cache.lookup(NS, CONV).reply == {"text": "second"}


def test_a_bad_vote_on_one_named_reply_leaves_the_others_servable(cache):
    node = cache.record(NS, CONV, {"text": "first"})
    cache.record(NS, CONV, {"text": "second"})
    result = admin.vote(cache.backend, node, "bad", reply_id({"text": "first"}))
    assert result.changed == (reply_id({"text": "first"}),) and result.servable
    assert cache.lookup(NS, CONV).reply == {"text": "second"}


def test_a_vote_on_an_unknown_node_is_refused(cache):
    with pytest.raises(rules.UnknownTarget, match="no node"):
        admin.vote(cache.backend, b"\x00" * 16, "bad")


def test_concurrent_votes_are_never_lost(cache):
    node = cache.record(NS, CONV, {"text": "x"})
    go = threading.Barrier(4)

    def voter() -> None:
        go.wait()
        for _ in range(25):
            admin.vote(cache.backend, node, "good")

    threads = [threading.Thread(target=voter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.backend.replies(node)[0].score == 100


# -- butter.local through the addon -----------------------------------------------------

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def llm_flow() -> http.HTTPFlow:
    request = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https",
                          path=b"/v1/chat/completions", content=json.dumps(BODY).encode(),
                          headers=http.Headers(authorization="Bearer sk-unit", content_type="application/json"))
    return tflow.tflow(req=request)


def local_flow(method: str, path: str, body: bytes = b"", scheme: str = "http") -> http.HTTPFlow:
    request = tutils.treq(method=method.encode(), host="butter.local", port=80 if scheme == "http" else 443,
                          scheme=scheme.encode(), path=path.encode(), content=body,
                          headers=http.Headers(content_type="application/json"))
    return tflow.tflow(req=request)


def completion(text: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def answer_of(f: http.HTTPFlow) -> dict:
    return json.loads(f.response.content)


async def test_hits_name_their_node_and_reply(butter):
    addon, _ = butter
    await send(addon, llm_flow(), completion("hello"))
    hit = await send(addon, llm_flow())
    assert len(hit.response.headers["butter-node"]) == 32
    assert hit.response.headers["butter-reply"] == reply_id(
        {k: v for k, v in completion("hello").items() if k not in ("id", "created")}).hex()


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_bad_feedback_to_butter_local_makes_the_next_request_miss_then_serve_the_new_reply(butter, scheme):
    addon, _ = butter
    await send(addon, llm_flow(), completion("wrong"))
    node = (await send(addon, llm_flow())).response.headers["butter-node"]
    vote = await send(addon, local_flow("POST", "/feedback", json.dumps({"node": node, "score": "bad"}).encode(),
                                        scheme))
    assert vote.response.status_code == 200 and vote.is_replay == "response"
    body = answer_of(vote)
    assert body["node"] == node and body["servable"] is False and body["replies"][0]["bad"] is True
    miss = await send(addon, llm_flow(), completion("right"))
    assert miss.response.headers["butter-cache"] == "miss"
    served = await send(addon, llm_flow())
    assert served.response.headers["butter-node"] == node
    assert answer_of(served)["choices"][0]["message"]["content"] == "right"


async def test_health_answers_json_about_the_running_proxy(butter, tmp_path):
    addon, tctx = butter
    tctx.configure(addon, butter_min_observations=2)
    f = await send(addon, local_flow("GET", "/health"))
    body = answer_of(f)
    assert f.response.status_code == 200 and f.response.headers["content-type"] == "application/json"
    assert body["butter"] == "ok" and body["mode"] == "auto" and body["min_observations"] == 2
    assert body["db"] == "db"  # the folder's name: no client learns the machine's paths
    assert str(tmp_path) not in f.response.text


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # nested far past the parser's recursion limit, but small
    b'{"node": ' * 5_000 + b"1" + b"}" * 5_000,
])
async def test_a_deeply_nested_feedback_body_is_a_400_from_butter_never_forwarded(butter, body):
    addon, _ = butter
    small = body[: feedback.MAX_BODY]  # within the size limit, so it reaches the parser
    f = await send(addon, local_flow("POST", "/feedback", small))
    assert f.response.status_code == 400 and f.is_replay == "response"


async def test_a_huge_feedback_body_is_a_413_from_butter_never_forwarded(butter):
    addon, _ = butter
    f = await send(addon, local_flow("POST", "/feedback", b'{"node": "' + b"a" * 5_000_000 + b'"}'))
    assert f.response.status_code == 413 and f.is_replay == "response"


async def test_a_butter_local_request_butter_fails_on_is_still_answered_by_butter(butter, monkeypatch):
    addon, _ = butter

    def broken(*args):
        raise MemoryError("simulated")

    monkeypatch.setattr(feedback, "route", broken)
    f = await send(addon, local_flow("POST", "/feedback", b"{}"))
    assert f.response.status_code == 500 and f.is_replay == "response"


@pytest.mark.parametrize("method,path,body,status,words", [
    ("GET", "/nowhere", b"", 404, "no /nowhere"),
    ("GET", "/feedback", b"", 405, "POST"),
    ("POST", "/health", b"", 405, "GET"),
    ("POST", "/feedback", b"{not json", 400, "JSON"),
    ("POST", "/feedback", b'{"node": "abc", "score": "bad"}', 400, "node id"),
    ("POST", "/feedback", b'{"node": "' + b"0" * 32 + b'", "score": "meh"}', 400, "good, bad"),
    ("POST", "/feedback", b'{"node": "' + b"0" * 32 + b'", "score": "bad"}', 404, "no node"),
])
async def test_butter_local_answers_every_wrong_request_itself_with_a_json_error(butter, method, path, body, status, words):
    addon, _ = butter
    f = await send(addon, local_flow(method, path, body))
    assert f.response.status_code == status
    assert words in answer_of(f)["error"]["message"]


async def test_feedback_naming_a_reply_that_is_not_at_the_node_is_a_404(butter):
    addon, _ = butter
    await send(addon, llm_flow(), completion("x"))
    node = (await send(addon, llm_flow())).response.headers["butter-node"]
    f = await send(addon, local_flow("POST", "/feedback", json.dumps(
        {"node": node, "score": "good", "reply": "ab" * 16}).encode()))
    assert f.response.status_code == 404 and "not at this node" in answer_of(f)["error"]["message"]


def test_a_miss_says_when_the_replies_are_marked_bad_or_still_staged(cache):
    node = cache.record(NS, CONV, {"text": "x"})
    staged = Cache(cache.backend.path, ServePolicy(min_observations=3))
    try:
        assert "1 of the 3 agreeing observations" in staged.lookup(NS, CONV).detail
    finally:
        staged.close()
    admin.vote(cache.backend, node, "bad")
    assert "marked bad" in cache.lookup(NS, CONV).detail


async def test_a_recorded_miss_names_the_node_its_reply_is_recorded_at(butter):
    addon, _ = butter
    miss = await send(addon, llm_flow(), completion("x"))
    hit = await send(addon, llm_flow())
    assert miss.response.headers["butter-cache"] == "miss"
    assert miss.response.headers["butter-node"] == hit.response.headers["butter-node"]
