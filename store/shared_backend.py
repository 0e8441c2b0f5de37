"""One tree for a fleet of proxies: a local LMDB replica kept in step through Redis.

Every proxy (and the CLI) reads and writes its own LMDB replica, so a hit
costs what it costs without a shared store. Each committed write is also
appended to one Redis stream (`butter:{prefix}:log`) as replayable
operations (`LmdbBackend.journal`); every replica reads the stream and
applies what other replicas wrote (`LmdbBackend.apply_ops`).

Why a log of operations rather than the tree's keys in Redis:
- node ids are content addresses, so replaying a path twice is harmless;
- counters (observations, hits, misses) travel as deltas and add up across
  proxies instead of overwriting each other;
- a proxy whose Redis is down keeps serving from its replica and queues its
  writes (bounded), and catches up from its cursor when Redis returns.

Staleness is bounded: a background reader applies new entries as they
arrive (blocking read, typically well under 10 ms on a LAN), and a lookup
that would miss first catches up once (`catch_up`), so a workflow recorded
through one proxy is served by every other on the next request after the
write reached Redis. `butter compact` snapshots the tree into Redis and trims
the stream behind it (store/shared_snapshot.py): a replica that is new, or
whose cursor is before the snapshot, loads the snapshot and follows the
stream from there. See docs/shared-store.md.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from typing import Any

from .lmdb_backend import _NOT_SHARED, LmdbBackend
from .shared_location import SharedLocation, parse
from .shared_snapshot import LOCAL_AUX, decode_chunk, fetch_chunks, parse_pointer

log = logging.getLogger("butter")

MAX_QUEUED = 50_000  # write batches kept while Redis is unreachable; beyond, the oldest are dropped (and counted)
READ_BATCH = 500
BLOCK_MS = 250
CATCH_UP_TIMEOUT = 0.25  # seconds a lookup may spend asking Redis for news before it misses
RETRY_SECONDS = 1.0
COMPACT_CHECK_SECONDS = 30.0  # with compact_after=N: how often a replica looks at the log's length
COMPACT_LOCK_SECONDS = 600  # one replica of the fleet compacts at a time; a dead one's turn expires


class SharedStoreError(RuntimeError):
    """The shared store cannot be used as asked (another tree's replica, another secret, refused access)."""


class SharedStoreUnreachable(SharedStoreError):
    """A replica that never synced and a Redis that does not answer (yet): worth trying again later.

    Only the network is at fault (refused, timed out, a name not resolving
    yet, Redis still loading its data); a refusal by Redis itself (a wrong
    password, no permission) is a plain SharedStoreError, a mistake to fix.
    """


def newer(a: str, b: str) -> bool:
    """Is stream id `a` after `b`? ("ms-seq")"""
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) > (int(bm), int(bseq or 0))


