"""Templates: messages and replies with `{{name}}` placeholders (sans-IO).

A template node in the tree holds a *template content*:

    {"message": <message template>, "slots": {"order_id": "number", "customer": "text"}}

A message template is the canonical message with some leaves replaced by
markers (plain JSON dicts, so templates are stored and hashed like messages):

    {"$butter": "text", "t": "Please refund order {{order_id}}."}
        a string with placeholders; `{{{{` stands for a literal `{{`
    {"$butter": "dates", "t": "Forecast for {{today +1d}}"}
        a text template with a date offset, in a reply only: `{{name +Nd}}`
        / `{{name -Nd}}` writes the slot's value, an ISO date (YYYY-MM-DD),
        moved by N days (N <= 366, on the calendar), so a reply may carry a
        date the conversation never spells ("tomorrow" after "Today is
        2026-12-03."). Its own kind (text_marker picks it), so a butter that
        predates offsets refuses to render it instead of serving the
        placeholder as text; a message template that holds one matches
        nothing, and a value that is no ISO date does not render
    {"$butter": "number", "slot": "amount"}
        a JSON number bound whole (inside structured content)
    {"$butter": "json", "value": <template>, "style": [", ", ": ", true]}
        a string that holds JSON, templated field by field (a tool result,
        tool-call `arguments`); `style` is how a reply re-serialises it

Structured data (inside JSON, never in a reply) has four more forms, none of
which binds a value (they are what two runs' tool results may differ in
without it mattering to a reply):

    {"$butter": "any", "kind": "string", "shape": "identifier"}
        any string of that shape (shape null: any string), or "kind": "number"
    {"$butter": "opt", "value": <template>}
        as a field's value: the field may be absent; if present, it matches
    {"$butter": "list", "head": [<template>, ...], "item": <template | null>, "min": 1, "count": "n"}
        a list of at least `min` items (and at least len(head)): the first
        items match `head` in order (and may bind), the rest each match `item`;
        its length binds slot `count` (a number), so a length is a value too
    {"$butter": "keys", "fields": [["USR007", <template>], [{"$butter": "text", "t": "{{user_id}}"}, <template>]]}
        an object keyed by values: exactly these fields, each key a literal or a
        text over slots an earlier message bound (never bound from the key)

Everything else is literal and must be equal. Replies are stored with the
same markers and rendered with the bindings of the walk.

Public API
----------
    SHAPES = ("number", "date", "email", "identifier", "text")   and "word", for split values
    shape_of(value: str) -> str                        the most specific shape
    common_shape(values: Iterable[str]) -> str         the most specific shape all fit
    fits(shape: str, value: str) -> bool
    number_text(x: int | float) -> str                 a JSON number as a binding value

    text_marker(t: str) -> dict                        marker constructors ("dates" when `t` has an offset)
    number_marker(slot: str) -> dict
    json_marker(value, style=COMPACT) -> dict
    escape_literal(s: str) -> str                      text -> template text with no placeholders
    parse_text(t: str) -> list[str | tuple]            literals and slots of a template text:
        (name,), or (name, days) for a date offset
    placeholder(name, days=0) -> str                   `{{name}}`, or `{{name +1d}}` with an offset
    shift_date(value, days) -> str | None              an ISO date moved by `days`; None if no ISO date
    template_content(message, slots) -> dict           what a template node stores
    is_marker(value) -> bool;  has_markers(value) -> bool;  slots_in(value) -> set[str]
    slots_in_calls(reply) -> set[str]      slots written inside a tool call's arguments
    slots_in_data(messages) -> set[str]    slots a conversation holds inside structured data
        (a tool result's JSON, an earlier call's arguments), not only in running text

    any_marker(kind, shape) / opt_marker(value) / list_marker(head, item, min) / keys_marker(fields)
    match_message(content, message, bindings) -> dict | None
        the tree's TemplateMatcher: the bindings extended, or None; a name
        bound earlier must have the same value; a slot matches only values of
        its shape
    match_stored(content, message, bindings) -> dict | None
        the same for a content that never changes (a stored template node's, as
        lookups keep them): matched by a matcher compiled once per content
    explain_mismatch(content, message, bindings) -> str
        which literal or slot failed, for people (empty if it matches)
    render_reply(reply, bindings) -> reply              raises RenderError
        every marker replaced; JSON-in-strings re-serialised by json.dumps, so
        quotes, backslashes and unicode in values stay valid JSON
    render_text(t: str, bindings) -> str                one template text
    json_style(text, parsed) -> (items_sep, key_sep, ensure_ascii)
        the json.dumps settings that wrote `text`, so renders reproduce it

    bind_message(message, bindings, *, shapes, strict, origin) -> (template content | None)
    bind_reply(reply, bindings, *, strict) -> reply template
        client-declared bindings (the Butter-Bindings header): every whole
        occurrence of a value becomes its placeholder (longer values first);
        a text that would be nothing but placeholders, and a user or system
        text without a literal word beside its slot, stay exact
    is_declared(content) -> bool   a template node recorded from Butter-Bindings
        (content["origin"] == DECLARED_ORIGIN): the client's word, no probation
    is_tool_result(value) -> bool  a canonical message or block a tool wrote
    free_text_in_words(content) -> bool  a user/system free-text slot with no
        literal word beside it: a catch-all the lookup never uses

Bindings are always strings: a JSON number binds as `number_text(x)`
("42.5", "17.0"), which is also how Python writes it into text.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Mapping

from .canonical import canonical_json

MARK = "$butter"
# The binding that fingerprints what a walk matched without binding it (`_vary`). Not a
# slot name (NAME), so no template, declared binding or reply can name it.
VARYING = "~varying"
_NOTED = "~noted"  # while one message is matched: the values `_vary` noted (never left in bindings)
ABSENT = "~absent"  # the field `_vary` notes an optional field's name under when a message leaves it out
LENGTH = "#length"  # after a field's name: the length of its list, when no slot binds it
NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"
NAME_RE = re.compile(rf"^{NAME}$")
_PLACEHOLDER = re.compile(r"\{\{(" + NAME + r")(?: ([+-]\d{1,3})d)?\}\}")
MAX_DAY_OFFSET = 366  # a date offset further than a year is no "tomorrow": never written or rendered
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# How a JSON string is written back: (item separator, key separator, ensure_ascii).
COMPACT: tuple[str, str, bool] = (",", ":", False)
STYLES: tuple[tuple[str, str, bool], ...] = (
    (", ", ": ", True), (",", ":", True), (", ", ": ", False), (",", ":", False))
MAX_MATCH_STEPS = 20_000  # backtracking budget per text; past it, no match


class RenderError(ValueError):
    """A reply template cannot be rendered with these bindings: serve nothing."""


class _NoMatch(Exception):
    pass


# -- shapes ------------------------------------------------------------------

SHAPES = ("number", "date", "email", "identifier", "text")
_SHAPE_RES = {
    "number": re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"),
    "date": re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
                       r"|\d{1,2}/\d{1,2}/\d{2,4}|\d{2}:\d{2}(?::\d{2})?"),
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"),
    # A single token with at least one digit: ORD-1234, a1b2c3, a UUID. A plain
    # word ("refund") is text, so an instruction word never passes for an id.
    "identifier": re.compile(r"(?=\S*\d)[A-Za-z0-9][A-Za-z0-9_.:/#-]{0,127}"),
    # One word (no space). Not one of SHAPES: only a value split into word
    # parts gets it (see store/induction.py), so that "{{first}} {{last}}"
    # never guesses where "Maria de la Cruz" divides.
    "word": re.compile(r"\S+"),
}


def fits(shape: str, value: str) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if shape == "text":
        return "\n" not in value and "\r" not in value
    pattern = _SHAPE_RES.get(shape)
    return bool(pattern and pattern.fullmatch(value))


def shape_of(value: str) -> str:
    for shape in SHAPES:
        if fits(shape, value):
            return shape
    return "text"


def common_shape(values: Iterable[str]) -> str:
    values = list(values)
    for shape in SHAPES:
        if all(fits(shape, v) for v in values):
            return shape
    return "text"


def number_text(x: int | float) -> str:
    """The binding value of a JSON number: what Python's json (and str) write."""
    # json.dumps writes a plain int or finite float as its repr; calling that
    # directly skips the encoder's set-up, most of what a number slot costs
    # a template match.
    if type(x) is int or (type(x) is float and math.isfinite(x)):
        return repr(x)
    return json.dumps(x)


