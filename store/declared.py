"""One recorded run with client-declared bindings serves every step (sans-IO).

A run recorded with `Butter-Bindings` is stored as templates at once (no
second run to compare): every declared value becomes its placeholder. That
alone misses where a run repeats a value it did not declare but a tool of the
same run returned: the new customer's id from `create_customer`, named again
in the final answer. Such a value is *carried*: the tool result is templated
where the value sits (JSON field by field) and binds the slot at lookup time,
and every later occurrence (tool-call arguments, the answer) is rendered from
it. The next customer's run then matches whatever id its own tool returns.

Carrying leans toward missing. A tool-result value is carried only if:

- it is a field of JSON (a string or number field; plain-text results and
  prose stay literal), of a data-like shape (number, date, e-mail,
  identifier: a word such as "approved" may be a decision and never is one)
  and at least `MIN_CARRIED_CHARS` long (a 1 or a 12 is too likely a count);
- it is not a declared value and no earlier message (nor the context) holds
  it: the tool must be where the run learned it;
- the model's later output (assistant messages after it, and the reply)
  repeats it verbatim as a whole token, and no good part of it appears
  anywhere else there (in another case, inside a longer token, `#8842`
  beside `cus_8842`): a form butter does not template would be served stale
  to the next customer.

Every other field of a tool result stays literal, so a result that differs in
anything else (`"found": true`, a status) misses and goes to the provider.

Templates recorded this way carry `origin: "declared"` (templates.DECLARED_ORIGIN):
the client's own word, trusted without the probation learned templates get.

Public API
----------
    Carried(index, name, value, shape)      a value carried from message `index`
    carried_values(context, messages, reply, declared) -> list[Carried]
    bound_contents(context, messages, declared, reply) -> (contents, reply template)
        contents[i]: the template content of message i, or None (stays exact)
    earlier_step_depths(contents, messages) -> [depth]
    reply_carries_over(reply, hit_bindings, contents, messages, declared) -> bool
        the run's earlier requests, answered before a later step proved a
        value carried, get their replies on the carried path too (store/cache.py)
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .canonical import canonical_json
from .templates import (DECLARED_ORIGIN, NAME_RE, bind_message, bind_reply, is_tool_result, match_message,
                        number_text, render_reply, shape_of, whole_occurrences, without_occurrences)

CARRIED_SHAPES = ("number", "date", "email", "identifier")
MIN_CARRIED_CHARS = 3
MAX_CANDIDATES = 256  # tool-result values checked per recording (it runs on the writer thread)
SLOT_PREFIX = "tool"  # carried slots are named tool<message index>.<JSON path>, e.g. tool4.id


@dataclass(frozen=True)
class Carried:
    index: int  # the message whose tool result binds it
    name: str
    value: str
    shape: str


def _json_of(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return None


def _json_leaves(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path, value text) of every string and number field of parsed JSON."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield from _json_leaves(v, path + (str(key),))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_leaves(v, path + (str(i),))
    elif isinstance(value, str):
        inner = _json_of(value)
        yield from (_json_leaves(inner, path) if inner is not None else [(path, value)])
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, number_text(value)


def _found(value: Any, pick: Callable[[Any], Iterable[Any] | None]) -> Iterator[Any]:
    """What `pick` finds in `value` or, where it finds nothing (None), in its items, depth first."""
    here = pick(value)
    if here is not None:
        yield from here
    elif isinstance(value, (dict, list)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _found(v, pick)


def _tool_fields(message: Any) -> Iterator[tuple[tuple[str, ...], str]]:
    """The JSON fields of every tool result in a canonical message."""
    for result in _found(message, lambda v: (v,) if is_tool_result(v) else None):
        for data in _found(result, _structured):
            yield from _json_leaves(data, ())


def _structured(value: Any) -> Iterable[Any] | None:
    """The parsed JSON a tool result holds here: JSON text, or Gemini's response object."""
    if isinstance(value, str):
        parsed = _json_of(value)
        return () if parsed is None else (parsed,)
    if isinstance(value, dict) and isinstance(value.get("functionResponse"), dict):
        return (value["functionResponse"].get("response"),)
    return None


def _texts(value: Any) -> Iterator[str]:
    """Every string (JSON text as its fields) and number of a value, as text."""
    if isinstance(value, str):
        inner = _json_of(value)
        if inner is not None:
            yield from _texts(inner)
        else:
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield number_text(value)


def _slot_name(index: int, path: tuple[str, ...], taken: set[str]) -> str:
    parts = [re.sub(r"[^A-Za-z0-9_-]", "_", p) or "_" for p in path] or ["value"]
    base = f"{SLOT_PREFIX}{index}." + ".".join(parts)
    name, n = base, 2
    while name in taken or not NAME_RE.fullmatch(name):
        name, n = f"{base}_{n}", n + 1
    return name


def _carries(value: str) -> bool:
    return len(value) >= MIN_CARRIED_CHARS and shape_of(value) in CARRIED_SHAPES


