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
import copy
import logging
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable

from mitmproxy import ctx, exceptions, http
from mitmproxy.net import encoding
from mitmproxy.net.http import status_codes

from butter.addon import bindings as template_headers  # Butter-Bindings, Butter-Disable-Induction
from butter.addon import controls  # per-request butter-mode / butter-namespace headers
from butter.addon import exchange, formats
from butter.addon import feedback  # the butter.local endpoint
from butter.addon import verification  # shadow verification of learned templates, butter-verify header
from butter.addon import recent, webview  # the web view at http://butter.local/ and its request list
from butter.addon import limits  # body ceilings, work off the loop, bounded log-once
from butter.addon import hit_memo  # a request's very bytes served before, the tree unchanged
from butter.addon.induction_queue import InductionQueue
from butter.addon.formats import NotUnderstood, ParsedRequest, WireFormat, WireResponse
from butter.addon.run_report import RunReport  # butter_run_report: this process's counts, for `butter run`
from butter.addon.shared_join import SharedStoreJoiner  # a Redis not up yet at start
from butter.store import Cache, Hit, ServePolicy, admin, default_db_path
from butter.store.cache import NamespacedTable
from butter.store.db_check import DatabaseDamaged
from butter.store.lmdb_backend import probe_in_subprocess
from butter.store.inspect import INDUCTION_SKIPS_TABLE, MISSES_TABLE, miss_key
from butter.store.last_miss import LAST_MISS_TABLE, last_miss_key, last_miss_row  # for `butter explain --last-miss`
from butter.store.model import Miss
from butter.store.shared_backend import SharedStoreUnreachable
from butter.store.templates import RenderError, render_reply
from butter.store.tree import plan_record, root_id

log = logging.getLogger("butter")

MODES = ("auto", "record", "replay", "off")
STREAM_TYPES = exchange.STREAM_TYPES  # shared with `butter import-flows`
HIT_FLUSH_SECONDS = 2.0
# A miss waits at most this long for queued writes (a reply recorded a moment
# ago) before it is forwarded; the writes still happen, later.
DRAIN_WAIT_SECONDS = 0.5
# How often the writer frees reader slots left by processes killed mid-read.
READER_CHECK_SECONDS = 30.0
# butter_durable: how long a reply waits for its recording before it goes to
# the client anyway (another process may hold the write lock).
DURABLE_WAIT_SECONDS = 10.0
# Hits are logged as one INFO summary per this many seconds, not a line each.
HIT_SUMMARY_SECONDS = 10.0
# A replay-mode miss: 404 is not retried by any SDK (they retry 408/409/429/5xx).
REPLAY_MISS_STATUS = 404
# Every control and binding header starts with `butter-` (see _has_butter_header).
assert all(h.startswith("butter-") for h in controls.CONTROL_HEADERS + template_headers.HEADERS + verification.HEADERS)
NO_CONTROLS = controls.Controls()
NO_BINDINGS = template_headers.RequestBindings()


@dataclass
class FlowState:
    """What butter knows about one LLM flow while it is in flight."""

    fmt: WireFormat
    parsed: ParsedRequest | None = None
    namespace: str = ""
    mode: str = "auto"  # the proxy's mode, or this request's butter-mode header
    fixed_namespace: str = ""  # the proxy's butter_namespace, or this request's header
    status: str = ""  # the butter-cache header value
    record: bool = False
    refresh: bool = False
    streamed: bool = False
    chunks: list[bytes] = field(default_factory=list)
    bindings: dict[str, str] = field(default_factory=dict)  # declared by Butter-Bindings
    induction: bool = True  # learn templates from this request once it is recorded
    induction_min: int = 2
    verify: Hit | None = None  # the template hit this forwarded request verifies (addon/verification.py)
    record_node: bytes | None = None  # where a miss will be recorded, when worked out off the loop
    plain: bool = False  # came with no butter-* header: the proxy's own settings decide everything


@dataclass(frozen=True)
class FlowOptions:
    """The options each new flow starts from (until its own butter-* headers say otherwise)."""

    mode: str = "auto"
    namespace: str = ""
    induction: bool = True
    induction_min: int = 2


