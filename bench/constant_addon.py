"""The floor: a mitmproxy addon that answers every request with one constant body.

It does the least an answering addon can do (no parsing, no lookup, no
rendering): mitmproxy's own cost for a request answered in the `request` hook.
butter's hits are measured against it. The body (and its content type) come
from a file the bench writes, a reply the same size as butter's.
"""
from __future__ import annotations

from pathlib import Path

from mitmproxy import http


class ConstantReply:
    def __init__(self) -> None:
        self.body = b"{}"

    def load(self, loader) -> None:
        loader.add_option("bench_body", str, "", "file holding the constant response body")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx
        if "bench_body" in updated and ctx.options.bench_body:
            self.body = Path(ctx.options.bench_body).read_bytes()

    def request(self, flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(200, self.body, {"content-type": "application/json"})


addons = [ConstantReply()]