def carried_values(context: Mapping[str, Any], messages: Sequence[Any], reply: Any,
                   declared: Mapping[str, str]) -> list[Carried]:
    """The tool-result values this run carries to its later output (see the module notes)."""
    declared_values = set(declared.values())
    taken = set(declared)
    seen = _lower_text(context)
    # The model's own output after each point, one text per message (and the reply last).
    outputs = ["\n".join(_texts(m)) if _is_model_output(m) else "" for m in messages] + ["\n".join(_texts(reply))]
    after: dict[int, tuple[str, str]] = {}  # index -> (the output after it, lower-cased)

    def output_after(index: int) -> tuple[str, str]:
        if index not in after:
            text = "\n".join(t for t in outputs[index + 1:] if t)
            after[index] = (text, text.lower())
        return after[index]

    found: list[Carried] = []
    carried: set[str] = set()
    tried = 0
    for index, message in enumerate(messages):
        for path, value in _tool_fields(message):
            if value in carried or value in declared_values or not _carries(value):
                continue
            if value.lower() in seen:
                continue  # the run knew it before the tool said it: not the tool's
            tried += 1
            if tried > MAX_CANDIDATES:
                return found  # a result listing thousands of ids: the rest stay literal (a miss, never wrong)
            later, later_lower = output_after(index)
            if value.lower() not in later_lower:
                continue  # never repeated
            whole = whole_occurrences(value, later, strict=True)
            if whole == 0 or _part_elsewhere(value, later):
                continue  # not repeated whole, or also in a form butter would serve stale
            name = _slot_name(index, path, taken)
            taken.add(name)
            carried.add(value)
            found.append(Carried(index, name, value, shape_of(value)))
        seen += "\n" + _lower_text(message)
    return found


def _part_elsewhere(value: str, text: str) -> bool:
    """Does a good part of `value` (half of it, 4 characters at least) appear in
    `text` outside its whole occurrences, in any case? `CUS_8842`,
    `cus_8842-b`, `#8842` beside `cus_8842` may be derived from it and would
    be served stale; `item-10` beside `item-1` may be too, for all butter knows."""
    rest = without_occurrences(value, text, strict=True).lower()
    low = value.lower()
    width = max(4, (len(value) + 1) // 2)
    return any(low[i:i + width] in rest for i in range(len(low) - width + 1))


def _lower_text(value: Any) -> str:
    return canonical_json(value).decode("utf-8", "replace").lower()


def bound_contents(context: Mapping[str, Any], messages: Sequence[Any], declared: Mapping[str, str],
                   reply: Any) -> tuple[list[dict | None], Any]:
    """Each message's template content (None: stays exact) and the reply template.

    Message i binds the declared values and the values carried from tool
    results up to and including its own; a carried slot is first bound by its
    tool result, so a lookup knows its value before any later message or the
    reply uses it.
    """
    carried = carried_values(context, messages, reply, declared)
    shapes = {c.name: c.shape for c in carried}
    strict = {c.name for c in carried}
    contents: list[dict | None] = []
    for index, message in enumerate(messages):
        active = dict(declared)
        active.update({c.name: c.value for c in carried if c.index <= index})
        contents.append(bind_message(message, active, shapes=shapes, strict=strict, origin=DECLARED_ORIGIN))
    everything = {**declared, **{c.name: c.value for c in carried}}
    return contents, bind_reply(reply, everything, strict=strict)


def path_bindings(contents: Sequence[dict | None], messages: Sequence[Any],
                  declared: Mapping[str, str]) -> dict[str, str] | None:
    """The bindings a lookup of `messages` gets on the path `contents` (None: they do not fit)."""
    bindings: dict[str, str] | None = dict(declared)
    for content, message in zip(contents, messages):
        if content is not None:
            bindings = match_message(content, message, bindings)
            if bindings is None:
                return None
    return bindings


def earlier_step_depths(contents: Sequence[dict | None], messages: Sequence[Any]) -> list[int]:
    """Prefix lengths whose request may now need its reply on this run's template path.

    A request ends with a user or tool message (never with the model's own),
    and only a prefix that holds a carried slot differs from the path its own
    recording took: there the value was still literal, since its reply did
    not repeat it.
    """
    depths = []
    carried_so_far = False
    for depth, (content, message) in enumerate(zip(contents, messages), start=1):
        # Declared slots are `text`; carried ones have a data shape.
        if content is not None and any(shape != "text" for shape in content["slots"].values()):
            carried_so_far = True
        if carried_so_far and depth < len(messages) and not _is_model_output(message):
            depths.append(depth)
    return depths


MODEL_ITEM_TYPES = ("function_call", "custom_tool_call")  # Responses items the model wrote


def _is_model_output(message: Any) -> bool:
    """Did the model write this canonical message (Chat/Anthropic/Ollama `assistant`,
    Gemini `model`, a Responses call item)?"""
    return isinstance(message, dict) and (message.get("role") in ("assistant", "model")
                                          or message.get("type") in MODEL_ITEM_TYPES)


def reply_carries_over(reply: Any, hit_bindings: Mapping[str, str], contents: Sequence[dict | None],
                       messages: Sequence[Any], declared: Mapping[str, str]) -> bool:
    """May `reply` (served for `messages` with `hit_bindings`) stand on the path `contents`?

    Only if it is exactly what recording this run's reply on that path would
    store: this run's reply bound with every value the path binds. A reply
    that names one of them literally (recorded without the header, or with
    fewer values) would serve this run's value to the next customer.
    """
    bindings = path_bindings(contents, messages, declared)
    if bindings is None:
        return False
    carried = {name for c in contents if c is not None for name, shape in c["slots"].items() if shape != "text"}
    try:
        return bind_reply(render_reply(reply, hit_bindings), bindings, strict=carried) == reply
    except ValueError:
        return False
