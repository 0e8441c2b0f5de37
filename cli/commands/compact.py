"""`butter compact --db redis://...`: snapshot a shared tree into Redis and trim its log behind it."""
from __future__ import annotations

import argparse

from butter.cli.output import CliError, Progress, add_common, db_path, emit, human_size, run
from butter.store.shared_location import is_shared
from butter.store.shared_location import parse as parse_shared


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compact", help="snapshot a shared store's tree and trim its log",
        description="Build the shared tree from Redis in a scratch replica, store it as a snapshot in Redis "
                    "and trim the log up to it, so a new replica (or one that was offline meanwhile) loads the "
                    "snapshot and reads only the log written since. Safe while proxies record: their writes "
                    "after the snapshot stay in the log, and of two compactions at once one wins.")
    add_common(parser)
    parser.set_defaults(func=run(compact))


def compact(args: argparse.Namespace) -> int:
    from butter.store.shared_backend import SharedStoreError
    from butter.store.shared_snapshot import CompactionLost
    from butter.store.shared_snapshot import compact as compact_store

    location = db_path(args)
    if not is_shared(location):
        raise CliError(f"compact works on a shared store (--db redis://host:port/DB?prefix=NAME), not {location}")
    shown = parse_shared(str(location)).display  # never the password
    try:
        with Progress("snapshot rows") as bar:
            done = compact_store(str(location), on_rows=bar.advance)
    except (SharedStoreError, CompactionLost) as e:
        raise CliError(f"cannot compact {shown}: {e}") from e
    if not done["compacted"]:
        human = (f"{shown}: nothing recorded since the last snapshot ({done['snapshot_id']}); "
                 f"the log holds {done['log_length']} entries" if done["snapshot_id"] else f"{shown}: the log is empty")
    else:
        human = (f"compacted {shown}: snapshot at {done['snapshot_id']} ({done['rows']} rows, "
                 f"{human_size(done['bytes'])} in {done['chunks']} chunk(s)); trimmed {done['trimmed']} log "
                 f"entries, {done['log_length']} remain")
    emit(args, done, human)
    return 0
