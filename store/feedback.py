"""Feedback rules, sans-IO: what a good or bad vote does to a node's replies.

A vote names a node (every served reply carries its node in the `butter-node`
header) and optionally one reply at it (`butter-reply`). The rules:

- **bad** without a reply marks every reply at the node bad: the node as it
  stands is no longer served, so the next request at that point goes to the
  provider and its answer is recorded as a new reply beside the bad ones
  (served once it has the observations `ServePolicy` asks for). With a reply,
  only that reply is marked.
- **good** adds to the reply the node serves now (or the named one). A good
  vote also lifts a bad mark, but only while the reply's reputation is not
  negative, so one mistaken `bad` is undone by one `good`, and a reply most
  voters called bad stays unserved.
- Each vote moves the reply's **reputation** (`score`: goods minus bads) by
  one. `ServePolicy.choose` ranks servable replies by reputation first, so
  when a node has several replies, the best-liked one is served.

Invariant: a reply with a negative reputation is always marked bad. An answer
the provider gives again after it was marked bad stays bad: the same bytes are
the same reply, and a person said it was wrong.

Everything here takes and returns plain values; `store.admin.vote` applies it
to the database in one write transaction.
"""
from __future__ import annotations

from typing import Iterable

from .model import StoredReply
from .tree import ServePolicy

GOOD = "good"
BAD = "bad"
VERDICTS = (GOOD, BAD)


class FeedbackError(ValueError):
    """A vote that cannot be applied (unknown verdict, nothing to score)."""


class UnknownTarget(FeedbackError):
    """The vote names a node or reply the tree does not have."""


def parse_verdict(text: object) -> str:
    verdict = str(text).strip().lower() if isinstance(text, str) else ""
    if verdict not in VERDICTS:
        raise FeedbackError(f"a score is 'good' or 'bad', not {text!r}")
    return verdict


def scored(score: int, bad: bool, verdict: str) -> tuple[int, bool]:
    """A reply's (reputation, bad mark) after one vote."""
    if verdict == BAD:
        return score - 1, True
    score += 1
    return score, bad and score < 0


def _rank(reply: StoredReply) -> tuple:
    # The order ServePolicy.choose uses, so "the reply it serves" is that one.
    return (reply.score, reply.count, reply.last_seen, reply.reply_id)


def targets(replies: Iterable[StoredReply], verdict: str, reply_id: bytes | None = None,
            policy: ServePolicy = ServePolicy()) -> list[StoredReply]:
    """The replies a vote applies to.

    A named reply must be at the node. Otherwise `bad` means all of them and
    `good` means the one served now; when none is servable (still staged, or
    all marked bad), the best-ranked reply, so `good` can undo a `bad`.
    """
    replies = list(replies)
    if not replies:
        raise FeedbackError("this node has no recorded reply to score")
    if reply_id is not None:
        named = [r for r in replies if r.reply_id == reply_id]
        if not named:
            raise UnknownTarget(f"reply {reply_id.hex()} is not at this node")
        return named
    if verdict == BAD:
        return replies
    served = policy.choose(replies)
    return [served if served is not None else max(replies, key=_rank)]


def decide(replies: Iterable[StoredReply], verdict: str, reply_id: bytes | None = None,
           policy: ServePolicy = ServePolicy()) -> dict[bytes, tuple[int, bool]]:
    """reply id -> its new (reputation, bad mark) for one vote."""
    return {r.reply_id: scored(r.score, r.bad, verdict) for r in targets(replies, verdict, reply_id, policy)}
