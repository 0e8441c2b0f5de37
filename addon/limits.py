"""Limits that keep one request from stalling or breaking the proxy.

- `request_body`: a request body decoded with a ceiling. A compressed body is
  inflated only up to `max_bytes`; past it (a decompression bomb, or simply a
  body too big to be worth parsing) butter reads nothing and the request
  passes through with its bytes untouched.
- `is_large`: bodies big enough that parsing and hashing them would hold the
  event loop (every other client) for a noticeable time; the addon does that
  work on a thread instead.
- `has_lone_surrogate`: a JSON string with half a UTF-16 pair parses, but can
  never be encoded as UTF-8, so it cannot be keyed or stored: pass through.
- `OnceLog`: warnings logged once per kind, in a set that cannot grow without
  bound however varied the inputs.
"""
from __future__ import annotations

import json
import logging
import re
import zlib
from collections import OrderedDict

import brotli

try:  # the same zstd mitmproxy itself uses
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14
    from backports import zstd  # type: ignore[import-not-found,no-redef]

# Decoded bodies above this are not parsed (butter bypasses them). LLM
# requests with images or long documents reach tens of MB; providers refuse
# somewhat above that (Anthropic 32 MB, OpenAI ~50 MB per request).
MAX_BODY_BYTES = 64 << 20
# Above this many raw or decoded bytes, parse and look up off the event loop
# (a 1 MB JSON body takes a few ms to parse and hash; 50 MB most of a second).
LARGE_BODY_BYTES = 256 << 10
# Templates are not learned from bodies above this (addon: state.induction).
LEARN_BODY_BYTES = 1 << 20
_CHUNK = 1 << 20


class BodyTooLarge(ValueError):
    """The body, decoded, would exceed the limit (or is a decompression bomb)."""


class BadEncoding(ValueError):
    """A content-encoding butter cannot (or will not) decode."""


def request_body(raw: bytes, content_encoding: str, max_bytes: int | None = None) -> bytes:
    """`raw` decoded per `content_encoding`, never producing more than `max_bytes`.

    Raises BodyTooLarge past the limit and BadEncoding for an unknown or
    broken coding; in both cases nothing is parsed and the request passes
    through unchanged.
    """
    coding = content_encoding.strip().lower()
    if max_bytes is None:
        max_bytes = MAX_BODY_BYTES
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"{len(raw)} bytes is over the {max_bytes} byte limit")
    if coding in ("", "identity", "none"):
        return raw
    try:
        if coding in ("gzip", "x-gzip"):
            return _inflate(raw, 16 + zlib.MAX_WBITS, max_bytes)
        if coding == "deflate":
            try:
                return _inflate(raw, zlib.MAX_WBITS, max_bytes)
            except zlib.error:  # some clients send raw deflate without the zlib header
                return _inflate(raw, -zlib.MAX_WBITS, max_bytes)
        if coding == "br":
            return _unbrotli(raw, max_bytes)
        if coding == "zstd":
            return _unzstd(raw, max_bytes)
    except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as e:
        raise BadEncoding(f"the {coding} body does not decode ({type(e).__name__})") from None
    raise BadEncoding(f"content-encoding {coding!r} is not one butter decodes")


def _inflate(raw: bytes, wbits: int, max_bytes: int) -> bytes:
    out = bytearray()
    data = raw
    while data:  # gzip allows several members one after another
        d = zlib.decompressobj(wbits)
        pending = data
        while pending:
            out += d.decompress(pending, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise BodyTooLarge(f"decodes to more than {max_bytes} bytes")
            pending = d.unconsumed_tail
        out += d.flush(max_bytes + 1 - len(out)) if not d.eof else b""
        if len(out) > max_bytes:
            raise BodyTooLarge(f"decodes to more than {max_bytes} bytes")
        if not d.eof:
            raise zlib.error("truncated stream")
        data = d.unused_data if wbits > zlib.MAX_WBITS else b""
    return bytes(out)


def _unbrotli(raw: bytes, max_bytes: int) -> bytes:
    d = brotli.Decompressor()
    out = bytearray(d.process(raw, output_buffer_limit=_CHUNK))
    while not d.is_finished() and not d.can_accept_more_data():
        if len(out) > max_bytes:
            raise BodyTooLarge(f"decodes to more than {max_bytes} bytes")
        out += d.process(b"", output_buffer_limit=_CHUNK)
    if len(out) > max_bytes:
        raise BodyTooLarge(f"decodes to more than {max_bytes} bytes")
    if not d.is_finished():
        raise brotli.error("truncated stream")
    return bytes(out)


def _unzstd(raw: bytes, max_bytes: int) -> bytes:
    out = bytearray()
    data = raw
    while data:  # frames may follow one another
        d = zstd.ZstdDecompressor()
        out += d.decompress(data, max_length=max_bytes + 1 - len(out))
        while not d.eof and not d.needs_input:
            if len(out) > max_bytes:
                break
            out += d.decompress(b"", max_length=max_bytes + 1 - len(out))
        if len(out) > max_bytes:
            raise BodyTooLarge(f"decodes to more than {max_bytes} bytes")
        if not d.eof:
            raise EOFError("truncated stream")
        data = d.unused_data
    return bytes(out)


def is_large(raw: bytes, content_encoding: str) -> bool:
    """Is this body worth taking off the event loop? Any compressed body of
    some size is: it may inflate a hundredfold."""
    limit = LARGE_BODY_BYTES // 64 if content_encoding.strip().lower() not in ("", "identity") else LARGE_BODY_BYTES
    return len(raw) > limit


# A surrogate can only reach a parsed JSON string as an escape (\ud800-\udfff)
# or as the three bytes UTF-8 would use for one (json.loads decodes bytes
# with surrogatepass). Bodies without either are checked no further.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_RAW_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")


def has_lone_surrogate(body: bytes, *values: object) -> bool:
    """Does any string in `values` (parsed from `body`) hold half a UTF-16 pair?

    Paired escapes (an emoji as \\ud83d\\ude00) parse to one character and are
    fine; only a lone half cannot be encoded, keyed or stored.
    """
    # `in` scans at memchr speed; the patterns run only on bodies that have the prefix.
    escaped = (b"\\ud" in body or b"\\uD" in body) and _ESCAPED_SURROGATE.search(body)
    if not escaped and not (b"\xed" in body and _RAW_SURROGATE.search(body)):
        return False
    try:
        json.dumps(values, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class OnceLog:
    """Warnings logged once per key, remembering at most `cap` keys.

    Keys name a kind of problem (a format and an exception type), never the
    problem's text; the cap is for the kinds nobody foresaw. The oldest key
    is forgotten first, so a kind long unseen may be logged once more.
    """

    def __init__(self, logger: logging.Logger, cap: int = 256) -> None:
        self.logger, self.cap = logger, cap
        self._seen: OrderedDict[str, None] = OrderedDict()

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log `message` unless `key` was logged already; True when logged."""
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.cap:
            self._seen.popitem(last=False)
        self.logger.warning(message, *args)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class LoneSurrogate(ValueError):
    """A string in the request holds half a UTF-16 surrogate pair."""
