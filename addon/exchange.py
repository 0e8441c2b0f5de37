"""One LLM exchange, from mitmproxy's request and response to store values.

Shared by the live addon (`cache_addon.Butter`) and `butter import-flows`, so
a flow recorded with `mitmdump -w` becomes exactly the branch the addon would
have recorded had it seen the same traffic:

    read_request(fmt, request)          -> (credential, ParsedRequest)  raises NotUnderstood
    upstream_of(scheme, host, port)     -> the server, as the tree's root names it
    is_streamed(response)               -> does the body arrive as a stream
    reply_of(fmt, response, body, s)    -> canonical reply, or None (not recordable)
    store_reply(cache, fmt, ns, parsed, reply, ...) -> node id: THE record path
    record_flow(cache, flow, namespace) -> what a finished, saved flow adds to the tree

Credentials leave here only as the value the namespace is hashed from; the
adapters see headers and query with every secret removed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from mitmproxy import http

from butter.addon import bindings as template_headers  # the proxy's own header rules
from butter.addon import controls, credentials, formats
from butter.addon.formats import NotUnderstood, ParsedRequest, WireFormat, WireRequest
from butter.addon.formats.base import StateTable
from butter.store import Cache, Conversation

# The root's context names the server the reply came from (see upstream_of).
UPSTREAM_KEY = "upstream"

STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl", "application/ndjson")


def read_request(fmt: WireFormat, request: http.Request, body: bytes | None = None) -> tuple[str | None, ParsedRequest]:
    """The credential (for the namespace only) and the parsed request, keyed by its upstream.

    `body`: the request body already decoded (the proxy decodes within limits,
    addon/limits.py); by default mitmproxy decodes it.
    """
    # `dict(request.query)` parses the URL even when it has no query at all.
    query = dict(request.query) if "?" in request.path else {}
    credential, headers, query = credentials.split(header_dict(request.headers), query)
    # Without a content-encoding `get_content` returns the raw body, after a
    # header lookup (a rescan, and a KeyError raised and caught).
    if body is None:
        body = (request.get_content(strict=False) if "content-encoding" in headers else request.raw_content) or b""
    wire = WireRequest(request.method, request.path.split("?", 1)[0], query, headers, body)
    return credential, with_upstream(fmt.parse_request(wire), upstream_of(request.scheme, request.host, request.port))


def upstream_of(scheme: str, host: str, port: int) -> str:
    """The server a request goes to, as it stands in the tree's root: `https://api.openai.com:443`.

    Read where the proxy sees it before forwarding: in regular and upstream
    mode the host the client asked for, in reverse mode the reverse target.
    A reply recorded from one server is then never served for another, in
    any namespace: a keyless or shared cache cannot be poisoned from a server
    of one's own. Host names are case-free; the port is always written.
    """
    host = host.lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{scheme.lower()}://{host}:{port}"


def with_upstream(parsed: ParsedRequest, upstream: str) -> ParsedRequest:
    """The request with its upstream in the context that picks the root."""
    conversation = parsed.conversation
    context = {**conversation.context, UPSTREAM_KEY: upstream}
    return replace(parsed, conversation=Conversation(context, conversation.messages))


def hide_query_credentials(request: http.Request) -> None:
    """Take credential parameters out of a request's URL once it has been sent.

    For the proxy's own `response`/`error` hooks, which run before mitmdump
    prints the flow's URL (and before `-w` keeps it): the provider got the
    key, the terminal and the saved flow do not.
    """
    if "?" not in request.path:
        return
    names = [name for name in request.query if credentials.is_secret_query(name)]
    for name in names:
        del request.query[name]


def header_dict(headers: http.Headers) -> dict[str, str]:
    """What `dict(headers)` returns, in one pass over the fields.

    `dict(headers)` rescans every field for every name (mitmproxy's multidict),
    which costs a hit tens of microseconds. Same result: a name repeated in any
    case keeps its first spelling and its values folded with ", " in order.
    """
    folded: dict[str, str] = {}
    spelling: dict[str, str] = {}  # lower-case name -> the first spelling seen
    # The raw fields, decoded as `items(multi=True)` decodes them, minus its
    # generator and per-item calls.
    for raw_name, raw_value in headers.fields:
        name = raw_name.decode("utf-8", "surrogateescape")
        value = raw_value.decode("utf-8", "surrogateescape")
        first = spelling.setdefault(name.lower(), name)
        if first in folded:
            folded[first] = f"{folded[first]}, {value}"
        else:
            folded[first] = value
    return folded


def is_streamed(response: http.Response) -> bool:
    content_type = response.headers.get("content-type", "").lower()
    return any(content_type.startswith(t) for t in STREAM_TYPES)


def reply_of(fmt: WireFormat, response: http.Response, body: bytes, streamed: bool) -> dict | None:
    """The canonical reply of a successful exchange; None for errors and cut-short streams."""
    if not 200 <= response.status_code < 300:
        return None
    return fmt.reply_from_body(body, streamed)


@dataclass(frozen=True)
class FlowOutcome:
    """What `record_flow` did with one saved flow."""

    status: str  # "recorded" | "skipped"
    reason: str = ""  # for skipped: not-llm, not-understood, no-response, served-by-butter, not-recordable
    fmt: str = ""
    node: bytes | None = None
    model: str | None = None


def record_flow(cache: Cache, flow: http.HTTPFlow, *, fixed_namespace: str = "", refresh: bool = False,
                induction_min: int = 0) -> FlowOutcome:
    """Record a finished flow (e.g. read back from a `mitmdump -w` file).

    Only exchanges the provider answered are recorded: a response butter
    served from the tree (a hit, a replay-miss) is not new evidence. The
    per-request headers mean what they mean to the proxy: `butter-namespace`
    picks the namespace (over `fixed_namespace`), `butter-mode: off` is not
    recorded, `Butter-Bindings` records a template. With `induction_min` >= 2
    templates are learned afterwards, as the proxy's `butter_induction` does.
    """
    fmt = formats.recognise(flow.request.method, flow.request.path.split("?", 1)[0])
    if fmt is None:
        return FlowOutcome("skipped", "not-llm")
    if flow.response is None:
        return FlowOutcome("skipped", "no-response", fmt.name)
    if flow.response.headers.get("butter-cache", "").startswith(("hit", "replay-miss")) or flow.is_replay == "response":
        return FlowOutcome("skipped", "served-by-butter", fmt.name)
    request = flow.request.copy()  # the headers butter takes out must stay in the saved flow
    try:
        wanted = controls.take(request.headers)
        declared = template_headers.take(request.headers)
    except (controls.ControlError, template_headers.BindingsError):
        return FlowOutcome("skipped", "invalid-butter-header", fmt.name)
    if wanted.mode == "off":
        return FlowOutcome("skipped", "mode-off", fmt.name)
    try:
        credential, parsed = read_request(fmt, request)
    except NotUnderstood:
        return FlowOutcome("skipped", "not-understood", fmt.name)
    namespace = cache.namespace(credential, wanted.namespace or fixed_namespace)
    state = _state_table(cache, fmt, namespace, parsed)
    if state is not None:
        # Server-side state (a Responses `previous_response_id`): flows are
        # read in the order they happened, so an earlier flow's reply is
        # remembered before a later one refers to it.
        try:
            parsed = fmt.expand(parsed, state)
        except NotUnderstood:
            return FlowOutcome("skipped", "not-understood", fmt.name)
    streamed = is_streamed(flow.response)
    try:
        reply = reply_of(fmt, flow.response, flow.response.get_content(strict=False) or b"", streamed)
    except Exception:
        reply = None
    model = parsed.conversation.context.get("model")
    if reply is None:
        return FlowOutcome("skipped", "not-recordable", fmt.name, model=model)
    node = store_reply(cache, fmt, namespace, parsed, reply, streamed=streamed, refresh=refresh, state=state,
                       bindings=declared.values or None)
    if induction_min >= 2 and declared.induction and not declared.values:
        cache.induce(namespace, parsed.conversation, induction_min)
    return FlowOutcome("recorded", "", fmt.name, node, model)


def store_reply(cache: Cache, fmt: WireFormat, namespace: str, parsed: ParsedRequest, reply: dict, *,
                streamed: bool, refresh: bool, state: StateTable | None = None,
                bindings: dict[str, str] | None = None, issued: bool = False) -> bytes:
    """Record one answered exchange; returns the reply's node id.

    The live addon (on its writer thread) and import-flows both end here, so
    whatever recording learns to do (bindings, induction) applies to both.
    With client-declared `bindings` the path and reply are stored as templates.
    `issued`: the provider answered this very request just now (the live
    proxy), so its server-side state may be relied on (`WireFormat.remember`).
    """
    if bindings:
        node = cache.record_bound(namespace, parsed.conversation, reply, bindings,
                                  streamed=streamed, refresh=refresh)
    else:
        node = cache.record(namespace, parsed.conversation, reply, streamed=streamed, refresh=refresh)
    if state is not None:
        fmt.remember(parsed, reply, state, issued=issued)
    return node


def _state_table(cache: Cache, fmt: WireFormat, namespace: str, parsed: ParsedRequest):
    if not getattr(fmt, "keeps_state", False):
        return None
    # The live addon's table, so both agree on keys.
    return cache.state_table(fmt.name, namespace, parsed.conversation.context.get(UPSTREAM_KEY, ""))
