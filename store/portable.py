"""Portable recordings: the tree as versioned, human-readable JSON lines.

An export is text a person can read and git can diff: one JSON object per
line, keys sorted, non-ASCII kept as is. The first line is a header; then
every node in tree order (root, then depth first, children by id), each
followed by its replies and its hit statistics; then the side tables.

    {"type": "butter-export", "version": 1, "schema": 2, "counts": {...}}
    {"type": "node", "id": "<hex>", "parent": "<hex>|null", "depth": 1, "kind": "message", "content": {...}, ...}
    {"type": "reply", "node": "<hex>", "id": "<hex>", "reply": {...}, "count": 2, ...}
    {"type": "stats", "node": "<hex>", "hits": 3, "last_hit": ...}
    {"type": "aux", "table": "...", "key": "<hex>", "value": ...}

Rows are written as the backend stores them (plus the reserved keys `type`,
`id`, `node`, `table`, `key`), so fields this version does not know survive a
round trip. Never pickle: an export is data, loading it runs no code.

Import merges: node ids are content addresses, so a prefix the database
already has is the same key and is not written twice. Ids are recomputed
from content on the way in, which makes a hand-edited export (or one moved
to another namespace) land where a lookup will find it.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TextIO

from . import trust
from .lmdb_backend import SCHEMA_VERSION, LmdbBackend
from .tree import child_id, root_id

FORMAT = "butter-export"
FORMAT_VERSION = 1
# Side tables about the proxy's traffic, not about what is recorded (store/last_miss.py).
NOT_EXPORTED = frozenset({"last_miss"})
BATCH_ROWS = 500  # rows per write transaction: short, so proxies never wait long


class ExportError(ValueError):
    """The file is not a butter export, or not one this version can read."""


class FormatTooNew(ExportError):
    pass


# The keys a reader looks for first lead each line; the rest follow sorted.
LEADING = ("type", "version", "id", "node", "parent", "kind", "depth", "namespace", "table", "key")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def dumps_line(record: dict) -> str:
    """One record on one line, in a fixed key order (stable diffs)."""
    ordered = {k: _sorted(record[k]) for k in LEADING if k in record}
    ordered.update((k, _sorted(record[k])) for k in sorted(record) if k not in ordered)
    return json.dumps(ordered, ensure_ascii=False, separators=(", ", ": "))


# -- export ------------------------------------------------------------------------

def secret_fingerprint(secret: bytes) -> str:
    """Names a namespace secret without revealing it (it is 32 random bytes)."""
    return hashlib.sha256(b"butter/secret-id\x00" + secret).hexdigest()[:16]


def export_records(rows: Iterable[tuple[str, bytes, Any]], *, namespace: str | None = None,
                   secret: bytes | None = None, secret_id: str | None = None) -> Iterator[dict]:
    """Header and records from the backend's `dump()` rows (one snapshot).

    `namespace` keeps only the trees of that namespace; `secret` (the
    database's namespace secret) is written only when given, see the CLI's
    `--with-secret`; `secret_id` (its fingerprint) lets an import tell
    whether per-credential namespaces will still be reachable.
    """
    nodes: dict[bytes, dict] = {}
    children: dict[bytes, list[bytes]] = defaultdict(list)
    replies: dict[bytes, list[tuple[bytes, dict]]] = defaultdict(list)
    stats: dict[bytes, dict] = {}
    aux: list[tuple[str, bytes, Any]] = []
    for table, key, value in rows:
        if table == "nodes":
            nodes[key] = value
            if value.get("parent"):
                children[bytes.fromhex(value["parent"])].append(key)
        elif table == "replies":
            replies[key[:16]].append((key[16:], value))
        elif table == "stats":
            stats[key] = value
        elif table == "aux":
            name, _, rest = key.partition(b"\x00")
            if name.decode() in NOT_EXPORTED:
                continue
            aux.append((name.decode(), rest, value))

    roots = [k for k, v in nodes.items() if v.get("kind") == "root"
             and (namespace is None or v.get("namespace", "") == namespace)]
    roots.sort(key=lambda k: (nodes[k].get("namespace", ""), str(nodes[k].get("content", {}).get("model")), k))
    order: list[bytes] = []
    for root in roots:
        stack = [root]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(sorted(children.get(node, ()), reverse=True))
    if namespace is None:
        # Nodes no root reaches (should not exist) are kept rather than lost.
        reached = set(order)
        order.extend(sorted(k for k in nodes if k not in reached))
        aux_rows = sorted(aux, key=lambda r: (r[0], r[1]))
    else:
        aux_rows = []  # side tables are not per namespace; a filtered export leaves them out

    counts = {"nodes": len(order), "replies": sum(len(replies.get(k, ())) for k in order),
              "stats": sum(1 for k in order if k in stats), "aux": len(aux_rows)}
    # No export timestamp: exporting an unchanged tree twice gives the same bytes.
    header: dict[str, Any] = {"type": FORMAT, "version": FORMAT_VERSION, "schema": SCHEMA_VERSION,
                              "counts": counts}
    if namespace is not None:
        header["namespace"] = namespace
    if secret is not None:
        header["secret"] = secret.hex()
    if secret_id is not None:
        header["secret_id"] = secret_id
    yield header
    for node_id in order:
        yield {**nodes[node_id], "type": "node", "id": node_id.hex()}
        for reply_id, value in sorted(replies.get(node_id, ()), key=lambda r: r[0]):
            yield {**value, "type": "reply", "node": node_id.hex(), "id": reply_id.hex()}
        if node_id in stats:
            yield {**stats[node_id], "type": "stats", "node": node_id.hex()}
    for name, key, value in aux_rows:
        yield {"type": "aux", "table": name, "key": key.hex(), "value": value}


def write_export(backend: LmdbBackend, out: TextIO, *, namespace: str | None = None, with_secret: bool = False,
                 on_record: Callable[[dict], None] | None = None) -> dict:
    """Write the whole database (or one namespace) to `out`; returns the header.

    `on_record` sees every record as it is written, the header first (its
    `counts` say how many follow: a progress bar's total)."""
    header: dict = {}
    for record in export_records(backend.dump(), namespace=namespace,
                                 secret=backend.secret if with_secret else None,
                                 secret_id=secret_fingerprint(backend.secret)):
        if not header:
            header = record
        out.write(dumps_line(record) + "\n")
        if on_record is not None:
            on_record(record)
    return header


# -- reading an export -------------------------------------------------------------------

def read_header(line: str) -> dict:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("type") != FORMAT:
        raise ExportError("not a butter export (the first line is not a butter-export header)")
    version = header.get("version")
    if not isinstance(version, int):
        raise ExportError("the export header has no format version")
    if version > FORMAT_VERSION:
        raise FormatTooNew(f"this export is format version {version}, written by a newer butter; "
                           f"this butter reads up to version {FORMAT_VERSION}. Upgrade butter to import it.")
    return header


def read_records(lines: Iterable[str]) -> tuple[dict, Iterator[dict]]:
    """The header (checked first, before anything is written) and the records."""
    numbered = ((n, line) for n, line in enumerate(lines, start=1) if line.strip())
    first = next(numbered, None)
    if first is None:
        raise ExportError("the file is empty")
    header = read_header(first[1])

    def records() -> Iterator[dict]:
        for n, line in numbered:
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ExportError(f"line {n} is not JSON: {e}") from None
            if not isinstance(record, dict) or record.get("type") not in ("node", "reply", "stats", "aux"):
                raise ExportError(f"line {n} is not a butter export record")
            yield record

    return header, records()


# -- merging into an existing database ------------------------------------------------------

def merge_row(table: str, existing: dict, incoming: dict) -> dict:
    """The stored value when a reply or stats row is in both places.

    Idempotent (importing one file twice changes nothing) and leaning to
    missing: a reply either side marked bad stays bad, the lower score wins.
    Fields only one side has are kept.
    """
    out = {**incoming, **existing}
    if table == "replies":
        out["count"] = max(int(existing.get("count", 0)), int(incoming.get("count", 0)))
        out["first_seen"] = min(existing.get("first_seen", 0), incoming.get("first_seen", 0)) or \
            max(existing.get("first_seen", 0), incoming.get("first_seen", 0))
        out["last_seen"] = max(existing.get("last_seen", 0), incoming.get("last_seen", 0))
        out["bad"] = bool(existing.get("bad")) or bool(incoming.get("bad"))
        out["score"] = min(existing.get("score", 0), incoming.get("score", 0))
    elif table == "stats":
        out["hits"] = max(int(existing.get("hits", 0)), int(incoming.get("hits", 0)))
        if "last_hit" in existing or "last_hit" in incoming:
            out["last_hit"] = max(existing.get("last_hit", 0), incoming.get("last_hit", 0))
    return out


@dataclass
class ImportReport:
    header: dict
    read: dict[str, int] = field(default_factory=lambda: {"nodes": 0, "replies": 0, "stats": 0, "aux": 0})
    added: dict[str, int] = field(default_factory=lambda: {"nodes": 0, "replies": 0, "stats": 0, "aux": 0})
    rehashed: int = 0  # nodes whose id changed: edited content or a new namespace
    secret_adopted: bool = False
    warnings: list[str] = field(default_factory=list)


class _Remap:
    """Old node id -> the id its content addresses in the target database."""

    def __init__(self, namespace: str | None):
        self.namespace = namespace
        self.ids: dict[str, bytes] = {}
        self.rehashed = 0
        self.moved: set[str] = set()  # namespaces whose trees went to `namespace`

    def aux_key(self, key: bytes) -> bytes:
        """Side-table keys scoped to a namespace (`namespace\\x00…`) follow their trees."""
        if self.namespace is None:
            return key
        head, sep, rest = key.partition(b"\x00")
        if sep and head.decode("utf-8", "replace") in self.moved:
            return self.namespace.encode("utf-8") + sep + rest
        return key

    def node(self, record: dict) -> tuple[bytes, dict]:
        old = record["id"]
        row = {k: v for k, v in record.items() if k not in ("type", "id")}
        kind = row.get("kind")
        parent_old = row.get("parent")
        if kind == "root":
            if self.namespace is not None:
                self.moved.add(str(row.get("namespace", "")))
                row["namespace"] = self.namespace
            new = root_id(row.get("namespace", ""), row["content"])
        else:
            # A parent the export does not hold is taken to be in the database already.
            parent = self.ids.get(parent_old, bytes.fromhex(parent_old)) if parent_old is not None else None
            row["parent"] = parent.hex() if parent is not None else None
            if parent is not None:
                # Messages and templates alike: a content address under the parent.
                new = child_id(parent, row["content"])
            else:
                new = bytes.fromhex(old)
        if new.hex() != old:
            self.rehashed += 1
        self.ids[old] = new
        return new, row

    def ref(self, old: str) -> bytes | None:
        return self.ids.get(old)


def import_records(backend: LmdbBackend, header: dict, records: Iterable[dict], *, namespace: str | None = None,
                   on_record: Callable[[], None] | None = None, batch_rows: int = BATCH_ROWS) -> ImportReport:
    """Merge an export into `backend`, in short write transactions.

    Nodes arrive parents first (the export's tree order), so a batch never
    holds a child whose parent is missing from the database; a reader that
    walks the tree meanwhile sees a shorter tree, never a broken one.
    """
    report = ImportReport(header)
    now = time.time()
    secret = header.get("secret")
    if secret and namespace is None and bytes.fromhex(secret) != backend.secret:
        report.secret_adopted = backend.adopt_secret(bytes.fromhex(secret))
    remap = _Remap(namespace)
    batch: dict[str, list] = {"nodes": [], "replies": [], "stats": [], "aux": []}
    pending = 0
    key_roots = 0

    def flush() -> None:
        nonlocal pending
        if pending:
            added = backend.import_rows(batch["nodes"], batch["replies"], batch["stats"], batch["aux"], merge_row)
            for k, v in added.items():
                report.added[k] += v
            for rows in batch.values():
                rows.clear()
            pending = 0

    for record in records:
        kind = record["type"]
        if kind == "node":
            node_id, row = remap.node(record)
            if row.get("kind") == "root" and str(row.get("namespace", "")).startswith("key:"):
                key_roots += 1
            batch["nodes"].append((node_id, row))
            report.read["nodes"] += 1
        elif kind in ("reply", "stats"):
            node_id = remap.ref(record["node"])
            if node_id is None:
                raise ExportError(f"a {kind} row names node {record['node']}, which the export does not hold before it")
            row = {k: v for k, v in record.items() if k not in ("type", "node", "id")}
            key = node_id + bytes.fromhex(record["id"]) if kind == "reply" else node_id
            batch["replies" if kind == "reply" else "stats"].append((key, row))
            report.read["replies" if kind == "reply" else "stats"] += 1
        else:
            value = record["value"]
            if record["table"] == trust.TABLE:
                value = trust.dated_on_import(value, now)  # older than a node here, it would start over
            batch["aux"].append((record["table"], remap.aux_key(bytes.fromhex(record["key"])), value))
            report.read["aux"] += 1
        pending += 1
        if on_record is not None:
            on_record()
        if pending >= batch_rows:
            flush()
    flush()
    report.rehashed = remap.rehashed
    same_secret = header.get("secret_id") == secret_fingerprint(backend.secret)
    if key_roots and namespace is None and not same_secret:
        report.warnings.append(
            f"{key_roots} root(s) belong to per-credential namespaces (key:…) hashed with another database's "
            "secret; the same API key reaches them only if the export was made with --with-secret into an empty "
            "database. Import with --namespace NAME and run the proxy with butter_namespace=NAME to share them.")
    if report.secret_adopted:
        report.warnings.append("adopted the exported namespace secret; restart proxies already serving this database")
    return report