# -- markers -------------------------------------------------------------------

# Marker kinds that hold a template text: plain, and one with date offsets.
TEXT_KINDS = ("text", "dates")


def text_marker(t: str) -> dict:
    has_offset = any(type(p) is tuple and len(p) > 1 for p in _parsed_text(t))
    return {MARK: "dates" if has_offset else "text", "t": t}


def number_marker(slot: str) -> dict:
    return {MARK: "number", "slot": slot}


def json_marker(value: Any, style: tuple[str, str, bool] = COMPACT) -> dict:
    return {MARK: "json", "value": value, "style": list(style)}


def any_marker(kind: str, shape: str | None = None) -> dict:
    return {MARK: "any", "kind": kind, "shape": shape}


def opt_marker(value: Any) -> dict:
    return {MARK: "opt", "value": value}


def keys_marker(fields: list[tuple[Any, Any]]) -> dict:
    """A JSON object some of whose keys are values (`{"ONYX119": [...]}`, a map keyed by the
    run's own user id): each field a (key, value template), the key a literal string or a
    text marker over slots an earlier part of the conversation bound."""
    return {MARK: "keys", "fields": [[key, value] for key, value in fields]}


def list_marker(head: list, item: Any, minimum: int, count: str | None = None) -> dict:
    out = {MARK: "list", "head": list(head), "item": item, "min": minimum}
    if count is not None:
        out["count"] = count
    return out


def template_content(message: Any, slots: Mapping[str, str], origin: str | None = None) -> dict:
    """What a template node stores; `origin` "declared" marks one recorded
    with Butter-Bindings (the client's word), absent for learned ones."""
    content = {"message": message, "slots": dict(sorted(slots.items()))}
    if origin is not None:
        content["origin"] = origin
    return content


def is_marker(value: Any) -> bool:
    return isinstance(value, dict) and MARK in value


def escape_literal(s: str) -> str:
    return s.replace("{{", "{{{{")


def has_markers(value: Any) -> bool:
    if isinstance(value, dict):
        return MARK in value or any(has_markers(v) for v in value.values())
    if isinstance(value, list):
        return any(has_markers(v) for v in value)
    return False


@lru_cache(maxsize=4096)
def _parsed_text(t: str) -> tuple[str | tuple, ...]:
    return tuple(parse_text(t))


def parse_text(t: str) -> list[str | tuple]:
    """Literal strings and slots, in order; literals may be empty. A slot is
    `(name,)`, or `(name, days)` for a date offset (`{{name +1d}}`)."""
    out: list[str | tuple] = []
    literal: list[str] = []
    i = 0
    while i < len(t):
        if t.startswith("{{{{", i):
            literal.append("{{")
            i += 4
            continue
        m = _PLACEHOLDER.match(t, i)
        if m:
            out.append("".join(literal))
            literal = []
            out.append((m.group(1),) if m.group(2) is None else (m.group(1), int(m.group(2))))
            i = m.end()
            continue
        literal.append(t[i])
        i += 1
    out.append("".join(literal))
    return out


def placeholder(name: str, days: int = 0) -> str:
    """The template text of a slot: `{{name}}`, or `{{name +3d}}` / `{{name -1d}}` for a date offset."""
    return "{{" + name + "}}" if not days else "{{" + f"{name} {days:+d}d" + "}}"


def shift_date(value: str, days: int) -> str | None:
    """An ISO date (YYYY-MM-DD) moved by `days`, as an ISO date; None for any
    other value or an offset past MAX_DAY_OFFSET (month and year ends as the
    calendar has them)."""
    if abs(days) > MAX_DAY_OFFSET or not isinstance(value, str) or not _ISO_DAY.fullmatch(value):
        return None
    try:
        return (date.fromisoformat(value) + timedelta(days=days)).isoformat()
    except (ValueError, OverflowError):
        return None


def slots_in(value: Any) -> set[str]:
    found: set[str] = set()
    for marker in _markers(value):
        if marker[MARK] in TEXT_KINDS:
            found.update(p[0] for p in parse_text(marker["t"]) if isinstance(p, tuple))
        elif marker[MARK] == "number":
            found.add(marker["slot"])
        elif marker[MARK] == "list" and marker.get("count"):
            found.add(marker["count"])
    return found


