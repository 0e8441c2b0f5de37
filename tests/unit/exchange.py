"""One exchange through the addon's hooks, for unit tests that expect butter to answer or forward."""
from __future__ import annotations

import json

from mitmproxy import http

from butter.addon.cache_addon import Butter


async def send(addon: Butter, f: http.HTTPFlow, answer: dict | None = None) -> http.HTTPFlow:
    """mitmproxy's hook order; the provider answers `answer` if butter forwards."""
    addon.requestheaders(f)
    await addon.request(f)
    if f.response is None:
        assert answer is not None, "butter forwarded a request the test expected it to answer"
        f.response = http.Response.make(200, json.dumps(answer).encode(), {"content-type": "application/json"})
        addon.responseheaders(f)
        addon.response(f)
        addon._drain_future().result()
    return f
