"""The store's front door: lookup and record over the LMDB tree.

Plain values in (namespace, Conversation, reply dict), decisions out (Hit or
Miss). The addon and the CLI both come through here.
"""
from __future__ import annotations

import os
from pathlib import Path

from .lmdb_backend import LmdbBackend
from .model import Conversation, Hit, Miss
from .namespace import namespace_for
from .tree import ServePolicy, lookup, plan_record, reply_id

DEFAULT_DB_ENV = "BUTTER_DB"


def default_db_path() -> str:
    """`$BUTTER_DB`, else `.butter/db` under the working directory.

    The working directory, not the home directory: a recording belongs to the
    project whose agent made it, and lives beside it (and can go into git as an
    export) like a vcrpy cassette does.
    """
    return os.environ.get(DEFAULT_DB_ENV) or str(Path(".butter") / "db")


class Cache:
    def __init__(self, path: str | os.PathLike[str], policy: ServePolicy = ServePolicy()):
        self.backend = LmdbBackend(path)
        self.policy = policy

    def close(self) -> None:
        self.backend.close()

    def namespace(self, credential: str | None, fixed: str = "") -> str:
        return namespace_for(self.backend.secret, credential, fixed)

    def lookup(self, namespace: str, conversation: Conversation) -> Hit | Miss:
        with self.backend.snapshot() as snap:
            return lookup(conversation, namespace, snap, self.policy)

    def record(
        self,
        namespace: str,
        conversation: Conversation,
        reply: dict,
        *,
        streamed: bool = False,
        refresh: bool = False,
    ) -> bytes:
        """Store the conversation's path and its reply; returns the reply's node id."""
        writes, node = plan_record(conversation, namespace)
        rows = [(w.node_id, w.parent, w.depth, w.kind, w.content, namespace if w.kind == "root" else "")
                for w in writes]
        self.backend.record(rows, node, reply_id(reply), reply, streamed, refresh)
        return node