class Butter:
    def __init__(self) -> None:
        self.cache: Cache | None = None
        self.writer: ThreadPoolExecutor | None = None
        # Induction has its own thread, outside `pending`: a miss that drains
        # the writer must never wait for it.
        # Bounded, and jobs of one workflow coalesce (addon/induction_queue.py).
        self.inducer: InductionQueue | None = None
        self.pending: set[Future] = set()
        self.flows: dict[str, FlowState] = {}
        self.hits: Counter[bytes] = Counter()
        self.misses: Counter[bytes] = Counter()  # per namespace/api/model, for `butter stats`
        self.last_flush = time.monotonic()
        self.last_reader_check = time.monotonic()
        self.disabled = ""  # why butter is off (a damaged database, no shared store yet), shown in butter-cache
        self.joiner: SharedStoreJoiner[Cache] | None = None  # retries a shared store unreachable at start
        self._once = limits.OnceLog(log)  # bounded: keys name a kind of problem, never its text
        self._stuck_drain: Future | None = None  # a wait for the writer that timed out, until it completes
        # mitmdump sets the root logger to DEBUG and filters in its handlers,
        # so even a DEBUG record is formatted and sent to every addon (add_log):
        # a line per hit costs a hit ~0.2 ms. Only built when debug is shown
        # (outside mitmdump, plain logging filters DEBUG cheaply).
        self.hit_lines = True
        self.summary_hits = 0
        self.summary_misses = 0
        self.last_summary = time.monotonic()
        self.verifier = verification.Verifier()
        self.recent = recent.RecentRequests()
        self.web_token = webview.Settings("proxy").token  # one per proxy run, embedded in its page
        self.report: RunReport | None = None
        self.memo = hit_memo.HitMemo()
        self.flow_options = FlowOptions()
        self._ticker: asyncio.Task | None = None

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
        loader.add_option("butter_induction", bool, True,
                          "Learn templates from misses (off the request path): runs that differ only in "
                          "values are then served with their own values.")
        loader.add_option("butter_durable", bool, False,
                          "Hand a miss's reply to the client only once it is recorded on disk (a streamed reply: "
                          "its end). Off: recording happens just after, and a kill -9 can lose the replies of "
                          "the last moments.")
        loader.add_option("butter_induction_min", int, 2,
                          "Accept a learned template only when at least this many recorded runs are all "
                          "reproduced by it.")
        verification.add_options(loader)
        loader.add_option("butter_ui_writes", bool, False,
                          "Let the web view at http://butter.local/ (loopback clients only) mark replies "
                          "good/bad and forget nodes, with its per-session token.")
        loader.add_option("butter_run_report", str, "",
                          "Write this process's counts (requests, hits, misses, tokens saved, replay-misses) "
                          "as JSON to this file every few seconds and at exit (`butter run` reads it).")

    def configure(self, updated: set[str]) -> None:
        self.memo.clear()  # hits remembered under the old options
        if "termlog_verbosity" in updated:
            self.hit_lines = ctx.options.termlog_verbosity == "debug"
        if "butter_min_observations" in updated and ctx.options.butter_min_observations < 1:
            raise exceptions.OptionsError("butter_min_observations must be at least 1")
        if "butter_induction_min" in updated and ctx.options.butter_induction_min < 2:
            raise exceptions.OptionsError("butter_induction_min must be at least 2: a template needs two runs to compare")
        verification.check_options(updated)
        if "butter_db" in updated or "butter_min_observations" in updated:
            self._open(ctx.options.butter_db)
        if self.cache is not None:
            self.cache.set_trust(verification.rules())
        if "butter_run_report" in updated:
            self.report = RunReport(ctx.options.butter_run_report) if ctx.options.butter_run_report else None
        # Offline replay needs mitmproxy to defer the upstream connection until
        # a hook has decided; with the default `eager` a CONNECT to an
        # unreachable provider fails before butter ever sees the request.
        if "connection_strategy" in ctx.options.keys() and ctx.options.connection_strategy != "lazy":
            ctx.options.connection_strategy = "lazy"
        # Read once here, not per request: each read of ctx.options deep-copies the value.
        self.flow_options = FlowOptions(ctx.options.butter_mode, ctx.options.butter_namespace,
                                        ctx.options.butter_induction, ctx.options.butter_induction_min)

    def running(self) -> None:
        # Counters reach the database (and `butter stats`) on a timer too, not only with the next request.
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(HIT_FLUSH_SECONDS)
            try:
                self._flush_hits()
                if self.report is not None:
                    self.report.write()
            except Exception as e:
                self._log_once(f"tick:{type(e).__name__}", "butter: periodic flush failed: %r", e)

    def done(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._flush_hits(force=True)
        self._flush_recent()
        self._close()
        if self.report is not None:
            try:
                self.report.write(force=True)
            except OSError as e:
                log.warning("butter: could not write the run report %s: %s", self.report.path, e)

    def _open(self, path: str) -> None:
        self._close()
        self.disabled = ""
        policy = ServePolicy(min_observations=ctx.options.butter_min_observations)
        try:
            damage = probe_in_subprocess(path)
            if damage:
                raise DatabaseDamaged(path, damage)
            self.cache = Cache(path, policy)
        except DatabaseDamaged as e:
            # Traffic keeps flowing, untouched; butter stays off until restarted on a sound database.
            # A warning, not an error: mitmdump exits on an error logged while it starts.
            self.disabled = "bypass (butter disabled: damaged database)"
            log.warning("butter: DISABLED, every request passes through untouched: %s", e)
            return
        except SharedStoreUnreachable as e:
            # A never-synced replica and no Redis yet (docker-compose starts both at once): traffic
            # flows untouched while a thread keeps trying; only this is retried, not a refusal.
            self.disabled = "bypass (butter disabled: shared store unreachable)"
            self.joiner = SharedStoreJoiner(lambda: Cache(path, policy), self._joined, self._join_refused,
                                            ctx.master.event_loop)
            log.warning("butter: DISABLED until the shared store answers, every request passes through untouched: "
                        "%s (trying again every %g s)", e, self.joiner.interval)
            return
        except Exception as e:  # a bad path must not take the proxy down silently
            raise exceptions.OptionsError(f"butter_db {path!r} cannot be opened: {e}") from e
        self._start_writing()
        log.info("butter: tree at %s, mode %s", self.cache.backend.path, ctx.options.butter_mode)

    def _start_writing(self) -> None:
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="butter-writer")
        self.inducer = InductionQueue()

    def _joined(self, cache: Cache) -> None:
        """On the event loop: the shared store answered; butter serves and records from the next request."""
        self.joiner = None
        self.memo.clear()
        self.cache = cache
        cache.set_trust(verification.rules())
        self._start_writing()
        self.disabled = ""  # last: a request sees butter on only once all of it is
        log.info("butter: joined the shared store %s; serving and recording now (tree at %s, mode %s)",
                 getattr(cache.backend, "display", ""), cache.backend.path, ctx.options.butter_mode)

    def _join_refused(self, error: Exception) -> None:
        """On the event loop: Redis answered, and refused this replica: a mistake that waiting will not fix."""
        self.joiner = None
        self.disabled = "bypass (butter disabled: shared store refused)"
        log.error("butter: DISABLED, every request passes through untouched: the shared store cannot be used: %s", error)

    def _close(self) -> None:
        self.memo.clear()
        if self.joiner is not None:
            self.joiner.stop()
            self.joiner = None
        if self.writer is not None:
            self.writer.shutdown(wait=True)  # nothing recorded is lost
            self.writer = None
        if self.inducer is not None:
            # Learning can wait for the next run; the recordings it reads are kept.
            self.inducer.shutdown(wait=True)
            self.inducer = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    # -- hooks --------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if feedback.is_reserved(flow.request.host):
            return  # butter.local: answered in `request`, never forwarded
        plain = not _has_butter_header(flow.request.headers)
        if not plain:
            try:
                wanted = controls.take(flow.request.headers)  # removed before anything goes upstream
            except controls.ControlError as e:
                flow.metadata["butter-refused"] = str(e)  # answered in `request`, in the provider's shape
                wanted = controls.Controls()
            try:
                declared = template_headers.take(flow.request.headers)  # removed before anything goes upstream
            except template_headers.BindingsError as e:
                flow.metadata.setdefault("butter-refused", str(e))
                declared = template_headers.RequestBindings()
            try:
                if not verification.take(flow.request.headers):
                    flow.metadata[verification.OPTED_OUT] = True
            except verification.HeaderError as e:
                flow.metadata.setdefault("butter-refused", str(e))
        else:  # what both `take`s return for a request without butter's headers, at a tenth of the cost
            wanted, declared = NO_CONTROLS, NO_BINDINGS
        fmt = formats.recognise(flow.request.method, flow.request.path.split("?", 1)[0])
        if fmt is not None and self.disabled:
            self.flows[flow.id] = FlowState(fmt, status=self.disabled)
            return
        if fmt is None or self.cache is None:
            return
        options = self.flow_options
        mode = wanted.mode or options.mode
        state = FlowState(fmt, mode=mode, fixed_namespace=wanted.namespace or options.namespace,
                          bindings=declared.values or {},  # never NO_BINDINGS' shared dict
                          induction=declared.induction and options.induction,
                          induction_min=options.induction_min, plain=plain)
        self.flows[flow.id] = state
        if mode == "off":
            state.status = "bypass (mode off)"

    async def request(self, flow: http.HTTPFlow) -> None:
        if feedback.is_reserved(flow.request.host):
            await self._answer_butter_local(flow)
            return
        if "butter-refused" in flow.metadata:
            self._refuse(flow, flow.metadata.pop("butter-refused"))
            return
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
        raw = request.raw_content or b""
        # One pass over the raw fields: a `headers.get` miss rescans them and raises and catches a KeyError.
        coding = next((v.decode("latin-1") for k, v in request.headers.fields if k.lower() == b"content-encoding"), "")
        # Decoding, parsing and hashing a big body would hold every other
        # client: do it (and the lookup) on a thread.
        offload = limits.is_large(raw, coding)
        # The same bytes as a request served before, with the tree unchanged: its hit again (addon/hit_memo.py).
        memo_key = (hit_memo.HitMemo.key(state.fmt.name, request, raw)
                    if state.plain and state.mode != "record" and not state.fmt.keeps_state and not offload else None)
        remembered = (self.memo.get(memo_key, self.cache.backend.generation(), self.cache.backend.lookups_unchanged)
                      if memo_key is not None else None)
        if remembered is not None:
            state.parsed, state.namespace, size = remembered.parsed, remembered.namespace, remembered.size
        else:
            read = await self._read(state, request, raw, coding, offload)
            if read is None:
                return
            credential, size = read
            state.namespace = self.cache.namespace(credential, state.fixed_namespace)
        _move_query_key_to_header(request)
        if size > limits.LEARN_BODY_BYTES:
            # Learning reads every value of the conversation in long calls that
            # hold the GIL (the event loop with it): recorded and served, not learned from.
            state.induction = False
        mode = state.mode
        if state.fmt.keeps_state and not await self._expand(flow, state):
            return
        conversation = state.parsed.conversation
        if mode == "record":
            if self.report is not None:
                self.report.miss(state.fmt.name, conversation.context.get("model"), "record mode", replay=False)
            self._forward_and_record(flow, state, refresh=True, status="record")
            return
        declared = state.bindings or None
        # Read before the lookup: a write that was queued when the lookup
        # began may commit (and leave `pending`) while it runs.
        writes_queued = bool(self.pending)
        remember = memo_key is not None and remembered is None  # a hit found now is remembered once served
        # Read before the lookup: a write during it makes the remembered hit stale.
        commit = self.cache.backend.generation() if remember else 0
        if remembered is not None:
            result: Hit | Miss = remembered.fresh_hit()
        else:
            result = await self._look_up(state, declared, offload)
            if not isinstance(result, Hit) and (writes_queued or self.pending) and await self._wait_for_writes():
                # A reply recorded a moment ago may still be in the writer's queue:
                # wait (briefly) for it rather than miss what this process already knows.
                result = await self._look_up(state, declared, offload)
        result = verification.recheck(result, flow)
        model = conversation.context.get("model")
        if isinstance(result, Hit):
            frozen = hit_memo.freeze(result) if remember else None
            try:
                self._serve(flow, state, result)
            except RenderError as e:
                # A template reply these values cannot fill: ask the provider.
                result = Miss("render-failed", len(conversation.messages), result.node_id,
                              f"the template reply cannot be rendered ({e})", result.path)
            else:
                if frozen is not None:  # served: the same bytes may have it again
                    self.memo.put(memo_key, commit, state.parsed, state.namespace, size, frozen)
                if self.hit_lines:
                    log.debug("butter: hit  %s %s (%d messages) node %s%s", state.fmt.name, model,
                              len(conversation.messages), result.node_id.hex()[:12],
                              f" with {len(result.bindings)} bound value(s)" if result.bindings else "")
                if result.templated and state.mode == "auto":
                    self.verifier.after_serve(flow, result)
                return
        if remembered is not None:
            # Asked of the provider after all (a sampled re-check): recorded from
            # a parse of its own, never from the one the memo shares.
            if await self._read(state, request, raw, coding, offload) is None:
                return
            conversation = state.parsed.conversation
        if result.template_failure:
            log.debug("butter: nearest template %s at message %d: %s", result.template.hex()[:12] if result.template
                      else "?", result.matched + 1, result.template_failure)
        # Positions people read are 1-based: "message 1" is the first message.
        where = (f"left the tree after {result.matched} of {len(conversation.messages)} message(s): {result.detail}"
                 if result.matched >= 0 else result.detail)
        self.misses[miss_key(state.namespace, conversation.context)] += 1
        flow.metadata["butter-miss"] = (result.matched, result.detail, result.deepest)  # for the request list
        if self.report is not None:
            self.report.miss(state.fmt.name, model, where, replay=mode == "replay")
        self._submit(self._remember_miss, state.fmt.name, flow.request.path.split("?", 1)[0], state.namespace,
                     conversation, mode, where)
        self._flush_hits()
        if mode == "replay":
            state.status = "replay-miss"
            message = (f"butter replay mode: this request was never recorded ({where}); "
                       "it was not forwarded to the provider")
            self._respond(flow, state.fmt.error(REPLAY_MISS_STATUS, message, "butter_replay_miss"),
                          {"butter-cache": "replay-miss", "x-should-retry": "false"})
            log.info("butter: replay-miss %s %s: %s", state.fmt.name, model, where)
            return
        state.verify = self.verifier.begin(flow, result, state.fmt.name, model)
        if state.verify is not None:
            self._forward_and_record(flow, state, refresh=False, status=verification.STATUS)
            return
        log.info("butter: miss %s %s (%d messages): %s", state.fmt.name, model, len(conversation.messages), where)
        self._forward_and_record(flow, state, refresh=False, status="miss")

    async def _read(self, state: FlowState, request: http.Request, raw: bytes, coding: str,
                    offload: bool) -> tuple[str | None, int] | None:
        """Parse the request into `state.parsed`: (its credential, its body's size),
        or None when it passes through unread (the reason is set and logged)."""
        try:
            if offload:
                credential, state.parsed, size = await asyncio.to_thread(_read_request, state.fmt, request, raw, coding)
            else:
                credential, state.parsed, size = _read_request(state.fmt, request, raw, coding)
        except limits.LoneSurrogate:
            # The message text itself is never logged.
            self._log_once("surrogate", "butter: a %s request holds a lone UTF-16 surrogate, which cannot be stored; "
                           "passing it (and any like it) through", state.fmt.name)
            state.status = "bypass (not understood)"
            if self.report is not None:
                self.report.passed(state.fmt.name, None)
            return None
        except (limits.BodyTooLarge, limits.BadEncoding) as e:
            self._log_once(f"body:{type(e).__name__}", "butter: a %s request body was not read (%s); passing it "
                           "(and any like it) through unchanged", state.fmt.name, e)
            state.status = "bypass (body too large)" if isinstance(e, limits.BodyTooLarge) else "bypass (not understood)"
            return None
        except NotUnderstood as e:
            self._log_once(f"parse:{state.fmt.name}", "butter: %s request not understood (%s); passing it (and any "
                           "like it) through", state.fmt.name, e)
            state.status = "bypass (not understood)"
            return None
        return credential, size

    async def _expand(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """Fill in server-side state (a Responses `previous_response_id`).

        False when the state is unknown: the request then passes through (the
        provider may know it), or in replay mode gets a replay-miss.
        """
        assert state.parsed is not None
        table = self._state_table(state)
        if self.pending:
            # The state this request names may still be in the writer's queue
            # (a reply recorded or served a moment ago): read it after that.
            await self._wait_for_writes()
        try:
            state.parsed = state.fmt.expand(state.parsed, table)
        except NotUnderstood as e:
            if state.mode == "replay":
                state.status = "replay-miss"
                if self.report is not None:
                    self.report.miss(state.fmt.name, state.parsed.conversation.context.get("model"), str(e), replay=True)
                self._respond(flow, state.fmt.error(REPLAY_MISS_STATUS, f"butter replay mode: {e}", "butter_replay_miss"),
                              {"butter-cache": "replay-miss", "x-should-retry": "false"})
            else:
                state.status = "bypass (not understood)"
            log.info("butter: %s request not expanded (%s)", state.fmt.name, e)
            return False
        return True

    async def _look_up(self, state: FlowState, declared: dict | None, offload: bool) -> Hit | Miss:
        assert self.cache is not None and state.parsed is not None
        if not offload:
            return self.cache.lookup(state.namespace, state.parsed.conversation, declared)

        def look_up() -> Hit | Miss:
            assert self.cache is not None and state.parsed is not None
            result = self.cache.lookup(state.namespace, state.parsed.conversation, declared)
            if not isinstance(result, Hit) and not state.bindings:
                # The node a miss is recorded at (responseheaders names it): hashing
                # a big conversation belongs off the loop too.
                state.record_node = plan_record(state.parsed.conversation, state.namespace)[1]
            return result

        return await asyncio.to_thread(look_up)

    async def _wait_for_writes(self) -> bool:
        """Wait for the writes queued so far, at most DRAIN_WAIT_SECONDS.

        False when they did not finish in time (another process holding the
        LMDB write lock, a slow disk): the request goes on without them, and
        later ones do not wait at all until the writer has caught up. Nothing
        is dropped; the writes complete when they can.
        """
        if self._stuck_drain is not None:
            if not self._stuck_drain.done():
                return False
            self._stuck_drain = None
            log.info("butter: the tree's writer has caught up")
        drain = self._drain_future()
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(drain)), DRAIN_WAIT_SECONDS)
        except TimeoutError:
            self._stuck_drain = drain
            log.warning("butter: writes to the tree are held up (is another process holding the database's write "
                        "lock?); forwarding misses without waiting for them, they are recorded once it is free")
            return False
        return True

    def _state_table(self, state: FlowState) -> NamespacedTable:
        assert self.cache is not None
        upstream = state.parsed.conversation.context.get("upstream", "") if state.parsed else ""
        return self.cache.state_table(state.fmt.name, state.namespace, upstream)

    def _forward_and_record(self, flow: http.HTTPFlow, state: FlowState, refresh: bool, status: str) -> None:
        state.record, state.refresh, state.status = True, refresh, status
        if state.fmt.keeps_state:
            self._resend_state(flow, state)
        # Recording needs bytes it can read: ask the provider not to compress
        # (gzip also holds back streamed tokens behind its buffer).
        flow.request.headers["accept-encoding"] = "identity"

    def _resend_state(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Forward a continuation of a response the provider may not hold as a whole conversation.

        Every request butter sends upstream (miss, verification, re-check,
        record mode) passes here. Only the body changes (docs/responses.md).
        """
        assert state.parsed is not None
        try:
            body = state.fmt.upstream_body(state.parsed, flow.request.get_content(strict=False) or b"",
                                           self._state_table(state))
        except NotUnderstood as e:
            log.warning("butter: %s request forwarded unchanged though the provider may not hold the response "
                        "it continues (it may refuse it): %s", state.fmt.name, e)
            return
        if body is not None:
            flow.request.content = body  # re-encoded as the client encoded it; content-length follows
            log.info("butter: %s request continues a response the provider may not hold (one butter served): "
                     "forwarded stateless, with the whole conversation", state.fmt.name)

    def _serve(self, flow: http.HTTPFlow, state: FlowState, hit: Hit) -> None:
        assert state.parsed is not None
        state.status = "hit"
        flow.metadata["butter"] = "hit"
        # A template hit always binds something; an exact reply is served as recorded.
        reply = render_reply(hit.reply, hit.bindings) if hit.bindings else hit.reply  # RenderError: nothing sent
        if hit.bindings:
            reply = state.fmt.bound_reply(reply, hit.bindings)
        response = state.fmt.render(reply, state.parsed)
        self._respond(flow, response, {"butter-cache": "hit", "butter-node": hit.node_id.hex(),
                                       "butter-reply": hit.reply_id.hex()})
        if state.fmt.keeps_state:
            self._submit(state.fmt.remember, state.parsed, reply, self._state_table(state))
        self.hits[hit.node_id] += 1
        if self.report is not None:
            self.report.hit(state.fmt.name, state.parsed.conversation.context.get("model"), reply, bool(hit.bindings))
        self._flush_hits()

    def _respond(self, flow: http.HTTPFlow, wire: WireResponse, extra: dict[str, str]) -> None:
        flow.response = _make_response(wire.status, wire.body, {**wire.headers, **extra})
        flow.is_replay = "response"

    # -- steering: control headers and butter.local (addon/controls.py, addon/feedback.py)
    def _refuse(self, flow: http.HTTPFlow, message: str) -> None:
        """An invalid control header: a 400 in the provider's error shape, never a fallback."""
        state = self.flows.pop(flow.id, None)
        if state is not None:
            wire = state.fmt.error(400, message, controls.ERROR_CODE)
        else:  # not an LLM request butter knows: an OpenAI-style error, the commonest shape
            status, body, headers = feedback.problem(400, message, code=controls.ERROR_CODE).encoded()
            wire = WireResponse(status, headers, body)
        self._respond(flow, wire, {"butter-cache": "refused", "x-should-retry": "false"})
        log.info("butter: refused a request: %s", message)

    async def _answer_butter_local(self, flow: http.HTTPFlow) -> None:
        if webview.is_webview_path(flow.request.path):
            page = await self._webview(flow)
            self._respond(flow, WireResponse(page.status, page.headers, page.body), {})
            return
        try:
            action = feedback.route(flow.request.method, flow.request.path, flow.request.raw_content or b"")
            if isinstance(action, feedback.Health):
                answer = feedback.health(self.cache.backend.path if self.cache else None, ctx.options.butter_mode,
                                         ctx.options.butter_namespace, ctx.options.butter_min_observations,
                                         self.disabled)
            elif isinstance(action, feedback.Vote):
                answer = await self._vote(action)
            else:
                answer = action
        except Exception as e:  # still answered here: butter.local is never forwarded (nor looked up in DNS)
            self._log_once(f"butter.local:{type(e).__name__}", "butter: a butter.local request failed: %r", e)
            answer = feedback.problem(500, f"butter could not answer: {type(e).__name__}")
        status, body, headers = answer.encoded()
        self._respond(flow, WireResponse(status, headers, body), {})

    async def _webview(self, flow: http.HTTPFlow) -> "webview.Page":
        if not webview.client_is_loopback(flow.client_conn.peername):
            return webview.error(403, "the web view is only served to clients on this machine")
        if self.cache is None or self.writer is None:
            return webview.error(503, "butter has no open tree")
        settings = webview.Settings("proxy", ctx.options.butter_ui_writes, self.web_token, self.cache.backend.path)
        request = flow.request
        job = (webview.handle, self.cache.backend, self.cache.policy, settings, request.method, request.path,
               dict(request.headers), request.get_content(strict=False) or b"")
        # Reads on a worker thread; writes on the writer, after every queued recording.
        future = self.writer.submit(*job) if webview.is_write(request.method) else asyncio.to_thread(*job)
        return await (asyncio.wrap_future(future) if isinstance(future, Future) else future)

    async def _vote(self, vote: "feedback.Vote") -> "feedback.Answer":
        if self.cache is None or self.writer is None:
            return feedback.problem(503, "butter has no open tree")
        # On the writer thread: off the event loop, and after every recording
        # queued before it, so a vote on a reply recorded a moment ago finds it.
        future = self.writer.submit(admin.vote, self.cache.backend, vote.node_id, vote.verdict, vote.reply_id,
                                    self.cache.policy)
        try:
            result = await asyncio.wrap_future(future)
        except feedback.FeedbackError as e:
            return feedback.vote_failed(e)
        except Exception as e:
            log.error("butter: feedback failed: %r", e)
            return feedback.problem(500, f"butter could not store the feedback: {type(e).__name__}")
        log.info("butter: feedback %s on node %s (%d replies changed)", vote.verdict, vote.node_id.hex()[:12],
                 len(result.changed))
        return feedback.vote_answer(result)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self.flows.get(flow.id)
        if state is None or flow.response is None or flow.is_replay == "response":
            return
        flow.response.headers["butter-cache"] = state.status or "bypass"
        if state.verify is not None:
            flow.response.headers["butter-template"] = state.verify.node_id.hex()
        if not state.record:
            if exchange.is_streamed(flow.response):
                flow.response.stream = True  # passed through: chunk by chunk, never buffered whole
            return
        if not 200 <= flow.response.status_code < 300:
            state.record = False  # errors are passed through, never recorded
            return
        if state.parsed is not None and not state.bindings:
            # The node this reply is recorded at, so a client can score a run
            # before it is ever served (a bound recording's node is decided later).
            node = state.record_node or plan_record(state.parsed.conversation, state.namespace)[1]
            flow.response.headers["butter-node"] = node.hex()
        state.streamed = exchange.is_streamed(flow.response)
        asked = state.parsed.stream if state.parsed else False
        if state.streamed or asked:
            chunks = state.chunks

            def tee(data: bytes) -> bytes:
                # Forward each chunk as it arrives; keep a copy to assemble.
                chunks.append(data)
                return data

            flow.response.stream = tee

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state = self.flows.pop(flow.id, None)
        if state is not None:
            exchange.hide_query_credentials(flow.request)  # sent: mitmdump prints the URL after this hook
            self._note_request(flow, state)
        if state is None or not state.record or flow.is_replay == "response" or flow.response is None:
            return
        if not 200 <= flow.response.status_code < 300 or state.parsed is None:
            return
        try:
            body = self._received_body(flow, state)
            reply = exchange.reply_of(state.fmt, flow.response, body, state.streamed)
        except Exception as e:
            self._log_once(f"reply:{state.fmt.name}:{type(e).__name__}", "butter: could not read a %s reply, not recorded: %r", state.fmt.name, e)
            return
        if reply is None:
            log.info("butter: not recorded: the %s reply was incomplete or an error", state.fmt.name)
            return
        recorded = self._submit(self._record, state, reply)
        if state.verify is not None and self.cache is not None:
            self._submit(self.verifier.conclude, self.cache, state.fmt.name,
                         state.parsed.conversation.context.get("model"), state.verify, reply)
        if recorded is not None and ctx.options.butter_durable:
            # mitmproxy awaits what a hook returns before the response (or a
            # stream's end) goes to the client.
            return self._until_recorded(recorded)
        return None

    async def _until_recorded(self, recorded: Future) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(recorded)), DURABLE_WAIT_SECONDS)
        except TimeoutError:
            self._log_once("durable-timeout", "butter: butter_durable: a recording waited %.0f s (write lock held "
                           "elsewhere?); replies go to the client before they are on disk until it lands",
                           DURABLE_WAIT_SECONDS)

    def error(self, flow: http.HTTPFlow) -> None:
        state = self.flows.pop(flow.id, None)
        message = flow.error.msg if flow.error else "the exchange failed"
        if state is not None:
            exchange.hide_query_credentials(flow.request)
            self._note_request(flow, state, message)
        if state is not None and state.record:
            log.info("butter: not recorded: %s", message)
        if "certificate" in message.lower() or "tls handshake" in message.lower():
            # mitmproxy answers the client with its own 502 page after this hook; say what to do about it.
            self._log_once(f"upstream-tls:{flow.request.host}",
                           "butter: TLS to %s failed (%s); the client got a 502. A self-signed upstream? Start "
                           "butter with --upstream-insecure (butter proxy/run), or trust its CA with "
                           "--set ssl_verify_upstream_trusted_ca=PATH", flow.request.host, message)

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
        # One record path for the live proxy and `butter import-flows`.
        node = exchange.store_reply(self.cache, state.fmt, state.namespace, state.parsed, reply,
                                    streamed=state.streamed, refresh=state.refresh,
                                    state=self._state_table(state) if state.fmt.keeps_state else None,
                                    bindings=state.bindings, issued=True)
        if self.report is not None:
            self.report.record()
        log.info("butter: recorded %s %s reply at node %s", state.fmt.name,
                 state.parsed.conversation.context.get("model"), node.hex()[:12])
        conversation = state.parsed.conversation
        # Indexed here, as it is recorded, so a learning job coalesced away
        # below still leaves this run as evidence for the next one.
        if state.induction and not state.bindings and self.inducer is not None and \
                self.cache.observe(state.namespace, conversation):
            try:
                # One waiting job per workflow: a newer recording of it replaces the older job.
                workflow = (state.namespace, root_id(state.namespace, conversation.context), len(conversation.messages))
                self.inducer.submit(self._induce, state.namespace, conversation, state.induction_min,
                                    state.fmt.name, key=workflow)
            except RuntimeError:
                pass  # shutting down: learning waits for the next run

    def _remember_miss(self, fmt: str, path: str, namespace: str, conversation, mode: str, where: str) -> None:
        """The namespace's last miss, canonical and credential-free, replacing the one before (on the writer)."""
        assert self.cache is not None
        row = last_miss_row(fmt, path, namespace, conversation, mode, where)
        if row is not None:
            self.cache.backend.put_aux(LAST_MISS_TABLE, last_miss_key(namespace), row)

    def _induce(self, namespace: str, conversation, min_observations: int, fmt: str = "") -> None:
        """Learn templates from a recorded miss, on the induction thread.

        Logs one line per recorded miss, `butter: induction <format> <model>: ...`;
        jobs run in order, so a line says every earlier miss has been learned from.
        """
        if self.cache is None:
            return
        where = f"{fmt} {conversation.context.get('model')}"
        try:
            outcome = self.cache.induce(namespace, conversation, min_observations, observed=True)
        except Exception as e:
            log.error("butter: induction %s: failed: %r", where, e)
            return
        if outcome.accepted is not None:
            proposal = outcome.accepted
            log.info("butter: induction %s: learned a template from %d runs (slots %s) at message %d", where,
                     len(proposal.keys), ", ".join(f"{k}:{v}" for k, v in proposal.slots.items()), proposal.start + 1)
        else:
            # Reasons quote the conversation's values: debug only, like miss explanations.
            for rejected in outcome.rejected:
                log.debug("butter: induction rejected a proposal: %s", rejected.reason)
            log.info("butter: induction %s: learned nothing: %s", where, outcome.skipped or
                     f"{len(outcome.rejected)} proposal(s) failed the evidence")

    def _submit(self, fn, *args) -> Future | None:
        if self.writer is None:
            return None
        future = self.writer.submit(self._guarded, fn, *args)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future

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

    def _note_request(self, flow: http.HTTPFlow, state: FlowState, error: str | None = None) -> None:
        """Add to the web view's request list; written in a batch off the event loop."""
        if self.recent.note(flow, state, error):
            try:
                asyncio.get_running_loop().call_later(recent.FLUSH_SECONDS, self._flush_recent)
            except RuntimeError:  # no loop (shutting down): write now
                self._flush_recent()

    def _flush_recent(self) -> None:
        rows = self.recent.take()
        if rows and self.cache is not None:
            self._submit(self.recent.write, self.cache.backend, rows)

    def _flush_hits(self, force: bool = False) -> None:
        if self.cache is not None and time.monotonic() - self.last_reader_check >= READER_CHECK_SECONDS:
            self.last_reader_check = time.monotonic()
            self._submit(self._clear_stale_readers)
        due = force or time.monotonic() - self.last_flush >= HIT_FLUSH_SECONDS
        if due:
            self._flush_induction_skips()
        if not (self.hits or self.misses) or not due:
            return
        batch, self.hits = dict(self.hits), Counter()
        missed, self.misses = dict(self.misses), Counter()
        self.last_flush = time.monotonic()
        if self.cache is not None and self.writer is not None:
            self._submit(self.cache.backend.add_hits, batch)
            self._submit(self.cache.backend.add_aux_counts, MISSES_TABLE, missed)
        self._summarise(sum(batch.values()), sum(missed.values()), force)

    def _flush_induction_skips(self) -> None:
        skipped = self.inducer.take_skipped() if self.inducer is not None else {}
        if not skipped or self.cache is None:
            return
        self._submit(self.cache.backend.add_aux_counts, INDUCTION_SKIPS_TABLE,
                     {kind.encode(): n for kind, n in skipped.items()})
        log.info("butter: induction skipped %d job(s): %d coalesced into a newer job of the same workflow, "
                 "%d dropped with the queue full (their recordings are kept)", sum(skipped.values()),
                 skipped.get("coalesced", 0), skipped.get("dropped", 0))

    def _clear_stale_readers(self) -> None:
        if self.cache is not None:
            freed = self.cache.backend.clear_stale_readers()
            if freed:
                log.info("butter: freed %d reader slot(s) left by a process that died while reading", freed)

    def _summarise(self, hits: int, misses: int, force: bool) -> None:
        """One INFO line for the hits of the last HIT_SUMMARY_SECONDS (misses have their own lines)."""
        self.summary_hits += hits
        self.summary_misses += misses
        elapsed = self.last_flush - self.last_summary
        if not force and elapsed < HIT_SUMMARY_SECONDS:
            return
        if self.summary_hits:
            log.info("butter: %d hits, %d misses in the last %.0f s", self.summary_hits, self.summary_misses, elapsed)
        self.summary_hits = self.summary_misses = 0
        self.last_summary = self.last_flush

    def _log_once(self, key: str, message: str, *args) -> None:
        self._once.warning(key, message, *args)


