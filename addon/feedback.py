"""The proxy's own endpoint: requests to `butter.local`, answered by the addon.

    GET  http://butter.local/health      is butter running, on which tree, in which mode
    POST http://butter.local/feedback    {"node": "<hex>", "score": "good"|"bad", "reply": "<hex>"?}

Any client already configured to use the proxy reaches it (http or https;
the https certificate comes from mitmproxy's CA like any other host's), and
no such request is ever forwarded: butter answers every one, unknown paths
included, with JSON. `node` is the `butter-node` header of a served reply,
`reply` optionally its `butter-reply` header; the rules are in
store/feedback.py.

This module turns a request into an action and an outcome into an answer,
in plain values; the addon runs the action against the store.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from butter.store.admin import VoteResult
from butter.store.feedback import VERDICTS, FeedbackError, UnknownTarget, parse_verdict

RESERVED_HOSTS = frozenset({"butter.local"})
# A vote is under 200 bytes; anything far bigger is refused before it is parsed.
MAX_BODY = 64 * 1024
ENDPOINTS = ("GET /health", "POST /feedback")
_HEX_ID = re.compile(r"[0-9a-fA-F]{32}")


def is_reserved(host: str) -> bool:
    return host.lower().rstrip(".") in RESERVED_HOSTS


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> tuple[int, bytes, dict[str, str]]:
        body = json.dumps(self.body, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
        return self.status, body, {"content-type": "application/json", "cache-control": "no-store",
                                   **dict(self.headers)}


@dataclass(frozen=True)
class Vote:
    node_id: bytes
    verdict: str
    reply_id: bytes | None = None


@dataclass(frozen=True)
class Health:
    pass


def problem(status: int, message: str, **extra: Any) -> Answer:
    return Answer(status, {"error": {"message": message, "type": "butter_error", **extra}})


def route(method: str, path: str, body: bytes) -> Vote | Health | Answer:
    """What a butter.local request asks for, or the error answer to it."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    method = method.upper()
    if path in ("/", "/health"):
        if method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        return Health()
    if path == "/feedback":
        if method != "POST":
            return _not_allowed("POST")
        if len(body) > MAX_BODY:
            return problem(413, f"the body is {len(body)} bytes; a vote is a small JSON object (at most {MAX_BODY} bytes)")
        return _parse_vote(body)
    return problem(404, f"butter.local has no {path}; endpoints: {', '.join(ENDPOINTS)}")


def _not_allowed(allowed: str) -> Answer:
    answer = problem(405, f"use {allowed} here")
    return Answer(answer.status, answer.body, (("allow", allowed),))


def _parse_vote(body: bytes) -> Vote | Answer:
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep to parse
        return problem(400, 'the body must be JSON: {"node": "<hex>", "score": "good" or "bad"}')
    if not isinstance(data, dict):
        return problem(400, "the body must be a JSON object")
    node, reply = data.get("node"), data.get("reply")
    if not isinstance(node, str) or not _HEX_ID.fullmatch(node):
        return problem(400, "'node' must be a node id: the 32 hex digits of a butter-node header")
    if reply is not None and (not isinstance(reply, str) or not _HEX_ID.fullmatch(reply)):
        return problem(400, "'reply' must be a reply id: the 32 hex digits of a butter-reply header")
    try:
        verdict = parse_verdict(data.get("score"))
    except FeedbackError:
        return problem(400, f"'score' must be one of {', '.join(VERDICTS)}")
    return Vote(bytes.fromhex(node), verdict, bytes.fromhex(reply) if reply else None)


def vote_answer(result: VoteResult) -> Answer:
    return Answer(200, {
        "node": result.node_id.hex(),
        "score": result.verdict,
        "changed": [r.hex() for r in result.changed],
        "servable": result.servable,
        "replies": [{"reply": r.reply_id.hex(), "reputation": r.score, "bad": r.bad, "observations": r.count}
                    for r in result.replies],
    })


def vote_failed(error: FeedbackError) -> Answer:
    return problem(404 if isinstance(error, UnknownTarget) else 409, str(error))


def health(db: str | None, mode: str, namespace: str, min_observations: int, disabled: str = "") -> Answer:
    """Is butter up, and how is it set. The database by its folder's name only:
    any client of the proxy can ask, and an absolute path tells it about the
    machine (user names, project layout) that it has no need to know.

    `disabled` (why traffic passes through untouched: a damaged database, a
    shared store not reachable yet) is still a 200: the proxy is up and
    serving its clients, and `butter proxy` waits on this answer to start."""
    if disabled:
        return Answer(200, {"butter": "disabled", "reason": disabled, "mode": mode,
                            "endpoints": list(ENDPOINTS)})
    if db is None:
        return problem(503, "butter has no open tree")
    return Answer(200, {"butter": "ok", "db": os.path.basename(db.rstrip(os.sep)) or None, "mode": mode, "namespace": namespace or None,
                        "min_observations": min_observations, "endpoints": list(ENDPOINTS)})
