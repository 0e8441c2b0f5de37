"""`butter explain REQUEST.json`: would this request hit, and if not, why not.

The request body is read exactly as a client sends it and goes through the
same adapter and lookup the proxy uses; nothing is recorded or forwarded.
Namespaces are keyed hashes of the credential, so the API key the agent uses
(`--api-key`, an `Authorization`/`x-api-key` `--header`, or the provider's
usual environment variable) or the shared namespace (`--namespace`) decides
which recordings the request can see.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import parse_qsl, urlsplit

from butter.cli.output import CliError, add_common, emit, open_cache, run, short_id
from butter.store import ServePolicy
from butter.store import trust, trust_ledger
from butter.store.inspect import explain, node_summary, summarise

# Where to send a body when no --path/--url says: tried in order, the format
# whose lookup gets furthest into the tree wins (an Anthropic body also
# parses as OpenAI Chat, but only one of them has a recording).
DEFAULT_PATHS = ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/api/chat")
# The environment variable each provider's SDK reads its key from.
KEY_ENV = {"openai": ("OPENAI_API_KEY",), "anthropic": ("ANTHROPIC_API_KEY",),
           "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "ollama": ()}
# The server each format's SDK talks to by default, when neither --url nor
# --upstream names one: the root of the tree holds the upstream.
DEFAULT_UPSTREAMS = {"openai": "https://api.openai.com",
                     "anthropic": "https://api.anthropic.com",
                     "gemini": "https://generativelanguage.googleapis.com", "ollama": "http://localhost:11434"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="would this request hit? if not, where it leaves the tree and why",
        description="REQUEST.json is a request body as the client sends it (`-` for stdin). Prints whether it "
                    "would be served, and for a miss the deepest node reached, the first differing message, "
                    "a diff against the nearest recorded sibling(s), and for templates which slot or literal "
                    "failed. Read-only.")
    add_common(parser)
    parser.add_argument("request", metavar="REQUEST.json", nargs="?",
                        help="the request body (JSON), or - for stdin")
    parser.add_argument("--last-miss", action="store_true",
                        help="instead of REQUEST.json, the last request the proxy missed (in --namespace's "
                             "namespace if given, else the newest of all); kept without credentials")
    parser.add_argument("--url", help="the request URL, e.g. https://api.openai.com/v1/chat/completions (picks the "
                                      "server and the wire format; a ?key= is used as credential)")
    parser.add_argument("--upstream", metavar="URL",
                        help="the server the agent talks to, e.g. https://my-gateway.example:8443 (default: from "
                             "--url, else the format's usual provider: api.openai.com, api.anthropic.com, ...)")
    parser.add_argument("--path", help="the request path, e.g. /v1/chat/completions (default: guessed)")
    parser.add_argument("--header", "-H", action="append", default=[], metavar="K:V",
                        help="a request header (repeatable), e.g. 'Authorization: Bearer sk-…' or "
                             "'butter-namespace: team'")
    parser.add_argument("--api-key", help="the credential the agent uses (default: from --header, else "
                                          "OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY)")
    parser.add_argument("--namespace", metavar="NAME",
                        help="the shared namespace ns:NAME (as the proxy's butter_namespace option)")
    parser.add_argument("--min-observations", type=int, default=1, metavar="N",
                        help="as the proxy's butter_min_observations (default 1)")
    parser.add_argument("--siblings", type=int, default=3, help="how many nearest siblings to diff (default 3)")
    parser.set_defaults(func=run(explain_command))


def _headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise CliError(f"--header {pair!r} is not NAME:VALUE")
        headers[name.strip().lower()] = value.strip()
    return headers


def _credential(args: argparse.Namespace, fmt_name: str, headers: dict[str, str], query: dict[str, str]) -> str | None:
    """The namespace credential as the proxy computes it: every credential header
    and parameter, with the provider key from --api-key or, when none is given,
    the SDK's environment variable."""
    from butter.addon import credentials

    headers = dict(headers)
    has_key = any(headers.get(h) for h in credentials.PRIMARY_HEADERS) or any(
        query.get(q) for q in credentials.PRIMARY_QUERY)
    key = args.api_key
    if key is None and not has_key:
        family = next((f for f in KEY_ENV if fmt_name.startswith(f)), "openai")
        key = next((os.environ[name] for name in KEY_ENV[family] if os.environ.get(name)), None)
    if key:
        for name in credentials.PRIMARY_HEADERS:
            headers.pop(name, None)
        query = {k: v for k, v in query.items() if k.lower() not in credentials.PRIMARY_QUERY}
        headers["authorization"] = f"Bearer {key}"
    return credentials.split(headers, query)[0]