def _read_request(fmt: WireFormat, request: http.Request, raw: bytes, coding: str):
    """The credential, parsed request and decoded size, from a body decoded within limits.

    Raises NotUnderstood, limits.BodyTooLarge, limits.BadEncoding or
    limits.LoneSurrogate: the request then passes through unchanged.
    """
    body = limits.request_body(raw, coding)
    credential, parsed = exchange.read_request(fmt, request, body)
    conversation = parsed.conversation
    if limits.has_lone_surrogate(body, conversation.context, conversation.messages):
        raise limits.LoneSurrogate()
    return credential, parsed, len(body)


def _make_response(status: int, body: bytes, headers: dict[str, str]) -> http.Response:
    """What `http.Response.make(status, body, headers)` returns, built in one step.

    `make` converts the headers one by one, then sets the body through the
    content setter, which looks up content-encoding and transfer-encoding and
    appends content-length (each a scan of the fields). For plain str headers
    with none of those three, the result is the same fields in the same order.

    Each response is a shallow copy of one made (and type-checked) at import,
    with every field then set anew: mitmproxy's constructor type-checks each
    field through `typing` introspection, two thirds of a response's cost,
    for values whose types are fixed here. The trailers stay None (the blank
    one's): checking `Headers | None` against None makes mitmproxy raise and
    catch a TypeError whose traceback keeps the hit path's frames alive in a
    reference cycle until the next garbage collection.
    """
    if any(type(k) is not str or type(v) is not str or k.lower() in _FRAMING_HEADERS for k, v in headers.items()):
        return http.Response.make(status, body, headers)
    fields = [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for k, v in headers.items()]
    fields.append((b"content-length", str(len(body)).encode("ascii")))
    now = time.time()
    data = copy.copy(_BLANK.data)
    data.status_code, data.reason = status, status_codes.RESPONSES.get(status, "").encode()
    data.headers, data.content, data.timestamp_start, data.timestamp_end = http.Headers(fields), body, now, now
    response = copy.copy(_BLANK)
    response.data = data
    return response


def _blank_response() -> http.Response:
    response = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(), b"", http.Headers(), 0.0, 0.0)
    response.data.trailers = None
    return response


_FRAMING_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})
_BLANK = _blank_response()  # never served or changed: only copied


def _has_butter_header(headers: http.Headers) -> bool:
    """Does the request carry any `butter-*` header (controls.py, bindings.py)?

    One pass over the raw fields; `take` looks each name up in turn, and
    mitmproxy's multidict rescans every field per lookup.
    """
    return any(name[:7].lower() == b"butter-" for name, _ in headers.fields)


def _move_query_key_to_header(request: http.Request) -> None:
    """Gemini's `?key=` becomes the equivalent `x-goog-api-key` header.

    Google accepts either; a key in the URL, though, is printed by mitmdump's
    own flow output (and kept in `-w` files and logs) where a header is not.
    """
    # `request.query` parses the URL even when it has no query at all.
    if "?" not in request.path or "key" not in request.query:
        return
    key = request.query["key"]
    del request.query["key"]
    if "x-goog-api-key" not in request.headers:
        request.headers["x-goog-api-key"] = key

