"""Lookups give their LMDB reader slot back at once, not at the next GC."""
from __future__ import annotations

import gc

from butter.store import Cache, Conversation, Hit


def test_many_lookups_do_not_exhaust_the_reader_table_even_without_garbage_collection(tmp_path):
    cache = Cache(tmp_path / "db")
    conversation = Conversation({"api": "openai-chat", "model": "m"},
                                ({"role": "user", "content": [{"type": "text", "text": "hi"}]},))
    cache.record("ns", conversation, {"choices": []})
    gc.disable()  # what a lookup caught in a reference cycle meets between collections
    try:
        # The environment has 256 reader slots; each leaked snapshot would hold one.
        results = [cache.lookup("ns", conversation) for _ in range(600)]
    finally:
        gc.enable()
        cache.close()
    assert all(isinstance(r, Hit) for r in results)
