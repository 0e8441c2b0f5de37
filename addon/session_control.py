"""Per-test control of a running butter proxy, for the pytest plugin.

The pytest plugin (cli/pytest_plugin.py) starts one mitmdump per test session
and loads this addon after butter (`-s addon/butter.py -s addon/session_control.py`).
Between tests it switches butter to the next test's database, mode and
namespace, so the code under test stays unmodified: it never sends a header,
it only sees HTTPS_PROXY. Requests to `http://butter-control.local/` are
answered here and never forwarded; each must carry the session's token
(`x-butter-control-token`, the `butter_control_token` option) so nothing
else that uses the proxy can switch it:

    POST /begin   {"db": DIR, "mode": "auto", "namespace": NAME}   next test: options set, counters reset
    POST /end     wait for this test's LLM exchanges to finish and for butter's
                  writer and induction queues to drain; the counters
    GET  /report  the counters so far (no waiting)

Counters are the `butter-cache` values of the test's LLM responses; each
replay-miss also keeps its request path and body (never its headers, which
may hold a key) so the plugin can explain where it left the recordings.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import Counter
from typing import Any

from mitmproxy import ctx, http

HOST = "butter-control.local"
TOKEN_HEADER = "x-butter-control-token"
DRAIN_TIMEOUT = 30.0  # seconds an /end waits for exchanges still in flight
SWITCHED = ("butter_db", "butter_mode", "butter_namespace")


class SessionControl:
    def __init__(self) -> None:
        self.inflight: set[str] = set()  # LLM flows butter is handling, by flow id
        self.counts: Counter[str] = Counter()
        self.replay_misses: list[dict[str, Any]] = []

    def load(self, loader) -> None:
        loader.add_option("butter_control_token", str, "",
                          "Token a butter-control.local request must carry (set by the pytest plugin).")

    # -- the test's traffic (butter's hooks ran first: it is loaded before this addon)
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.id in _butter().flows:
            self.inflight.add(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.id not in self.inflight:
            return
        self.inflight.discard(flow.id)
        assert flow.response is not None
        status = flow.response.headers.get("butter-cache", "bypass")
        self.counts[status.split(" ", 1)[0]] += 1
        if status == "replay-miss":
            self.replay_misses.append({
                "method": flow.request.method,
                "host": flow.request.pretty_host,
                "path": flow.request.path.split("?", 1)[0],  # a Gemini ?key= never leaves the proxy
                "body": flow.request.get_text(strict=False) or "",
                "message": _error_message(flow.response.get_text(strict=False) or ""),
            })

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.id in self.inflight:
            self.inflight.discard(flow.id)
            self.counts["error"] += 1

    # -- the control endpoint ---------------------------------------------------------
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.host.lower().rstrip(".") != HOST or flow.response is not None:
            return
        token = ctx.options.butter_control_token
        given = flow.request.headers.get(TOKEN_HEADER, "")
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            self._answer(flow, 403, {"error": "wrong or missing control token"})
            return
        route = f"{flow.request.method} {flow.request.path.split('?', 1)[0]}"
        if route == "POST /begin":
            try:
                wanted = json.loads(flow.request.get_text() or "{}")
                # Only what changes: setting butter_db at all reopens the tree.
                changes = {k: wanted[k.removeprefix("butter_")] for k in SWITCHED
                           if k.removeprefix("butter_") in wanted and getattr(ctx.options, k) != wanted[k.removeprefix("butter_")]}
                if changes:
                    ctx.options.update(**changes)
            except Exception as e:  # a bad path or mode: the plugin reports it, the proxy keeps serving
                self._answer(flow, 400, {"error": str(e)})
                return
            self._reset()
            self._answer(flow, 200, {"db": ctx.options.butter_db, "mode": ctx.options.butter_mode,
                                     "namespace": ctx.options.butter_namespace})
        elif route == "POST /end":
            waited = await self._drain()
            self._answer(flow, 200, {**self._report(), "drained": waited})
        elif route == "GET /report":
            self._answer(flow, 200, self._report())
        else:
            self._answer(flow, 404, {"error": f"no such control endpoint: {route}"})

    async def _drain(self) -> bool:
        """Everything the test sent is recorded and learned from: its exchanges
        done (a streamed reply reaches the client before butter's response
        hook runs), then butter's writer, then its induction thread (the
        writer queues induction after each recording)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        butter = _butter()
        for pool in (butter.writer, butter.inducer):
            if pool is not None:
                await asyncio.wrap_future(pool.submit(lambda: None))
        return not self.inflight

    def _reset(self) -> None:
        self.counts.clear()
        self.replay_misses = []

    def _report(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "replay_misses": self.replay_misses, "inflight": len(self.inflight)}

    @staticmethod
    def _answer(flow: http.HTTPFlow, status: int, body: dict) -> None:
        flow.response = http.Response.make(status, json.dumps(body).encode(),
                                           {"content-type": "application/json", "cache-control": "no-store"})


def _butter():
    """The butter addon this one controls (loaded first, by addon/butter.py)."""
    addon = ctx.master.addons.get("butter")
    if addon is None:
        raise RuntimeError("addon/session_control.py needs addon/butter.py loaded before it")
    return addon


def _error_message(body: str) -> str:
    """The message of butter's replay-miss error, in whichever provider shape it came."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500]
    if isinstance(data, list) and data:  # Gemini streams errors as an array
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    return body[:500]


addons = [SessionControl()]