# Where a reply holds a tool call's arguments (OpenAI and Ollama `arguments`,
# Anthropic `input`, Gemini `args`): what the model writes there is a value in
# the model's own spelling, not necessarily the user's.
CALL_ARGUMENT_KEYS = frozenset({"arguments", "input", "args"})


def slots_in_calls(value: Any) -> set[str]:
    """The slots a reply template writes inside a tool call's arguments."""
    return _slots_under(value, CALL_ARGUMENT_KEYS, json_is_data=False)


# Keys whose value is structured data in a canonical message: call arguments,
# Gemini's `functionResponse.response` object.
DATA_KEYS = CALL_ARGUMENT_KEYS | {"response"}


def slots_in_data(value: Any) -> set[str]:
    """The slots that occur, somewhere in these template messages, inside
    structured data: a tool result (JSON or plain text), a JSON string (a call's
    arguments) or a data key's object. A value a tool returned is data the model passes on; a
    value only the user's prose holds is one the model must write itself."""
    return _slots_under(value, DATA_KEYS, json_is_data=True)


def slots_stated(value: Any) -> set[str]:
    """The slots a reply template states in its own text (prose, a JSON answer),
    outside any tool call's arguments: where a model says what it concluded
    about a value ("Yes, 7 is prime", "a balance of 20 is too low")."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if MARK in item:
                found |= slots_in(item)
            else:
                stack.extend(v for key, v in item.items() if key not in CALL_ARGUMENT_KEYS)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def texts_in_calls(value: Any) -> list[str]:
    """The template texts (with their slots) a reply writes inside tool calls'
    arguments: `{{v1}}.docx` where the call holds a file name around a slot."""
    return [m["t"] for part in _parts_under(value, CALL_ARGUMENT_KEYS, json_is_data=False)
            for m in _markers(part) if m[MARK] in TEXT_KINDS]


def texts_in(value: Any) -> list[str]:
    """Every template text in a value (messages, a reply), JSON strings' included."""
    return [m["t"] for m in _markers(value) if m[MARK] in TEXT_KINDS]


def _slots_under(value: Any, keys: frozenset, json_is_data: bool) -> set[str]:
    """The slots below any of `keys` (and, with `json_is_data`, inside any JSON-string marker)."""
    found: set[str] = set()
    for part in _parts_under(value, keys, json_is_data):
        found |= slots_in(part)
    return found


def _parts_under(value: Any, keys: frozenset, json_is_data: bool) -> list[Any]:
    """The values below any of `keys` (and, with `json_is_data`, every JSON-string marker's value)."""
    found: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if json_is_data and (item.get(MARK) == "json" or (MARK not in item and is_tool_result(item))):
                # A tool's output is data even when it is plain text, not JSON.
                found.append(item.get("value") if MARK in item else item)
            elif MARK not in item:
                for key, v in item.items():
                    if key in keys:
                        found.append(v)
                    else:
                        stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _markers(value: Any) -> Iterator[dict]:
    if isinstance(value, dict):
        if MARK in value:
            yield value
            if value[MARK] in ("json", "opt"):
                yield from _markers(value.get("value"))
            elif value[MARK] == "list":
                yield from _markers(value.get("head"))
                yield from _markers(value.get("item"))
            elif value[MARK] == "keys":
                yield from _markers(value.get("fields"))
            return
        for v in value.values():
            yield from _markers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _markers(v)


# -- matching ------------------------------------------------------------------

def match_message(content: Mapping[str, Any], message: Any, bindings: Mapping[str, str]) -> dict | None:
    """The bindings extended by this message, or None when it does not fit."""
    try:
        return _fingerprinted(_match(content["message"], message, dict(bindings), content.get("slots") or {}, None, ""))
    except _NoMatch:
        return None


def explain_mismatch(content: Mapping[str, Any], message: Any, bindings: Mapping[str, str]) -> str:
    """Which literal or slot failed (empty when the message fits)."""
    try:
        _match(content["message"], message, dict(bindings), content.get("slots") or {}, "", "")
    except _NoMatch as e:
        return str(e)
    return ""


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _same_literal(a: Any, b: Any) -> bool:
    # `==` alone says True == 1 and 1 == 1.0; the canonical bytes do not.
    if type(a) is str or a is None:
        return type(b) is type(a) and a == b
    return a == b and canonical_json(a) == canonical_json(b)


# Matching runs on every lookup and mostly fails (the walk tries each template
# child): `where` is None then, and no explanation is built. `explain_mismatch`
# runs the same code with `where` a path, to say what failed.

def _fail(where: str | None, why: Callable[[], str]) -> _NoMatch:
    return _NoMatch() if where is None else _NoMatch(f"{where or 'message'}: {why()}")


def _bind(name: str, value: str, bindings: dict, shape: str, where: str | None) -> None:
    if name in bindings:
        if bindings[name] != value:
            raise _fail(where, lambda: f"slot {{{{{name}}}}} is {_short(bindings[name])!r} earlier but {_short(value)!r} here")
        return
    if not fits(shape, value):
        raise _fail(where, lambda: f"{_short(value)!r} is not a {shape} for slot {{{{{name}}}}}")
    bindings[name] = value


