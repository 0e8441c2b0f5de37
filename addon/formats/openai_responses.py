"""OpenAI Responses API: `POST .../v1/responses` on any host (and Azure's
`/openai/v1/responses`).

Two ways to hold a conversation, both served from one tree:

- stateless: the client resends the whole `input` every turn (`store:false`);
  the request *is* the conversation, as with Chat Completions;
- stateful: the client sends only the new items and `previous_response_id`.
  The provider keeps the rest, so butter keeps its own copy (`expand` and
  `remember` below, through the small state table the addon hands in) and
  turns the request back into the whole conversation before the walk.

The canonical reply is the provider's `Response` object **with its ids**
(`resp_…`, `msg_…`, `fc_…`, `call_…`, `rs_…`). Unlike Chat, ids cannot be
fresh on replay: a stateful client's next turn names the response it
continues and the calls it answers, and only ids butter has seen can be
expanded again. A served id is one the provider may not hold, so a turn
continuing one that goes upstream is resent stateless (`upstream_body`).
Request fields the provider merely echoes back
(`metadata`, `user`, `store`, `previous_response_id`, …) are not stored; they
are filled in from the request being answered.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import ChainMap
from typing import Any, Iterator, MutableMapping

from butter.store.canonical import base64_digest, canonical_json, digest, json_argument, parse_json_text
from butter.store.model import Conversation

from . import sse
from .base import (JSON_HEADERS, SSE_HEADERS, NotUnderstood, ParsedRequest, StateTable, WireFormat, WireRequest,
                   WireResponse, compact_json, json_object_body)

# Fields that never change the answer: out of the key (wire-formats.md §6).
NON_SEMANTIC = frozenset({
    "stream", "stream_options", "store", "background", "metadata", "user", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "service_tier",
})
# Echoed back in the Response; stored empty, rendered from this request
# (with the provider's default when the request left the field out).
ECHOED_DEFAULTS: dict[str, Any] = {
    "metadata": {}, "user": None, "store": True, "background": False, "safety_identifier": None,
    "prompt_cache_key": None, "prompt_cache_retention": None, "previous_response_id": None,
}
SEMANTIC_HEADERS = ("openai-beta",)
# Keys of items and parts that carry no meaning for the model: provenance,
# progress and the ids that are aliased instead.
ITEM_NOISE = frozenset({"id", "status"})
PART_HINTS = frozenset({"cache_control", "prompt_cache_breakpoint"})
TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete"}
FAILED = frozenset({"response.failed", "error"})
# Longest stateful chain butter will follow (a guard against a cycle in a
# damaged table, far above any real agent run).
MAX_CHAIN = 10_000

_PIECE = re.compile(r"\s*\S+\s*|\s+")
_DATA_URL = re.compile(r"^data:([^;,]*)(;base64)?,", re.IGNORECASE)


class OpenAIResponses(WireFormat):
    name = "openai-responses"
    keeps_state = True

    def recognise(self, method: str, path: str) -> bool:
        # Only the create endpoint: `/responses/{id}`, `/responses/input_tokens`
        # and `/responses/compact` are other operations and pass through.
        return path.rstrip("/").endswith("/responses")

    # -- request -----------------------------------------------------------
    def parse_request(self, request: WireRequest) -> ParsedRequest:
        body = json_object_body(request.body)
        model = body.get("model")
        if not isinstance(model, str):
            raise NotUnderstood("no model")
        if body.get("conversation") is not None:
            # The Conversations API keeps state butter never sees; the same
            # request means a different thing every turn.
            raise NotUnderstood("conversation objects are server-side state")
        if body.get("background") is True:
            # The answer is fetched later with GET /responses/{id}, which
            # butter does not serve; replaying a finished response here would
            # change what the client's polling loop sees.
            raise NotUnderstood("background responses")
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise NotUnderstood("previous_response_id is not a string")
        raw_input = _input_items(body.get("input"))
        params = {k: v for k, v in body.items() if k not in NON_SEMANTIC and k not in ("input", "model")}
        headers = {h: request.headers[h] for h in SEMANTIC_HEADERS if h in request.headers}
        context = {"api": self.name, "model": model, "params": params, "headers": headers}
        aliases = Aliases()
        messages = canonical_items(raw_input, aliases, start=0)
        echo = {k: default if body.get(k) is None else body[k] for k, default in ECHOED_DEFAULTS.items()}
        # Until `expand` runs, previous_response_id stays in the key (it is in
        # `params`): an unexpanded stateful request can only miss, never hit
        # some other conversation.
        return ParsedRequest(
            conversation=Conversation(context, tuple(messages)),
            stream=body.get("stream") is True,
            render_options={"echo": echo, "state": _state_note(previous, 0, aliases), "raw_input": raw_input},
        )

    # -- server-side state -------------------------------------------------
    def expand(self, parsed: ParsedRequest, state: StateTable) -> ParsedRequest:
        """A stateful request becomes the whole conversation it continues.

        Raises NotUnderstood for a response id butter never recorded or
        served: the provider may know it, butter cannot key it.
        """
        note = parsed.render_options["state"]
        previous = note["previous"]
        if previous is None:
            return parsed
        chain = _chain(previous, state)
        history: list[dict] = []
        base = Aliases()
        for entry in reversed(chain):
            history.extend(entry["messages"])
            base.calls.update(entry["calls"])
            base.items.update({k: int(v) for k, v in entry["items"].items()})
        if chain[0].get("ambiguous") or chain[0].get("digest") != _digest(history):
            # A templated hit served this id for more than one conversation;
            # which one the client holds is unknowable, so butter stays out.
            raise NotUnderstood(f"previous_response_id {previous!r} continues more than one conversation")
        base.next_call = int(chain[0].get("next_call", len(base.calls)))
        aliases = base.child()
        messages = history + canonical_items(parsed.render_options["raw_input"], aliases, start=len(history),
                                             history=history)
        context = dict(parsed.conversation.context)
        context["params"] = {k: v for k, v in context["params"].items() if k != "previous_response_id"}
        options = dict(parsed.render_options, state=_state_note(previous, len(history), aliases))
        return ParsedRequest(Conversation(context, tuple(messages)), parsed.stream, options)

    def remember(self, parsed: ParsedRequest, reply: dict, state: StateTable, issued: bool = False) -> None:
        """Keep what a later `previous_response_id` naming this reply needs.

        Each entry holds only what its request added (new input items and the
        reply's output) and names the response it continues, so a long chain
        costs its length, not its square. Beside the canonical items it keeps
        them as they went over the wire (`wire`), for `upstream_body`.

        `issued`: the provider itself just answered this request on this
        upstream. The entry then says whether the provider can continue the
        id (it stored the response); an id butter serves never can be
        relied on, and is marked so.
        """
        response_id = reply.get("id")
        if not isinstance(response_id, str):
            return
        note = parsed.render_options["state"]
        aliases = Aliases.restore(note)
        start = note["start"]
        conversation = list(parsed.conversation.messages)
        output = canonical_items(reply.get("output") or [], aliases, start=len(conversation),
                                 history=conversation)
        whole = _digest(conversation + output)
        known = state.get(response_id)
        if known is not None:
            # An exact hit continues the conversation already stored. A
            # templated hit serves the recorded id with other values: the id
            # then names two conversations and must not be expanded.
            changes = {}
            if known.get("digest") != whole and not known.get("ambiguous"):
                changes["ambiguous"] = True
            if known.get("issued") and not issued:
                # Served by butter now: the client holding it may be another
                # run, days after the provider's session (or its retention) ended.
                changes["issued"] = False
            if changes:
                state.put(response_id, {**known, **changes})
            return
        entry = {
            "previous": note["previous"],
            "messages": conversation[start:] + output,
            "calls": dict(aliases.new_calls()),
            "items": dict(aliases.new_items()),
            "next_call": aliases.next_call,
            "digest": whole,
            # Stored by the provider: `store` left out means true.
            "issued": issued and parsed.render_options.get("echo", {}).get("store") is not False,
        }
        if not _holds_media(entry["messages"]):
            # Inline images and files are never stored (only their hash is
            # keyed), so a chain holding one cannot be resent whole.
            entry["wire"] = list(parsed.render_options["raw_input"]) + list(reply.get("output") or [])
        state.put(response_id, entry)

    def upstream_body(self, parsed: ParsedRequest, body: bytes, state: StateTable) -> bytes | None:
        """The body to send the provider instead of the client's; None: send it as it is.

        A request continuing a response the provider cannot be relied on to
        know (one butter served, or one it never saw the provider store)
        would get the provider's 400 "Previous response ... not found". It
        goes up stateless instead: no `previous_response_id`, and `input` =
        the whole conversation as it went over the wire, then the new items;
        every other field as the client sent it. Items the provider would
        look up by an id it may never have issued are made self-contained
        (`_resendable`). Raises NotUnderstood when the chain cannot be rebuilt.
        """
        previous = parsed.render_options["state"]["previous"]
        if previous is None:
            return None
        chain = _chain(previous, state)
        if chain[0].get("issued"):
            return None
        history: list[dict] = []
        for entry in reversed(chain):
            if not isinstance(entry.get("wire"), list):
                raise NotUnderstood(f"butter holds no resendable copy of the conversation before {previous!r} "
                                    "(recorded by an older butter, or it holds inline media)")
            history.extend(entry["wire"])
        request = json_object_body(body)
        request.pop("previous_response_id", None)
        request["input"] = _resendable(history + parsed.render_options["raw_input"])
        return compact_json(request)

    def bound_reply(self, reply: dict, bindings: dict[str, str]) -> dict:
        """A templated hit gets ids of its own, derived from the recorded ids
        and the bound values: the same values replay the same ids (so a
        stateful chain stays expandable), other values never reuse an id the
        provider holds for a conversation with the recorded values."""
        salt = digest(b"responses-bindings", canonical_json(bindings))
        out = dict(reply, id=_derived_id(reply.get("id"), salt))
        out["output"] = [
            {**item, **{k: _derived_id(item[k], salt) for k in ("id", "call_id") if isinstance(item.get(k), str)}}
            if isinstance(item, dict) else item
            for item in reply.get("output") or []
        ]
        return out

    # -- reply: provider -> canonical ---------------------------------------
    def reply_from_body(self, body: bytes, streamed: bool) -> dict | None:
        response = _assemble_stream(body) if streamed else _plain_response(body)
        if response is None or not isinstance(response.get("id"), str):
            return None
        if response.get("status") not in ("completed", "incomplete") or response.get("error"):
            return None  # queued, in progress, failed: not an answer
        if not isinstance(response.get("output"), list):
            return None
        reply = {k: v for k, v in response.items() if k != "output_text"}
        for key in ECHOED_DEFAULTS:
            if key in reply:
                reply[key] = None  # filled from the request on every render
        return reply

    # -- reply: canonical -> wire ------------------------------------------
    def render(self, reply: dict, parsed: ParsedRequest) -> WireResponse:
        response = dict(reply)
        echo = parsed.render_options.get("echo", {})
        for key in ECHOED_DEFAULTS:
            if key in response:
                response[key] = echo.get(key, ECHOED_DEFAULTS[key])
        if parsed.stream:
            return WireResponse(200, dict(SSE_HEADERS), b"".join(stream_events(response)))
        return WireResponse(200, dict(JSON_HEADERS), compact_json(response))

    def error(self, status: int, message: str, code: str) -> WireResponse:
        body = {"error": {"message": message, "type": "butter_error", "param": None, "code": code}}
        return WireResponse(status, dict(JSON_HEADERS), compact_json(body))


FORMAT = OpenAIResponses()


def _digest(messages: list[dict]) -> str:
    return digest(b"responses-state", canonical_json(messages)).hex()


def _chain(previous: str, state: StateTable) -> list[dict]:
    """The side-table entries from `previous` back to the conversation's start, newest first."""
    chain: list[dict] = []
    cursor: str | None = previous
    while cursor is not None:
        entry = state.get(cursor)
        if not isinstance(entry, dict) or len(chain) >= MAX_CHAIN:
            raise NotUnderstood(f"previous_response_id {cursor!r} is not one butter has recorded")
        chain.append(entry)
        cursor = entry.get("previous")
    return chain


def _holds_media(messages: list[dict]) -> bool:
    """Does a canonical item hold inline bytes butter keyed by hash only?"""
    for message in messages:
        for key in ("content", "output"):
            parts = message.get(key)
            if isinstance(parts, list) and any(
                    isinstance(p, dict) and ("image_url_sha256" in p or "file_data_sha256" in p) for p in parts):
                return True
    return False


def _resendable(items: list[dict]) -> list[dict]:
    """Items as a stateless request must carry them, with no id the provider must look up.

    An item's `id` is optional on input for messages and tool calls, and an
    id butter served is one the provider never issued: it goes. A reasoning
    item is sent only with its `encrypted_content` (the provider decrypts it);
    without one the provider would look its id up ("Item with id 'rs_…' not
    found"), so it is left out, as a client that keeps no reasoning does. An
    `item_reference` becomes the item it names. Other built-in items are sent
    as recorded. Raises NotUnderstood for a reference to an item not in `items`.
    """
    out: list[dict] = []
    by_id: dict[str, dict | None] = {}
    for item in items:
        raw_id = item.get("id")
        if item.get("type") == "item_reference":
            if raw_id not in by_id:
                raise NotUnderstood("item_reference to an item butter has not seen")
            resent = by_id[raw_id]
        elif item.get("type") == "reasoning":
            resent = item if item.get("encrypted_content") else None
        elif item.get("type", "message") in _ID_OPTIONAL:
            resent = {k: v for k, v in item.items() if k != "id"}
        else:
            resent = item
        if isinstance(raw_id, str) and item.get("type") != "item_reference":
            by_id[raw_id] = resent
        if resent is not None:
            out.append(resent)
    return out


# Item types whose `id` a request may leave out (openai-python's input item params).
_ID_OPTIONAL = frozenset({"message", "function_call", "function_call_output", "custom_tool_call",
                          "custom_tool_call_output"})


def _derived_id(value: Any, salt: bytes) -> Any:
    if not isinstance(value, str):
        return value
    prefix, _, rest = value.rpartition("_")
    mixed = hashlib.sha256(salt + value.encode("utf-8")).hexdigest()[:max(len(rest), 24)]
    return f"{prefix}_{mixed}" if prefix else mixed


def _input_items(value: Any) -> list[dict]:
    """`input` as a list of items; a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise NotUnderstood("input is neither a string nor a list of items")


# -- canonical items -------------------------------------------------------------

class Aliases:
    """Volatile ids of one conversation, replaced by positions.

    `calls`: a raw call_id -> `call#N`, the N-th call of the conversation, so a
    tool output still names the call it answers when calls run in parallel.
    `items`: a raw item id (msg_, fc_, rs_ …) -> the index of its message, so
    an `item_reference` can be keyed by what it refers to. A child layers new
    ids over its parent's (a stateful turn over the turns it continues).
    """

    def __init__(self, calls: MutableMapping[str, str] | None = None,
                 items: MutableMapping[str, int] | None = None, next_call: int = 0):
        self.calls: MutableMapping[str, str] = calls if calls is not None else {}
        self.items: MutableMapping[str, int] = items if items is not None else {}
        self.next_call = next_call

    def child(self) -> Aliases:
        return Aliases(ChainMap({}, self.calls), ChainMap({}, self.items), self.next_call)

    def new_calls(self) -> dict[str, str]:
        return dict(self.calls.maps[0]) if isinstance(self.calls, ChainMap) else dict(self.calls)

    def new_items(self) -> dict[str, int]:
        return dict(self.items.maps[0]) if isinstance(self.items, ChainMap) else dict(self.items)

    def call(self, raw: str) -> str:
        if raw not in self.calls:
            self.calls[raw] = f"call#{self.next_call}"
            self.next_call += 1
        return self.calls[raw]

    @staticmethod
    def restore(note: dict) -> Aliases:
        parent = Aliases(dict(note["base_calls"]), dict(note["base_items"]))
        child = parent.child()
        child.calls.update(note["calls"])
        child.items.update(note["items"])
        child.next_call = note["next_call"]
        return child


def _state_note(previous: str | None, start: int, aliases: Aliases) -> dict:
    """What `remember` needs of the alias state, as plain values."""
    base_calls = dict(aliases.calls.maps[1]) if isinstance(aliases.calls, ChainMap) else {}
    base_items = dict(aliases.items.maps[1]) if isinstance(aliases.items, ChainMap) else {}
    return {"previous": previous, "start": start, "calls": aliases.new_calls(), "items": aliases.new_items(),
            "base_calls": base_calls, "base_items": base_items, "next_call": aliases.next_call}


def canonical_items(items: list[dict], aliases: Aliases, start: int, history: list[dict] | None = None) -> list[dict]:
    """Input or output items in one canonical form.

    An output item fed back as input and the same item taken from the reply
    give the same message, so a stateless resend and a stateful expansion
    walk the same path. Ids and statuses go; call ids become positions;
    `encrypted_content` and every other field stay byte-exact.
    """
    out: list[dict] = []
    for item in items:
        index = start + len(out)
        raw_id = item.get("id")
        if item.get("type") == "item_reference":
            out.append(_referenced(item, aliases, (history or []) + out))
            continue
        message = _canonical_item(item, aliases)
        if isinstance(raw_id, str):
            aliases.items.setdefault(raw_id, index)
        out.append(message)
    return out


def _referenced(item: dict, aliases: Aliases, known: list[dict]) -> dict:
    ref = item.get("id")
    index = aliases.items.get(ref) if isinstance(ref, str) else None
    if index is None or not 0 <= index < len(known):
        # Refers to provider state butter has not seen.
        raise NotUnderstood("item_reference to an item butter has not seen")
    return known[index]


def _canonical_item(item: dict, aliases: Aliases) -> dict:
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind is None:
        raise NotUnderstood("an input item without a type")
    out: dict[str, Any] = {"type": kind}
    for key, value in item.items():
        if value is None or key in ITEM_NOISE or key == "type":
            continue
        if key == "call_id" and isinstance(value, str):
            out["call"] = aliases.call(value)
        elif key == "content" and kind == "message":
            content = _canonical_content(value, item.get("role"))
            if content:
                out["content"] = content
        elif key == "arguments" and isinstance(value, str):
            # Whitespace and key order inside arguments are not meaning;
            # invalid JSON is keyed by its text, never like a valid value.
            out["arguments"] = json_argument(value)
        elif key == "output" and isinstance(value, list):
            out["output"] = _canonical_content(value, "tool")
        else:
            out[key] = value
    return out


def _canonical_content(value: Any, role: Any) -> Any:
    """A string is one text part; empty lists and cache hints go; media by hash."""
    if isinstance(value, str):
        kind = "output_text" if role == "assistant" else "input_text"
        return [{"type": kind, "text": value}] if value else []
    if not isinstance(value, list):
        return value
    parts = []
    for part in value:
        if isinstance(part, dict):
            part = {k: v for k, v in part.items()
                    if v is not None and v != [] and k not in PART_HINTS}
            part = _hash_media(part)
        parts.append(part)
    return parts


def _hash_media(part: dict) -> dict:
    """Inline images and files are keyed by a hash of their bytes, not stored."""
    for key in ("image_url", "file_data"):
        value = part.get(key)
        if not isinstance(value, str):
            continue
        match = _DATA_URL.match(value)
        if match is None and key == "image_url":
            continue  # a URL or file reference is already short and stable
        payload = value[match.end():] if match else value
        part = dict(part)
        del part[key]
        # Invalid base64 keys apart from any valid bytes (base64_digest).
        part[f"{key}_sha256"] = (base64_digest(payload) if (match is None or match.group(2))
                                 else hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest())
        if match and match.group(1):
            part[f"{key}_media_type"] = match.group(1).lower()
    return part


# -- replies -------------------------------------------------------------------

def _plain_response(raw: bytes) -> dict | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _assemble_stream(raw: bytes) -> dict | None:
    """The `Response` a stream amounts to, or None if it did not end well.

    Only a terminal `response.completed` / `response.incomplete` makes a
    stream whole; `response.failed`, an `error` event or a cut connection
    leave nothing to record. When the terminal event leaves `output` out, the
    items come from the `output_item.done` events, as the SDK does it.
    """
    try:
        events = [parse_json_text(e.data) for e in sse.parse(raw)]
    except UnicodeDecodeError:
        return None
    done_items: dict[int, dict] = {}
    final: dict | None = None
    for event in events:
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind in FAILED or (kind not in TERMINAL and event.get("error")):
            return None
        if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            done_items[int(event.get("output_index", len(done_items)))] = event["item"]
        elif kind in TERMINAL and isinstance(event.get("response"), dict):
            final = dict(event["response"])
            final.setdefault("status", TERMINAL[kind])
    if final is None:
        return None
    if not final.get("output") and done_items:
        final["output"] = [done_items[i] for i in sorted(done_items)]
    elif final.get("output") is None:
        final["output"] = []
    return final


# -- streaming render ------------------------------------------------------------

def _pieces(text: str) -> list[str]:
    """Word-sized pieces, so a replayed stream still arrives incrementally."""
    return _PIECE.findall(text) or [text]


class _Events:
    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse.encode(event, event=kind)


def stream_events(response: dict) -> Iterator[bytes]:
    """The named events the SDK needs, in its order, from a whole Response.

    `response.created` first; each item's `output_item.added` before any of
    its deltas and its `output_item.done` after them; the terminal event last,
    carrying the whole response (ids unchanged: the SDK checks that the
    lifecycle events and each item's added/done pair agree on them).
    """
    emit = _Events()
    opening = dict(response, status="in_progress", output=[], usage=None, error=None, incomplete_details=None)
    if "completed_at" in opening:
        opening["completed_at"] = None
    yield emit("response.created", response=opening)
    yield emit("response.in_progress", response=opening)
    for index, item in enumerate(response.get("output") or []):
        yield from _item_events(emit, index, item)
    terminal = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    yield emit(terminal, response=response)


def _item_events(emit: _Events, index: int, item: dict) -> Iterator[bytes]:
    kind = item.get("type")
    where = {"item_id": item.get("id"), "output_index": index}
    if kind == "message":
        skeleton = {k: v for k, v in item.items() if k != "content"}
        yield emit("response.output_item.added", output_index=index,
                   item={**skeleton, "status": "in_progress", "content": []})
        for n, part in enumerate(item.get("content") or []):
            yield from _part_events(emit, where, n, part)
    elif kind == "function_call":
        yield emit("response.output_item.added", output_index=index,
                   item={**item, "status": "in_progress", "arguments": ""})
        arguments = item.get("arguments") or ""
        for piece in _chunks(arguments):
            yield emit("response.function_call_arguments.delta", **where, delta=piece)
        yield emit("response.function_call_arguments.done", **where, name=item.get("name"), arguments=arguments)
    elif kind == "custom_tool_call":
        yield emit("response.output_item.added", output_index=index,
                   item={**item, "status": "in_progress", "input": ""})
        text = item.get("input") or ""
        for piece in _chunks(text):
            yield emit("response.custom_tool_call_input.delta", **where, delta=piece)
        yield emit("response.custom_tool_call_input.done", **where, input=text)
    elif kind == "reasoning":
        skeleton = {k: v for k, v in item.items() if k not in ("summary", "content", "encrypted_content")}
        yield emit("response.output_item.added", output_index=index, item={**skeleton, "summary": []})
        for n, part in enumerate(item.get("summary") or []):
            text = part.get("text", "") if isinstance(part, dict) else ""
            yield emit("response.reasoning_summary_part.added", **where, summary_index=n,
                       part={**part, "text": ""})
            for piece in _pieces(text) if text else []:
                yield emit("response.reasoning_summary_text.delta", **where, summary_index=n, delta=piece)
            yield emit("response.reasoning_summary_text.done", **where, summary_index=n, text=text)
            yield emit("response.reasoning_summary_part.done", **where, summary_index=n, part=part)
        for n, part in enumerate(item.get("content") or []):
            text = part.get("text", "") if isinstance(part, dict) else ""
            for piece in _pieces(text) if text else []:
                yield emit("response.reasoning_text.delta", **where, content_index=n, delta=piece)
            yield emit("response.reasoning_text.done", **where, content_index=n, text=text)
    else:
        # Built-in tool calls (web search, file search, MCP, …): the item as a
        # whole; their progress events carry nothing the final item lacks.
        yield emit("response.output_item.added", output_index=index, item=item)
    yield emit("response.output_item.done", output_index=index, item=item)


def _part_events(emit: _Events, where: dict, n: int, part: dict) -> Iterator[bytes]:
    kind = part.get("type")
    at = {**where, "content_index": n}
    if kind == "output_text":
        text = part.get("text") or ""
        logprobs = part.get("logprobs") or []
        opening = {"type": "output_text", "annotations": [], "text": ""}
        if "logprobs" in part:
            opening["logprobs"] = []
        yield emit("response.content_part.added", **at, part=opening)
        if logprobs and "".join(t.get("token", "") for t in logprobs if isinstance(t, dict)) == text:
            # One delta per token keeps every logprob beside its text.
            for token in logprobs:
                yield emit("response.output_text.delta", **at, delta=token["token"], logprobs=[token])
        else:
            for piece in _pieces(text) if text else []:
                yield emit("response.output_text.delta", **at, delta=piece, logprobs=[])
        for a, annotation in enumerate(part.get("annotations") or []):
            yield emit("response.output_text.annotation.added", **at, annotation_index=a, annotation=annotation)
        yield emit("response.output_text.done", **at, text=text, logprobs=logprobs)
    elif kind == "refusal":
        text = part.get("refusal") or ""
        yield emit("response.content_part.added", **at, part={"type": "refusal", "refusal": ""})
        for piece in _pieces(text) if text else []:
            yield emit("response.refusal.delta", **at, delta=piece)
        yield emit("response.refusal.done", **at, refusal=text)
    else:
        yield emit("response.content_part.added", **at, part=part)
    yield emit("response.content_part.done", **at, part=part)


def _chunks(text: str, size: int = 24) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]
