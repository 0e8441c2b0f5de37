"""Where a shared store lives: a `redis://` or `rediss://` URL, parsed once.

    redis://[:password@]host:port/DB?prefix=team&local=.butter/shared-team&compact_after=100000

`prefix` names the tree inside the server (several teams may share one
Redis); `local` is the directory of this machine's LMDB replica (default
`.butter/shared/<host>-<port>-<db>-<prefix>` under the working directory, like
`.butter/db`). The password may come from the URL or from
`$BUTTER_REDIS_PASSWORD`; it is never logged nor stored: `display` leaves it
out, and the replica keeps nothing of the URL. `compact_after` (default 0:
never) has a replica compact the log once it holds that many entries
(store/shared_snapshot.py).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

SCHEMES = ("redis", "rediss")
PASSWORD_ENV = "BUTTER_REDIS_PASSWORD"


def is_shared(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.split("://", 1)[0].lower() in SCHEMES and "://" in location


@dataclass(frozen=True)
class SharedLocation:
    scheme: str
    host: str
    port: int
    db: int
    prefix: str
    local: str
    username: str | None
    password: str | None
    compact_after: int = 0

    @property
    def display(self) -> str:
        """The URL without any credential, for logs and `butter stats`."""
        return f"{self.scheme}://{self.host}:{self.port}/{self.db}?prefix={quote(self.prefix)}"

    def client_url(self) -> str:
        """What the Redis client connects to (credentials passed separately)."""
        return f"{self.scheme}://{self.host}:{self.port}/{self.db}"

    def key(self, name: str) -> str:
        # One hash tag per tree: every key of a tree lives in one cluster
        # slot, so multi-key commands never cross slots.
        return f"butter:{{{self.prefix}}}:{name}"


def parse(location: str) -> SharedLocation:
    parts = urlsplit(location)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise ValueError("a shared store is redis://host:port/DB or rediss://host:port/DB")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"the Redis database number must be a number, not {db_text!r}")
    prefix = query.get("prefix", "default")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", prefix):
        raise ValueError("prefix= may hold letters, digits, '.', '_' and '-' (at most 64)")
    port = parts.port or 6379
    local = query.get("local") or str(Path(".butter") / "shared" / f"{parts.hostname}-{port}-{db_text}-{prefix}")
    password = unquote(parts.password) if parts.password else os.environ.get(PASSWORD_ENV) or None
    username = unquote(parts.username) if parts.username else None
    compact_after = query.get("compact_after", "0")
    if not compact_after.isdigit():
        raise ValueError(f"compact_after= is a number of log entries, not {compact_after!r}")
    return SharedLocation(parts.scheme.lower(), parts.hostname, port, int(db_text), prefix, local, username, password,
                          int(compact_after))
