"""The only module that touches LMDB.

Layout (named databases, fixed-width binary keys):

    nodes     node_id(16)                 -> JSON NodeRecord
    children  parent_id(16) + child_id(16) -> b"m" (message) | b"t" (template)
    replies   node_id(16) + reply_id(16)   -> JSON StoredReply (without ids)
    stats     node_id(16)                 -> JSON {"hits": n, "last_hit": ts}
    meta      name                        -> value (schema version, namespace secret,
                                             template generation: see bump_templates)
    aux       table + 0x00 + key          -> JSON (small side tables: response-id maps,
                                             induction bookkeeping, ...; see put_aux)

Rules from measuring py-lmdb 3.0 (shared/research): one Environment per path
per process; write transactions are short and begin and commit on one
thread; no read transaction is held across an await; the map grows by itself
on MapFullError under a file lock, and readers adopt a size another process
chose on MapResizedError. Inside one process a resize must see no other
transaction open (LMDB remaps the file under them): every transaction passes
a shared gate that a resize takes alone (`_Gate`). A data.mdb that is not
whole is refused before it is mapped (store/db_check.py): LMDB would SIGBUS.
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import lmdb

from .db_check import DatabaseDamaged, check_data_file
from .model import NodeRecord, StoredReply
from .private_files import FILE_MODE, open_private, private_dir, private_files

# 2: reply ids leave bookkeeping out (store/agreement.py) and template
# changes bump TEMPLATE_GENERATION. A schema-1 database is read as it is (its
# replies keep their old ids: a new recording of the same answer starts a
# second count) and marked 2 on open, so an older butter, which would neither
# bump the generation nor agree on reply ids, refuses it instead of serving
# from stale template lists.
SCHEMA_VERSION = 2
# Bumped in the same write transaction as every change to which template
# children a node has and to which children a template node has, and to any
# template's trust (store/trust_ledger.py), so a process may keep those in
# memory and check one meta key per lookup to know they are still what the
# database says.
TEMPLATE_GENERATION = b"template-generation"
# Every root's id under this meta prefix (written with the root, deleted with
# it), so listing the workflows never scans every node; ROOTS_INDEXED says the
# index is complete (a database from before it is indexed on first listing).
ROOTS = b"root\x00"
ROOTS_INDEXED = b"roots-indexed"
INITIAL_MAP_SIZE = 256 << 20  # grows by doubling; most trees stay far below
# Tests and bench/harden.py start from a tiny map to exercise growth.
MAP_SIZE_ENV = "BUTTER_INITIAL_MAP_SIZE"
RESIZE_WAIT_SECONDS = 30.0
ID = 16

T = TypeVar("T")


class SchemaTooNew(RuntimeError):
    """The database was written by a newer butter; refuse rather than corrupt it."""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(raw: bytes | memoryview) -> Any:
    return json.loads(bytes(raw))


class _NeutralCommits:
    """Ids of this process's recent commits that no lookup reads, bounded.

    Written by the writer thread, read on the event loop: a set's add and
    membership test are each atomic, and a missing id only means "changed".
    """

    KEEP = 1024
    SPAN = 64  # a longer run of commits is not searched: treated as a change

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._order: collections.deque[int] = collections.deque()

    def note(self, commit: int) -> None:
        self._ids.add(commit)
        self._order.append(commit)
        while len(self._order) > self.KEEP:
            self._ids.discard(self._order.popleft())

    def cover(self, since: int, now: int) -> bool:
        if now == since:
            return True
        if not 0 < now - since <= self.SPAN:
            return False
        ids = self._ids
        return all(commit in ids for commit in range(since + 1, now + 1))


class _Gate:
    """Every transaction of this process holds the gate shared; a map resize
    (`set_mapsize`) holds it alone, after the open transactions have ended.

    LMDB remaps the file on a resize: a transaction open in another thread
    (the writer, induction, a lookup) would fail with EINVAL or read freed
    memory. Re-entrant per thread for the shared side; a resize asked for by
    a thread that itself holds a transaction is refused (it would wait for
    itself) rather than deadlock.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._resizing = False
        self._mine = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        mine = getattr(self._mine, "n", 0)
        if mine == 0:
            with self._cond:
                while self._resizing:
                    self._cond.wait()
                self._active += 1
        self._mine.n = mine + 1
        try:
            yield
        finally:
            self._mine.n = mine
            if mine == 0:
                with self._cond:
                    self._active -= 1
                    if self._active == 0:
                        self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        if getattr(self._mine, "n", 0):
            raise RuntimeError("a map resize was needed inside an open transaction of the same thread")
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            # Transactions are short; one left open for long (an abandoned
            # iterator) must fail this write, not hang every thread.
            if not self._cond.wait_for(lambda: not self._active, timeout=RESIZE_WAIT_SECONDS):
                self._resizing = False
                self._cond.notify_all()
                raise RuntimeError(f"a map resize waited {RESIZE_WAIT_SECONDS:.0f} s for open transactions")
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


_open_envs: dict[str, tuple[lmdb.Environment, int, _Gate]] = {}
_open_dbs: dict[str, tuple[lmdb.Environment, tuple]] = {}  # see LmdbBackend._named_dbs
_open_lock = threading.Lock()


def _acquire_env(path: str, map_size: int | None = None) -> tuple[lmdb.Environment, _Gate]:
    # py-lmdb refuses to open one environment twice in a process; the addon,
    # a reloaded addon and in-process tests therefore share one handle.
    with _open_lock:
        if path in _open_envs:
            env, refs, gate = _open_envs[path]
            _open_envs[path] = (env, refs + 1, gate)
            return env, gate
        private_dir(path)  # every prompt and the namespace secret: owner only (store/private_files.py)
        check_data_file(path, _read_in_child)  # DatabaseDamaged: mapping a damaged file could SIGBUS
        if map_size is None:
            map_size = int(os.environ.get(MAP_SIZE_ENV) or INITIAL_MAP_SIZE)
        env = lmdb.open(path, map_size=map_size, max_dbs=8, subdir=True, max_readers=256, mode=FILE_MODE)
        private_files(path)  # also the files an older butter (or another tool) created world-readable
        env.reader_check()
        gate = _Gate()
        _open_envs[path] = (env, 1, gate)
        return env, gate


