"""Compacting a shared store's log: the tree as a snapshot in Redis, the log trimmed behind it.

A snapshot is every row the log replicates (store/lmdb_backend.py
`replicated_state`), read in one LMDB read transaction of a replica, so it is
exactly the tree as of that replica's cursor: the log id S it has applied.
It lives in Redis as compressed chunks (`butter:{prefix}:snapshot:<token>:<n>`,
each at most CHUNK_BYTES of rows before compression: no value near Redis's
512 MB limit, none that blocks the server long) and one pointer naming them,
`butter:{prefix}:snapshot`, a JSON object {"id": S, "epoch", "key", "chunks",
"rows", "bytes", "created"}. The chunks are written first (with an expiry, so
a compaction that dies leaves nothing for good) and the pointer last, by a
Lua script that also makes them permanent and trims the log (`XTRIM MINID`,
every entry <= S): a reader sees the old snapshot or the new one, never half
of one, and a replica that follows the log never sees entries go that are not
in the snapshot the pointer names.

The script only publishes if the pointer is still the one read before the
compaction started and the tree's epoch is unchanged: of two compactions at
once, the second to finish is told so and its chunks expire.

A replica whose cursor is before the pointer's id (new, or offline while the
log was trimmed) loads the snapshot and follows the log from S
(store/shared_backend.py). The compaction itself reads from a scratch replica
of its own, which has never written anything: a proxy's replica may hold
writes still queued for the log (they would be in the snapshot and then
again in the log, and counters would count twice).
"""
from __future__ import annotations

import json
import secrets
import shutil
import struct
import tempfile
import time
import zlib
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TABLES = ("nodes", "children", "replies", "stats", "meta", "aux")
LOCAL_AUX = ("recent",)  # store/webview.RECENT_TABLE: each proxy's ring of its own requests, never shared
CHUNK_BYTES = 4 << 20
PENDING_TTL = 6 * 3600  # seconds a chunk written by a compaction that has not published yet may live
OLD_TTL = 600  # seconds a replaced snapshot stays readable for a replica loading it right now
_ROW = struct.Struct(">BII")

# KEYS: pointer, log, epoch, the new chunks. ARGV: the pointer expected (""
# for none), the new pointer, the epoch expected, the trim's MINID.
_PUBLISH = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return -1 end
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return -2 end
for i = 4, #KEYS do redis.call('PERSIST', KEYS[i]) end
redis.call('SET', KEYS[1], ARGV[2])
return redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
"""


class CompactionLost(RuntimeError):
    """Another compaction (or a reset of the tree) published first; this one changed nothing."""


# -- the chunk format -----------------------------------------------------------------
def encode_chunks(rows: Iterable[tuple[str, bytes, bytes]]) -> Iterator[tuple[bytes, int]]:
    """Rows -> (zlib-compressed chunk, rows in it); each row is table, key length, value length, key, value."""
    index = {table: i for i, table in enumerate(TABLES)}
    parts: list[bytes] = []
    size = count = 0
    for table, key, value in rows:
        parts += (_ROW.pack(index[table], len(key), len(value)), key, value)
        size += _ROW.size + len(key) + len(value)
        count += 1
        if size >= CHUNK_BYTES:
            yield zlib.compress(b"".join(parts), 1), count
            parts, size, count = [], 0, 0
    if count:
        yield zlib.compress(b"".join(parts), 1), count


def decode_chunk(blob: bytes) -> Iterator[tuple[str, bytes, bytes]]:
    raw = memoryview(zlib.decompress(blob))
    at = 0
    while at < len(raw):
        table, klen, vlen = _ROW.unpack_from(raw, at)
        at += _ROW.size
        key, value = bytes(raw[at:at + klen]), bytes(raw[at + klen:at + klen + vlen])
        at += klen + vlen
        yield TABLES[table], key, value


# -- reading a snapshot (every replica) ------------------------------------------------
def parse_pointer(raw: Any) -> dict | None:
    if not raw:
        return None
    try:
        pointer = json.loads(raw)
    except ValueError:
        return None
    return pointer if isinstance(pointer, dict) and {"id", "epoch", "key", "chunks"} <= pointer.keys() else None


def fetch_chunks(r: Any, pointer: dict) -> list[bytes] | None:
    """The snapshot's chunks, or None when one is gone (replaced a while ago: read the pointer again)."""
    keys = [chunk_key(pointer["key"], i) for i in range(pointer["chunks"])]
    chunks: list[bytes] = []
    for start in range(0, len(keys), 4):  # at most 16 MB a reply: well within a client's timeout
        got = r.mget(keys[start:start + 4])
        if any(blob is None for blob in got):
            return None
        chunks += got
    return chunks


