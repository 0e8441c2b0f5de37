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
chose on MapResizedError.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import lmdb

from .model import NodeRecord, StoredReply

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
INITIAL_MAP_SIZE = 256 << 20  # grows by doubling; most trees stay far below
ID = 16

T = TypeVar("T")


class SchemaTooNew(RuntimeError):
    """The database was written by a newer butter; refuse rather than corrupt it."""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(raw: bytes | memoryview) -> Any:
    return json.loads(bytes(raw))


_open_envs: dict[str, tuple[lmdb.Environment, int]] = {}
_open_lock = threading.Lock()


def _acquire_env(path: str) -> lmdb.Environment:
    # py-lmdb refuses to open one environment twice in a process; the addon,
    # a reloaded addon and in-process tests therefore share one handle.
    with _open_lock:
        if path in _open_envs:
            env, refs = _open_envs[path]
            _open_envs[path] = (env, refs + 1)
            return env
        os.makedirs(path, exist_ok=True)
        env = lmdb.open(path, map_size=INITIAL_MAP_SIZE, max_dbs=8, subdir=True, max_readers=256)
        env.reader_check()
        _open_envs[path] = (env, 1)
        return env


def _release_env(path: str) -> None:
    with _open_lock:
        env, refs = _open_envs[path]
        if refs > 1:
            _open_envs[path] = (env, refs - 1)
            return
        del _open_envs[path]
        env.close()


class LmdbBackend:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = str(Path(path).expanduser().resolve())
        self.env = _acquire_env(self.path)
        self._closed = False
        for attempt in range(8):
            try:
                self.nodes = self.env.open_db(b"nodes")
                self.children = self.env.open_db(b"children")
                self.replies_db = self.env.open_db(b"replies")
                self.stats_db = self.env.open_db(b"stats")
                self.meta = self.env.open_db(b"meta")
                self.aux = self.env.open_db(b"aux")
                self._init_meta()
                break
            except (lmdb.MapResizedError, lmdb.MapFullError):
                # Another process grew (or is growing) the map while this one
                # opened: adopt its size, grow if full, and open again.
                if attempt == 7:
                    raise
                self.env.set_mapsize(0)

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_env(self.path)

    def _init_meta(self) -> None:
        def init(txn: lmdb.Transaction) -> None:
            txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self.meta, overwrite=False)
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
    def _read(self) -> Iterator[lmdb.Transaction]:
        try:
            txn = self.env.begin()
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)  # adopt the size another process chose
            txn = self.env.begin()
        try:
            yield txn
        finally:
            txn.abort()

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in one write transaction, growing the map when it is full."""
        for _ in range(32):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.MapFullError:
                self._grow()
        raise RuntimeError(f"could not complete a write to {self.path}")

    def _grow(self) -> None:
        # A file lock keeps two processes from resizing at once; the size is
        # re-read under it so a resize another process just did is not doubled.
        with open(os.path.join(self.path, "resize.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.env.set_mapsize(0)
            self.env.set_mapsize(self.env.info()["map_size"] * 2)

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
        now = time.time()

        def write(txn: lmdb.Transaction) -> None:
            kinds: dict[bytes, str] = {}
            templates_changed = False
            for node_id, parent, depth, kind, content, namespace in nodes:
                kinds[node_id] = kind
                record = {"parent": parent.hex() if parent else None, "depth": depth, "kind": kind,
                          "content": content, "created": now}
                if namespace:
                    record["namespace"] = namespace
                if txn.put(node_id, _dumps(record), db=self.nodes, overwrite=False) and parent:
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

        self._write(write)

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
        now = time.time()

        def write(txn: lmdb.Transaction) -> None:
            for node_id, n in hits.items():
                if txn.get(node_id, db=self.nodes) is None:
                    continue  # forgotten or pruned since it was served: no orphan stats
                raw = txn.get(node_id, db=self.stats_db)
                entry = {"hits": 0} if raw is None else _loads(raw)
                entry["hits"] = entry.get("hits", 0) + n
                entry["last_hit"] = now
                txn.put(node_id, _dumps(entry), db=self.stats_db)

        if hits:
            self._write(write)

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

    def delete_subtrees(self, tops: list[bytes], unused_since: float | None = None) -> tuple[int, int, int]:
        """Delete each top node with everything below it: nodes, edges, replies,
        stats. One write transaction, so a proxy recording at the same moment
        sees the subtree whole or gone, never half. With `unused_since`, a
        subtree used at or after that time (re-checked inside the transaction)
        is kept. Returns (tops, nodes, replies) deleted."""
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
                for node_id in ids:
                    txn.delete(node_id, db=self.nodes)
                    txn.delete(node_id, db=self.stats_db)
                    _delete_prefix(txn, self.children, node_id)
                    replies += _delete_prefix(txn, self.replies_db, node_id)
                nodes += len(ids)
                deleted += 1
            if deleted:
                _bump_template_generation(txn, self.meta)  # templates may be among them
            return deleted, nodes, replies

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
        now = time.time()

        def write(txn: lmdb.Transaction) -> None:
            for key, n in counts.items():
                raw = txn.get(_aux_key(table, key), db=self.aux)
                entry = {"n": 0} if raw is None else _loads(raw)
                entry["n"] = entry.get("n", 0) + n
                entry["last"] = now
                txn.put(_aux_key(table, key), _dumps(entry), db=self.aux)

        if counts:
            self._write(write)

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

    def template_generation(self) -> int:
        """Changes whenever a node gains or loses a template child or a
        template node gains or loses any child (0 in a database that never had
        a template): what was read of those in a snapshot of the same
        generation is still exact."""
        raw = self._txn.get(TEMPLATE_GENERATION, db=self._b.meta)
        return 0 if raw is None else int(raw)