def _release_env(path: str) -> None:
    with _open_lock:
        env, refs, gate = _open_envs[path]
        if refs > 1:
            _open_envs[path] = (env, refs - 1, gate)
            return
        del _open_envs[path]
        _open_dbs.pop(path, None)
        env.close()


def probe_in_subprocess(path: str, timeout: float = 60.0) -> str | None:
    """Read every page of the database in a child process; what went wrong, or None.

    Raises DatabaseDamaged when the header alone shows it (store/db_check.py).

    Damage that db_check cannot see from the header (a garbled branch page)
    makes LMDB read outside the file: the child dies of SIGBUS or SIGSEGV
    instead of the proxy. Slow on a big tree (it reads it all), so it runs
    once, when the proxy opens the database. A child that is merely slow
    (timeout) is not damage.
    """
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return None
    read: list[str | None] = []

    def read_once(folder: str) -> str | None:
        read.append(_read_in_child(folder, timeout))
        return read[-1]

    check_data_file(path, read_once)  # the header first: cheap, and it names what is wrong
    return read[0] if read else _read_in_child(path, timeout)


def _read_in_child(path: str, timeout: float = 60.0) -> str | None:
    """`_read_every_page` in a child process: what went wrong, or None.

    A file read whole once is not read again while it is unchanged (the
    proxy's probe, then its open, would otherwise read a big tree twice).
    """
    data = os.path.join(path, "data.mdb")
    try:
        stat = os.stat(data)
        version = (os.path.realpath(data), stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = None
    if version is not None and version in _READ_WHOLE:
        return None
    failure, finished = _read_in_child_now(path, timeout)
    if finished and failure is None and version is not None:
        _READ_WHOLE.add(version)
    return failure


_READ_WHOLE: set[tuple[str, int, int]] = set()  # (path, size, mtime) of data files a child read without a fault


def _read_in_child_now(path: str, timeout: float) -> tuple[str | None, bool]:
    """(what went wrong or None, whether the child finished: a slow one is not damage, nor proof)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from store.lmdb_backend import _read_every_page; _read_every_page(sys.argv[2])")
    try:
        done = subprocess.run([sys.executable, "-c", code, root, path], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, False
    if done.returncode == 0:
        return None, True
    if done.returncode < 0:
        return f"reading it killed a probe process with signal {-done.returncode}", True
    last = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
    return f"reading it failed: {last[:200]}", True


def _read_every_page(path: str) -> None:
    """Every key and value of every named database, read once (probe_in_subprocess)."""
    env = lmdb.open(path, readonly=True, max_dbs=8, subdir=True, max_readers=256)
    with env.begin() as txn:
        names = [bytes(k) for k in txn.cursor().iternext(values=False)]
    for name in names:
        db = env.open_db(name, create=False)
        with env.begin(db=db) as txn:
            for _key, value in txn.cursor():
                len(value)
    env.close()


class LmdbBackend:
    def __init__(self, path: str | os.PathLike[str], *, map_size: int | None = None):
        self.path = str(Path(path).expanduser().resolve())
        self.env, self._gate = _acquire_env(self.path, map_size)
        self._closed = False
        # A shared store (store/shared_backend.py) sets this to hear of every
        # committed write as replayable operations (see `_write` and `apply_ops`).
        self.journal: Callable[[list[list]], None] | None = None
        self._neutral_commits = _NeutralCommits()
        for attempt in range(8):
            try:
                (self.nodes, self.children, self.replies_db, self.stats_db, self.meta,
                 self.aux) = self._named_dbs()
                self._init_meta()
                break
            except (lmdb.MapResizedError, lmdb.MapFullError):
                # Another process grew (or is growing) the map while this one
                # opened: adopt its size, grow if full, and open again.
                if attempt == 7:
                    raise
                with self._gate.alone():
                    self.env.set_mapsize(0)

    def _named_dbs(self) -> tuple:
        """The named databases' handles: opened once per environment, then shared.

        py-lmdb's open_db takes the write lock while holding the GIL; a
        second handle opened while another thread of this process is inside
        a write transaction (a shared store's reader, the writer thread)
        would wait for that lock while that thread waits for the GIL.
        """
        with _open_lock:
            found = _open_dbs.get(self.path)
            if found is None or found[0] is not self.env:
                found = (self.env, tuple(self.env.open_db(name) for name in
                                         (b"nodes", b"children", b"replies", b"stats", b"meta", b"aux")))
                _open_dbs[self.path] = found
            return found[1]

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_env(self.path)

    def _init_meta(self) -> None:
        def init(txn: lmdb.Transaction) -> None:
            txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self.meta, overwrite=False)
            if txn.stat(self.nodes)["entries"] == 0:
                txn.put(ROOTS_INDEXED, b"1", db=self.meta, overwrite=False)  # empty: the index is complete
            # The namespace secret lives in the database, never beside it in
            # config: whoever can read the tree can already read its replies.
            txn.put(b"secret", secrets.token_bytes(32), db=self.meta, overwrite=False)

        with self.env.begin(db=self.meta) as txn:
            schema = txn.get(b"schema")
            secret = txn.get(b"secret")
        if schema is None or secret is None:
            self._write(init)
            with self.env.begin(db=self.meta) as txn:
                schema = txn.get(b"schema")
                secret = txn.get(b"secret")
        if int(schema) > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema {int(schema)}; this butter reads {SCHEMA_VERSION}. Upgrade butter."
            )
        if int(schema) < SCHEMA_VERSION:
            self._write(lambda txn: txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self.meta))
        self.secret: bytes = bytes(secret)

    # -- transactions ----------------------------------------------------
    @contextmanager
    def _read(self, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        for attempt in range(8):
            with self._gate.shared():
                try:
                    txn = self.env.begin(buffers=buffers)
                except lmdb.MapResizedError:
                    if attempt == 7:
                        raise
                else:
                    try:
                        yield txn
                    finally:
                        txn.abort()
                    return
            self._adopt_size()  # another process grew the map

    def _write(self, fn: Callable[[lmdb.Transaction], T], op: list | None = None, neutral: bool = False) -> T:
        """Run `fn` in one write transaction, growing the map when it is full.

        With a journal, the committed write is reported as operations another
        replica can replay: `op` when the caller names a logical one (counters
        that must add up across replicas), else every put and delete `fn` made.
        `neutral`: the write changes nothing a lookup reads (see lookups_unchanged).
        """
        for _ in range(32):
            effects: list[list] = []
            try:
                with self._gate.shared(), self.env.begin(write=True) as txn:
                    commit = txn.id()  # the id this transaction commits as
                    if self.journal is None:
                        result = fn(txn)
                    else:
                        result = fn(txn if op is not None else _JournaledTxn(txn, self._db_names(), effects))
                break
            except lmdb.MapResizedError:
                self._adopt_size()
            except lmdb.MapFullError:
                self._grow()
        else:
            raise RuntimeError(f"could not complete a write to {self.path}")
        if neutral:
            self._neutral_commits.note(commit)
        if self.journal is None or op is _NOT_SHARED:
            return result
        ops = [op] if op is not None else ([["raw", effects]] if effects else [])
        if ops:
            self.journal(ops)
        return result

    def _db_names(self) -> dict[Any, str]:
        return {self.nodes: "nodes", self.children: "children", self.replies_db: "replies",
                self.stats_db: "stats", self.meta: "meta", self.aux: "aux"}

    # -- replaying another replica's writes (store/shared_backend.py) -------------
    def catch_up(self) -> bool:
        """Read other replicas' news before a miss (a shared store); a plain LMDB has none."""
        return False

    def shared_cursor(self) -> dict:
        """Where this replica is in the shared log: {"id", "epoch", "origin"}."""
        with self._read() as txn:
            raw = txn.get(b"shared-cursor", db=self.meta)
        return {} if raw is None else _loads(raw)

    def set_shared_cursor(self, cursor: dict) -> None:
        self._write(lambda txn: txn.put(b"shared-cursor", _dumps(cursor), db=self.meta), op=_NOT_SHARED)

    def apply_ops(self, entries: list[tuple[str, list[list]]], newer: Callable[[str, str], bool]) -> int:
        """Replay other replicas' operations, in one write transaction with the cursor.

        `entries` are (log id, ops) in log order; an entry at or before the
        cursor (read inside the transaction, so two processes sharing this
        replica never both apply it) is skipped. Returns how many were applied.
        """
        def write(txn: lmdb.Transaction) -> int:
            raw = txn.get(b"shared-cursor", db=self.meta)
            cursor = {} if raw is None else _loads(raw)
            applied, last, templates = 0, cursor.get("id", "0-0"), False
            for entry_id, ops in entries:
                if not newer(entry_id, last):
                    continue
                for op in ops:
                    templates |= self._apply_op(txn, op)
                applied, last = applied + 1, entry_id
            if applied:
                cursor["id"] = last
                txn.put(b"shared-cursor", _dumps(cursor), db=self.meta)
            if templates:
                _bump_template_generation(txn, self.meta)
            return applied

        return self._write(write, op=_NOT_SHARED)

    @contextmanager
    def replicated_state(self, local_aux: tuple[str, ...] = ()) -> Iterator[tuple[dict, Iterator[tuple[str, bytes, bytes]]]]:
        """One read transaction: the shared cursor and every row the shared log replicates.

        Rows are (table, key, value as stored); the replica's own meta and the
        side tables in `local_aux` (rings of its own traffic) are left out.
        Read in one transaction, the rows are exactly the state as of the
        cursor's log id (store/shared_snapshot.py).
        """
        with self._read() as txn:
            raw = txn.get(b"shared-cursor", db=self.meta)
            yield ({} if raw is None else _loads(raw)), self._replicated_rows(txn, local_aux)

    def _replicated_rows(self, txn: lmdb.Transaction, local_aux: tuple[str, ...]) -> Iterator[tuple[str, bytes, bytes]]:
        for db, table in self._db_names().items():
            for key, value in txn.cursor(db=db):
                if self._replicated(table, bytes(key), local_aux):
                    yield table, bytes(key), bytes(value)

    @staticmethod
    def _replicated(table: str, key: bytes, local_aux: tuple[str, ...]) -> bool:
        if table == "meta":
            return key not in _REPLICA_OWN_META
        return table != "aux" or not any(key.startswith(_aux_key(t, b"")) for t in local_aux)

    def replace_replicated(self, rows: Callable[[], Iterable[tuple[str, bytes, bytes]]], cursor: dict,
                           local_aux: tuple[str, ...] = (), then: list[list] = ()) -> int:
        """Load a shared store's snapshot: every replicated row replaced, in one write transaction.

        The replica's own meta and `local_aux` side tables stay; `then` are
        operations to apply on top (this replica's writes not yet in the log);
        the cursor is stored with them. Returns how many rows were loaded.
        """
        def write(txn: lmdb.Transaction) -> int:
            names = {table: db for db, table in self._db_names().items()}
            for table, db in names.items():
                if table not in ("meta", "aux"):
                    txn.drop(db, delete=False)  # every row replicated: emptied at once
                    continue
                cur = txn.cursor(db=db)
                more = cur.first()
                while more and cur.key():  # an empty key: past the last row
                    if self._replicated(table, bytes(cur.key()), local_aux):
                        more = cur.delete()
                    else:
                        more = cur.next()
            loaded = 0
            for table, key, value in rows():
                txn.put(key, value, db=names[table])
                loaded += 1
            for op in then:
                self._apply_op(txn, op)
            txn.put(b"shared-cursor", _dumps(cursor), db=self.meta)
            _bump_template_generation(txn, self.meta)
            return loaded

        return self._write(write, op=_NOT_SHARED)

    def _apply_op(self, txn: lmdb.Transaction, op: list) -> bool:
        """One operation inside `apply_ops`; True when template lists may have changed."""
        kind = op[0]
        if kind == "record":
            nodes, reply_node, rid, reply, streamed, refresh = op[1:]
            rows = [(bytes.fromhex(n), bytes.fromhex(p) if p else None, d, k, c, ns) for n, p, d, k, c, ns in nodes]
            self._record_in(txn, rows, bytes.fromhex(reply_node), bytes.fromhex(rid), reply, streamed, refresh)
            return False  # _record_in bumps the generation itself when it adds template edges
        if kind == "hits":
            self._add_hits_in(txn, {bytes.fromhex(k): n for k, n in op[1].items()})
            return False
        if kind == "aux_counts":
            self._add_aux_counts_in(txn, op[1], {bytes.fromhex(k): n for k, n in op[2].items()})
            return False
        if kind == "raw":
            names = {v: k for k, v in self._db_names().items()}
            templates = False
            for action, table, key, value in op[1]:
                db, key = names[table], bytes.fromhex(key)
                if table == "meta" and key in _REPLICA_OWN_META:
                    # The writer bumped its template generation: whatever else this
                    # write changed (templates, their trust), this replica's
                    # in-memory views of it must be read again too.
                    templates |= key == TEMPLATE_GENERATION
                    continue
                if action == "put":
                    txn.put(key, bytes.fromhex(value), db=db)
                else:
                    txn.delete(key, db=db)
                templates |= table in ("children", "nodes")
            return templates
        raise ValueError(f"unknown shared operation {kind!r}")

    def _adopt_size(self) -> None:
        with self._gate.alone():
            self.env.set_mapsize(0)

    def _grow(self) -> None:
        # A file lock keeps two processes from resizing at once; the size is
        # re-read under it so a resize another process just did is not doubled.
        # The gate keeps this process's other threads out of LMDB meanwhile;
        # one that grew it a moment ago (they all met a full map) is not doubled
        # again: the first write retries and only grows if still full.
        seen = self.env.info()["map_size"]
        with self._gate.alone(), open(open_private(os.path.join(self.path, "resize.lock"), os.O_WRONLY | os.O_CREAT), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.env.set_mapsize(0)
            size = self.env.info()["map_size"]
            if size <= seen:
                self.env.set_mapsize(size * 2)

    def clear_stale_readers(self) -> int:
        """Free reader slots left by processes that died in a read (kill -9).

        A stale slot pins the oldest snapshot: LMDB cannot reuse pages freed
        since, and the file grows with every rewrite. Returns slots freed.
        """
        with self._gate.shared():
            return self.env.reader_check()

    # -- reads (the TreeReader protocol) ---------------------------------
    @contextmanager
    def snapshot(self) -> Iterator["Snapshot"]:
        """One read transaction for a whole lookup walk: a consistent view, cheap."""
        with self._read() as txn:
            snap = Snapshot(self, txn)
            try:
                yield snap
            finally:
                # An aborted read transaction keeps its reader slot until the
                # object is freed; a snapshot caught in a reference cycle (the
                # recursive walk in tree.lookup) would otherwise hold a slot
                # until the next full GC, and 256 such fill the reader table.
                snap._txn = None

    def has_node(self, node_id: bytes) -> bool:
        with self.snapshot() as snap:
            return snap.has_node(node_id)

    def node(self, node_id: bytes) -> NodeRecord | None:
        with self.snapshot() as snap:
            return snap.node(node_id)

    def replies(self, node_id: bytes) -> list[StoredReply]:
        with self.snapshot() as snap:
            return snap.replies(node_id)

    def children_of(self, node_id: bytes) -> list[tuple[bytes, str]]:
        with self.snapshot() as snap:
            return snap.children_of(node_id)

    def template_children(self, node_id: bytes) -> list[NodeRecord]:
        with self.snapshot() as snap:
            return snap.template_children(node_id)

    def iter_nodes(self) -> Iterator[NodeRecord]:
        with self._read() as txn:
            for key, value in txn.cursor(db=self.nodes):
                yield _node_from(bytes(key), _loads(value))

    def iter_replies(self) -> Iterator[tuple[bytes, StoredReply]]:
        with self._read() as txn:
            for key, value in txn.cursor(db=self.replies_db):
                yield bytes(key[:ID]), _reply_from(bytes(key[ID:]), _loads(value))

    def stats(self, node_id: bytes) -> dict:
        with self._read() as txn:
            raw = txn.get(node_id, db=self.stats_db)
        return {} if raw is None else _loads(raw)

    def counts(self) -> dict[str, int]:
        with self._read() as txn:
            return {
                "nodes": txn.stat(self.nodes)["entries"],
                "replies": txn.stat(self.replies_db)["entries"],
            }

    # -- writes ------------------------------------------------------------
    def record(
        self,
        nodes: list[tuple[bytes, bytes | None, int, str, dict, str]],
        reply_node: bytes,
        reply_id: bytes,
        reply: dict,
        streamed: bool,
        refresh: bool,
    ) -> None:
        """Write a path (idempotently) and one observation of its reply.

        `nodes` are (id, parent, depth, kind, content, namespace). With
        `refresh` the node's other replies are dropped, so record mode leaves
        exactly what the provider said last.
        """
        op = None
        if self.journal is not None:
            op = ["record", [[n.hex(), p.hex() if p else None, d, k, c, ns] for n, p, d, k, c, ns in nodes],
                  reply_node.hex(), reply_id.hex(), reply, streamed, refresh]
        self._write(lambda txn: self._record_in(txn, nodes, reply_node, reply_id, reply, streamed, refresh), op=op)

    def _record_in(self, txn: lmdb.Transaction, nodes: list, reply_node: bytes, reply_id: bytes, reply: dict,
                   streamed: bool, refresh: bool) -> None:
        now = time.time()
        kinds: dict[bytes, str] = {}
        templates_changed = False
        for node_id, parent, depth, kind, content, namespace in nodes:
            kinds[node_id] = kind
            record = {"parent": parent.hex() if parent else None, "depth": depth, "kind": kind,
                      "content": content, "created": now}
            if namespace:
                record["namespace"] = namespace
            inserted = txn.put(node_id, _dumps(record), db=self.nodes, overwrite=False)
            if inserted and parent is None:
                txn.put(ROOTS + node_id, b"", db=self.meta)
            if inserted and parent:
                txn.put(parent + node_id, b"t" if kind == "template" else b"m", db=self.children)
                # A parent not in this path may be a template: count it as one.
                if kind == "template" or kinds.get(parent, "template") == "template":
                    templates_changed = True
        if templates_changed:
            _bump_template_generation(txn, self.meta)
        key = reply_node + reply_id
        if refresh:
            for old in list(_replies_in(txn, self.replies_db, reply_node)):
                if old.reply_id != reply_id:
                    txn.delete(reply_node + old.reply_id, db=self.replies_db)
        raw = txn.get(key, db=self.replies_db)
        if raw is None:
            entry = {"reply": reply, "count": 1, "first_seen": now, "last_seen": now,
                     "streamed": streamed, "score": 0, "bad": False}
        else:
            entry = _loads(raw)
            entry["count"] += 1
            entry["last_seen"] = now
            if refresh:  # the same answer again: keep the provider's latest copy of it
                entry["bad"] = False
                entry["reply"], entry["streamed"] = reply, streamed
        txn.put(key, _dumps(entry), db=self.replies_db)

    # -- side tables -------------------------------------------------------
    # Features that need a little state of their own (Responses API id maps,
    # induction bookkeeping) keep it here instead of adding a named database
    # each. Keys are `table\x00key`; values JSON.
    def put_aux(self, table: str, key: bytes, value: Any) -> None:
        self._write(lambda txn: txn.put(_aux_key(table, key), _dumps(value), db=self.aux))

    def put_aux_many(self, table: str, items: list[tuple[bytes, Any]]) -> None:
        def write(txn: lmdb.Transaction) -> None:
            for key, value in items:
                txn.put(_aux_key(table, key), _dumps(value), db=self.aux)
        self._write(write)

    def get_aux(self, table: str, key: bytes) -> Any | None:
        with self._read() as txn:
            raw = txn.get(_aux_key(table, key), db=self.aux)
        return None if raw is None else _loads(raw)

    def update_aux(self, table: str, key: bytes, change: Callable[[Any | None], Any],
                   bump_templates: bool = False) -> Any:
        """Read one side-table value, let `change` (pure) give the new one, write it,
        in one write transaction: two processes updating one key never lose an
        update (template trust, store/trust_ledger.py). Returns the new value.
        `bump_templates`: the value is read on the hit path and kept in memory
        per template generation (a template's trust), so bump it too."""
        def write(txn: lmdb.Transaction) -> Any:
            raw = txn.get(_aux_key(table, key), db=self.aux)
            value = change(None if raw is None else _loads(raw))
            txn.put(_aux_key(table, key), _dumps(value), db=self.aux)
            if bump_templates:
                _bump_template_generation(txn, self.meta)
            return value
        return self._write(write)

    def delete_aux(self, table: str, key: bytes) -> bool:
        return self._write(lambda txn: txn.delete(_aux_key(table, key), db=self.aux))

    def iter_aux(self, table: str) -> Iterator[tuple[bytes, Any]]:
        prefix = table.encode() + b"\x00"
        with self._read() as txn:
            cur = txn.cursor(db=self.aux)
            if cur.set_range(prefix):
                for key, value in cur:
                    if not bytes(key).startswith(prefix):
                        break
                    yield bytes(key[len(prefix):]), _loads(value)

    def add_hits(self, hits: dict[bytes, int]) -> None:
        """Fold in-memory hit counters into the stats table in one transaction."""
        if hits:
            op = ["hits", {k.hex(): n for k, n in hits.items()}] if self.journal is not None else None
            self._write(lambda txn: self._add_hits_in(txn, hits), op=op, neutral=True)

    def _add_hits_in(self, txn: lmdb.Transaction, hits: dict[bytes, int]) -> None:
        now = time.time()
        for node_id, n in hits.items():
            if txn.get(node_id, db=self.nodes) is None:
                continue  # forgotten or pruned since it was served: no orphan stats
            raw = txn.get(node_id, db=self.stats_db)
            entry = {"hits": 0} if raw is None else _loads(raw)
            entry["hits"] = entry.get("hits", 0) + n
            entry["last_hit"] = now
            txn.put(node_id, _dumps(entry), db=self.stats_db)

    # -- steering: feedback and deletion (store/admin.py decides, this applies) --
    def rescore(
        self, node_id: bytes, decide: Callable[[list[StoredReply]], dict[bytes, tuple[int, bool]]]
    ) -> list[StoredReply]:
        """Read a node's replies, let `decide` (pure) say each one's new
        (score, bad), write them, in one write transaction: concurrent votes
        from proxies and the CLI never overwrite each other. Returns the
        node's replies as they now are."""
        def write(txn: lmdb.Transaction) -> list[StoredReply]:
            for rid, (score, bad) in decide(list(_replies_in(txn, self.replies_db, node_id))).items():
                raw = txn.get(node_id + rid, db=self.replies_db)
                if raw is not None:
                    entry = _loads(raw)
                    entry["score"], entry["bad"] = score, bad
                    txn.put(node_id + rid, _dumps(entry), db=self.replies_db)
            return list(_replies_in(txn, self.replies_db, node_id))

        return self._write(write)

    def node_usage(self) -> list[tuple[bytes, bytes | None, int, str, str, float]]:
        """(id, parent, depth, kind, namespace, last used) for every node, from
        one read transaction. Last used is the latest of its creation, a reply
        recorded at it and a hit served from it."""
        with self._read() as txn:
            last: dict[bytes, float] = {}
            for key, value in txn.cursor(db=self.replies_db):
                node_id = bytes(key[:ID])
                last[node_id] = max(last.get(node_id, 0.0), _loads(value).get("last_seen", 0.0))
            for key, value in txn.cursor(db=self.stats_db):
                node_id = bytes(key)
                last[node_id] = max(last.get(node_id, 0.0), _loads(value).get("last_hit", 0.0))
            rows = []
            for key, value in txn.cursor(db=self.nodes):
                node_id, raw = bytes(key), _loads(value)
                parent = bytes.fromhex(raw["parent"]) if raw.get("parent") else None
                rows.append((node_id, parent, raw.get("depth", 0), raw.get("kind", ""), raw.get("namespace", ""),
                             max(raw.get("created", 0.0), last.get(node_id, 0.0))))
            return rows

    def delete_subtrees(self, tops: list[bytes], unused_since: float | None = None,
                        node_tables: Iterable[str] = ()) -> tuple[int, int, int]:
        """Delete each top node with everything below it: nodes, edges, replies,
        stats, and the rows of the side tables `node_tables` whose keys start
        with a deleted node's id (a template's trust). One write transaction, so
        a proxy recording at the same moment sees the subtree whole or gone,
        never half. With `unused_since`, a subtree used at or after that time
        (re-checked inside the transaction) is kept. Returns (tops, nodes,
        replies) deleted."""
        prefixes = [_aux_key(table, b"") for table in node_tables]

        def write(txn: lmdb.Transaction) -> tuple[int, int, int]:
            deleted = nodes = replies = 0
            for top in tops:
                raw = txn.get(top, db=self.nodes)
                if raw is None:
                    continue  # gone already (inside an earlier top, or another process)
                ids = _subtree_ids(txn, self.children, top)
                if unused_since is not None and _last_used(txn, self, ids) >= unused_since:
                    continue
                parent = _loads(raw).get("parent")
                if parent:
                    txn.delete(bytes.fromhex(parent) + top, db=self.children)
                else:
                    txn.delete(ROOTS + top, db=self.meta)
                for node_id in ids:
                    txn.delete(node_id, db=self.nodes)
                    txn.delete(node_id, db=self.stats_db)
                    _delete_prefix(txn, self.children, node_id)
                    replies += _delete_prefix(txn, self.replies_db, node_id)
                    for prefix in prefixes:
                        _delete_prefix(txn, self.aux, prefix + node_id)
                nodes += len(ids)
                deleted += 1
            if deleted:
                _bump_template_generation(txn, self.meta)  # templates may be among them
            return deleted, nodes, replies

        return self._write(write)

    def delete_orphaned_aux(self, table: str) -> int:
        """Delete the rows of a side table keyed by node id (its first ID bytes)
        whose node is gone: left by a deletion from before `node_tables`.
        One write transaction, so a node recorded meanwhile keeps its rows."""
        prefix = _aux_key(table, b"")

        def write(txn: lmdb.Transaction) -> int:
            cur, doomed = txn.cursor(db=self.aux), []
            if cur.set_range(prefix):
                for key in cur.iternext(keys=True, values=False):
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    if txn.get(key[len(prefix):len(prefix) + ID], db=self.nodes) is None:
                        doomed.append(key)
            for key in doomed:
                txn.delete(key, db=self.aux)
            return len(doomed)

        return self._write(write)

    def delete_aux_prefix(self, prefix: bytes) -> int:
        """Delete side-table rows, in every table, whose key starts with
        `prefix` (a namespace's rows: their keys start `namespace\\x00`)."""
        def write(txn: lmdb.Transaction) -> int:
            doomed = [bytes(k) for k in txn.cursor(db=self.aux).iternext(keys=True, values=False)
                      if bytes(k).partition(b"\x00")[2].startswith(prefix)]
            for key in doomed:
                txn.delete(key, db=self.aux)
            return len(doomed)

        return self._write(write)

    # -- whole-database reads and bulk writes (CLI: inspect, export, import) --
    def node_ids_with_prefix(self, hex_prefix: str, limit: int = 2) -> list[bytes]:
        """Node ids whose hex starts with `hex_prefix` (a range scan, ids are sorted)."""
        even = hex_prefix[: len(hex_prefix) - len(hex_prefix) % 2]
        start = bytes.fromhex(even)
        out: list[bytes] = []
        with self._read() as txn:
            cur = txn.cursor(db=self.nodes)
            if cur.set_range(start):
                for key in cur.iternext(keys=True, values=False):
                    key = bytes(key)
                    if not key.startswith(start):
                        break
                    if key.hex().startswith(hex_prefix):
                        out.append(key)
                        if len(out) >= limit:
                            break
        return out

    def iter_raw(self, table: str) -> Iterator[tuple[bytes, Any]]:
        """Every row of `nodes`, `replies` or `stats` as stored (key, JSON value).

        Raw rather than as dataclasses so an export keeps fields this version
        of the code does not know yet. One read transaction: a consistent view.
        """
        db = {"nodes": self.nodes, "replies": self.replies_db, "stats": self.stats_db}[table]
        with self._read() as txn:
            for key, value in txn.cursor(db=db):
                yield bytes(key), _loads(value)

    def add_aux_counts(self, table: str, counts: dict[bytes, int]) -> None:
        """Add to counters kept in a side table as {"n": total, "last": time}, in one transaction."""
        if counts:
            op = (["aux_counts", table, {k.hex(): n for k, n in counts.items()}]
                  if self.journal is not None else None)
            self._write(lambda txn: self._add_aux_counts_in(txn, table, counts), op=op, neutral=True)

    def _add_aux_counts_in(self, txn: lmdb.Transaction, table: str, counts: dict[bytes, int]) -> None:
        now = time.time()
        for key, n in counts.items():
            raw = txn.get(_aux_key(table, key), db=self.aux)
            entry = {"n": 0} if raw is None else _loads(raw)
            entry["n"] = entry.get("n", 0) + n
            entry["last"] = now
            txn.put(_aux_key(table, key), _dumps(entry), db=self.aux)

    # -- the web view (store/webview.py): cheap whole-database reads ----------
    def iter_roots(self) -> Iterator[NodeRecord]:
        """Every root, from the roots index (a 100 k-node tree has a handful of
        roots; a scan of every node takes most of a second)."""
        with self._read() as txn:
            indexed = txn.get(ROOTS_INDEXED, db=self.meta) is not None
        if not indexed:
            self._write(self._index_roots)
        with self._read() as txn:
            cur = txn.cursor(db=self.meta)
            ids = []
            if cur.set_range(ROOTS):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(ROOTS):
                        break
                    ids.append(bytes(key[len(ROOTS):]))
            for node_id in ids:
                raw = txn.get(node_id, db=self.nodes)
                if raw is not None:
                    yield _node_from(node_id, _loads(raw))

    def _index_roots(self, txn: lmdb.Transaction) -> None:
        """Build the roots index of a database written before it (once; in the
        write transaction, so a root recorded meanwhile is not missed)."""
        if txn.get(ROOTS_INDEXED, db=self.meta) is not None:
            return
        for key, value in txn.cursor(db=self.nodes):
            if not bytes(value[:11]) == b'{"parent":"' and _loads(value).get("parent") is None:
                txn.put(ROOTS + bytes(key), b"", db=self.meta)
        txn.put(ROOTS_INDEXED, b"1", db=self.meta)

    def find_raw(self, needle: bytes, limit: int) -> list[bytes]:
        """Node ids whose stored JSON, or one of whose replies', contains
        `needle` (ASCII case folded), first found first, at most `limit`."""
        needle, found = needle.lower(), []
        with self._read() as txn:
            for db, width in ((self.nodes, ID), (self.replies_db, ID)):
                for key, value in txn.cursor(db=db):
                    node_id = bytes(key[:width])
                    if needle in bytes(value).lower() and node_id not in found:
                        found.append(node_id)
                        if len(found) >= limit:
                            return found
        return found

    def generation(self) -> int:
        """Changes with every committed write, from any process: what a live view polls."""
        return int(self.env.info()["last_txnid"])

    def lookups_unchanged(self, since: int, now: int) -> bool:
        """Was every commit after generation `since`, up to `now`, one of this
        process's writes that no lookup reads (hit counts, side-table counters,
        the recent-requests ring)? Then a lookup at `now` gives what it gave at
        `since`. Any other write, by anyone, says no."""
        return self._neutral_commits.cover(since, now)

    def append_ring(self, table: str, rows: list[tuple[bytes, Any]], keep: int) -> None:
        """Add rows to a side table used as a ring: keys sort by age (oldest
        first), and only the newest `keep` rows stay. One transaction."""
        prefix = _aux_key(table, b"")

        def write(txn: lmdb.Transaction) -> None:
            for key, value in rows:
                txn.put(_aux_key(table, key), _dumps(value), db=self.aux)
            cur = txn.cursor(db=self.aux)
            keys = []
            if cur.set_range(prefix):
                for key in cur.iternext(keys=True, values=False):
                    if not bytes(key).startswith(prefix):
                        break
                    keys.append(bytes(key))
            for key in keys[: max(len(keys) - keep, 0)]:
                txn.delete(key, db=self.aux)

        if rows:
            # A ring describes this proxy's own traffic (the web view's recent
            # requests): a shared store keeps it out of the log.
            self._write(write, op=_NOT_SHARED, neutral=True)

    def dump(self) -> Iterator[tuple[str, bytes, Any]]:
        """Every row of nodes, replies, stats and aux as (table, key, JSON value),
        in one read transaction, so an export taken while proxies record is
        one consistent moment (no reply without its node). Aux keys keep their
        `table\\x00` prefix."""
        with self._read() as txn:
            for table, db in (("nodes", self.nodes), ("replies", self.replies_db), ("stats", self.stats_db),
                              ("aux", self.aux)):
                for key, value in txn.cursor(db=db):
                    yield table, bytes(key), _loads(value)

    def usage(self) -> dict[str, int]:
        """Bytes: the data file on disk, the pages in use, the current map size."""
        info, stat = self.env.info(), self.env.stat()
        data = os.path.join(self.path, "data.mdb")
        return {"file_bytes": os.path.getsize(data) if os.path.exists(data) else 0,
                "used_bytes": (info["last_pgno"] + 1) * stat["psize"], "map_bytes": info["map_size"]}

    def import_rows(
        self,
        nodes: list[tuple[bytes, dict]],
        replies: list[tuple[bytes, dict]],
        stats: list[tuple[bytes, dict]],
        aux: list[tuple[str, bytes, Any]],
        merge: Callable[[str, dict, dict], dict],
    ) -> dict[str, int]:
        """Write one batch of exported rows in one short write transaction.

        Nodes are content addresses: an existing node is kept as is and its
        edge is already there, so shared prefixes are never duplicated. For a
        reply or stats row that exists, `merge(table, existing, incoming)`
        decides the stored value; side-table rows already present are kept.
        Returns how many rows of each kind were new.
        """
        def write(txn: lmdb.Transaction) -> dict[str, int]:
            added = {"nodes": 0, "replies": 0, "stats": 0, "aux": 0}
            templates_changed = False
            for node_id, record in nodes:
                if txn.put(node_id, _dumps(record), db=self.nodes, overwrite=False):
                    added["nodes"] += 1
                    if not record.get("parent"):
                        txn.put(ROOTS + node_id, b"", db=self.meta)
                parent = record.get("parent")
                if parent:
                    if txn.put(bytes.fromhex(parent) + node_id, b"t" if record.get("kind") == "template" else b"m",
                               db=self.children, overwrite=False):
                        templates_changed = True  # the parent's kind is not at hand: assume a template
            for table, db, rows in (("replies", self.replies_db, replies), ("stats", self.stats_db, stats)):
                for key, value in rows:
                    raw = txn.get(key, db=db)
                    if raw is None:
                        added[table] += 1
                    else:
                        value = merge(table, _loads(raw), value)
                    txn.put(key, _dumps(value), db=db)
            for table, key, value in aux:
                if txn.put(_aux_key(table, key), _dumps(value), db=self.aux, overwrite=False):
                    added["aux"] += 1
            if templates_changed:
                _bump_template_generation(txn, self.meta)
            return added

        return self._write(write)

    def adopt_secret(self, secret: bytes) -> bool:
        """Take over an exported namespace secret, only while no node exists.

        With another database's secret, credentials hash to that database's
        namespaces, so an imported recording serves the same key. Refused once
        the tree has nodes: their namespaces were derived from the old secret.
        """
        def write(txn: lmdb.Transaction) -> bool:
            if txn.stat(self.nodes)["entries"]:
                return False
            txn.put(b"secret", secret, db=self.meta)
            return True

        if secret == self.secret:
            return True
        adopted = self._write(write)
        if adopted:
            self.secret = secret
        return adopted


# Each replica's own: its schema mark, its template generation (bumped locally
# when applied writes touch the tree) and where it is in the shared log. The
# secret is agreed through the shared store itself (store/shared_backend.py).
_REPLICA_OWN_META = frozenset({b"schema", b"secret", TEMPLATE_GENERATION, b"shared-cursor"})
_NOT_SHARED = ["local"]  # `_write(op=...)`: this replica's own bookkeeping, never journaled


class _JournaledTxn:
    """A write transaction that notes every put and delete it makes (for `journal`).

    Values are noted as stored, so a replay writes the same bytes; cursors
    are wrapped too, since `_delete_prefix` deletes through one.
    """

    def __init__(self, txn: lmdb.Transaction, names: dict[Any, str], effects: list[list]):
        self._txn, self._names, self._effects = txn, names, effects

    def __getattr__(self, name: str) -> Any:  # get, stat, ...: reads pass straight through
        return getattr(self._txn, name)

    def put(self, key: bytes, value: bytes, db: Any = None, **kw: Any) -> bool:
        done = self._txn.put(key, value, db=db, **kw)
        if done:
            self._effects.append(["put", self._names[db], bytes(key).hex(), bytes(value).hex()])
        return done

    def delete(self, key: bytes, value: bytes = b"", db: Any = None) -> bool:
        done = self._txn.delete(key, value, db=db)
        if done:
            self._effects.append(["delete", self._names[db], bytes(key).hex(), None])
        return done

    def cursor(self, db: Any = None) -> "_JournaledCursor":
        return _JournaledCursor(self._txn.cursor(db=db), self._names[db], self._effects)


class _JournaledCursor:
    def __init__(self, cur: lmdb.Cursor, table: str, effects: list[list]):
        self._cur, self._table, self._effects = cur, table, effects

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def __iter__(self) -> Iterator:
        return iter(self._cur)

    def delete(self, dupdata: bool = False) -> bool:
        key = bytes(self._cur.key())
        done = self._cur.delete(dupdata)
        if done:
            self._effects.append(["delete", self._table, key.hex(), None])
        return done


def _bump_template_generation(txn: lmdb.Transaction, meta: Any) -> None:
    raw = txn.get(TEMPLATE_GENERATION, db=meta)
    txn.put(TEMPLATE_GENERATION, str(int(raw or b"0") + 1).encode(), db=meta)


def _aux_key(table: str, key: bytes) -> bytes:
    return table.encode() + b"\x00" + key


def _subtree_ids(txn: lmdb.Transaction, children: Any, top: bytes) -> list[bytes]:
    """`top` and every node below it, following the child edges."""
    out, queue, cur = [], [top], txn.cursor(db=children)
    seen = {top}
    while queue:
        node_id = queue.pop()
        out.append(node_id)
        if cur.set_range(node_id):
            for key in cur.iternext(keys=True, values=False):
                if key[:ID] != node_id:
                    break
                child = bytes(key[ID:])
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
    return out


def _last_used(txn: lmdb.Transaction, backend: "LmdbBackend", ids: list[bytes]) -> float:
    latest = 0.0
    for node_id in ids:
        raw = txn.get(node_id, db=backend.nodes)
        if raw is not None:
            latest = max(latest, _loads(raw).get("created", 0.0))
        stats = txn.get(node_id, db=backend.stats_db)
        if stats is not None:
            latest = max(latest, _loads(stats).get("last_hit", 0.0))
        for reply in _replies_in(txn, backend.replies_db, node_id):
            latest = max(latest, reply.last_seen)
    return latest


def _delete_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> int:
    """Delete every key that starts with `prefix`; returns how many."""
    cur, n = txn.cursor(db=db), 0
    if cur.set_range(prefix):
        while bytes(cur.key()[: len(prefix)]) == prefix:
            cur.delete()  # moves to the next key (or unpositions at the end)
            n += 1
    return n


def _node_from(node_id: bytes, raw: dict) -> NodeRecord:
    parent = raw.get("parent")
    return NodeRecord(
        node_id=node_id,
        parent=bytes.fromhex(parent) if parent else None,
        depth=raw["depth"],
        kind=raw["kind"],
        content=raw["content"],
        namespace=raw.get("namespace", ""),
        created=raw.get("created", 0.0),
    )


def _reply_from(reply_id: bytes, raw: dict) -> StoredReply:
    return StoredReply(
        reply_id=bytes(reply_id),
        reply=raw["reply"],
        count=raw["count"],
        first_seen=raw["first_seen"],
        last_seen=raw["last_seen"],
        streamed=raw.get("streamed", False),
        score=raw.get("score", 0),
        bad=raw.get("bad", False),
    )


def _replies_in(txn: lmdb.Transaction, db: Any, node_id: bytes) -> Iterator[StoredReply]:
    cur = txn.cursor(db=db)
    if not cur.set_range(node_id):
        return
    for key, value in cur:
        if key[:ID] != node_id:
            break
        yield _reply_from(key[ID:], _loads(value))


class Snapshot:
    """A TreeReader over one open read transaction."""

    def __init__(self, backend: LmdbBackend, txn: lmdb.Transaction):
        self._b = backend
        self._txn = txn

    def has_node(self, node_id: bytes) -> bool:
        return self._txn.get(node_id, db=self._b.nodes) is not None

    def node(self, node_id: bytes) -> NodeRecord | None:
        raw = self._txn.get(node_id, db=self._b.nodes)
        return None if raw is None else _node_from(node_id, _loads(raw))

    def replies(self, node_id: bytes) -> list[StoredReply]:
        return list(_replies_in(self._txn, self._b.replies_db, node_id))

    def reply_ids(self, node_id: bytes) -> list[bytes]:
        """The ids of a node's replies, their values left unread (no JSON decoded)."""
        cur = self._txn.cursor(db=self._b.replies_db)
        out: list[bytes] = []
        if cur.set_range(node_id):
            for key in cur.iternext(keys=True, values=False):
                if key[:ID] != node_id:
                    break
                out.append(bytes(key[ID:]))
        return out

    def children_of(self, node_id: bytes) -> list[tuple[bytes, str]]:
        cur = self._txn.cursor(db=self._b.children)
        out: list[tuple[bytes, str]] = []
        if cur.set_range(node_id):
            for key, value in cur:
                if key[:ID] != node_id:
                    break
                out.append((bytes(key[ID:]), "template" if value == b"t" else "message"))
        return out

    def template_children(self, node_id: bytes) -> list[NodeRecord]:
        kids = [cid for cid, kind in self.children_of(node_id) if kind == "template"]
        return [n for n in (self.node(cid) for cid in kids) if n is not None]

    def get_aux_raw(self, table: str, key: bytes) -> bytes | None:
        """A side-table value's stored bytes (JSON) in this snapshot: a template's
        trust, read on the hit path, where the caller keeps what it decoded."""
        raw = self._txn.get(table.encode() + b"\x00" + key, db=self._b.aux)  # _aux_key, inlined
        return raw if raw is None or type(raw) is bytes else bytes(raw)

    def stats(self, node_id: bytes) -> dict:
        raw = self._txn.get(node_id, db=self._b.stats_db)
        return {} if raw is None else _loads(raw)

    def template_generation(self) -> int:
        """Changes whenever a node gains or loses a template child or a
        template node gains or loses any child (0 in a database that never had
        a template): what was read of those in a snapshot of the same
        generation is still exact."""
        raw = self._txn.get(TEMPLATE_GENERATION, db=self._b.meta)
        return 0 if raw is None else int(raw)
