"""The butter addon: mitmproxy hooks and options around the store.

`addon/butter.py` is the script mitmdump loads; it only instantiates this.
This module is the thin shell: mitmproxy hooks and options, flows in, bytes
out. Wire formats live in `addon/formats/` (one module each); the tree,
keys and policies in `store/` (sans-IO, LMDB in one module). Whatever butter
cannot parse passes through untouched; a miss is forwarded unchanged, its
stream reaches the client chunk by chunk, and the reply is recorded off the
event loop once it is complete.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from mitmproxy import ctx, exceptions, http
from mitmproxy.net import encoding

from addon import credentials, formats
from addon.formats import NotUnderstood, ParsedRequest, WireFormat, WireRequest, WireResponse
from store import Cache, Hit, ServePolicy, default_db_path

log = logging.getLogger("butter")

MODES = ("auto", "record", "replay", "off")
STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl", "application/ndjson")
HIT_FLUSH_SECONDS = 2.0
# A replay-mode miss: 404 is not retried by any SDK (they retry 408/409/429/5xx).
REPLAY_MISS_STATUS = 404


@dataclass
class FlowState:
    """What butter knows about one LLM flow while it is in flight."""

    fmt: WireFormat
    parsed: ParsedRequest | None = None
    namespace: str = ""
    status: str = ""  # the butter-cache header value
    record: bool = False
    refresh: bool = False
    streamed: bool = False
    chunks: list[bytes] = field(default_factory=list)


class Butter:
    def __init__(self) -> None:
        self.cache: Cache | None = None
        self.writer: ThreadPoolExecutor | None = None
        self.pending: set[Future] = set()
        self.flows: dict[str, FlowState] = {}
        self.hits: Counter[bytes] = Counter()
        self.last_flush = time.monotonic()
        self._logged_once: set[str] = set()

    # -- lifecycle (kept synchronous: async versions break hot reload) ------
    def load(self, loader) -> None:
        loader.add_option("butter_db", str, default_db_path(),
                          "LMDB directory of the tree ($BUTTER_DB, else .butter/db in the working directory).")
        loader.add_option("butter_mode", str, "auto",
                          "auto: serve hits, forward and record misses; record: always forward and record "
                          "(refresh); replay: serve hits, answer misses with an error, never contact the "
                          "provider; off: pure passthrough.", choices=list(MODES))
        loader.add_option("butter_namespace", str, "",
                          "Share one namespace between every credential (a team, a test suite). "
                          "Empty: each credential gets its own.")
        loader.add_option("butter_min_observations", int, 1,
                          "Serve a reply only after this many agreeing observations of it.")

    def configure(self, updated: set[str]) -> None:
        if "butter_min_observations" in updated and ctx.options.butter_min_observations < 1:
            raise exceptions.OptionsError("butter_min_observations must be at least 1")
        if "butter_db" in updated or "butter_min_observations" in updated:
            self._open(ctx.options.butter_db)
        # Offline replay needs mitmproxy to defer the upstream connection until
        # a hook has decided; with the default `eager` a CONNECT to an
        # unreachable provider fails before butter ever sees the request.
        if "connection_strategy" in ctx.options.keys() and ctx.options.connection_strategy != "lazy":
            ctx.options.connection_strategy = "lazy"

    def done(self) -> None:
        self._flush_hits(force=True)
        self._close()

    def _open(self, path: str) -> None:
        self._close()
        policy = ServePolicy(min_observations=ctx.options.butter_min_observations)
        try:
            self.cache = Cache(path, policy)
        except Exception as e:  # a bad path must not take the proxy down silently
            raise exceptions.OptionsError(f"butter_db {path!r} cannot be opened: {e}") from e
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="butter-writer")
        log.info("butter: tree at %s, mode %s", self.cache.backend.path, ctx.options.butter_mode)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.shutdown(wait=True)  # nothing recorded is lost
            self.writer = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    # -- hooks --------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        fmt = formats.recognise(flow.request.method, flow.request.path.split("?", 1)[0])
        if fmt is None or self.cache is None:
            return
        mode = ctx.options.butter_mode
        state = FlowState(fmt)
        self.flows[flow.id] = state
        if mode == "off":
            state.status = "bypass (mode off)"

    async def request(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow.id)
        if state is None or state.status or flow.response is not None:
            return
        try:
            await self._decide(flow, state)
        except Exception as e:  # never break a user's traffic
            self._log_once(f"internal:{type(e).__name__}", "butter: passing a request through after an internal error: %r", e)
            state.record = False
            state.status = "bypass (internal error)"

    async def _decide(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert self.cache is not None
        request = flow.request
        credential, headers, query = credentials.split(dict(request.headers), dict(request.query))
        body = request.get_content(strict=False) or b""
        wire = WireRequest(request.method, request.path.split("?", 1)[0], query, headers, body)
        try:
            state.parsed = state.fmt.parse_request(wire)
        except NotUnderstood as e:
            self._log_once(f"parse:{state.fmt.name}:{e}", "butter: %s request not understood (%s); passing it through", state.fmt.name, e)
            state.status = "bypass (not understood)"
            return
        state.namespace = self.cache.namespace(credential, ctx.options.butter_namespace)
        mode = ctx.options.butter_mode
        conversation = state.parsed.conversation
        if mode == "record":
            self._forward_and_record(flow, state, refresh=True, status="record")
            return
        result = self.cache.lookup(state.namespace, conversation)
        if not isinstance(result, Hit) and self.pending:
            # A reply recorded a moment ago may still be in the writer's queue:
            # wait for it rather than miss what this process already knows.
            await asyncio.wrap_future(self._drain_future())
            result = self.cache.lookup(state.namespace, conversation)
        model = conversation.context.get("model")
        if isinstance(result, Hit):
            self._serve(flow, state, result)
            log.info("butter: hit  %s %s (%d messages) node %s", state.fmt.name, model,
                     len(conversation.messages), result.node_id.hex()[:12])
            return
        where = (f"left the tree at message {result.matched}: {result.detail}" if result.matched >= 0
                 else result.detail)
        if mode == "replay":
            state.status = "replay-miss"
            message = (f"butter replay mode: this request was never recorded ({where}); "
                       "it was not forwarded to the provider")
            self._respond(flow, state.fmt.error(REPLAY_MISS_STATUS, message, "butter_replay_miss"),
                          {"butter-cache": "replay-miss", "x-should-retry": "false"})
            log.info("butter: replay-miss %s %s: %s", state.fmt.name, model, where)
            return
        log.info("butter: miss %s %s (%d messages): %s", state.fmt.name, model, len(conversation.messages), where)
        self._forward_and_record(flow, state, refresh=False, status="miss")

    def _forward_and_record(self, flow: http.HTTPFlow, state: FlowState, refresh: bool, status: str) -> None:
        state.record, state.refresh, state.status = True, refresh, status
        # Recording needs bytes it can read: ask the provider not to compress
        # (gzip also holds back streamed tokens behind its buffer).
        flow.request.headers["accept-encoding"] = "identity"

    def _serve(self, flow: http.HTTPFlow, state: FlowState, hit: Hit) -> None:
        assert state.parsed is not None
        state.status = "hit"
        flow.metadata["butter"] = "hit"
        response = state.fmt.render(hit.reply, state.parsed)
        self._respond(flow, response, {"butter-cache": "hit", "butter-node": hit.node_id.hex()})
        self.hits[hit.node_id] += 1
        self._flush_hits()

    def _respond(self, flow: http.HTTPFlow, wire: WireResponse, extra: dict[str, str]) -> None:
        flow.response = http.Response.make(wire.status, wire.body, {**wire.headers, **extra})
        flow.is_replay = "response"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow.id)
        if state is None or flow.response is None or flow.is_replay == "response":
            return
        flow.response.headers["butter-cache"] = state.status or "bypass"
        if not state.record:
            return
        if not 200 <= flow.response.status_code < 300:
            state.record = False  # errors are passed through, never recorded
            return
        content_type = flow.response.headers.get("content-type", "").lower()
        state.streamed = any(content_type.startswith(t) for t in STREAM_TYPES)
        asked = state.parsed.stream if state.parsed else False
        if state.streamed or asked:
            chunks = state.chunks

            def tee(data: bytes) -> bytes:
                # Forward each chunk as it arrives; keep a copy to assemble.
                chunks.append(data)
                return data

            flow.response.stream = tee

    def response(self, flow: http.HTTPFlow) -> None:
        state = self.flows.pop(flow.id, None)
        if state is None or not state.record or flow.is_replay == "response" or flow.response is None:
            return
        if not 200 <= flow.response.status_code < 300 or state.parsed is None:
            return
        try:
            body = self._received_body(flow, state)
            reply = state.fmt.reply_from_body(body, state.streamed)
        except Exception as e:
            self._log_once(f"reply:{state.fmt.name}:{type(e).__name__}", "butter: could not read a %s reply, not recorded: %r", state.fmt.name, e)
            return
        if reply is None:
            log.info("butter: not recorded: the %s reply was incomplete or an error", state.fmt.name)
            return
        self._submit(self._record, state, reply)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self.flows.pop(flow.id, None)
        if state is not None and state.record:
            log.info("butter: not recorded: %s", flow.error.msg if flow.error else "the exchange failed")

    # -- recording, off the event loop ----------------------------------------
    def _received_body(self, flow: http.HTTPFlow, state: FlowState) -> bytes:
        assert flow.response is not None
        if state.chunks:
            raw = b"".join(state.chunks)
            enc = flow.response.headers.get("content-encoding", "").strip().lower()
            return encoding.decode(raw, enc) if enc and enc != "identity" else raw
        return flow.response.get_content(strict=False) or b""

    def _record(self, state: FlowState, reply: dict) -> None:
        assert self.cache is not None and state.parsed is not None
        node = self.cache.record(state.namespace, state.parsed.conversation, reply,
                                 streamed=state.streamed, refresh=state.refresh)
        log.info("butter: recorded %s %s reply at node %s", state.fmt.name,
                 state.parsed.conversation.context.get("model"), node.hex()[:12])

    def _submit(self, fn, *args) -> None:
        if self.writer is None:
            return
        future = self.writer.submit(self._guarded, fn, *args)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:
            log.error("butter: a write to the tree failed: %r", e)

    def _drain_future(self) -> Future:
        # The writer runs jobs in order, so a no-op queued now completes only
        # after every write queued before it.
        assert self.writer is not None
        return self.writer.submit(lambda: None)

    def _flush_hits(self, force: bool = False) -> None:
        if not self.hits or (not force and time.monotonic() - self.last_flush < HIT_FLUSH_SECONDS):
            return
        batch, self.hits = dict(self.hits), Counter()
        self.last_flush = time.monotonic()
        if self.cache is not None and self.writer is not None:
            self._submit(self.cache.backend.add_hits, batch)

    def _log_once(self, key: str, message: str, *args) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            log.warning(message, *args)