def explain_command(args: argparse.Namespace) -> int:
    from butter.addon.formats import NotUnderstood

    if args.min_observations < 1:
        raise CliError("--min-observations must be at least 1")
    if args.last_miss:
        if args.request:
            raise CliError("give REQUEST.json or --last-miss, not both")
        # The proxy's namespace for it, decided then; no credential needed to replay it.
        forced_namespace, candidates = _last_miss(args)
        headers, query, bindings, fixed = {}, {}, None, forced_namespace
    elif not args.request:
        raise CliError("give REQUEST.json (or - for stdin), or --last-miss")
    else:
        raw = sys.stdin.buffer.read() if args.request == "-" else _read(args.request)
        try:
            json.loads(raw)
        except ValueError as e:
            raise CliError(f"{args.request} is not JSON: {e}") from e
        forced_namespace = ""
        headers = _headers(args.header)
        query, bindings, fixed, candidates = _parse_body(args, raw, headers)
    with open_cache(args) as cache:
        cache.policy = ServePolicy(min_observations=args.min_observations)
        cache.set_trust(trust.TrustRules(min_observations=args.min_observations))
        best = None
        for path, fmt, parsed in candidates:
            credential = None if forced_namespace else _credential(args, fmt.name, headers, query)
            namespace = forced_namespace or cache.namespace(credential, fixed)
            not_expanded = ""
            # A Responses `previous_response_id`: the conversation it continues, as the proxy does (a kept
            # last miss was stored expanded).
            if fmt.keeps_state and not forced_namespace:
                try:
                    parsed = fmt.expand(parsed, cache.state_table(fmt.name, namespace,
                                                                  parsed.conversation.context.get("upstream", "")))
                except NotUnderstood as e:
                    not_expanded = str(e)
            outcome = cache.lookup(namespace, parsed.conversation, bindings) if bindings else \
                cache.lookup(namespace, parsed.conversation)
            depth = len(parsed.conversation.messages) + 1 if not hasattr(outcome, "matched") else outcome.matched
            if best is None or depth > best[0]:
                best = (depth, path, fmt, parsed, namespace, outcome, credential, not_expanded)
        assert best is not None
        _, path, fmt, parsed, namespace, outcome, credential, not_expanded = best
        result = explain(cache.backend, namespace, parsed.conversation, outcome, cache.policy,
                         max_siblings=args.siblings)
        deepest = cache.backend.node(result.node) if result.node else None
        template_failure = getattr(outcome, "template_failure", "")
        template_node = getattr(outcome, "template", None)
        bindings_used = dict(getattr(outcome, "bindings", {}) or {})
        served = next((r for r in cache.backend.replies(outcome.node_id) if r.reply_id == outcome.reply_id), None) \
            if result.hit else None
        # A template reply's trust: why it is served, verified first, or never served (store/trust.py).
        judged = outcome if result.hit and outcome.templated else getattr(outcome, "verify", None)
        trust_line = "; ".join(trust.describe(e, cache.trust) for e in trust_ledger.at_node(cache.backend, outcome.deepest)
                               .values() if e.get("state") == trust.DEMOTED) if result.reason in ("demoted", "no-reply") else ""
        if judged is not None:
            trust_line = trust.describe(trust_ledger.read(cache.backend, judged.node_id, judged.reply_id), cache.trust)

    messages = parsed.conversation.messages
    data = {
        "hit": result.hit, "reason": result.reason, "detail": result.detail,
        "format": fmt.name, "path": path, "model": parsed.conversation.context.get("model"),
        "upstream": parsed.conversation.context.get("upstream"),
        "namespace": namespace, "credential_given": credential is not None,
        "messages": len(messages), "matched": result.matched,
        "node": result.node, "node_summary": node_summary(deepest) if deepest else None,
        "walked": result.path,
        "differing_index": result.matched if result.differing_message is not None else None,
        "differing_message": result.differing_message,
        "other_namespaces": result.other_namespaces, "nearest": result.nearest, "replies": result.replies, "templates": result.templates,
        "template": template_node, "template_failure": template_failure,
        "bindings": bindings_used if result.hit else {},
        "not_expanded": not_expanded,
        "reply": {"id": served.reply_id, "count": served.count, "score": served.score} if served else None,
        "trust": trust_line or None,
    }

    def human() -> str:
        out = [f"request   {fmt.name} {data['model']} at {data['upstream']}, {len(messages)} message(s), "
               f"namespace {namespace}"
               + ("" if credential or fixed else "  (no credential: give --api-key or --namespace)")]
        if result.hit:
            out.append(f"result    HIT: served from node {short_id(result.node)}"
                       + (f"  {node_summary(deepest)}" if deepest else ""))
            if served:
                out.append(f"reply     {short_id(served.reply_id)}, seen {served.count}×, score {served.score}")
            if bindings_used:
                out.append("bindings  " + ", ".join(f"{k}={v}" for k, v in sorted(bindings_used.items()))
                           + "  (the reply is rendered with these values)")
            if trust_line:
                out.append(f"trust     {trust_line}")
            return "\n".join(out)
        if result.reason == "verify":
            out.append(f"result    VERIFY: {result.detail}; the proxy would forward it to the provider and compare "
                       "the answer with the template's (butter-cache: verify)")
            out.append(f"template  reply at node {short_id(result.node)}  {node_summary(deepest) if deepest else ''}")
            out.append(f"trust     {trust_line}")
            return "\n".join(out)
        out.append(f"result    MISS ({result.reason}): {result.detail}")
        if trust_line:
            out.append(f"trust     {trust_line}")
        if not_expanded:
            out.append(f"state     {not_expanded} (explained as the body stands; the proxy would pass it through)")
        if result.matched < 0:
            if result.other_namespaces:
                out.append("where     this exact context is recorded, but in another namespace: "
                           + ", ".join(result.other_namespaces) + " (another API key, or --namespace?)")
            elif result.nearest:
                out.append("where     no root for this context: server, model, tools or parameters differ from the "
                           "recordings (another server? give --url or --upstream)")
            for near in result.nearest:
                out.append(f"nearest   root {short_id(near['node'])}  {near['summary']}  "
                           f"(similarity {near['similarity']:.2f}, first difference at {near['first_difference']})")
                out.extend("  " + line for line in near["diff"])
            return "\n".join(out)
        out.append(f"matched   {result.matched} of {len(messages)} message(s); deepest node {short_id(result.node)}"
                   + (f"  {node_summary(deepest)}" if deepest else ""))
        if result.differing_message is not None:
            out.append(f"differs   message {result.matched + 1}: {summarise(result.differing_message)}")
        for t in result.templates:
            out.append(f"template  {short_id(t['node'])}  {t['summary']}")
            out.append(f"          failed: {t['failed']}")
        if template_failure and not result.templates:
            out.append(f"template  {short_id(template_node)} failed: {template_failure}")
        if result.nearest:
            for near in result.nearest:
                out.append(f"sibling   {short_id(near['node'])}  {near['summary']}")
                out.append(f"          similarity {near['similarity']:.2f}, first difference at "
                           f"{near['first_difference']}")
                out.extend("    " + line for line in near["diff"])
        elif result.differing_message is not None:
            out.append("          nothing was recorded after this point (the recording ends here)")
        for reply in result.replies:
            out.append(f"reply     {short_id(reply['reply'])}: {reply['why']}")
        return "\n".join(out)

    emit(args, data, human)
    return 0