def _match(t: Any, c: Any, bindings: dict, shapes: Mapping[str, str], where: str | None, field: str) -> dict:
    """`field`: the name of the JSON field `c` is the value of (items of a list share
    their list's), under which `_vary` notes what the template lets vary unbound."""
    if type(t) is dict:
        kind = t.get(MARK)
        if kind is not None:
            if kind == "text":
                if type(c) is not str:
                    raise _fail(where, lambda: f"expected text, got {_short(c)!r}")
                return _match_text(t["t"], c, bindings, shapes, where)
            if kind == "number":
                if isinstance(c, bool) or not isinstance(c, (int, float)):
                    raise _fail(where, lambda: f"{_short(c)!r} is not a number for slot {{{{{t['slot']}}}}}")
                _bind(t["slot"], number_text(c), bindings, "number", where)
                return bindings
            if kind == "json":
                parsed = _json_container(c)
                if parsed is None:
                    raise _fail(where, lambda: f"expected JSON text, got {_short(c)!r}")
                return _match(t["value"], parsed, bindings, shapes, where, field)
            if kind == "any":
                return _match_any(t, c, bindings, where, field)
            if kind == "list":
                return _match_list(t, c, bindings, shapes, where, field)
            if kind == "keys":
                return _match_keys(t, c, bindings, shapes, where)
            if kind == "opt":  # present: its value must match
                return _match(t["value"], c, bindings, shapes, where, field)
            if kind == "dates":
                raise _fail(where, lambda: "a date offset is written only in replies")
            raise _fail(where, lambda: f"unknown template marker {kind!r}")
        if type(c) is not dict or t.keys() != c.keys():
            if type(c) is not dict or not _optional_fit(t, c):
                raise _fail(where, lambda: f"fields differ ({sorted(t)} vs "
                                           f"{sorted(c) if isinstance(c, dict) else type(c).__name__})")
            # The optional fields this one leaves out: which are present may decide too.
            for absent in sorted(k for k in t if k not in c):
                _vary(bindings, ABSENT, absent)
            t = {k: v for k, v in t.items() if k in c}
        for key, tv in t.items():  # template key order: role and literals first, as written
            if type(tv) is str and where is None:  # a literal string field: the commonest case
                if type(c[key]) is not str or c[key] != tv:
                    raise _NoMatch()
                continue
            sub = None if where is None else (f"{where}.{key}" if where else key)
            bindings = _match(tv, c[key], bindings, shapes, sub, key)
        return bindings
    if type(t) is list:
        if type(c) is not list or len(t) != len(c):
            raise _fail(where, lambda: "list length differs")
        for i, (tv, cv) in enumerate(zip(t, c)):
            bindings = _match(tv, cv, bindings, shapes, None if where is None else f"{where}[{i}]", field)
        return bindings
    if not _same_literal(t, c):
        raise _fail(where, lambda: f"literal {_short(t)!r} differs from {_short(c)!r}")
    return bindings


def _match_keys(t: dict, c: Any, bindings: dict, shapes: Mapping[str, str], where: str | None) -> dict:
    """An object whose keys are values: each key a slot bound earlier (never bound from
    a key: which key is which would be a guess), the same fields and no others."""
    if type(c) is not dict or len(c) != len(t["fields"]):
        raise _fail(where, lambda: f"expected an object of {len(t['fields'])} fields, got {_short(c)!r}")
    taken: set[str] = set()
    for key, value in t["fields"]:
        # What its free values are noted under (`_vary`): the key as the template writes
        # it, `{{user_id}}`, not this run's user, so runs' notes of one field add up.
        name = key if type(key) is str else key["t"]
        if type(key) is not str:
            try:  # a date offset in a key is nothing induction writes: no match
                if any(type(p) is tuple and len(p) > 1 for p in parse_text(name)):
                    raise RenderError(f"a date offset in key {name}")
                key = render_text(name, bindings)
            except RenderError:
                raise _fail(where, lambda: f"key {name} holds a slot no earlier message bound") from None
        if key not in c or key in taken:
            # Taken: a slot's key that is also a literal one leaves another field unchecked.
            raise _fail(where, lambda: f"no field {_short(key)!r} of its own")
        taken.add(key)
        bindings = _match(value, c[key], bindings, shapes, None if where is None else f"{where}.{key}", name)
    return bindings


def _optional_fit(t: dict, c: dict) -> bool:
    """Whether `c` has every required field of `t` and no field `t` lacks."""
    if not c.keys() <= t.keys():
        return False
    return all(k in c for k, v in t.items() if not (type(v) is dict and v.get(MARK) == "opt"))


def _match_any(t: dict, c: Any, bindings: dict, where: str | None, field: str) -> dict:
    if t.get("kind") == "number":
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise _fail(where, lambda: f"{_short(c)!r} is not a number")
        return _vary(bindings, field, number_text(c))
    if type(c) is not str:
        raise _fail(where, lambda: f"{_short(c)!r} is not a string")
    shape = t.get("shape")
    if shape is not None and not fits(shape, c):
        raise _fail(where, lambda: f"{_short(c)!r} is not a {shape}")
    return _vary(bindings, field, c)


def _vary(bindings: dict, field: str, value: str) -> dict:
    """Note a value the template lets vary without binding it (an `any`, which optional
    fields are absent), under the JSON field it is the value of: it binds nothing, so no
    reply shows it, and it may still decide the answer (one order "lost" among "shipped"
    ones). `match_message` folds the values a message noted into VARYING, which trust
    treats as a decision input. (Item copies share the list: an item's values are noted too.)"""
    bindings.setdefault(_NOTED, []).append((field, value))
    return bindings


def _fingerprinted(bindings: dict) -> dict:
    """The bindings with this message's noted values added to VARYING (`varying_text`)."""
    noted = bindings.pop(_NOTED, None)
    if noted:
        fields = {name: set(values) for name, values in varying_elements(bindings.get(VARYING)).items()}
        for field, value in noted:
            fields.setdefault(field, set()).add(value)
        bindings[VARYING] = varying_text(fields)
    return bindings


# VARYING's value is the set of values noted under each field name, one message's added
# to the earlier ones' (a "status" in two tool results is one field). Trust judges it
# value by value (store/trust.py): a field whose values repeat (a status) has a value
# never seen verified; one whose values are new nearly every time (an id, a price)
# earns its freedom as a slot does. Kept short, as it is stored with every
# verified run: a long value is noted by a hash, and a field with many values in one
# walk (a long list of ids) by one hash of them all, so it counts as new every time.
VARYING_PREFIX = "varying:"
_ELEMENT_CHARS = 40
_FIELD_ELEMENTS = 16
_VARYING_CHARS = 1024


def _element(value: str) -> str:
    if len(value) <= _ELEMENT_CHARS:
        return value
    return "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _many(values: Iterable[str]) -> list[str]:
    return ["#many:" + hashlib.sha256(canonical_json(sorted(values))).hexdigest()[:16]]