def chunk_key(base: str, n: int) -> str:
    return f"{base}:{n}"


# -- writing a snapshot and trimming the log (`butter compact`) -------------------------
def compact(location: str, on_rows: Callable[[int], None] | None = None) -> dict:
    """Snapshot the shared tree at `location` into Redis and trim its log behind it.

    Reads through a scratch replica (a temporary folder, removed after);
    returns what was done. Raises CompactionLost if another compaction
    published first, SharedStoreError if the store cannot be used.
    """
    from .shared_backend import SharedBackend

    scratch = tempfile.mkdtemp(prefix="butter-compact-")
    try:
        backend = SharedBackend(_with_local(location, scratch), background=False)
        try:
            return snapshot_and_trim(backend, on_rows)
        finally:
            backend.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def snapshot_and_trim(backend: Any, on_rows: Callable[[int], None] | None = None) -> dict:
    """Publish a snapshot of `backend` (a SharedBackend with no write of its own) and trim the log to it."""
    r, where = backend._writer, backend.location
    pointer_key, stream = where.key("snapshot"), where.key("log")
    before = r.get(pointer_key)  # read before catching up: a compaction published since makes ours lose
    previous = parse_pointer(before)
    backend._catch_up_all(r)
    result = {"store": backend.display, "snapshot_id": None, "previous_snapshot_id": previous and previous["id"],
              "rows": 0, "chunks": 0, "bytes": 0, "trimmed": 0}
    base = f"{pointer_key}:{int(time.time())}-{secrets.token_hex(4)}"
    keys: list[str] = []
    with backend.replicated_state(LOCAL_AUX) as (cursor, rows):
        at = cursor.get("id", "0-0")
        if at == "0-0" or (previous and not _newer(at, previous["id"])):
            result.update(snapshot_id=previous and previous["id"], log_length=r.xlen(stream), compacted=False)
            return result  # nothing recorded since the last snapshot
        for blob, count in encode_chunks(rows):
            keys.append(chunk_key(base, len(keys)))
            r.set(keys[-1], blob, ex=PENDING_TTL)
            result["rows"] += count
            result["bytes"] += len(blob)
            if on_rows:
                on_rows(count)
    pointer = {"id": at, "epoch": cursor.get("epoch"), "key": base, "chunks": len(keys), "rows": result["rows"],
               "bytes": result["bytes"], "created": time.time()}
    trimmed = r.eval(_PUBLISH, 3 + len(keys), pointer_key, stream, where.key("epoch"), *keys,
                     before.decode() if before else "", json.dumps(pointer), cursor.get("epoch") or "",
                     _after(at))
    if trimmed < 0:
        raise CompactionLost("another compaction of this tree finished first (or the tree was reset); "
                             "nothing was changed")
    if previous:
        for n in range(previous["chunks"]):
            r.expire(chunk_key(previous["key"], n), OLD_TTL)
    result.update(snapshot_id=at, chunks=len(keys), trimmed=int(trimmed), log_length=r.xlen(stream), compacted=True)
    return result


def _after(entry_id: str) -> str:
    """The smallest stream id after `entry_id`: XTRIM MINID keeps what is at or after it."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _newer(a: str, b: str) -> bool:
    from .shared_backend import newer

    return newer(a, b)


def _with_local(location: str, local: str) -> str:
    """The same shared store's URL with another local replica folder."""
    parts = urlsplit(location)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "local"] + [("local", local)]
    return urlunsplit(parts._replace(query=urlencode(query)))