class SharedBackend(LmdbBackend):
    """An LmdbBackend whose writes reach, and who receives, every other replica's."""

    def __init__(self, location: str, *, background: bool = True):
        import redis  # only needed for a shared store

        self.location: SharedLocation = parse(location)
        self._url = location  # for an automatic compaction's scratch replica; never logged (it may hold the password)
        self._next_compact_check = 0.0
        # Held from a local write's commit until its operations are queued, and
        # across sending a batch: a snapshot loaded meanwhile (`_load_snapshot`)
        # sees every local write either queued or in the log.
        self._local_write_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        super().__init__(self.location.local)
        self.display = self.location.display
        self._redis_errors = (redis.RedisError, OSError)
        common = dict(username=self.location.username, password=self.location.password,
                      socket_connect_timeout=2.0, health_check_interval=0)
        url = self.location.client_url()
        self._writer = redis.Redis.from_url(url, socket_timeout=5.0, **common)
        self._reader = redis.Redis.from_url(url, socket_timeout=BLOCK_MS / 1000 + 5.0, **common)
        self._quick = redis.Redis.from_url(url, socket_timeout=CATCH_UP_TIMEOUT, **common)
        self._stream = self.location.key("log")
        self._snapshot_key = self.location.key("snapshot")
        self._queue: deque[str] = deque()
        self._queue_lock = threading.Condition()
        self._apply_lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0  # write batches lost to a full queue while Redis was down
        self._down_since: float | None = None
        cursor = self.shared_cursor()
        self.origin = cursor.get("origin") or secrets.token_hex(8)
        try:
            self._join(cursor)
        except SharedStoreError:
            super().close()
            raise
        except self._redis_errors as e:
            if not cursor.get("epoch"):
                super().close()
                if _transient(e):
                    raise SharedStoreUnreachable(f"cannot reach the shared store {self.display}: {e}") from e
                raise SharedStoreError(f"the shared store {self.display} refused this replica: {e}") from e
            # Synced before: serve from the replica and catch up when Redis returns.
            self._mark_down(e)
        self.journal = self._enqueue
        self._threads: list[threading.Thread] = []
        if background:
            for target, name in ((self._publish_loop, "butter-shared-publish"), (self._read_loop, "butter-shared-read")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    # -- joining the tree --------------------------------------------------------
    def _join(self, cursor: dict) -> None:
        """Agree with the shared store on the namespace secret and on which log this replica follows."""
        r = self._writer
        tree = self.display  # host, port, database and prefix: which tree, never who may read it
        if cursor.get("tree") not in (None, tree):
            raise SharedStoreError(f"the replica at {self.path} belongs to another tree ({cursor['tree']}) than "
                                   f"{tree}: give this store its own local= folder")
        r.set(self.location.key("epoch"), secrets.token_hex(8), nx=True)
        epoch = _text(r.get(self.location.key("epoch")))
        r.set(self.location.key("secret"), self.secret.hex(), nx=True)
        shared_secret = bytes.fromhex(_text(r.get(self.location.key("secret"))))
        if shared_secret != self.secret and not LmdbBackend.adopt_secret(self, shared_secret):
            raise SharedStoreError(f"the replica at {self.path} has recordings made under another namespace "
                                   f"secret than {tree}'s: move it aside (it is rebuilt from the shared store)")
        if cursor.get("epoch") not in (None, epoch):
            # The same tree, emptied or replaced: follow its new log from the start.
            log.warning("butter: the shared store %s was reset; following its new log from the start", tree)
            cursor = {}
        wanted = {**cursor, "tree": tree, "epoch": epoch, "origin": self.origin, "id": cursor.get("id", "0-0")}
        if wanted != cursor:
            self.set_shared_cursor(wanted)
        self._catch_up_all(r)

    def _catch_up_all(self, r: Any) -> int:
        """Apply everything the log holds past this replica's cursor (start-up, reconnect)."""
        total = 0
        while True:
            got = self._read_once(r, block=None)
            total += got
            if got < READ_BATCH:
                return total

    def adopt_secret(self, secret: bytes) -> bool:
        """`butter import --with-secret`: the fleet takes the secret, while the shared tree is empty."""
        if secret == self.secret:
            return True
        try:
            if (self._writer.xlen(self._stream) or self._writer.exists(self._snapshot_key)
                    or not LmdbBackend.adopt_secret(self, secret)):
                return False
            self._writer.set(self.location.key("secret"), secret.hex())
            return True
        except self._redis_errors:
            return False

    # -- reading other replicas' writes -------------------------------------------
    def _read_once(self, r: Any, block: int | None) -> int:
        """One XREAD from the cursor; returns how many entries it read (applied or own)."""
        with self._apply_lock:
            cursor = self.shared_cursor()
        last, own_until = cursor.get("id", "0-0"), cursor.get("own_until", "0-0")
        # The snapshot pointer is read after the entries: a trim comes after its
        # pointer, so entries read before a trim are whole, and a pointer past
        # the cursor says entries this replica needs may be gone.
        pipe = r.pipeline(transaction=False)
        pipe.xread({self._stream: last}, count=READ_BATCH, block=block)
        pipe.get(self._snapshot_key)
        reply, pointer = pipe.execute()
        pointer = parse_pointer(pointer)
        if pointer and pointer["epoch"] == cursor.get("epoch") and newer(pointer["id"], last):
            self._load_snapshot(pointer)
            return READ_BATCH + self._read_once(r, block=None)  # and the log from the snapshot on
        if not reply:
            return 0
        entries = []
        for entry_id, fields in reply[0][1]:
            entry_id = _text(entry_id)
            # Own entries are in the replica already, except those published
            # before it loaded a snapshot that does not hold them.
            own = _text(fields.get(b"o", b"")) == self.origin and newer(entry_id, own_until)
            entries.append((entry_id, [] if own else json.loads(fields[b"ops"])))
        with self._apply_lock:
            self.apply_ops(entries, newer)
        return len(entries)

    def _load_snapshot(self, pointer: dict) -> None:
        """Replace this replica's tree with the shared store's snapshot, keeping its own writes."""
        r = self._writer  # not the quick client of a lookup: a snapshot may take seconds to read
        started = time.monotonic()
        for _ in range(3):
            chunks = fetch_chunks(r, pointer)
            if chunks is not None:
                break
            pointer = parse_pointer(r.get(self._snapshot_key))  # replaced while read: the newer one
            if pointer is None:
                break
        if chunks is None or pointer is None:
            raise SharedStoreError(f"the snapshot of {self.display} could not be read whole")
        with self._apply_lock, self._local_write_lock, self._publish_lock:
            cursor = self.shared_cursor()
            if cursor.get("epoch") != pointer["epoch"] or not newer(pointer["id"], cursor.get("id", "0-0")):
                return  # another process sharing this replica loaded it first
            # Own writes already in the log after the snapshot are applied again
            # when read (`own_until`); those still queued are applied now.
            newest = r.xrevrange(self._stream, count=1)
            own_until = _text(newest[0][0]) if newest else pointer["id"]
            first = cursor.get("id", "0-0") == "0-0"
            cursor = {**cursor, "id": pointer["id"], "own_until": own_until}
            with self._queue_lock:
                unsent = [op for payload in self._queue for op in json.loads(payload)]
            loaded = self.replace_replicated(lambda: (row for blob in chunks for row in decode_chunk(blob)),
                                             cursor, LOCAL_AUX, unsent)
        why = "" if first else "it was compacted past this replica's place in its log; "
        (log.info if first else log.warning)(
            "butter: the shared store %s: %sloaded its snapshot at %s (%d rows, %.1f s)%s", self.display, why,
            pointer["id"], loaded, time.monotonic() - started, f", kept {len(unsent)} unsent write(s)" if unsent else "")

    def catch_up(self) -> bool:
        """Before a miss: has another proxy just written what this request needs?

        One short non-blocking read (skipped while Redis is known down), so a
        miss costs at most CATCH_UP_TIMEOUT more, and usually ~0.1 ms.
        """
        if self._down_since is not None or self._closed:
            return False
        try:
            before = self.shared_cursor().get("id")
            self._read_once(self._quick, block=None)
            return self.shared_cursor().get("id") != before
        except self._redis_errors as e:
            self._mark_down(e)
            return False

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._down_since is not None:
                    self._writer.ping()
                    self._join(self.shared_cursor())
                    self._mark_up()
                self._read_once(self._reader, block=BLOCK_MS)
                self._maybe_compact()
            except self._redis_errors as e:
                self._mark_down(e)
                self._stop.wait(RETRY_SECONDS)
            except Exception as e:  # a bad entry must not stop the replica for good
                log.error("butter: the shared store reader failed: %r", e)
                self._stop.wait(RETRY_SECONDS)

    def _maybe_compact(self) -> None:
        """`compact_after=N`: once the log holds N entries, one replica of the fleet compacts it (off this thread)."""
        limit = self.location.compact_after
        if not limit or time.monotonic() < self._next_compact_check:
            return
        self._next_compact_check = time.monotonic() + COMPACT_CHECK_SECONDS
        if self._writer.xlen(self._stream) < limit:
            return
        if self._writer.set(self.location.key("compacting"), self.origin, nx=True, ex=COMPACT_LOCK_SECONDS):
            threading.Thread(target=self._compact_now, name="butter-shared-compact", daemon=True).start()

    def _compact_now(self) -> None:
        from .shared_snapshot import compact

        try:
            done = compact(self._url)
            log.info("butter: compacted the shared store %s: snapshot at %s (%d rows), %d log entries trimmed",
                     self.display, done["snapshot_id"], done["rows"], done["trimmed"])
        except Exception as e:  # another compaction won, Redis went away: the next check tries again
            log.warning("butter: compacting the shared store %s failed: %s", self.display, e)
        finally:
            try:
                self._writer.delete(self.location.key("compacting"))
            except self._redis_errors:
                pass  # it expires

    # -- sending this replica's writes ---------------------------------------------
    def _enqueue(self, ops: list[list]) -> None:
        payload = json.dumps(ops, separators=(",", ":"), ensure_ascii=False)
        with self._queue_lock:
            if len(self._queue) >= MAX_QUEUED:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(payload)
            self._queue_lock.notify()
        if not self._threads:  # no background thread (tests, one-shot tools): send now
            self._flush_queue()

    def _publish_loop(self) -> None:
        while not self._stop.is_set() or self._queue:
            with self._queue_lock:
                if not self._queue:
                    self._queue_lock.wait(0.5)
                    continue
            if not self._flush_queue():
                if self._stop.is_set():
                    return  # closing with Redis down: close() says what stayed behind
                self._stop.wait(RETRY_SECONDS)

    def _flush_queue(self) -> bool:
        """Send queued batches, oldest first; False if Redis refused (they stay queued)."""
        while True:
            with self._queue_lock:
                batch = list(self._queue)[:100]
            if not batch:
                return True
            with self._publish_lock:
                try:
                    pipe = self._writer.pipeline(transaction=False)
                    for payload in batch:
                        pipe.xadd(self._stream, {"o": self.origin, "ops": payload})
                    pipe.execute()
                except self._redis_errors as e:
                    self._mark_down(e)
                    return False
                with self._queue_lock:
                    for _ in batch:
                        if self._queue:
                            self._queue.popleft()

    def _write(self, fn: Any, op: list | None = None, neutral: bool = False) -> Any:
        if op is _NOT_SHARED:  # replica bookkeeping, applied entries, a loaded snapshot
            return super()._write(fn, op, neutral)
        with self._local_write_lock:  # committed and queued as one step (see `_load_snapshot`)
            return super()._write(fn, op, neutral)

    def queued(self) -> int:
        return len(self._queue)

    # -- health ------------------------------------------------------------------
    def _mark_down(self, error: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("butter: shared store %s unreachable (%s); serving from the local replica, "
                        "writes queued until it returns", self.display, type(error).__name__)

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning("butter: shared store %s is back after %.0f s; %d write batch(es) to send", self.display,
                        time.monotonic() - self._down_since, len(self._queue))
            self._down_since = None

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def close(self) -> None:
        if self._closed:
            return
        self._stop.set()
        with self._queue_lock:
            self._queue_lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=BLOCK_MS / 1000 + 6)
        if self._queue and not self._flush_queue():
            log.error("butter: %d write batch(es) could not reach the shared store %s before closing; "
                      "they are in the local replica at %s", len(self._queue), self.display, self.path)
        for client in (self._writer, self._reader, self._quick):
            try:
                client.close()
            except Exception:
                pass
        super().close()


def _transient(error: BaseException) -> bool:
    """Would the same request succeed once the server is up? (not a wrong password or a missing permission)"""
    import redis

    if isinstance(error, redis.AuthenticationError):  # a ConnectionError to redis-py, a mistake to us
        return False
    return isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_backend(location: str | os.PathLike[str]) -> LmdbBackend:
    """An LMDB directory, or a `redis://` / `rediss://` shared store."""
    from .shared_location import is_shared

    if is_shared(location):
        return SharedBackend(str(location))
    return LmdbBackend(location)