def _parse_body(args: argparse.Namespace, raw: bytes, headers: dict[str, str]):
    """(the query's parameters, declared bindings, fixed namespace, [(path, format, parsed)])."""
    from butter.addon import credentials, formats  # the proxy's own adapters
    from butter.addon.exchange import with_upstream
    from butter.addon.formats import NotUnderstood, WireRequest

    query: dict[str, str] = {}
    paths: tuple[str, ...] = DEFAULT_PATHS
    if args.url:
        parts = urlsplit(args.url)
        paths = (parts.path or "/",)
        query = dict(parse_qsl(parts.query))
        if parts.scheme and parts.hostname and not args.upstream:
            args.upstream = args.url
    elif args.path:
        path, _, qs = args.path.partition("?")
        paths, query = (path,), dict(parse_qsl(qs))
    _, clean_headers, clean_query = credentials.split(headers, query)
    bindings = _bindings(headers.get("butter-bindings"))
    fixed = args.namespace or headers.get("butter-namespace", "")

    candidates = []
    errors = []
    upstream = _upstream(args.upstream) if args.upstream else None
    for path in paths:
        fmt = formats.recognise("POST", path)
        if fmt is None:
            errors.append(f"{path}: no wire format serves this path")
            continue
        try:
            parsed = fmt.parse_request(WireRequest("POST", path, clean_query, clean_headers, raw))
            parsed = with_upstream(parsed, upstream or _default_upstream(fmt.name))
        except NotUnderstood as e:
            errors.append(f"{path} ({fmt.name}): {e}")
            continue
        candidates.append((path, fmt, parsed))
    if not candidates:
        raise CliError("the request is not one butter understands (the proxy would pass it through):\n  "
                       + "\n  ".join(errors))

    return query, bindings, fixed, candidates


