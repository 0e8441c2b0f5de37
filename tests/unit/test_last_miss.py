"""store/last_miss.py: one bounded, credential-free last miss per namespace, left out of exports."""
from __future__ import annotations

import io

from butter.store import Cache, Conversation
from butter.store import last_miss
from butter.store.portable import write_export


def conv(text: str) -> Conversation:
    return Conversation({"api": "openai-chat", "model": "m"}, ({"role": "user", "content": text},))


def test_the_newest_miss_wins_and_each_namespace_keeps_only_its_last(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "db")
    clock = iter([100.0, 200.0, 300.0])
    monkeypatch.setattr(last_miss.time, "time", lambda: next(clock))
    for namespace, text in (("ns:a", "first"), ("ns:b", "second"), ("ns:a", "third")):
        row = last_miss.last_miss_row("openai-chat", "/v1/chat/completions", namespace, conv(text), "replay", "w")
        cache.backend.put_aux(last_miss.LAST_MISS_TABLE, last_miss.last_miss_key(namespace), row)
    assert len(list(cache.backend.iter_aux(last_miss.LAST_MISS_TABLE))) == 2
    newest = last_miss.newest_last_miss(cache.backend)
    assert last_miss.conversation_of(newest) == conv("third")
    assert last_miss.conversation_of(last_miss.newest_last_miss(cache.backend, "ns:b")) == conv("second")
    out = io.StringIO()
    write_export(cache.backend, out)
    cache.close()
    assert "last_miss" not in out.getvalue()


def test_a_request_too_large_to_keep_is_not_kept():
    huge = conv("x" * (last_miss.MAX_BYTES + 1))
    assert last_miss.last_miss_row("openai-chat", "/v1/chat/completions", "ns:a", huge, "auto", "w") is None
