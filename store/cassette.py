"""Cassettes: one test's recordings as a text file that lives in git.

A cassette is a butter export (store/portable.py: versioned JSON lines, keys
in a fixed order, `butter import` reads it) of the small database one test
(or one shared namespace) ran against, with what changes from run to run
left out, so that recording an unchanged test again gives the same bytes:

- node `created` times are dropped, reply `first_seen`/`last_seen` are 0;
- hit statistics, miss counters, remembered induction failures, skipped
  learning jobs and recent requests are not kept (they describe a run, not
  the recordings); a template's trust is kept without its clock times;
- induction observations keep their order, not their clock time: the i-th
  observation of a (root, depth) says `{"t": i}`;
- the header names the cassette and carries no secret or secret id (the
  test's namespace is a fixed name, never a credential's hash).

Everything else (nodes, replies, templates, a Responses API's id map) is
kept as exported. Like any export it holds no credential: keys never reach
the database.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .lmdb_backend import LmdbBackend
from .portable import ImportReport, dumps_line, export_records, import_records, read_records

# Side tables that count or remember what happened in one run: misses, failed
# proposals, skipped learning jobs, the web view's recent requests.
RUN_TABLES = frozenset({"misses", "induction-failed", "induction-skips", "recent", "last_miss"})
OBSERVATIONS = "induction-obs/"
# A template's trust (store/trust.py) is kept, its clock times are not.
TRUST = "trust"
TRUST_TIMES = ("since", "demoted_at", "last_verified")


def cassette_records(rows: Iterable[tuple[str, bytes, Any]], name: str) -> Iterator[dict]:
    """The records of a cassette named `name` from a backend's `dump()` rows."""
    records = list(export_records(rows))
    header, body = records[0], records[1:]
    kept: list[dict] = []
    ranks: dict[str, list[dict]] = {}
    for record in body:
        kind = record["type"]
        if kind == "stats":
            continue
        if kind == "node":
            record = {k: v for k, v in record.items() if k != "created"}
        elif kind == "reply":
            record = {**record, "first_seen": 0, "last_seen": 0}
        elif kind == "aux":
            table = record["table"]
            if table in RUN_TABLES:
                continue
            if table == TRUST and isinstance(record.get("value"), dict):
                record = {**record, "value": {k: (0 if k in TRUST_TIMES else v) for k, v in record["value"].items()}}
            if table.startswith(OBSERVATIONS) and isinstance(record.get("value"), dict):
                record = {**record, "value": dict(record["value"])}
                ranks.setdefault(table, []).append(record)
        kept.append(record)
    for observations in ranks.values():
        # Their order is what induction reads ("the newest first"); the clock is not.
        observations.sort(key=lambda r: (r["value"].get("t", 0), r["key"]))
        for i, record in enumerate(observations, start=1):
            record["value"]["t"] = i
    counts = {"nodes": 0, "replies": 0, "stats": 0, "aux": 0}
    for record in kept:
        counts[{"node": "nodes", "reply": "replies", "aux": "aux"}[record["type"]]] += 1
    yield {"type": header["type"], "version": header["version"], "schema": header["schema"],
           "counts": counts, "cassette": name}
    yield from kept


def cassette_text(backend: LmdbBackend, name: str) -> str:
    return "".join(dumps_line(record) + "\n" for record in cassette_records(backend.dump(), name))


def is_empty(text: str) -> bool:
    """A cassette with no recordings (only its header)."""
    return text.count("\n") <= 1


def save(backend: LmdbBackend, path: Path, name: str) -> bool:
    """Write the cassette when its content changed; True if the file was written.

    An unchanged cassette is not touched (no new mtime, no diff); a new one
    goes to a temporary file beside it and is renamed, so an interrupted run
    never leaves half a cassette.
    """
    text = cassette_text(backend, name)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        if is_empty(text):
            return False  # nothing recorded: no file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def load(backend: LmdbBackend, path: Path) -> ImportReport | None:
    """Merge a cassette into `backend`; None when there is no such file."""
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return None
    with f:
        header, records = read_records(f)
        return import_records(backend, header, records)