def varying_text(fields: Mapping[str, Iterable[str]]) -> str:
    """VARYING's value for these noted values per field (`varying_elements` reads it back)."""
    table = {name: sorted({_element(v) for v in values}) for name, values in fields.items()}
    for name, values in table.items():
        if len(values) > _FIELD_ELEMENTS:
            table[name] = _many(values)
    text = canonical_json(table).decode()
    if len(text) > _VARYING_CHARS:
        # The largest fields become one hash each until the text fits: one pass, sizes
        # counted once (a tool result may carry thousands of free fields).
        sizes = {name: len(canonical_json(values)) for name, values in table.items()}
        length = len(text)
        for name in sorted(table, key=sizes.__getitem__, reverse=True):
            if length <= _VARYING_CHARS:
                break
            collapsed = _many(table[name])
            length -= sizes[name] - len(canonical_json(collapsed))
            table[name] = collapsed
        text = canonical_json(table).decode()
        if len(text) > _VARYING_CHARS:  # too many fields even so: one hash of everything
            text = canonical_json({"#": _many([text])}).decode()
    return VARYING_PREFIX + text


@lru_cache(maxsize=4096)
def varying_elements(value: str | None) -> dict[str, frozenset]:
    """The values noted per field in a VARYING value (empty for none, or for the single
    hash an older butter wrote, which says nothing element by element)."""
    if not isinstance(value, str) or not value.startswith(VARYING_PREFIX):
        return {}
    try:
        table = json.loads(value[len(VARYING_PREFIX):])
    except ValueError:
        return {}
    if not isinstance(table, dict):
        return {}
    return {str(name): frozenset(str(v) for v in values) for name, values in table.items() if isinstance(values, list)}


def _match_list(t: dict, c: Any, bindings: dict, shapes: Mapping[str, str], where: str | None, field: str) -> dict:
    head = t.get("head") or []
    if type(c) is not list or len(c) < max(len(head), t.get("min") or 0):
        raise _fail(where, lambda: f"expected a list of at least {max(len(head), t.get('min') or 0)} items")
    if t.get("count"):
        _bind(t["count"], str(len(c)), bindings, "number", where)
    elif t.get("item") is not None:
        _vary(bindings, field + LENGTH, str(len(c)))  # how many may decide too ("which one?" for two)
    for i, (tv, cv) in enumerate(zip(head, c)):
        bindings = _match(tv, cv, bindings, shapes, None if where is None else f"{where}[{i}]", field)
    item = t.get("item")
    for i in range(len(head), len(c)):
        if item is None:
            raise _fail(where, lambda: "more items than the template has")
        # An item template binds nothing: each item is checked on its own (what its
        # `any` parts matched is still noted: the copy shares the list, `_vary`).
        _match(item, c[i], {**bindings, _NOTED: bindings.setdefault(_NOTED, [])}, shapes,
               None if where is None else f"{where}[{i}]", field)
    return bindings


def _json_container(c: Any) -> Any:
    if not isinstance(c, str):
        return None
    stripped = c.lstrip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        return json.loads(c)
    except ValueError:
        return None


def _match_text(t: str, c: str, bindings: dict, shapes: Mapping[str, str], where: str | None) -> dict:
    parts = _parsed_text(t)
    if len(parts) == 1:
        if parts[0] != c:
            raise _fail(where, lambda: "literal text differs")
        return bindings
    if len(parts) == 3 and where is None and len(parts[1]) == 1:
        name = parts[1][0]
        return _one_slot(parts[0], name, parts[2], shapes.get(name, "text"), c, bindings)
    failures: list[Callable[[], str]] | None = None if where is None else []  # the last one explains the miss
    result = _split(parts, c, bindings, shapes, failures)
    if result is None:
        raise _fail(where, lambda: failures[-1]() if failures else "no way to split the text")
    return result


def _one_slot(head: str, name: str, tail: str, shape: str, c: str, bindings: dict) -> dict:
    """A text of one slot between two literals: one possible split, no search (the commonest case)."""
    if len(c) > len(head) + len(tail) and c.startswith(head) and c.endswith(tail):
        value = c[len(head):len(c) - len(tail)]
        if name in bindings:
            if bindings[name] == value:
                return bindings
        elif fits(shape, value):
            return {**bindings, name: value}
    raise _NoMatch()


def _split(parts: tuple, c: str, bindings: dict, shapes: Mapping[str, str],
           failures: list[Callable[[], str]] | None) -> dict | None:
    """The bindings extended by the first split of `c` into `parts` (each slot
    shortest first), or None; `failures` (None while matching: nobody reads
    them) collects why each try failed."""
    steps = 0
    final = len(parts) - 1
    note = failures.append if failures is not None else None

    def go(i: int, pos: int, bound: dict) -> dict | None:
        nonlocal steps
        steps += 1
        if steps > MAX_MATCH_STEPS:
            return None
        part = parts[i]
        if type(part) is str:
            if not c.startswith(part, pos):
                if note:
                    note(lambda: f"literal {_short(part)!r} not found at {_short(c[pos:pos + 40])!r}")
                return None
            pos += len(part)
            if i == final:
                if pos == len(c):
                    return bound
                if note:
                    note(lambda: f"text goes on after the template: {_short(c[pos:])!r}")
                return None
            return go(i + 1, pos, bound)
        name = part[0]
        if len(part) > 1:
            if note:
                note(lambda: f"a date offset ({{{{{name} {part[1]:+d}d}}}}) is written only in replies")
            return None
        nxt = parts[i + 1]  # a literal always follows a slot (maybe empty)
        if name in bound:
            value = bound[name]
            if not c.startswith(value, pos):
                if note:
                    note(lambda: f"slot {{{{{name}}}}} is {_short(value)!r} earlier but not here")
                return None
            return go(i + 1, pos + len(value), bound)
        shape = shapes.get(name, "text")
        for end in _ends(c, pos, nxt, i + 1 == final):
            value = c[pos:end]
            if not fits(shape, value):
                if note:
                    note(lambda value=value: f"{_short(value)!r} is not a {shape} for slot {{{{{name}}}}}")
                continue
            found = go(i + 1, end, {**bound, name: value})
            if found is not None:
                return found
        return None

    return go(0, 0, bindings)


