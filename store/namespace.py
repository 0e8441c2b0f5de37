"""Which part of the tree a request may see.

Each credential gets its own namespace: a keyed hash (HMAC-SHA256 with a
secret kept in the database) of the credential, never the credential itself.
Another API key therefore never sees this key's cache, and the database holds
nothing from which a key could be recovered or even confirmed without the
secret. A fixed namespace name (the `butter_namespace` option) shares one
tree between every credential on purpose, for a team or a test suite.
"""
from __future__ import annotations

import hashlib
import hmac

ANONYMOUS = "anon"


def namespace_for(secret: bytes, credential: str | None, fixed: str = "") -> str:
    if fixed:
        return f"ns:{fixed}"
    if not credential:
        return ANONYMOUS
    tag = hmac.new(secret, credential.encode("utf-8"), hashlib.sha256).hexdigest()[:20]
    return f"key:{tag}"
