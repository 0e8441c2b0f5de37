"""The web view's HTTP face, shared by the proxy (`http://butter.local/`) and `butter ui`.

    GET  /                      the page (addon/web/, no build step, no outside assets)
    GET  /app.js, /app.css      its script and style
    GET  /api/overview          namespaces and workflows
    GET  /api/tree/ID           ?depth=&limit=&reveal=ID   a node with its descendants, paged
    GET  /api/children/ID       ?offset=&limit=&depth=     the next page of a node's children
    GET  /api/node/ID           one node in full: messages, replies, statistics
    GET  /api/search            ?q=TEXT or a hex id prefix
    GET  /api/recent            ?limit=                    the newest requests
    GET  /api/generation        a counter that changes with every write (live update polls it)
    POST /api/vote              {"node", "score": "good"|"bad", "reply"?}
    POST /api/forget            {"node"}

`handle` is plain values in, a `Page` out; the caller runs it off its event
loop (reads on any thread, writes on the proxy's writer thread). Writes are
refused unless the server was started with them allowed, and then need the
per-session token (in the `butter-token` header: a page from another origin
cannot send it without a CORS preflight, which nothing here grants) and, when
the browser sends one, an Origin that is this server.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit

from butter.store import webview
from butter.store.feedback import VERDICTS, FeedbackError, UnknownTarget
from butter.store.lmdb_backend import LmdbBackend
from butter.store.tree import ServePolicy

ASSETS = Path(__file__).with_name("web")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
TOKEN_HEADER = "butter-token"
BOOT_MARK = "/*BOOT*/{}"
_ID = re.compile(r"[0-9a-f]{32}")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    # Only this server's own script and style; no framing, no outside fetches.
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


@dataclass(frozen=True)
class Settings:
    """One server's session: where it runs, whether writes are on, its token."""

    where: str  # "proxy" or "ui": shown on the page
    writes: bool = False
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    db: str = ""


@dataclass(frozen=True)
class Page:
    status: int
    body: bytes
    headers: dict[str, str]


def is_write(method: str) -> bool:
    return method.upper() not in ("GET", "HEAD")


def is_webview_path(path: str) -> bool:
    path = urlsplit(path).path
    return path in STATIC or path.startswith("/api/")


def host_allowed(host: str | None, port: int) -> bool:
    """The Host a browser sends to a loopback server; anything else is DNS rebinding."""
    return host is not None and host.lower() in {f"{name}:{port}" for name in LOOPBACK_NAMES}


def _json(status: int, value: Any) -> Page:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Page(status, body, {"content-type": "application/json", **SECURITY_HEADERS})


def error(status: int, message: str) -> Page:
    return _json(status, {"error": {"message": message, "type": "butter_error"}})


def _node_id(text: str) -> bytes | None:
    text = text.lower()
    return bytes.fromhex(text) if _ID.fullmatch(text) else None


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return int(query.get(name, [default])[0])
    except (TypeError, ValueError):
        return default


def static(path: str, settings: Settings) -> Page:
    name, kind = STATIC[path]
    body = (ASSETS / name).read_bytes()
    if name == "index.html":
        boot = {"where": settings.where, "writes": settings.writes, "db": settings.db,
                "token": settings.token if settings.writes else None}
        # `<` escaped so no value can close the script element.
        body = body.replace(BOOT_MARK.encode(), json.dumps(boot).replace("<", "\\u003c").encode("utf-8"))
    return Page(200, body, {"content-type": kind, **SECURITY_HEADERS})


def handle(backend: LmdbBackend, policy: ServePolicy, settings: Settings, method: str, target: str,
           headers: Mapping[str, str], body: bytes) -> Page:
    """Answer one request to the web view (see the module docstring)."""
    url = urlsplit(target)
    path, query = url.path, parse_qs(url.query)
    method = method.upper()
    if is_write(method):
        refused = _refuse_write(settings, headers)
        if refused is not None:
            return refused
        return _write(backend, policy, path, body)
    if method not in ("GET", "HEAD"):
        return error(405, "use GET")
    if path in STATIC:
        return static(path, settings)
    try:
        return _read(backend, policy, path, query)
    except LookupError as e:
        return error(404, str(e).strip("'\""))


def _read(backend: LmdbBackend, policy: ServePolicy, path: str, query: dict[str, list[str]]) -> Page:
    parts = path.strip("/").split("/")
    if parts[:1] != ["api"] or len(parts) < 2:
        return error(404, f"no page {path}")
    what, arg = parts[1], (parts[2] if len(parts) > 2 else "")
    if what == "overview":
        return _json(200, webview.overview(backend))
    if what == "generation":
        return _json(200, {"generation": backend.generation()})
    if what == "recent":
        return _json(200, webview.recent(backend, _int(query, "limit", 100)))
    if what == "search":
        return _json(200, webview.search(backend, query.get("q", [""])[0], policy, _int(query, "limit", 30)))
    if what in ("tree", "children", "node"):
        node_id = _node_id(arg)
        if node_id is None:
            return error(400, "a node id is 32 hex digits")
        if what == "node":
            return _json(200, webview.detail(backend, node_id, policy))
        if what == "children":
            return _json(200, webview.children(backend, node_id, policy, offset=_int(query, "offset", 0),
                                               limit=_int(query, "limit", 8), depth=_int(query, "depth", 12)))
        reveal = [r for r in (_node_id(x) for x in query.get("reveal", [])) if r is not None]
        return _json(200, webview.subtree(backend, node_id, policy, depth=_int(query, "depth", 12),
                                          limit=_int(query, "limit", 8), reveal=reveal))
    return error(404, f"no page {path}")


def _refuse_write(settings: Settings, headers: Mapping[str, str]) -> Page | None:
    if not settings.writes:
        how = "butter ui --allow-writes" if settings.where == "ui" else "--set butter_ui_writes=true"
        return error(403, f"this view is read-only; start it with {how} to mark replies or forget nodes")
    token = headers.get(TOKEN_HEADER) or ""
    if not secrets.compare_digest(token.encode(), settings.token.encode()):
        return error(403, "a write needs this page's session token (reload the page)")
    origin = headers.get("origin")
    host = headers.get("host") or ""
    if origin and urlsplit(origin).netloc.lower() != host.lower():
        return error(403, "a write must come from this page")
    return None


def _write(backend: LmdbBackend, policy: ServePolicy, path: str, body: bytes) -> Page:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return error(400, "the body must be JSON")
    if not isinstance(data, dict):
        return error(400, "the body must be a JSON object")
    node_id = _node_id(str(data.get("node", "")))
    if node_id is None:
        return error(400, "'node' must be a node id: 32 hex digits")
    try:
        if path == "/api/vote":
            reply = data.get("reply")
            reply_id = _node_id(str(reply)) if reply else None
            if reply and reply_id is None:
                return error(400, "'reply' must be a reply id: 32 hex digits")
            if str(data.get("score", "")).lower() not in VERDICTS:
                return error(400, f"'score' must be one of {', '.join(VERDICTS)}")
            return _json(200, webview.vote(backend, node_id, str(data.get("score", "")), reply_id, policy))
        if path == "/api/forget":
            return _json(200, webview.forget(backend, node_id))
    except UnknownTarget as e:
        return error(404, str(e))
    except FeedbackError as e:
        return error(409, str(e))
    except LookupError as e:
        return error(404, str(e).strip("'\""))
    return error(404, f"no action {path}")


def client_is_loopback(peername: Any) -> bool:
    """Whether a proxy client connected from this machine (the page is never served further)."""
    import ipaddress
    try:
        address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)