def _ends(c: str, pos: int, nxt: str, last: bool) -> Iterator[int]:
    """Where a slot starting at `pos` may end, shortest first."""
    if last:
        if nxt == "":
            yield len(c)
        elif c.endswith(nxt) and len(c) - len(nxt) > pos:
            yield len(c) - len(nxt)
        return
    if nxt == "":  # two slots side by side: every split
        yield from range(pos + 1, len(c))
        return
    start = pos + 1
    while True:
        found = c.find(nxt, start)
        if found < 0:
            return
        yield found
        start = found + 1



# -- matching, compiled once per stored template -------------------------------
# A lookup matches the same stored template nodes against message after message,
# and `_match` reads the template's structure again each time: which marker, which
# fields, which of them are literal. A compiled matcher reads it once: a closure per
# template part that does what `_match(part, value, bindings, shapes, None, field)`
# does for the common parts (an object with exactly the template's fields, a list,
# a literal string, a text, number or JSON marker) and calls `_match` itself for
# every other part and for an object whose fields differ (optional ones). So the
# two agree by construction, and bind in the same order.

# (concrete value, bindings so far) -> the bindings extended; raises _NoMatch.
_Compiled = Callable[[Any, dict], dict]
_COMPILED: dict[int, tuple[Mapping[str, Any], _Compiled]] = {}
MAX_COMPILED = 4096


def match_stored(content: Mapping[str, Any], message: Any, bindings: Mapping[str, str]) -> dict | None:
    """`match_message` for a content never changed after it is first matched (a
    stored template node's, which the lookup decodes once and keeps): its matcher
    is compiled on first use and kept with it."""
    try:
        return _fingerprinted(_compiled_message(content)(message, dict(bindings)))
    except _NoMatch:
        return None


def _compiled_message(content: Mapping[str, Any]) -> _Compiled:
    # Keyed by the object: the entry holds it, so its id is not reused while kept.
    found = _COMPILED.get(id(content))
    if found is None or found[0] is not content:
        found = (content, _compile(content["message"], content.get("slots") or {}, ""))
        if len(_COMPILED) >= MAX_COMPILED:
            _COMPILED.clear()
        _COMPILED[id(content)] = found
    return found[1]


def _compile(t: Any, shapes: Mapping[str, str], field: str) -> _Compiled:
    """The matcher of template part `t` (`field` as in `_match`)."""
    if type(t) is str:
        return _compile_literal(t)
    if type(t) is list:
        return _compile_list(t, shapes, field)
    if type(t) is dict:
        kind = t.get(MARK)
        if kind is None:
            return _compile_object(t, shapes, field)
        # A marker missing what it needs is left to `_match` (which fails on it when reached).
        if kind == "text" and type(t.get("t")) is str:
            return _compile_text(t["t"], shapes)
        if kind == "number" and type(t.get("slot")) is str:
            return _compile_number(t["slot"])
        if kind == "json" and "value" in t:
            return _compile_json(_compile(t["value"], shapes, field))
    return _reference(t, shapes, field)


def _reference(t: Any, shapes: Mapping[str, str], field: str) -> _Compiled:
    def match(c: Any, bindings: dict) -> dict:
        return _match(t, c, bindings, shapes, None, field)
    return match


def _compile_literal(t: str) -> _Compiled:
    def match(c: Any, bindings: dict) -> dict:
        if type(c) is not str or c != t:  # `_same_literal` of two strings
            raise _NoMatch()
        return bindings
    return match


def _compile_list(t: list, shapes: Mapping[str, str], field: str) -> _Compiled:
    items = [_compile(tv, shapes, field) for tv in t]
    length = len(items)

    def match(c: Any, bindings: dict) -> dict:
        if type(c) is not list or len(c) != length:
            raise _NoMatch()
        for item, cv in zip(items, c):
            bindings = item(cv, bindings)
        return bindings
    return match


def _compile_object(t: dict, shapes: Mapping[str, str], field: str) -> _Compiled:
    keys = t.keys()
    # (key, the literal string its value must be, or None and the value's matcher)
    fields = [(key, tv, None) if type(tv) is str else (key, None, _compile(tv, shapes, key)) for key, tv in t.items()]

    def match(c: Any, bindings: dict) -> dict:
        if type(c) is not dict or c.keys() != keys:
            return _match(t, c, bindings, shapes, None, field)  # optional fields, or no fit
        for key, literal, sub in fields:
            if sub is None:
                value = c[key]
                if type(value) is not str or value != literal:
                    raise _NoMatch()
            else:
                bindings = sub(c[key], bindings)
        return bindings
    return match


def _compile_text(t: str, shapes: Mapping[str, str]) -> _Compiled:
    parts = _parsed_text(t)
    if len(parts) == 3 and len(parts[1]) == 1:  # `_match_text`'s one slot, its shape looked up once
        head, (name,), tail = parts
        shape = shapes.get(name, "text")

        def match_one(c: Any, bindings: dict) -> dict:
            if type(c) is not str:
                raise _NoMatch()
            return _one_slot(head, name, tail, shape, c, bindings)
        return match_one
    split = _compile_split(parts, shapes) if len(parts) > 1 else None

    def match(c: Any, bindings: dict) -> dict:
        if type(c) is not str:
            raise _NoMatch()
        if split is not None:
            return split(c, bindings)
        return _match_text(t, c, bindings, shapes, None)
    return match


def _compile_number(slot: str) -> _Compiled:
    def match(c: Any, bindings: dict) -> dict:
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise _NoMatch()
        _bind(slot, number_text(c), bindings, "number", None)
        return bindings
    return match


def _compile_json(value: _Compiled) -> _Compiled:
    def match(c: Any, bindings: dict) -> dict:
        parsed = _json_container(c)
        if parsed is None:
            raise _NoMatch()
        return value(parsed, bindings)
    return match


