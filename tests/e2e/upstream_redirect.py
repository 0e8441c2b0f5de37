"""Test-only mitmproxy addon: send provider traffic to the fake provider.

Loaded after butter (`-s addon/butter.py -s tests/e2e/upstream_redirect.py`),
so butter decides first; only what butter forwards reaches this hook. Clients
keep using the providers' real host names (api.openai.com, ...), as an
unmodified agent does, and butter keys its tree by the host the client asked
for. Once the fake has answered, the flow gets that host back, so a flow
saved with `-w` (and read by `butter import-flows`) says what the client
asked, as it would without the redirect.
"""
from mitmproxy import ctx, http

ORIGINAL = "test-upstream-original"


class UpstreamRedirect:
    def load(self, loader):
        loader.add_option("test_upstream", str, "", "host:port that all forwarded traffic goes to")

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not ctx.options.test_upstream:
            return
        host, port = ctx.options.test_upstream.rsplit(":", 1)
        original_host = flow.request.host_header
        flow.metadata[ORIGINAL] = (flow.request.scheme, flow.request.host, flow.request.port, original_host)
        flow.request.scheme = "https"
        flow.request.host = host
        flow.request.port = int(port)
        if original_host:
            flow.request.host_header = original_host

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)  # the request has been sent: before any `response` hook saves the flow

    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)

    def _restore(self, flow: http.HTTPFlow) -> None:
        original = flow.metadata.pop(ORIGINAL, None)
        if original is None:
            return
        scheme, host, port, host_header = original
        flow.request.scheme, flow.request.host, flow.request.port = scheme, host, port
        if host_header:
            flow.request.host_header = host_header


addons = [UpstreamRedirect()]