def _last_miss(args: argparse.Namespace):
    """The namespace and the one candidate (path, format, parsed) of the proxy's last miss."""
    from butter.addon import formats
    from butter.addon.formats import ParsedRequest
    from butter.store.last_miss import conversation_of, newest_last_miss

    with open_cache(args) as cache:
        wanted = cache.namespace(None, args.namespace) if args.namespace else None
        row = newest_last_miss(cache.backend, wanted)
    if row is None:
        raise CliError("no miss recorded yet" + (f" in namespace {wanted}" if wanted else "")
                       + " (proxies keep each namespace's last miss from this version on)")
    fmt = formats.recognise("POST", row["path"])
    if fmt is None:
        raise CliError(f"the last miss was at {row['path']}, which no wire format of this butter serves")
    print(f"last miss {row['format']} {row['path']} at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row['time']))}"
          f" ({row.get('mode', '?')} mode): {row.get('where', '')}", file=sys.stderr)
    return row["namespace"], [(row["path"], fmt, ParsedRequest(conversation_of(row), stream=False))]


def _bindings(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise CliError(f"butter-bindings is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise CliError("butter-bindings must be a flat JSON object")
    return {str(k): str(v) for k, v in value.items()}


def _upstream(url: str) -> str:
    from butter.addon.exchange import upstream_of

    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--upstream {url!r} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise CliError(f"--upstream {url!r}: {e}") from e
    return upstream_of(parts.scheme, parts.hostname, port)


def _default_upstream(fmt_name: str) -> str:
    family = next((f for f in DEFAULT_UPSTREAMS if fmt_name.startswith(f)), "openai")
    return _upstream(DEFAULT_UPSTREAMS[family])


def _read(name: str) -> bytes:
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"cannot read {name}: {e.strerror or e}") from e