def _compile_split(parts: tuple, shapes: Mapping[str, str]) -> Callable[[str, dict], dict]:
    """`_split` for a text of several slots, mostly done by a regex.

    The search tries each slot's ends shortest first, so the split it finds is
    the first, in that order, whose values fit their shapes. A regex with a
    lazy group per slot finds the first split in the same order, ignoring
    shapes: when its values fit, it is the search's answer. When they do not,
    or when the search could run out of MAX_MATCH_STEPS (`_few_splits`), or a
    slot is bound already, the search itself decides.
    """
    def search(c: str, bindings: dict) -> dict:
        found = _split(parts, c, bindings, shapes, None)
        if found is None:
            raise _NoMatch()
        return found

    slots = parts[1::2]
    names = [slot[0] for slot in slots]
    if any(len(slot) > 1 for slot in slots) or len(set(names)) < len(names):
        return search  # a date offset, or a name twice
    # The literal after each slot but the last, and whether `str.count` counts all its
    # occurrences (it counts no two that overlap).
    after = [(literal, not _overlaps_itself(literal)) for literal in parts[2:-1:2]]
    pattern = re.compile("(.+?)".join(re.escape(literal) for literal in parts[0::2]), re.DOTALL)
    named = list(zip(names, (shapes.get(name, "text") for name in names)))

    def split(c: str, bindings: dict) -> dict:
        if not _few_splits(c, after) or any(name in bindings for name in names):
            return search(c, bindings)
        found = pattern.fullmatch(c)
        if found is None:
            raise _NoMatch()  # no split at all, whatever the shapes
        values = found.groups()
        if not all(fits(shape, value) for (_, shape), value in zip(named, values)):
            return search(c, bindings)
        return {**bindings, **dict(zip(names, values))}
    return split


def _overlaps_itself(literal: str) -> bool:
    """Whether two occurrences of `literal` can overlap (" to " in " to to ")."""
    return any(literal[k:] == literal[:len(literal) - k] for k in range(1, len(literal)))


def _few_splits(c: str, after: list[tuple[str, bool]]) -> bool:
    """Whether `_split`'s search of `c` stays within MAX_MATCH_STEPS whatever the
    shapes: a slot followed by a literal may end at each occurrence of it (at
    each position when it is empty), the last slot at one place, and each end
    tried costs the search two steps (the literal, the next slot)."""
    steps, ends = 2, 1
    for literal, counted in after:
        ends *= len(c) if not literal else c.count(literal) if counted else _occurrences(c, literal)
        steps += 2 * ends
        if steps > MAX_MATCH_STEPS:
            return False
    return steps + 2 * ends <= MAX_MATCH_STEPS


def _occurrences(c: str, literal: str) -> int:
    """How often `literal` occurs in `c`, overlapping occurrences included."""
    n, at = 0, c.find(literal)
    while at >= 0:
        n += 1
        at = c.find(literal, at + 1)
    return n


# -- rendering -----------------------------------------------------------------

def render_text(t: str, bindings: Mapping[str, str]) -> str:
    out: list[str] = []
    for part in parse_text(t):
        if isinstance(part, str):
            out.append(part)
        elif part[0] not in bindings:
            raise RenderError(f"no value for {{{{{part[0]}}}}}")
        elif len(part) == 1:
            out.append(bindings[part[0]])
        else:
            shifted = shift_date(bindings[part[0]], part[1])
            if shifted is None:
                raise RenderError(f"{{{{{part[0]}}}}} = {bindings[part[0]]!r} is no ISO date to move by {part[1]} days")
            out.append(shifted)
    return "".join(out)


def render_reply(reply: Any, bindings: Mapping[str, str]) -> Any:
    """The reply with every marker replaced by the walk's values."""
    if isinstance(reply, dict):
        if MARK in reply:
            kind = reply[MARK]
            if kind in TEXT_KINDS:
                return render_text(reply["t"], bindings)
            if kind == "number":
                raw = bindings.get(reply["slot"])
                try:
                    value = json.loads(raw) if raw is not None else None
                except ValueError:
                    value = None
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise RenderError(f"{{{{{reply['slot']}}}}} = {raw!r} is not a number")
                return value
            if kind == "json":
                items, keys, ascii_only = reply.get("style") or COMPACT
                return json.dumps(render_reply(reply["value"], bindings), separators=(items, keys),
                                  ensure_ascii=bool(ascii_only))
            if kind == "keys":
                return {render_reply(k, bindings): render_reply(v, bindings) for k, v in reply["fields"]}
            raise RenderError(f"unknown template marker {kind!r}")
        return {k: render_reply(v, bindings) for k, v in reply.items()}
    if isinstance(reply, list):
        return [render_reply(v, bindings) for v in reply]
    return reply


def json_style(text: str, parsed: Any) -> tuple[str, str, bool]:
    """The json.dumps settings that wrote `text`, so a render reproduces it."""
    for items, keys, ascii_only in STYLES:
        if json.dumps(parsed, separators=(items, keys), ensure_ascii=ascii_only) == text:
            return (items, keys, ascii_only)
    return COMPACT


# -- client-declared bindings (Butter-Bindings) ----------------------------------------

DECLARED_ORIGIN = "declared"  # template_content(origin=...) of a recording with Butter-Bindings
# A declared slot in a user or system message needs a literal word beside it
# (two letters or digits in a row) in the same text: a value that is a whole
# message, a whole text part or a whole JSON field of one would make a free
# slot that serves every later question at that point.
_ANCHOR = re.compile(r"[^\W_]{2}")
_ALNUM = re.compile(r"[^\W_]")
# Blocks whose content a tool wrote, in every wire format's canonical form:
# OpenAI/Ollama `role: tool` messages, Anthropic `tool_result` blocks,
# Responses `function_call_output` items, Gemini `functionResponse` parts.
TOOL_RESULT_TYPES = ("tool_result", "function_call_output")


def is_declared(content: Any) -> bool:
    """Was this template node recorded from Butter-Bindings (not learned)?"""
    return isinstance(content, dict) and content.get("origin") == DECLARED_ORIGIN


def is_tool_result(value: Any) -> bool:
    """Is this canonical message or block the output of a tool (data, not words to obey)?"""
    return isinstance(value, dict) and (value.get("role") == "tool" or value.get("type") in TOOL_RESULT_TYPES
                                        or "functionResponse" in value)


@lru_cache(maxsize=4096)
def _value_pattern(value: str, strict: bool = False) -> re.Pattern:
    # Whole occurrences only: binding "12" must not eat the "12" in "123".
    # `strict` (values carried from a tool result): not part of a longer
    # token either, so "8842" is not bound inside "8842.5" or "cus-8842".
    if strict:
        return re.compile(r"(?<![\w.@/#-])" + re.escape(value) + r"(?![\w@]|[.\-/]\w)")
    left = r"(?<![\w])" if re.match(r"\w", value) else ""
    right = r"(?![\w])" if re.search(r"\w$", value) else ""
    return re.compile(left + re.escape(value) + right)


