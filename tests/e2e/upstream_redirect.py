"""Test-only mitmproxy addon: send provider traffic to the fake provider.

Loaded after butter (`-s addon/butter.py -s tests/e2e/upstream_redirect.py`),
so butter decides first; only what butter forwards reaches this hook. Clients
keep using the providers' real host names (api.openai.com, ...), as an
unmodified agent does.
"""
from mitmproxy import ctx, http


class UpstreamRedirect:
    def load(self, loader):
        loader.add_option("test_upstream", str, "", "host:port that all forwarded traffic goes to")

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not ctx.options.test_upstream:
            return
        host, port = ctx.options.test_upstream.rsplit(":", 1)
        original_host = flow.request.host_header
        flow.request.scheme = "https"
        flow.request.host = host
        flow.request.port = int(port)
        if original_host:
            flow.request.host_header = original_host


addons = [UpstreamRedirect()]
