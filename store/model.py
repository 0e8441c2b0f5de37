"""Plain values passed between the wire adapters, the tree and the backend.

Nothing here knows HTTP or LMDB. A `Conversation` is what a request asks: the
context that picks the root (API kind, model, tools, answer-changing
parameters) and the canonical messages, in order. A reply is the provider's
answer in the adapter's canonical form, a JSON-able dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
Reply = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    context: dict[str, Any]
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class Hit:
    node_id: bytes
    reply: Reply
    reply_id: bytes
    bindings: dict[str, str] = field(default_factory=dict)
    # Node ids walked, root first, for statistics and explanations.
    path: tuple[bytes, ...] = ()
    # Reached through a template node: a template reply, judged by its trust
    # (store/trust.py) before it is served. `trust` says how it was judged.
    templated: bool = False
    trust: str = ""
    # For a hit held back for verification: the other template replies that match
    # the same request and are verified too (their trust earns the same answer).
    also: tuple["Hit", ...] = ()


@dataclass(frozen=True)
class Miss:
    """Where a request left the tree, so a miss can be explained.

    `matched` is how many messages matched below the root (-1: no root for this
    context at all); `deepest` is the last node reached (None without a root).
    `reason` is a short machine-readable word; `detail` a sentence for people.
    The first message that differed is message number `matched`. When the
    deepest node has template children, `template` is the nearest one and
    `template_failure` says which literal or slot of it failed.
    """

    reason: str
    matched: int
    deepest: bytes | None
    detail: str = ""
    path: tuple[bytes, ...] = ()
    template: bytes | None = None
    template_failure: str = ""
    # reason "verify": a template reply on probation (or with a decision input
    # never seen) would answer. Not served: the request goes to the provider
    # and its answer is compared with this hit's (store/trust.py).
    verify: Hit | None = None


@dataclass(frozen=True)
class StoredReply:
    reply_id: bytes
    reply: Reply
    count: int
    first_seen: float
    last_seen: float
    streamed: bool = False
    score: int = 0
    bad: bool = False


@dataclass(frozen=True)
class NodeRecord:
    node_id: bytes
    parent: bytes | None
    depth: int
    kind: str  # "root" | "message" | "template"
    content: dict[str, Any]  # the context for a root, the message otherwise
    namespace: str = ""
    created: float = 0.0