def whole_occurrences(value: str, text: str, strict: bool = False) -> int:
    return sum(1 for _ in _value_pattern(value, strict).finditer(text))


def without_occurrences(value: str, text: str, strict: bool = False) -> str:
    """`text` with every whole occurrence of `value` cut out (a NUL in its place)."""
    return _value_pattern(value, strict).sub("\x00", text)


@dataclass(frozen=True)
class _Binder:
    values: Mapping[str, str]  # name -> value
    numbers: Mapping[str, str]  # number_text -> name, for JSON numbers
    strict: frozenset[str]  # names whose values are matched strictly


def _binder(bindings: Mapping[str, str], strict: Iterable[str] = ()) -> _Binder:
    return _Binder(bindings, {v: k for k, v in bindings.items() if fits("number", v)}, frozenset(strict))


def _bind_text(s: str, binder: _Binder) -> str | None:
    """`s` with every bound value as its placeholder; None if none occurs."""
    spans: list[tuple[int, int, str]] = []
    # Longer values first, so "Ana Ruiz" wins over "Ana".
    for name, value in sorted(binder.values.items(), key=lambda kv: -len(kv[1])):
        for m in _value_pattern(value, name in binder.strict).finditer(s):
            if all(m.end() <= a or m.start() >= b for a, b, _ in spans):
                spans.append((m.start(), m.end(), name))
    if not spans:
        return None
    spans.sort()
    out, pos = [], 0
    for a, b, name in spans:
        out.append(escape_literal(s[pos:a]))
        out.append("{{" + name + "}}")
        pos = b
    out.append(escape_literal(s[pos:]))
    return "".join(out)


def _literal_text(t: str) -> str:
    return "".join(p for p in parse_text(t) if isinstance(p, str))


# Where a string is words (a text part, a message's content) rather than a
# field of data, and the keys under which everything is data (tool-call
# arguments in each format, Gemini's function response).
PROSE_KEYS = frozenset({"text", "content", "output", "thinking", "refusal"})
DATA_KEYS = frozenset({"arguments", "input", "args", "functionResponse"})


def _bind_value(value: Any, binder: _Binder, in_reply: bool, anchored: bool = False, data: bool = False,
                key: str | None = None) -> Any:
    """`value` with bound values as placeholders.

    In a message (not a reply) a text that would be nothing but placeholders
    stays literal; a data field (inside JSON text or tool-call arguments, as
    a tool result's `"id": "{{id}}"`, whose key anchors it) may be one slot.
    With `anchored` (a user or system message, outside tool results) every
    templated string keeps a literal word.
    """
    if isinstance(value, str):
        parsed = _json_container(value)
        if parsed is not None:
            inner = _bind_value(parsed, binder, in_reply, anchored, True)
            if has_markers(inner):
                return json_marker(inner, json_style(value, parsed) if in_reply else COMPACT)
            return value
        bound = _bind_text(value, binder)
        if bound is None:
            return value
        if not in_reply:
            literal = _literal_text(bound)
            if anchored and not _ANCHOR.search(literal):
                return value
            if not data and key in PROSE_KEYS and not _ALNUM.search(literal):
                return value
        return text_marker(bound)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        name = binder.numbers.get(number_text(value))
        return number_marker(name) if name else value
    if isinstance(value, dict):
        if anchored and is_tool_result(value):
            anchored = False  # a tool's output inside a user message (Anthropic, Gemini): data, not words
        return {k: _bind_value(v, binder, in_reply, anchored, data or k in DATA_KEYS, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_bind_value(v, binder, in_reply, anchored, data, key) for v in value]
    return value


def free_text_in_words(content: Any) -> bool:
    """Does this template have a free-text slot in a user or system message's own
    words with no literal word beside it (`{{question}}`, `Q: {{q}}`)?

    Such a template matches every question at its point. Neither induction
    (three literal words at least) nor Butter-Bindings recordings (see
    `_bind_value`) write one; a database written before declared bindings
    were anchored may hold one, and the lookup skips it (store/cache.py).
    """
    message = content.get("message") if isinstance(content, dict) else None
    if not isinstance(message, dict) or message.get("role") not in ("user", "system") or is_tool_result(message):
        return False
    shapes = content.get("slots") or {}

    def unanchored(value: Any) -> bool:
        if isinstance(value, dict):
            if is_tool_result(value):
                return False
            if value.get(MARK) == "text" and isinstance(value.get("t"), str):
                parts = _parsed_text(value["t"])
                return (any(shapes.get(p[0], "text") == "text" for p in parts if type(p) is tuple)
                        and not _ANCHOR.search("".join(p for p in parts if type(p) is str)))
            inner = value.get("value") if value.get(MARK) == "json" else value
            return any(unanchored(v) for v in (inner.values() if isinstance(inner, dict) else [inner]))
        if isinstance(value, list):
            return any(unanchored(v) for v in value)
        return False

    return unanchored(message)


def bind_message(message: Any, bindings: Mapping[str, str], *, shapes: Mapping[str, str] | None = None,
                 strict: Iterable[str] = (), origin: str | None = None) -> dict | None:
    """The template content for a message with bound values, or None if none occurs.

    Declared slots are `text`: the client says what varies, so the shape of
    one example must not narrow it; `shapes` gives others (values carried
    from a tool result, store/declared.py). A user or system message keeps a
    literal word beside every slot of its own text (see `_bind_value`), so a
    value equal to a whole message or text part leaves it exact.
    """
    if has_markers(message):
        return None  # content that spells butter's own marker is only ever matched exactly
    anchored = isinstance(message, dict) and message.get("role") in ("user", "system") and not is_tool_result(message)
    templated = _bind_value(message, _binder(bindings, strict), False, anchored)
    if not has_markers(templated):
        return None
    shapes = shapes or {}
    return template_content(templated, {name: shapes.get(name, "text") for name in slots_in(templated)}, origin)


def bind_reply(reply: Any, bindings: Mapping[str, str], *, strict: Iterable[str] = ()) -> Any:
    if has_markers(reply):
        # A reply that spells butter's marker cannot be told apart from a
        # template: keep no record of it that could be misread.
        raise RenderError("the reply contains butter's template marker key")
    return _bind_value(reply, _binder(bindings, strict), True)
