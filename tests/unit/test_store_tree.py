"""The tree: content-addressed nodes, whole-path lookups, namespaces, replies."""
from __future__ import annotations

import pytest

from butter.store import Cache, Conversation, Hit, Miss, ServePolicy
from butter.store.tree import child_id, root_id

CONTEXT = {"api": "openai-chat", "model": "m", "params": {}}


def conv(*texts: str, context: dict = CONTEXT) -> Conversation:
    return Conversation(context, tuple({"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                       for i, t in enumerate(texts)))


@pytest.fixture(params=["lmdb", "shared"])
def cache(request, tmp_path):
    # The same contract on both backends: an LMDB directory, and a replica of
    # a shared store on a real redis-server (store/shared_backend.py).
    where = request.getfixturevalue("shared_store_url")() if request.param == "shared" else tmp_path / "db"
    c = Cache(where)
    yield c
    c.close()


def test_node_ids_are_content_addresses_of_parent_and_message():
    root = root_id("ns", CONTEXT)
    assert child_id(root, {"role": "user", "content": "a"}) == child_id(root, {"content": "a", "role": "user"})
    assert child_id(root, {"role": "user", "content": "a"}) != child_id(root, {"role": "user", "content": "b"})
    other_root = root_id("ns", {**CONTEXT, "model": "other"})
    assert child_id(root, {"role": "user", "content": "a"}) != child_id(other_root, {"role": "user", "content": "a"})


def test_a_recorded_conversation_is_a_hit_with_its_reply(cache):
    cache.record("ns", conv("hi"), {"text": "hello"})
    hit = cache.lookup("ns", conv("hi"))
    assert isinstance(hit, Hit) and hit.reply == {"text": "hello"}


def test_a_prefix_of_a_recorded_conversation_without_its_own_reply_misses(cache):
    cache.record("ns", conv("hi", "hello", "how are you"), {"text": "fine"})
    miss = cache.lookup("ns", conv("hi"))
    assert isinstance(miss, Miss) and miss.reason == "no-reply" and miss.matched == 1


def test_a_miss_says_which_message_left_the_tree(cache):
    cache.record("ns", conv("hi", "hello", "how are you"), {"text": "fine"})
    miss = cache.lookup("ns", conv("hi", "hello", "what time is it"))
    assert isinstance(miss, Miss) and miss.reason == "diverged" and miss.matched == 2
    assert miss.deepest == cache.lookup("ns", conv("hi", "hello", "how are you")).path[2]


def test_an_unknown_context_misses_before_any_message(cache):
    cache.record("ns", conv("hi"), {"text": "hello"})
    miss = cache.lookup("ns", conv("hi", context={**CONTEXT, "params": {"temperature": 1}}))
    assert isinstance(miss, Miss) and miss.reason == "new-context" and miss.matched == -1


def test_namespaces_do_not_see_each_others_recordings(cache):
    cache.record("key:a", conv("hi"), {"text": "hello"})
    assert isinstance(cache.lookup("key:b", conv("hi")), Miss)


def test_shared_prefixes_are_stored_once(cache):
    cache.record("ns", conv("hi", "hello", "weather?"), {"text": "sunny"})
    before = cache.backend.counts()["nodes"]
    cache.record("ns", conv("hi", "hello", "time?"), {"text": "noon"})
    assert cache.backend.counts()["nodes"] == before + 1


def test_recording_the_same_reply_twice_counts_observations_instead_of_duplicating(cache):
    cache.record("ns", conv("hi"), {"text": "hello"})
    cache.record("ns", conv("hi"), {"text": "hello"})
    node = cache.lookup("ns", conv("hi")).node_id
    [stored] = cache.backend.replies(node)
    assert stored.count == 2


def test_refresh_replaces_the_nodes_other_replies(cache):
    cache.record("ns", conv("hi"), {"text": "old"})
    cache.record("ns", conv("hi"), {"text": "new"}, refresh=True)
    node = cache.lookup("ns", conv("hi")).node_id
    assert [r.reply for r in cache.backend.replies(node)] == [{"text": "new"}]


def test_a_reply_is_served_only_after_the_required_observations(tmp_path):
    cache = Cache(tmp_path / "db", ServePolicy(min_observations=2))
    try:
        cache.record("ns", conv("hi"), {"text": "hello"})
        assert isinstance(cache.lookup("ns", conv("hi")), Miss)
        cache.record("ns", conv("hi"), {"text": "hello"})
        assert isinstance(cache.lookup("ns", conv("hi")), Hit)
    finally:
        cache.close()


def test_the_namespace_of_a_credential_is_a_keyed_hash_not_the_credential(cache):
    ns = cache.namespace("sk-secret-value")
    assert "sk-secret" not in ns and ns.startswith("key:")
    assert cache.namespace("sk-secret-value") == ns != cache.namespace("sk-other")
    assert cache.namespace("sk-secret-value", fixed="team") == cache.namespace("sk-other", fixed="team") == "ns:team"


def test_a_conversation_of_5000_messages_is_served_and_its_misses_explained_without_recursion(cache):
    texts = [f"turn {i}" for i in range(5000)]
    cache.record("ns", conv(*texts), {"text": "done"})
    hit = cache.lookup("ns", conv(*texts))
    assert isinstance(hit, Hit) and hit.reply == {"text": "done"} and len(hit.path) == 5001
    miss = cache.lookup("ns", conv(*texts[:-1], "something else"))
    assert isinstance(miss, Miss) and miss.reason == "diverged" and miss.matched == 4999
