"""Bounded request decoding and the bounded log-once set (addon/limits.py)."""
from __future__ import annotations

import gzip
import logging
import zlib

import brotli
import pytest

from butter.addon import limits
from butter.addon.limits import zstd

BODY = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 5000 + b'"}]}'


@pytest.mark.parametrize("coding,encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, no zlib header
    ("br", brotli.compress),
    ("zstd", zstd.compress),
    ("identity", lambda b: b),
])
def test_each_coding_decodes_to_the_original_body(coding, encode):
    assert limits.request_body(encode(BODY), coding) == BODY


def test_two_gzip_members_decode_to_both():
    assert limits.request_body(gzip.compress(BODY) + gzip.compress(b"more"), "gzip") == BODY + b"more"


@pytest.mark.parametrize("coding,encode", [("gzip", gzip.compress), ("deflate", zlib.compress),
                                           ("br", lambda b: brotli.compress(b, quality=1)), ("zstd", zstd.compress)])
def test_a_decompression_bomb_stops_at_the_limit_instead_of_inflating_whole(coding, encode):
    bomb = encode(b"\0" * (16 << 20))  # a few KB that inflate to 16 MiB
    assert len(bomb) < 1 << 20
    with pytest.raises(limits.BodyTooLarge):
        limits.request_body(bomb, coding, max_bytes=1 << 20)


def test_a_raw_body_over_the_limit_is_not_read():
    with pytest.raises(limits.BodyTooLarge):
        limits.request_body(b"x" * 2000, "", max_bytes=1000)


@pytest.mark.parametrize("coding,raw", [("gzip", b"not gzip at all"), ("gzip", gzip.compress(BODY)[:-20]),
                                        ("br", b"\xff\xff"), ("compress", b"x"), ("gzip, br", b"x")])
def test_a_broken_or_unknown_coding_is_refused_not_guessed(coding, raw):
    with pytest.raises(limits.BadEncoding):
        limits.request_body(raw, coding)


def test_only_a_lone_surrogate_counts_not_a_pair_or_plain_text():
    lone = '{"content":"a \\ud800 b"}'.encode()
    pair = '{"content":"a \\ud83d\\ude00 b"}'.encode()
    assert limits.has_lone_surrogate(lone, {"content": "a \ud800 b"})
    assert not limits.has_lone_surrogate(pair, {"content": "a \U0001F600 b"})
    assert not limits.has_lone_surrogate(b'{"content":"plain"}', {"content": "plain"})


def test_log_once_logs_each_kind_once_and_remembers_a_bounded_number_of_kinds(caplog):
    once = limits.OnceLog(logging.getLogger("test-once"), cap=8)
    with caplog.at_level(logging.WARNING, logger="test-once"):
        for i in range(1500):
            once.warning(f"kind-{i % 3}", "problem %d", i)
        assert len(caplog.records) == 3
        for i in range(100):
            once.warning(f"unforeseen-{i}", "other %d", i)
    assert len(once) == 8
