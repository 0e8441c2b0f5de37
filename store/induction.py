"""Template induction from sibling observations, on evidence only (sans-IO).

An *observation* is one recorded exact path with its one reply: the messages
from the root down to the reply's node, and the canonical reply. Observations
that share a prefix (the same parent node) and differ below it are siblings.
`propose` lines them up message by message and proposes slots for the spans
that differ:

- text is tokenised (words, numbers, dates, e-mails, punctuation, runs of
  space) and aligned with rapidfuzz's Indel opcodes against the first
  observation; tokens equal in every pair stay literal, the rest become
  slots (a space between two differing runs joins them: "Ana Ruiz" is one
  value);
- JSON (a tool result, tool-call arguments) is aligned field by field: a
  field that varies is one slot, constant fields stay literal, and a change
  of structure (another field, another tool) refuses the proposal;
- slots whose values agree in every observation are one name, so an order id
  in the user's words, in a tool call and in a tool result binds once; names
  come from JSON keys where there are any (`order_id`), else `v1`, `v2`, ...;
- a JSON field or the model's own text that differs only by values already
  seen is written over them (`{{v1}}.txt`, `+44 {{v2}}`), and a field that
  holds the first or last words of a value splits it into word parts
  (`{{first_name}} {{last_name}}`, each matching one word): one value in
  several forms is one slot (`_Slots`).

The reply is then explained: every difference between the observations'
replies must be a slot value substituted in place (values may come from any
templated message: an id returned by a tool and echoed in the answer is a
slot too). Tool names, roles and finish reasons may never be slots. One
derived value is explained too: an ISO date the reply writes that no
conversation spells, but that in every observation is one ISO date slot
plus the same number of days (`get_forecast(date=...)` the day after "Today
is 2026-12-03."), is written `{{today +1d}}` (store/templates.py); a date two
slots would explain equally, or that a conversation holds anywhere, is not
(`_date_offsets`).
The proposal is accepted only if (evidence):

- there are at least `min_observations` observations;
- every observation matches the templates (shapes included) and rendering
  the reply template with its own values reproduces its recorded reply
  exactly (JSON strings compared as JSON; provider bookkeeping such as
  `usage` or `system_fingerprint` ignored and served from the newest);
- a slot of prose that never reaches the reply is data-shaped (number, date,
  e-mail, identifier: a timestamp, a request id), even when all replies are
  identical; a free-text span that changes nothing visible (an instruction
  word, another task's sentence) must not become a variable on evidence
  that says nothing about it;
- a prose template with a free-text slot keeps at least three literal words,
  and in every observation no fewer literal words than its free-text slots
  hold: `{{v1}}my {{v2}}` (two tasks sharing one word) is never a template.

An accepted proposal is evidence about the earlier steps of its runs too:
`propose_prefix` gives each earlier request (the first `get_order`, which
does not use the customer's name the final answer repeats) its reply on the
same template nodes, reproduced exactly, with no slot of its own.

Public API
----------
    Observation(key: bytes, messages: tuple[dict, ...], reply: dict)
    Proposal(start, nodes, reply, slots, keys, bindings)
        start:  index of the first templated message (the depth of the shared
                exact parent below the root)
        nodes:  for messages start..n-1, ("template", template content) or
                ("message", literal message) when all observations agree
        reply:  the reply template;  slots: name -> shape
        keys:   the observations used;  bindings: each one's values
    Rejected(reason: str, keys: tuple[bytes, ...])

    propose(observations, min_observations=2) -> Proposal | Rejected
    propose_prefix(accepted, prefix_observations) -> Proposal | Rejected
        the reply at an earlier step of an accepted proposal's runs, on the
        same template nodes: a later reply proves a span is a value
    choose(new, others, min_observations=2, known_failure=None)
        -> tuple[Proposal | None, list[Rejected]]
        the strategy after a miss: pair the new observation with each sibling
        (skipping pairs `known_failure(keys)` says failed before), then try
        the largest set that passes together
    tokenize(text) -> list[str]
    align_texts(texts) -> list[str | None] | None
        literal segments and None for slots, aligned on texts[0]
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
import re
from typing import Any, Callable, Sequence

from rapidfuzz.distance import Indel

from .agreement import JSON_KEYS, VOLATILE_REPLY_KEYS, is_empty, json_container, same_answer
from .canonical import canonical_json
from .templates import (CALL_ARGUMENT_KEYS, COMPACT, MARK, MAX_DAY_OFFSET, VARYING, TEXT_KINDS, any_marker,
                        common_shape, escape_literal,
                        has_markers, json_marker, json_style, keys_marker, list_marker, match_message, number_marker,
                        number_text,
                        opt_marker, parse_text, placeholder, render_reply, shift_date, slots_in, template_content,
                        text_marker)

Message = dict[str, Any]

# Reply fields that decide a branch: never a slot (which tool, who speaks, why it stopped).
LITERAL_REPLY_KEYS = frozenset({"name", "role", "type", "finish_reason", "stop_reason", "finishReason",
                                "done_reason", "object"})
# A free-text span longer than this in prose is an instruction, not a value.
MAX_PROSE_SLOT_WORDS = 6
# A prose template with a free-text slot must be anchored by at least this
# many literal words (see `_check_anchor`).
MIN_PROSE_LITERAL_WORDS = 3
MAX_EXPLAIN_STEPS = 20_000
# How lists in JSON are lined up, boldest first (see `_Builder`).
LIST_FREE, LIST_HEAD, LIST_POSITIONAL = 0, 1, 2
LIST_LEVELS = (LIST_FREE, LIST_HEAD, LIST_POSITIONAL)

_TOKEN = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"  # e-mail
    r"|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"  # date
    r"|\d+(?:\.\d+)*"  # number
    r"|\w+|[^\w\s]|\s+"
)


@dataclass(frozen=True)
class Observation:
    key: bytes
    messages: tuple[Message, ...]
    reply: dict


@dataclass(frozen=True)
class Proposal:
    start: int
    nodes: tuple[tuple[str, dict], ...]
    reply: dict
    slots: dict[str, str]
    keys: tuple[bytes, ...]
    bindings: tuple[dict[str, str], ...] = field(default=())


@dataclass(frozen=True)
class Rejected:
    reason: str
    keys: tuple[bytes, ...]


class _Refuse(Exception):
    pass


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


# -- text alignment ----------------------------------------------------------------

def align_texts(texts: Sequence[str]) -> list[str | None] | None:
    """Segments of texts[0]: literal strings and None for slots; None if unalignable.

    A slot must be non-empty in every text; literal runs are the tokens equal
    in every pairwise alignment with texts[0].
    """
    spans = _aligned_spans(texts)
    if spans is None:
        return None
    return [seg if isinstance(seg, str) else None for seg in spans[0]]


def _aligned_spans(texts: Sequence[str]) -> tuple[list[str | tuple[int, int]], list[list[str]]] | None:
    """(segments of texts[0] with slot token spans, each text's slot values)."""
    tokens = [tokenize(t) for t in texts]
    pivot = tokens[0]
    maps: list[dict[int, int]] = []
    for other in tokens[1:]:
        equal: dict[int, int] = {}
        for op in Indel.opcodes(pivot, other):
            if op.tag == "equal":
                for k in range(op.src_end - op.src_start):
                    equal[op.src_start + k] = op.dest_start + k
        maps.append(equal)
    literal = [all(p in m for m in maps) for p in range(len(pivot))]
    # Runs of pivot tokens: (is_literal, start, end).
    runs: list[list] = []
    for p, lit in enumerate(literal):
        if runs and runs[-1][0] == lit:
            runs[-1][2] = p + 1
        else:
            runs.append([lit, p, p + 1])
    # A literal run of space, or a short connector inside a word ("@", "."),
    # between two slots joins them into one value.
    merged: list[list] = []
    for i, run in enumerate(runs):
        lit, a, b = run
        text = "".join(pivot[a:b])
        between = 0 < i < len(runs) - 1 and not runs[i - 1][0] and not runs[i + 1][0]
        if lit and between and (text.isspace() or (len(text) <= 2 and not any(ch.isspace() for ch in text)
                                                   and not any(ch.isalnum() for ch in text))):
            lit = False
        if merged and merged[-1][0] == lit:
            merged[-1][2] = b
        else:
            merged.append([lit, a, b])
    # Where another text inserts tokens between two adjacent pivot literals,
    # the pivot's value there would be empty: a slot must have a value.
    for n, m in enumerate(maps, start=1):
        for p in range(len(pivot) - 1):
            if literal[p] and literal[p + 1] and m[p + 1] != m[p] + 1:
                return None
        if literal and literal[0] and m[0] != 0:
            return None
        if literal and literal[-1] and m[len(pivot) - 1] != len(tokens[n]) - 1:
            return None
    segments: list[str | tuple[int, int]] = []
    values: list[list[str]] = [[] for _ in texts]
    for lit, a, b in merged:
        if lit:
            segments.append("".join(pivot[a:b]))
            continue
        segments.append((a, b))
        values[0].append("".join(pivot[a:b]))
        for n, m in enumerate(maps, start=1):
            left = m[a - 1] + 1 if a > 0 else 0
            right = m[b] if b < len(pivot) else len(tokens[n])
            value = "".join(tokens[n][left:right])
            if not value:
                return None
            values[n].append(value)
    return segments, values


# -- building templates ----------------------------------------------------------------

class _Slots:
    """The slots of one proposal, shared by its messages and its reply.

    A slot is a *group*: one value per observation. The same values in every
    observation are one group, so an order id in the user's words, in a tool
    call and in a tool result binds once. A group may later be *split* into
    word parts (see `explain`); the split is recorded as an expansion and
    applied to every template at the end.
    """

    def __init__(self, frozen: bool = False):
        self.groups: dict[str, tuple[str, ...]] = {}
        self.by_values: dict[tuple[str, ...], str] = {}
        self.numbers: set[str] = set()
        self.hints: dict[str, str] = {}
        self.prose: dict[str, bool] = {}  # True while every occurrence is running text
        self.expansions: dict[str, str] = {}  # a split group -> the template text of its parts
        self.words: set[str] = set()  # parts of a split that were single words in every observation
        self.frozen = frozen  # no new groups: the templates are already fixed

    def slot(self, values: Sequence[str], number: bool = False, hint: str | None = None,
             prose: bool = False) -> str:
        values = tuple(values)
        name = self.by_values.get(values)
        if name is None:
            if self.frozen:
                raise _Refuse(f"{_brief(values[0])} is no slot's value")
            name = f"_g{len(self.groups)}"
            self.groups[name] = values
            self.by_values[values] = name
            self.prose[name] = prose
        else:
            self.prose[name] = self.prose[name] and prose
        if number:
            self.numbers.add(name)
        if hint:
            self.hints.setdefault(name, hint)
        return name

    def private(self, values: Sequence[str], hint: str) -> str:
        """A number slot of its own, never joined with equal values elsewhere (a
        list's length: small numbers are equal by chance, not by meaning)."""
        if self.frozen:
            raise _Refuse("a list length is no slot's value")
        name = f"_g{len(self.groups)}"
        self.groups[name] = tuple(values)
        self.numbers.add(name)
        self.prose[name] = False
        self.hints.setdefault(name, hint)
        return name

    def live(self) -> dict[str, tuple[str, ...]]:
        return {n: v for n, v in self.groups.items() if n not in self.expansions}

    def explain(self, values: Sequence[str]) -> str | None:
        """A template text over existing slots that renders each observation's value.

        A value whole in a JSON field and in pieces elsewhere is one value:
        the file `"lumen_raven.txt"` is `{{v1}}.txt` when the user wrote
        `lumen_raven`, a `phone` field is `+44 {{v2}}`. When a field holds
        the first or last words of a slot's value (`first_name` "Ana" where
        the user wrote "Ana Ruiz"), that slot is split into word parts.
        """
        found = _explain_text(list(values), self.live())
        if found is None and not self.frozen and self._split_for(tuple(values)):
            found = _explain_text(list(values), self.live())
        return found

    def _split_for(self, values: tuple[str, ...]) -> bool:
        for name, whole in self.live().items():
            if name in self.numbers:
                continue
            if all(w.startswith(v + " ") for w, v in zip(whole, values)):
                rest = tuple(w[len(v) + 1:] for w, v in zip(whole, values))
                parts = (values, rest)
            elif all(w.endswith(" " + v) for w, v in zip(whole, values)):
                rest = tuple(w[: len(w) - len(v) - 1] for w, v in zip(whole, values))
                parts = (rest, values)
            else:
                continue
            if not all(rest) or any(p in self.by_values and self.by_values[p] == name for p in parts):
                continue
            prose = self.prose[name]
            first, second = (self.slot(p, prose=prose) for p in parts)
            # Where a value divides is only known for values like these: parts
            # that were single words match single words.
            self.words.update(g for g, p in ((first, parts[0]), (second, parts[1]))
                              if not any(ch.isspace() for v in p for ch in v))
            self.expansions[name] = "{{" + first + "}} {{" + second + "}}"
            return True
        return False

    def expand(self, value: Any) -> Any:
        """`value` with every split group replaced by its parts."""
        if not self.expansions:
            return value

        def text_of(name: str, depth: int = 0) -> str:
            if name not in self.expansions or depth > 32:
                return "{{" + name + "}}"
            out = []
            for part in parse_text(self.expansions[name]):
                out.append(escape_literal(part) if isinstance(part, str) else text_of(part[0], depth + 1))
            return "".join(out)

        def go(v: Any) -> Any:
            if isinstance(v, dict):
                if v.get(MARK) in TEXT_KINDS:
                    out = []
                    for part in parse_text(v["t"]):
                        if isinstance(part, str):
                            out.append(escape_literal(part))
                        else:  # a date offset's slot is a date, never split into words
                            out.append(text_of(part[0]) if len(part) == 1 else placeholder(*part))
                    return {**v, "t": "".join(out)}
                if v.get(MARK) in ("json", "opt"):
                    return {**v, "value": go(v["value"])}
                if v.get(MARK) == "list":
                    return {**v, "head": go(v["head"])}  # an item template has no slots
                if v.get(MARK) == "keys":
                    return {**v, "fields": [[go(k), go(x)] for k, x in v["fields"]]}
                if MARK in v:
                    return v
                return {k: go(x) for k, x in v.items()}
            if isinstance(v, list):
                return [go(x) for x in v]
            return v

        return go(value)


class _Builder:
    """Lines up the observations' messages, creating slots where they differ.

    `level`, for lists inside JSON: LIST_FREE makes a list of records
    (objects) one item template that binds nothing but the list's length,
    whatever the lengths; LIST_HEAD also lines up the first item (it may
    bind values a later step uses, the first search result's id);
    LIST_POSITIONAL lines up lists of equal length item by item and only
    lists that differ in length get an item template (with the first item
    lined up). A list whose length differs is never lined up item by item.
    """

    def __init__(self, slots: _Slots, level: int = LIST_POSITIONAL):
        self.slots = slots
        self.level = level
        self.varied_lists = False  # a list template was made: another list_head may do better
        self.in_tool = False  # inside a tool result: its whole text may be one value
        # Strings the observations' tool calls pass as arguments, one group per argument
        # (`passed_on_groups`): a span of prose that is one of them is data, whatever its length.
        self.passed_on: dict[str, tuple[str, ...]] = {}

    def align(self, values: list[Any], where: str, hint: str | None, in_json: bool) -> Any:
        first = values[0]
        if all(_same(first, v) for v in values[1:]):
            if has_markers(first):
                raise _Refuse(f"{where}: content uses butter's own template marker")
            return first
        if not in_json and hint in LITERAL_REPLY_KEYS:
            raise _Refuse(f"{where}: {hint} differs ({_brief(first)} vs {_brief(values[1])}); a branch is never a slot")
        if all(isinstance(v, dict) for v in values):
            keys = list(first)
            if any(set(v) != set(keys) for v in values):
                if not in_json:
                    raise _Refuse(f"{where or 'message'}: the fields differ")
                keyed = self._keyed_fields(values, where)
                return keyed if keyed is not None else self._optional_fields(values, where)
            outer = self.in_tool
            self.in_tool = outer or _is_tool_result(first)
            try:
                return {k: self.align([v[k] for v in values], f"{where}.{k}" if where else k,
                                      k, in_json or k in JSON_KEYS)
                        for k in keys}
            finally:
                self.in_tool = outer
        if all(isinstance(v, list) for v in values):
            if any(len(v) != len(first) for v in values):
                if not in_json:
                    raise _Refuse(f"{where}: the lists differ in length")
                return self._varied_list(values, where, hint)
            if in_json and self.level != LIST_POSITIONAL and first and all(
                    isinstance(x, dict) for v in values for x in v):
                return self._varied_list(values, where, hint)
            return [self.align([v[i] for v in values], f"{where}[{i}]", hint, in_json) for i in range(len(first))]
        if all(_is_number(v) for v in values):
            return number_marker(self.slots.slot([number_text(v) for v in values], True, hint))
        if all(isinstance(v, str) for v in values):
            parsed = [json_container(v) for v in values]
            if all(p is not None for p in parsed):
                return json_marker(self.align(parsed, where, hint, True), COMPACT)
            if in_json:  # a field: one value, or a text over values already seen
                if tuple(values) not in self.slots.by_values:
                    explained = self.slots.explain(values)
                    if explained is not None and not _whole_placeholder(explained):
                        for part in parse_text(explained):  # values of structured data now
                            if isinstance(part, tuple):
                                self.slots.prose[part[0]] = False
                        return text_marker(explained)
                return text_marker("{{" + self.slots.slot(values, False, hint) + "}}")
            # Running text that differs only by values already seen (the
            # model's "confirmation C-12345" after a tool returned it) is
            # bound to them, not given looser slots of its own.
            explained = _explain_text(values, self.slots.live())
            if explained is not None:
                return text_marker(explained)
            try:
                return text_marker(self._prose(values, where))
            except _Refuse:
                passed_on = self._passed_on(values)
                if passed_on is None:
                    raise
                return text_marker(passed_on)
        raise _Refuse(f"{where}: the values differ in kind")

    def _passed_on(self, texts: list[str]) -> str | None:
        """Running text that differs only by strings a tool call passes on whole: the
        tweet the user quoted (`post_tweet(content=…)`), longer than a span of prose
        may be. Its words are the call's data, copied, not an instruction that picks
        the call (an instruction changes the call, which then holds no such string).
        None unless the words around those strings are the same in every text."""
        explained = _explain_text(texts, self.passed_on) if self.passed_on else None
        if explained is None:
            return None
        parts = parse_text(explained)
        if sum(_word_count(p) for p in parts if type(p) is str) < MIN_PROSE_LITERAL_WORDS:
            return None  # the words around must say what the text is (`_check_anchor`); a whole text is never a value
        return "".join(escape_literal(p) if type(p) is str else
                       "{{" + self.slots.slot(self.passed_on[p[0]], prose=True) + "}}" for p in parts)

    def _prose(self, texts: list[str], where: str) -> str:
        spans = _aligned_spans(texts)
        if spans is None:
            raise _Refuse(f"{where}: the texts do not line up")
        segments, values = spans
        if not any(isinstance(s, str) and any(ch.isalnum() for ch in s) for s in segments) and not (
                self.in_tool and _bare_values(values)):
            # Shared punctuation alone ("{{v1}}.") would let any sentence match.
            # A tool result that is one data-shaped value (`sofia_rossi_8776`,
            # `42`) is that value, as a JSON field holding it would be.
            raise _Refuse(f"{where}: the texts share no words; a whole text is never a value")
        out: list[str] = []
        k = 0
        for seg in segments:
            if isinstance(seg, str):
                out.append(escape_literal(seg))
                continue
            slot_values = [v[k] for v in values]
            k += 1
            if common_shape(slot_values) == "text" and any(
                    len(v.split()) > MAX_PROSE_SLOT_WORDS for v in slot_values):
                raise _Refuse(f"{where}: a differing span is too long to be a value ({slot_values[0][:40]!r})")
            out.append("{{" + self.slots.slot(slot_values, prose=True) + "}}")
        _check_anchor(segments, values, where)
        return "".join(out)


    # -- structured data that may vary without binding -----------------------------------

    def _keyed_fields(self, values: list[dict], where: str) -> dict | None:
        """A JSON object keyed by values: the fields every observation has, and as many
        more in each whose keys, position by position, are a slot an earlier part of
        the conversation bound (`{"ONYX119": [...], "USR007": [...]}` after the run
        logged in as ONYX119). None when the other keys are not such values: then they
        are optional fields (`_optional_fields`), and a new key is a field no template has."""
        common = [k for k in values[0] if all(k in v for v in values[1:])]
        rest = [[k for k in v if k not in common] for v in values]
        if not rest[0] or any(len(r) != len(rest[0]) for r in rest):
            return None
        live = self.slots.live()
        groups = []
        for keys in zip(*rest):
            name = self.slots.by_values.get(tuple(keys))
            if name is None or name not in live:
                return None
            groups.append(name)
        fields = []
        for key in values[0]:
            if key in common:
                fields.append((key, self.align([v[key] for v in values], f"{where}.{key}", key, True)))
            else:
                j = rest[0].index(key)
                sub = [v[r[j]] for v, r in zip(values, rest)]
                fields.append((text_marker("{{" + groups[j] + "}}"), self.align(sub, f"{where}.{{{groups[j]}}}", None, True)))
        return keys_marker(fields)

    def _optional_fields(self, values: list[dict], where: str) -> dict:
        """A JSON object whose fields differ between the observations.

        Fields every observation has are lined up as usual; a field only
        some have is optional, and its value is free (it binds nothing, so
        no reply can depend on it: a reply that does is not explained and
        the proposal fails). A field no observation had is not in the
        template: an object that has it does not match.
        """
        keys: list[str] = []
        for v in values:
            keys += [k for k in v if k not in keys]
        out = {}
        for k in keys:
            sub = f"{where}.{k}" if where else k
            present = [v[k] for v in values if k in v]
            if len(present) == len(values):
                out[k] = self.align(present, sub, k, True)
            else:
                out[k] = opt_marker(_optional_value(present, sub))
        return out

    def _varied_list(self, values: list[list], where: str, hint: str | None) -> dict:
        """A JSON list whose length differs between the observations.

        Its first item (none at LIST_FREE) is lined up; the other
        items each match one item template that binds nothing, made from
        every item of every observation (lined-up ones too). An empty list is matched only if one was seen: an empty
        search result is another branch, not a shorter list.
        """
        self.varied_lists = True
        shortest = min(len(v) for v in values)
        head = min(0 if self.level == LIST_FREE else 1, shortest)
        # Every item is evidence for what the others look like, lined-up ones too.
        items = [x for v in values for x in v]
        item = _free(items, f"{where}[]") if items else None
        lined = [self._head_item([v[i] for v in values], item, f"{where}[{i}]", hint) for i in range(head)]
        # The length is bound (a decision input to whatever judges the
        # template: three results may be answered otherwise than one).
        count = self.slots.private([str(len(v)) for v in values], f"{hint or 'items'}_count")
        return list_marker(lined, item, 1 if shortest else 0, count)


    def _head_item(self, values: list[Any], item: Any, where: str, hint: str | None) -> Any:
        """A lined-up item, read with what all items show: a field that other
        items go without is optional here too, and one that varies among
        items is free here even where the lined-up ones happen to agree (two
        first results with 6 business seats say nothing about the third's);
        both bind nothing, so no reply depends on them."""
        if not (isinstance(item, dict) and MARK not in item and all(isinstance(v, dict) for v in values)):
            if has_markers(item) and all(_same(values[0], v) for v in values[1:]):
                return item
            return self.align(values, where, hint, True)
        out = {}
        for k, t in item.items():
            present = [v[k] for v in values if k in v]
            if isinstance(t, dict) and t.get(MARK) == "opt":
                out[k] = opt_marker(_optional_value(present, f"{where}.{k}")) if present else t
            else:
                out[k] = self._head_item(present, t, f"{where}.{k}", k)
        return out


def _free(values: list[Any], where: str) -> Any:
    """A template with no slots that every value matches: literal where they
    agree, `any` of their kind and shape where they differ."""
    first = values[0]
    if all(_same(first, v) for v in values[1:]):
        if has_markers(first):
            raise _Refuse(f"{where}: content uses butter's own template marker")
        return first
    if all(isinstance(v, dict) for v in values):
        keys: list[str] = []
        for v in values:
            keys += [k for k in v if k not in keys]
        out = {}
        for k in keys:
            present = [v[k] for v in values if k in v]
            if len(present) == len(values):
                out[k] = _free(present, f"{where}.{k}")
            else:
                out[k] = opt_marker(_optional_value(present, f"{where}.{k}"))
        return out
    if all(isinstance(v, list) for v in values):
        items = [x for v in values for x in v]
        return list_marker([], _free(items, f"{where}[]") if items else None,
                           1 if all(values) else 0)
    if all(_is_number(v) for v in values):
        return any_marker("number")
    if all(isinstance(v, str) for v in values):
        if any(json_container(v) is not None for v in values):
            raise _Refuse(f"{where}: JSON text in a varying part")
        return any_marker("string", _string_shape(values))
    # Booleans and nulls that differ (`"paid": true` / `false`) decide; kinds that differ are another structure.
    raise _Refuse(f"{where}: {_brief(first)} vs {_brief(values[1])} differ in kind")


def _optional_value(present: list[Any], where: str) -> Any:
    """The value of a field only some observations have: a string or number is
    free (one run's note says nothing about the next run's), anything else is
    lined up as `_free` does (a constant `true` stays literal)."""
    if all(_is_number(v) for v in present):
        return any_marker("number")
    if all(isinstance(v, str) and json_container(v) is None for v in present):
        return any_marker("string", _string_shape(present))
    return _free(present, where)


def _string_shape(values: list[str]) -> str | None:
    """The shape an `any` string keeps: none (any string) for empty or multi-line
    values; one value alone says nothing about the shape of the next ("9" as a
    size, then "M"), so that is text."""
    if all(values) and not any("\n" in v or "\r" in v for v in values):
        return common_shape(values) if len(set(values)) > 1 else "text"
    return None


def _is_tool_result(message: dict) -> bool:
    """A message or content part that carries a tool's output (every wire format's form)."""
    return message.get("role") == "tool" or message.get("type") in ("tool_result", "function_call_output")


def _bare_values(values: list[list[str]]) -> bool:
    """Every slot of every text is one data-shaped token (a whole tool result that is an id)."""
    return all(common_shape([v[k] for v in values]) in ("number", "date", "email", "identifier")
               for k in range(len(values[0])))


def _shape(slots: _Slots, group: str) -> str:
    if group in slots.numbers:
        return "number"
    shape = common_shape(slots.groups[group])
    return "word" if shape == "text" and group in slots.words else shape


def _whole_placeholder(t: str) -> bool:
    """Is `t` one slot and nothing else (no date offset: that is another value)?"""
    parts = parse_text(t)
    return len(parts) == 3 and parts[0] == "" and parts[2] == "" and len(parts[1]) == 1


def _word_count(text: str) -> int:
    return sum(1 for token in tokenize(text) if any(ch.isalnum() for ch in token))


def _check_anchor(segments: list[str | tuple[int, int]], values: list[list[str]], where: str) -> None:
    """Refuse a prose template whose fixed words are too few to say what the text is.

    A free-text slot matches any words, so the literal words around it are
    all that tells one request from another. Two different instructions that
    happen to share a word ("What's my total..." / "Please check and update
    my rent...") align as `{{v1}}my {{v2}}`, which then matches almost any
    sentence with "my" in it. So when a template has a free-text slot (data-
    shaped slots, numbers, dates, e-mails, ids, cannot absorb an instruction),
    its literal part must hold at least MIN_PROSE_LITERAL_WORDS words, and in
    every observation at least as many words as its free-text slots took:
    the template is mostly the text itself, with the values as the variable part.
    """
    free_text = [k for k in range(len(values[0])) if common_shape([v[k] for v in values]) == "text"]
    if not free_text:
        return
    literal_words = sum(_word_count(seg) for seg in segments if isinstance(seg, str))
    if literal_words < MIN_PROSE_LITERAL_WORDS:
        raise _Refuse(f"{where}: only {literal_words} literal word(s) around free-text slots; "
                      "too thin to tell one text from another")
    for observed in values:
        slot_words = sum(_word_count(observed[k]) for k in free_text)
        if slot_words > literal_words:
            raise _Refuse(f"{where}: the free-text slots hold {slot_words} words against "
                          f"{literal_words} literal ones; the texts differ more than they agree")


def _same(a: Any, b: Any) -> bool:
    return a == b and canonical_json(a) == canonical_json(b)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# -- explaining replies ---------------------------------------------------------------

class _Reply:
    """Builds a reply template whose differences are all slot values.

    `conversations`: each observation's messages as one JSON text, where
    a date the reply writes must not occur for it to be a date slot moved by
    some days (`_date_offsets`).
    """

    def __init__(self, slots: _Slots, conversations: Sequence[str] = ()):
        self.slots = slots
        self.conversations = tuple(conversations)

    def align(self, values: list[Any], where: str, key: str | None, in_json: bool) -> Any:
        first = values[0]
        if all(_same(first, v) for v in values[1:]):
            if has_markers(first):
                raise _Refuse(f"reply {where}: uses butter's own template marker")
            return first
        if not in_json and key in VOLATILE_REPLY_KEYS:
            return first
        if not in_json and key in LITERAL_REPLY_KEYS:
            raise _Refuse(f"reply {where}: {key} differs ({_brief(first)} vs {_brief(values[1])}); "
                          "a branch is never a slot")
        if all(isinstance(v, dict) for v in values):
            if not in_json:
                # A plain and a streamed recording of one answer differ in
                # bookkeeping (`usage` only when asked for) and in empty
                # fields (`annotations: []`): neither is meaning.
                values = [{k: x for k, x in v.items() if not is_empty(x) and k not in VOLATILE_REPLY_KEYS
                           and not k.startswith("_")} for v in values]
            if any(set(v) != set(values[0]) for v in values):
                raise _Refuse(f"reply {where or 'body'}: the fields differ")
            out = {k: self.align([v[k] for v in values], f"{where}.{k}" if where else k, k,
                                 in_json or k in JSON_KEYS) for k in values[0]}
            if not in_json:  # bookkeeping and empty fields are served as the newest run had them;
                # `_`-keys are an adapter's notes on one recording's bytes and describe no other run
                out.update({k: x for k, x in first.items() if k not in out and not k.startswith("_")})
            return out
        if all(isinstance(v, list) for v in values):
            if any(len(v) != len(first) for v in values):
                raise _Refuse(f"reply {where}: the lists differ in length")
            return [self.align([v[i] for v in values], f"{where}[{i}]", key, in_json) for i in range(len(first))]
        if all(_is_number(v) for v in values):
            name = self.slots.by_values.get(tuple(number_text(v) for v in values))
            if name is None or name in self.slots.expansions:
                raise _Refuse(f"reply {where}: the number {_brief(first)} is no slot's value")
            if in_json and key:
                self.slots.hints.setdefault(name, key)
            return number_marker(name)
        if all(isinstance(v, str) for v in values):
            parsed = [json_container(v) for v in values]
            if all(p is not None for p in parsed):
                return json_marker(self.align(parsed, where, key, True), json_style(values[0], parsed[0]))
            template = self.slots.explain(values) if in_json else _explain_text(values, self.slots.live())
            if template is None:
                template = self._explain_with_dates(values)
            if template is None:
                raise _Refuse(f"reply {where}: {_brief(first)} vs {_brief(values[1])} differ in a way "
                              "substituting the slots does not explain")
            if in_json and key and _whole_placeholder(template):
                self.slots.hints.setdefault(parse_text(template)[1][0], key)
            return text_marker(template)
        raise _Refuse(f"reply {where}: the values differ in kind")

    def _explain_with_dates(self, values: list[str]) -> str | None:
        """The text explained once date slots moved by a fixed number of days are values too."""
        if len(self.conversations) != len(values):
            return None
        groups = self.slots.live()
        offsets = _date_offsets(values, groups, self.conversations)
        return _explain_text(values, groups, offsets) if offsets else None


def _brief(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return repr(text if len(text) <= 40 else text[:39] + "…")


def _explain_text(texts: list[str], groups: dict[str, tuple[str, ...]],
                  moved: dict[tuple[str, int], tuple[str, ...]] | None = None) -> str | None:
    """texts[0] with slot values as placeholders such that rendering gives every text.

    `moved`: (date slot, days) -> the values it renders (`_date_offsets`),
    written as `{{slot +Nd}}` where they explain a span.
    """
    pivot = texts[0]
    values_of = {(name, 0): values for name, values in groups.items()}
    values_of.update(moved or {})
    occurrences: list[tuple[int, int, tuple[str, int]]] = []
    for key, values in values_of.items():
        value = values[0]
        if not value:
            continue
        left = r"(?<![\w])" if re.match(r"\w", value) else ""
        right = r"(?![\w])" if re.search(r"\w$", value) else ""
        for m in re.finditer(left + re.escape(value) + right, pivot):
            occurrences.append((m.start(), m.end(), key))
    occurrences.sort(key=lambda o: (o[0], -(o[1] - o[0]), o[2]))
    steps = [0]

    def go(pos: int, search: int, offsets: list[int]) -> list[str] | None:
        steps[0] += 1
        if steps[0] > MAX_EXPLAIN_STEPS:
            return None
        candidates = [o for o in occurrences if o[0] >= search and o[0] >= pos]
        if not candidates:
            rest = pivot[pos:]
            if all(t[off:] == rest for t, off in zip(texts, offsets)):
                return [escape_literal(rest)]
            return None
        start = candidates[0][0]
        literal = pivot[pos:start]
        for s, e, key in (o for o in candidates if o[0] == start):
            values = values_of[key]
            new_offsets = []
            for t, off, value in zip(texts, offsets, values):
                if not (t.startswith(literal, off) and t.startswith(value, off + len(literal))):
                    break
                new_offsets.append(off + len(literal) + len(value))
            else:
                found = go(e, e, new_offsets)
                if found is not None:
                    return [escape_literal(literal), placeholder(*key)] + found
        return go(pos, start + 1, offsets)  # leave this occurrence literal

    parts = go(0, 0, [0] * len(texts))
    return None if parts is None else "".join(parts)


# An ISO date standing alone in a text (not the day of a timestamp, 2026-12-04T10:00).
_ISO_DAY_TOKEN = re.compile(r"(?<![\w-])\d{4}-\d{2}-\d{2}(?![\w]|-\d)")


def _date_offsets(texts: list[str], groups: dict[str, tuple[str, ...]],
                  conversations: Sequence[str]) -> dict[tuple[str, int], tuple[str, ...]]:
    """Date slots moved by a fixed number of days that may explain a date in the texts.

    A reply's date that no conversation spells ("tomorrow" after "Today is
    2026-12-03.") may be a slot holding an ISO date, plus k days, the same k
    in every observation: k is read off the first text's ISO dates against
    each date slot's first value, and `_explain_text` then checks every other
    observation against the moved values (so an offset that differs between
    the runs explains nothing). Leaning to missing, a candidate is dropped
    when another one (another slot, another k) gives the very same values
    (which of them the model computed is unknown), or when an observation's
    conversation holds its value literally anywhere (the model may have
    copied it from there, not counted days). Key: (slot, k), k != 0.
    """
    dated = {name: values for name, values in groups.items()
             if all(shift_date(v, 0) is not None for v in values)}
    found: dict[tuple[str, int], tuple[str, ...]] = {}
    for m in _ISO_DAY_TOKEN.finditer(texts[0] if dated else ""):
        if shift_date(m.group(), 0) is None:
            continue
        target = date.fromisoformat(m.group())
        for name, values in dated.items():
            days = (target - date.fromisoformat(values[0])).days
            if days == 0 or abs(days) > MAX_DAY_OFFSET:
                continue
            moved = tuple(shift_date(v, days) for v in values)
            if None not in moved:
                found[(name, days)] = moved
    same = Counter(found.values())
    return {key: moved for key, moved in found.items()
            if same[moved] == 1 and not any(v in c for v, c in zip(moved, conversations))}


# -- renaming ----------------------------------------------------------------------------

def _rename(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        if value.get(MARK) in TEXT_KINDS:
            out = []
            for part in parse_text(value["t"]):
                out.append(escape_literal(part) if isinstance(part, str) else placeholder(names[part[0]], *part[1:]))
            return {**value, "t": "".join(out)}
        if value.get(MARK) == "number":
            return {**value, "slot": names[value["slot"]]}
        if value.get(MARK) == "list" and value.get("count"):
            return {**{k: _rename(v, names) for k, v in value.items()}, "count": names[value["count"]]}
        if value.get(MARK) == "json":
            return {**value, "value": _rename(value["value"], names)}
        return {k: _rename(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, names) for v in value]
    return value


def _slot_name(hint: str | None) -> str | None:
    if not hint:
        return None
    name = re.sub(r"[^A-Za-z0-9_]", "_", hint).strip("_")
    if not name or not re.match(r"[A-Za-z_]", name):
        return None
    return name[:40]


# -- proposals ---------------------------------------------------------------------------

def propose(observations: Sequence[Observation], min_observations: int = 2) -> Proposal | Rejected:
    keys = tuple(o.key for o in observations)
    passed_on = passed_on_groups(observations)  # the same at every list level
    try:
        # Lists of records are collections first (their items free, any
        # length); a reply that uses the first item (the first search
        # result's id) needs it lined up; one that uses a later item needs
        # equal lists lined up item by item, as before.
        for level in LIST_LEVELS[:-1]:
            try:
                return _propose(list(observations), min_observations, level, passed_on)
            except _VariedListRefuse:
                continue
        return _propose(list(observations), min_observations, LIST_LEVELS[-1], passed_on)
    except _Refuse as e:
        return Rejected(str(e), keys)


class _VariedListRefuse(_Refuse):
    pass


def _propose(obs: list[Observation], min_observations: int, level: int,
             passed_on: dict[str, tuple[str, ...]]) -> Proposal:
    builder = _Builder(_Slots(), level)
    builder.passed_on = passed_on
    try:
        return _propose_with(obs, min_observations, builder)
    except _VariedListRefuse:
        raise
    except _Refuse as e:
        if builder.varied_lists and level != LIST_LEVELS[-1]:
            raise _VariedListRefuse(str(e)) from None
        raise


def _propose_with(obs: list[Observation], min_observations: int, builder: "_Builder") -> Proposal:
    keys = tuple(o.key for o in obs)
    if len(obs) < max(2, min_observations):
        raise _Refuse(f"{len(obs)} observation(s); at least {max(2, min_observations)} are needed")
    length = len(obs[0].messages)
    if any(len(o.messages) != length for o in obs):
        raise _Refuse("the conversations differ in length")
    start = 0
    while start < length and all(_same(obs[0].messages[start], o.messages[start]) for o in obs[1:]):
        start += 1
    if start == length:
        raise _Refuse("the conversations are the same")
    slots = builder.slots
    templated = [builder.align([o.messages[i] for o in obs], f"message {i}", None, False)
                 for i in range(start, length)]
    reply = _Reply(slots, _conversations(obs)).align([o.reply for o in obs], "", None, False)
    # A group split while the reply was explained is split everywhere.
    templated = [slots.expand(t) for t in templated]
    reply = slots.expand(reply)
    used = set().union(*(slots_in(t) for t in templated), slots_in(reply))
    # Final names: a JSON key of the messages, else of the reply, else v1, v2, ...
    names: dict[str, str] = {}
    taken: set[str] = set()
    counter = 0
    for g in slots.groups:
        if g not in used:
            continue
        name = _slot_name(slots.hints.get(g))
        if name is None or name in taken:
            base = name
            while True:
                counter += 1
                name = f"{base}_{counter}" if base else f"v{counter}"
                if name not in taken:
                    break
        taken.add(name)
        names[g] = name
    templated = [_rename(t, names) for t in templated]
    reply = _rename(reply, names)
    shapes = {names[g]: _shape(slots, g) for g in names}
    nodes: list[tuple[str, dict]] = []
    for t in templated:
        if has_markers(t):
            nodes.append(("template", template_content(t, {s: shapes[s] for s in sorted(slots_in(t))})))
        else:
            nodes.append(("message", t))
    # Evidence 1: each observation matches the templates and its reply is reproduced.
    all_bindings = [_reproduce(nodes, reply, o.messages[start:], o.reply) for o in obs]
    # Evidence 2: a free-text span of prose that never reaches the reply (an
    # instruction word, not a field of a tool result) is never a slot, even
    # when the replies are identical. Identical replies only show that these
    # few values led to the same answer: two different tasks whose first step
    # is the same tool call say nothing about a third task's words, and
    # serving the call to it would be a wrong answer. A data-shaped slot
    # (number, date, e-mail, identifier) cannot hold an instruction, and a
    # field of structured data is named by its key, so those may stay unused.
    reaching = slots_in(reply)
    for g, name in names.items():
        if name not in reaching and shapes[name] in ("text", "word") and slots.prose[g]:
            values = sorted(set(slots.groups[g]))
            raise _Refuse(f"slot {{{{{name}}}}} ({', '.join(map(repr, values[:3]))}) is free text that never "
                          "reaches the reply: it stays literal")
    return Proposal(start, tuple(nodes), reply, shapes, keys, tuple(all_bindings))


def passed_on_groups(observations: Sequence[Observation]) -> dict[str, tuple[str, ...]]:
    """The strings of tool-call arguments (in the messages and the reply) that differ
    between the observations, one group per argument position: {name: one value per
    observation}. Only arguments every observation passes, as text, at that position."""
    per_obs = [_call_strings([*o.messages, o.reply]) for o in observations]
    out: dict[str, tuple[str, ...]] = {}
    for path in per_obs[0] if per_obs else ():
        values = tuple(strings.get(path) for strings in per_obs)
        if all(isinstance(v, str) and v.strip() for v in values) and len(set(values)) > 1:
            out[f"passed{len(out)}"] = values
    return out


def _call_strings(value: Any, path: str = "", in_call: bool = False) -> dict[str, str]:
    """Every string below a tool call's arguments in `value`, by its path."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_call_strings(v, f"{path}.{k}", in_call or k in CALL_ARGUMENT_KEYS))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_call_strings(v, f"{path}[{i}]", in_call))
    elif isinstance(value, str) and in_call:
        parsed = json_container(value)
        out.update(_call_strings(parsed, path, True) if parsed is not None else {path: value})
    return out


def _conversations(observations: Sequence[Observation]) -> list[str]:
    """Each observation's messages as one text, to search for a value it spells."""
    return [json.dumps(list(o.messages), ensure_ascii=False) for o in observations]


def _reproduce(nodes: Sequence[tuple[str, dict]], reply: dict, messages: Sequence[Message],
               recorded: dict) -> dict[str, str]:
    """The bindings of one observation, if the templates match it and render its reply exactly."""
    bindings: dict[str, str] = {}
    for (kind, content), message in zip(nodes, messages):
        if kind == "template":
            extended = match_message(content, message, bindings)
            if extended is None:
                raise _Refuse("an observation does not match the proposed template")
            bindings = extended
        elif not _same(content, message):
            raise _Refuse("an observation does not match the proposed template")
    try:
        rendered = render_reply(reply, bindings)
    except ValueError as e:
        raise _Refuse(f"the reply template cannot be rendered: {e}") from None
    if not same_answer(rendered, recorded):
        raise _Refuse("rendering the reply template does not reproduce a recorded reply")
    return bindings


def propose_prefix(accepted: Proposal, prefix: Sequence[Observation]) -> Proposal | Rejected:
    """The reply at an earlier step of an accepted proposal's runs, on its templates.

    `prefix[i]` is run i's observation at an earlier depth (same order as
    `accepted.keys`). An accepted proposal is evidence about its slots: each
    of them is a value that the runs' replies carry. So a user's name that
    the first tool call does not use (`get_order(order_id)`) is a value at
    that first step too, once a later reply of the same runs ("Refunded Ana
    Ruiz") shows it is one. The earlier reply must still be reproduced
    exactly by rendering with each run's own values, over the same template
    nodes (so it attaches to them), and may use no value of its own.
    """
    keys = tuple(o.key for o in prefix)
    try:
        if len(prefix) != len(accepted.keys) or not prefix:
            raise _Refuse("one earlier observation per run is needed")
        count = len(prefix[0].messages) - accepted.start
        if not 0 < count < len(accepted.nodes) or any(len(o.messages) != len(prefix[0].messages) for o in prefix):
            raise _Refuse("the earlier observations are not inside the accepted templates")
        nodes = accepted.nodes[:count]
        used = set().union(*(slots_in(content) for kind, content in nodes if kind == "template"))
        if not used:
            raise _Refuse("no template before this step")
        bindings = [{k: v for k, v in b.items() if k in used} for b in accepted.bindings]
        slots = _Slots(frozen=True)
        for name in sorted(used):
            values = tuple(b[name] for b in bindings)
            if values in slots.by_values:  # two names, one value tuple: the walk binds both
                continue
            slots.groups[name] = values
            slots.by_values[values] = name
            slots.prose[name] = False
            if accepted.slots.get(name) == "number":
                slots.numbers.add(name)
        reply = _Reply(slots, _conversations(prefix)).align([o.reply for o in prefix], "", None, False)
        reproduced = []
        for o, expected in zip(prefix, bindings):
            # VARYING fingerprints these earlier nodes' unbound parts alone: the run's is of all of them.
            got = _reproduce(nodes, reply, o.messages[accepted.start:], o.reply)
            if {k: v for k, v in got.items() if k != VARYING} != expected:
                raise _Refuse("an earlier observation binds other values than its run")
            reproduced.append(got)
        shapes = {k: v for k, v in accepted.slots.items() if k in used}
        return Proposal(accepted.start, nodes, reply, shapes, keys, tuple(reproduced))
    except _Refuse as e:
        return Rejected(str(e), keys)


def choose(
    new: Observation,
    others: Sequence[Observation],
    min_observations: int = 2,
    known_failure: Callable[[tuple[bytes, ...]], bool] | None = None,
) -> tuple[Proposal | None, list[Rejected]]:
    """The best proposal the new observation and its siblings support, and what failed."""
    failures: list[Rejected] = []
    accepted: list[Observation] = []
    for other in others:
        if other.key == new.key or len(other.messages) != len(new.messages):
            continue
        pair = (new, other)
        if known_failure is not None and known_failure(tuple(sorted(o.key for o in pair))):
            continue
        result = propose(pair, 2)
        if isinstance(result, Proposal):
            accepted.append(other)
        else:
            failures.append(Rejected(result.reason, tuple(sorted(o.key for o in pair))))
    if not accepted or len(accepted) + 1 < min_observations:
        return None, failures
    result = propose([new, *accepted], min_observations)
    if isinstance(result, Proposal):
        return result, failures
    # Together they fail (e.g. they diverge at different messages): the
    # largest group that diverges where most of them do.
    starts: dict[int, list[Observation]] = {}
    for other in accepted:
        start = _common_prefix(new, other)
        starts.setdefault(start, []).append(other)
    for group in sorted(starts.values(), key=len, reverse=True):
        if len(group) == len(accepted):
            continue
        result = propose([new, *group], min_observations)
        if isinstance(result, Proposal):
            return result, failures
    return None, failures


def _common_prefix(a: Observation, b: Observation) -> int:
    n = 0
    while n < len(a.messages) and _same(a.messages[n], b.messages[n]):
        n += 1
    return n
