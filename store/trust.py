"""Trust in learned templates, earned from live traffic (sans-IO).

Induction proposes a template from two recorded runs that agree by syntax.
That is not evidence that a third run's values lead to the same answer: a
number that decides the answer without appearing in it ("Is 8 prime?" after
7 and 13), or a value the model rewrites (Milan -> "Milano" in a tool call),
look exactly like free values. So a *learned* template reply is not served on
the word of induction. Its trust is a state, kept per template reply (the
node it hangs at and its reply id) in the side table `trust`:

    probation --(N agreements on values not seen before)--> trusted
    probation --(one disagreement)--> demoted
    trusted   --(a sampled re-check disagrees)--> demoted

While a template is on probation, a request it would answer is a
*verification*: it goes to the provider unchanged, and the provider's answer
is compared with what the template would have served for this request's
values (store/agreement.py: text and tool calls, arguments as JSON,
bookkeeping aside). A demoted template is never served again (its reply is
also marked bad, so another reply at the node may be chosen).

Slots whose value never reaches the reply are *decision inputs*: the value
may decide the answer ("yes" for 7, "no" for 8). So are slots the reply
states in its own text, outside tool calls' arguments ("Yes, 7 is prime." is
a verdict on 7), and numbers and dates it passes into a tool call's arguments
(a limit may decide which call: `send_payment(amount=40)`, but
`request_approval(amount=5000)`); an id or a name passed to a tool is not.
They are `stated` and `carried` in the entry, and an entry from before them
is judged as if it had them (`with_inputs`). Even a trusted template is
served only for decision-input values already seen with this reply (a
recorded or verified run); other values are verified. They are freed only
after `free_inputs_after` agreements on distinct values of them (more than
promotion needs), and a never-seen value of one only once that input itself
has as many values seen (or verified as new); after that, new values are
served and re-checked at a sampled rate (the addon's `butter_verify_inputs_sample`). With
`keep_to_ranges` (option butter_verify_ranges), a number or an ISO date
beyond the range of the values seen with the reply (or in another form) is
verified first, as a limit may lie there, until `free_inputs_after` values
beyond it on that side agreed (a slot named as an id, `names_identifier`, has
no range: it is looked up, not compared); and two such inputs of one kind that compare
as they never did in the values seen (an amount above a limit) are verified,
until one agreement shows that order.

Slots the reply writes inside a tool call's arguments, with a value of
prose shape (a city, a name; not a number, an id or an e-mail) that the
conversation so far holds only in running text (not in a tool result or an
earlier call, whose data the model passes on as given), are *rewritable*: the model may copy the user's "Milan" or write "Milano",
"Warsaw" or "Warszawa", and which it does depends on the value itself. Two
verbatim cities say nothing about the third, so agreements never free them:
a template is served only for rewritable values the model was seen copying
verbatim with it (a recorded run or an agreeing verification), or, once
trusted, values whose words were (`word_form`: "72 Market Square" after
"12 Market Square"; numbers are data, sampled like new inputs); every other
value is verified. A disagreement that lies only in the argument fields that
held a new rewritable value is the model's spelling of that value, not a
wrong template: the value is noted as rewritten (that request's answer is
the provider's, recorded as its own branch) and the template stays. Declare
the value with Butter-Bindings to have every value served, or let evidence
free the slot (`free_rewritable_after`, option butter_verify_rewritable_min:
that many values copied verbatim and none ever rewritten; new values are
then re-checked at the decision-input sample rate, and the first rewrite
found stops the freeing for good). A slot the user's words hold only in
quotes ("a folder named 'Drafts'", `quoted_slots`) is meant as typed, so that
evidence frees it by default (`free_quoted_after`, option
butter_verify_quoted_min).

Client-declared templates (Butter-Bindings) are the client's word: trusted
at once. Exact recorded replies never have a trust entry and are not judged.

Public API
----------
    TABLE, PROBATION, TRUSTED, DEMOTED
    TrustRules(verify, promote_after, free_inputs_after, min_observations, free_rewritable_after,
               free_quoted_after, keep_to_ranges)
        .needed -> agreements that promote (butter_min_observations counts them too)
    trust_key(node_id, reply_id) -> bytes
    learned_entry(slot_names, reply_slots, run_bindings, now, rewritable=(), whole=None, stated=(), carried=(),
                  quoted=()) -> dict
    carried_ordered(shapes, reply) -> {slot}   numbers and dates a reply passes into tool calls
    with_inputs(entry, reply, bindings=None) -> entry   an entry from before stated/carried/~varying
        slots were inputs, judged as if they were
    rewritable_slots(shapes, reply_template, given_as_data) -> set[str]
        prose-shaped slots inside tool-call arguments that only the user's words held
    declared_entry(now) -> dict
    merge_learned(existing, fresh, node_created) -> dict    a template learned again
    dated_on_import(entry, now) -> entry            an imported entry, dated by its import
    Judgement(action, why, kind)   action: "serve" | "verify" | "refuse"
    VERIFY_CONTESTED               what a "new-inputs" serve becomes at a node holding another answer
    prepare(entry, ranges) -> View                  an entry ready for the hit path
    with_rewritable(entry, reply, bindings) -> entry   an entry from before rewritable slots, judged strictly
    judge(view_or_entry, bindings, rules) -> Judgement
    after_verification(entry, bindings, agreed, rules, why, now, rewritten=()) -> (entry, event)
    rewrite_explains(expected, actual, bindings, names) -> bool   the disagreement is only a rewritten value
    rewritten_slots(entry, expected, actual, bindings) -> names    which new values a disagreement is the spelling of
    rewritable_in_reply(reply, bindings) -> set[str]               rewritable_slots from a hit alone
    kept_as_given(value) -> bool          a rewritable slot's value the model passes on as it is (an ISO date)
    typed_whole(reply, rewritable, messages) -> {slot: [texts]}    call texts around a slot the user typed whole
    quoted_slots(rewritable, messages) -> {slot}   rewritable slots the user's words hold only in quotes
    word_form(value) -> str               a value with its lone digit runs as one stand-in ("№ Market Square")
    names_identifier(name) -> bool        a slot its API names an id (order_id, zip): no range kept
    deciding_inputs(entry, bindings) -> [slot]   inputs new in a disagreeing run: the branch to learn (`decided_by`)
    disagreement(expected, actual, bindings, new_names) -> str   a short why, for people
    describe(entry, rules) -> str                                one line for the CLI
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .agreement import JSON_KEYS, answer_of
from .canonical import canonical_json
from .templates import VARYING, RenderError, fits, parse_text, placeholder, render_text, shape_of, \
    slots_in_calls, slots_stated, texts_in, texts_in_calls, varying_elements

TABLE = "trust"
PROBATION, TRUSTED, DEMOTED = "probation", "trusted", "demoted"
MAX_SEEN = 128  # value tuples remembered per template; older ones fall out (they then verify again)
# Shapes the model writes as given: a number, an id, an e-mail. Prose (a
# city, a name) and dates ("12/03/2026" may become "2026-12-03") it may not,
# except values a tool takes literally (`kept_as_given`).
KEPT_AS_GIVEN = frozenset({"number", "identifier", "email"})
# Values that are compared with a limit or a window: wherever a reply shows one, it may decide it.
ORDERED_SHAPES = frozenset({"number", "date"})
# An ISO date (the form tools ask for), or one token joined by the punctuation
# of names machines read (report.txt, john_doe, docs/q3, localhost:8080): a tool
# resolves these as written, so a model that rewrote one would break its call. Not words
# joined by "/", "\\" or ":" ("Milan/Italy"), nor an abbreviation ("L.A."): prose the model may rewrite.
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A plain decimal number: what a threshold is compared with ("1,234.50" or
# "1e3" is not one: a value in another form than the seen ones is verified).
_PLAIN_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")
_MACHINE_NAME = re.compile(r"\S*\w[._/\\:@#]\w\S*")


@dataclass(frozen=True)
class TrustRules:
    """How much evidence a learned template needs. Every rule leans to missing."""

    verify: bool = True  # False: serve learned templates on induction's word (the old behaviour)
    promote_after: int = 2  # agreements on distinct values: probation -> trusted
    free_inputs_after: int = 5  # agreements on distinct decision-input values to serve new ones
    min_observations: int = 1  # butter_min_observations: for a template, verified agreements
    # Values of a rewritable slot seen copied verbatim (and none rewritten) before new ones
    # are served, then re-checked like new decision inputs; 0: never (each value verified).
    free_rewritable_after: int = 0
    # The same for a rewritable slot the user's words hold in quotes ("a folder named
    # 'Drafts'"): a quoted value is one the user wants used as typed, so copies are the
    # rule, and evidence frees it; 0: never.
    free_quoted_after: int = 5
    # New values of freed decision inputs that are numbers or dates: only within the
    # range verified (each side opens after free_inputs_after agreements beyond it).
    keep_to_ranges: bool = True

    def frees(self, quoted: bool, copied: int) -> bool:
        """Whether `copied` values seen copied verbatim (none rewritten) free a rewritable slot."""
        needed = self.free_quoted_after if quoted else self.free_rewritable_after
        return 0 < needed <= copied

    @property
    def needed(self) -> int:
        return max(self.promote_after, self.min_observations, 1)


@dataclass(frozen=True)
class Judgement:
    action: str  # "serve" | "verify" | "refuse"
    why: str = ""
    # What was served, for sampling: "declared", "trusted", "new-inputs" (trusted, with
    # decision-input values never seen), "seen" (values of a recorded or verified run),
    # "" (verification off).
    kind: str = ""


SERVE_DECLARED = Judgement("serve", kind="declared")
SERVE_TRUSTED = Judgement("serve", kind="trusted")
SERVE_SEEN = Judgement("serve", kind="seen")
SERVE_NEW_INPUTS = Judgement("serve", kind="new-inputs")
REFUSE_DEMOTED = Judgement("refuse", "the template reply here was demoted (a verification disagreed; "
                                     "`butter show` on the node says why)")
SERVE_UNCHECKED = Judgement("serve")  # verification off: served on induction's word
# For the caller that sees the node (store/cache.py): new values are not served by a reply
# whose node holds another answer (a demoted one, or one learned beside it): values of the
# same template led there to something else, so its slots decide the answer.
VERIFY_CONTESTED = Judgement("verify", "another answer is recorded at this template node (values of the same "
                                       "template led to it), and these values were never seen with this one", "inputs")


def trust_key(node_id: bytes, reply_id: bytes) -> bytes:
    return node_id + reply_id


def _values(bindings: Mapping[str, str], names: list[str]) -> tuple:
    """The values of `names`, in order (None for a name not bound).

    Kept as they are (the tree holds the same values), not hashed: on the hit
    path a membership test in a set of tuples is all a judgement costs.
    """
    return tuple(map(bindings.get, names))


@dataclass(frozen=True)
class View:
    """A trust entry prepared for judging on the hit path (`prepare`): what
    `judge` reads, as plain attributes and sets, decoded once per version of
    the entry and kept by the caller (store/cache.py)."""

    state: str
    declared: bool
    slots: tuple[str, ...]
    inputs: tuple[str, ...]
    inputs_free: bool
    seen: frozenset
    seen_inputs: frozenset
    agreements: int
    input_agreements: int
    rewritable: tuple[str, ...] = ()
    verbatim: Mapping[str, frozenset] = None  # rewritable slot -> values seen copied verbatim
    rewrites: frozenset = frozenset()  # rewritable slots with a value the model wrote its own way
    whole: Mapping[str, tuple] = None  # rewritable slot -> the call texts around it the user typed whole (`typed_whole`)
    # Decision input -> (kind, lowest, highest, agreements below, above) (`_ranges`).
    ranges: Mapping[str, tuple] = None
    # Decision input -> its values seen (a column of `seen_inputs`), and its evidence: the
    # more of its distinct values seen and its agreements on new values (`input_values`).
    input_columns: Mapping[str, frozenset] = None
    input_evidence: Mapping[str, int] = None
    # (input, input) -> how the two compared in the values seen (-1, 0, 1) (`_orders`).
    orders: Mapping[tuple[str, str], frozenset] = None
    # What VARYING's values seen hold, field by field (`_varying_evidence`).
    varying: "VaryingEvidence" = None
    quoted: frozenset = frozenset()  # rewritable slots the user's words hold in quotes (`quoted_slots`)
    # Rewritable slot -> the word forms (`word_form`) of its values seen copied verbatim,
    # less those of any value the model rewrote.
    verbatim_forms: Mapping[str, frozenset] = None


@dataclass(frozen=True)
class VaryingEvidence:
    """The values a template let vary unbound, per field, in the runs seen with its reply:
    every value seen, and how many of them were seen in one run only."""

    values: Mapping[str, frozenset]
    once: Mapping[str, int]


def prepare(entry: Mapping[str, Any], ranges: bool = False) -> View:
    """`ranges`: also the ordered ranges of the decision inputs (TrustRules.keep_to_ranges):
    up to MAX_SEEN values of each parsed, so only when they are judged by."""
    rewritable = tuple(entry.get("rewritable") or ())
    verbatim = entry.get("verbatim") or {}
    whole = entry.get("whole") or {}
    kept = _ranges(entry) if ranges else {}
    return View(entry.get("state", PROBATION), entry.get("source") == "declared", tuple(entry.get("slots") or ()),
                tuple(entry.get("inputs") or ()), bool(entry.get("inputs_free")),
                frozenset(tuple(v) for v in entry.get("seen", ())),
                frozenset(tuple(v) for v in entry.get("seen_inputs", ())),
                entry.get("agreements", 0), entry.get("input_agreements", 0),
                rewritable, {name: frozenset(verbatim.get(name, ())) for name in rewritable},
                frozenset(name for name, values in (entry.get("rewritten") or {}).items() if values),
                {name: tuple(whole[name]) for name in rewritable if whole.get(name)},
                kept, *_input_evidence(entry), orders=_orders(entry, kept) if ranges else {},
                varying=_varying_evidence(entry), quoted=frozenset(entry.get("quoted") or ()) & frozenset(rewritable),
                verbatim_forms=_verbatim_forms(entry, rewritable))


def _verbatim_forms(entry: Mapping[str, Any], rewritable: tuple[str, ...]) -> dict[str, frozenset]:
    verbatim, rewritten = entry.get("verbatim") or {}, entry.get("rewritten") or {}
    return {name: frozenset(map(word_form, verbatim.get(name, ()))) - frozenset(map(word_form, rewritten.get(name, ())))
            for name in rewritable}


# A run of digits standing alone in a value (the 72 of "72 Market Square", the postcode
# of "Bergen 37410"), not part of a word ("72nd", "A4"). Numbers are data the model
# copies as given (KEPT_AS_GIVEN); whether it respells a value depends on the words.
_LONE_DIGITS = re.compile(r"(?<!\w)\d+(?!\w)")
_ANY_NUMBER = "\u2116"  # № : the stand-in of a lone digit run in a word form


def word_form(value: str) -> str:
    """A value with its lone digit runs replaced by one stand-in: "72 Market Square"
    and "5 Market Square" have one form. A rewritable value whose form was seen copied
    verbatim (and never rewritten) is one the model copies too: its words were."""
    return _LONE_DIGITS.sub(_ANY_NUMBER, value)


def _varying_evidence(entry: Mapping[str, Any]) -> VaryingEvidence | None:
    """VARYING's column of `seen_inputs`, read field by field (None when it is no input).
    A run whose VARYING is of an older butter (one hash) is no evidence about any field."""
    inputs = tuple(entry.get("inputs") or ())
    if VARYING not in inputs:
        return None
    at = inputs.index(VARYING)
    runs: dict[str, dict[str, int]] = {}  # field -> value -> runs it was seen in
    for row in entry.get("seen_inputs", ()):
        for name, elements in (varying_elements(row[at]) if at < len(row) else {}).items():
            counts = runs.setdefault(name, {})
            for element in elements:
                counts[element] = counts.get(element, 0) + 1
    values = {name: frozenset(counts) for name, counts in runs.items()}
    once = {name: sum(1 for n in counts.values() if n == 1) for name, counts in runs.items()}
    return VaryingEvidence(values, once)


def _unearned_fields(evidence: VaryingEvidence | None, value: str | None, needed: int) -> list[str]:
    """The fields of a VARYING value that the runs seen with the reply do not vouch for.

    A field with `needed` values seen in one run only (an id, a price: new values are
    the rule there, and that many agreed) is free, as a freed slot is. Any other field
    (a status, a membership tier, a list's length) has taken its values from a few that
    repeat, so a value never seen there ("lost" after "shipped" and "packed") is one the
    evidence says nothing about, and may be what decides: it is verified. Values seen,
    in a combination never seen together, are served (the evidence is per value)."""
    if evidence is None:
        return []
    now = varying_elements(value)  # a field seen before but not noted here has no new value
    return [name or "(message)" for name, values in sorted(now.items())
            if evidence.once.get(name, 0) < needed and not values <= evidence.values.get(name, frozenset())]


def _input_evidence(entry: Mapping[str, Any]) -> tuple[dict, dict]:
    """Each decision input's seen values (its column of `seen_inputs`) and its evidence:
    the larger of its distinct values seen and its agreements on new values of it
    (`input_values`, which outlives the tuples kept; none in an entry from before it was kept)."""
    inputs = tuple(entry.get("inputs") or ())
    if not inputs:
        return {}, {}
    rows = [tuple(row) for row in entry.get("seen_inputs", ())]
    columns = {name: frozenset(row[i] for row in rows if i < len(row)) for i, name in enumerate(inputs)}
    counts = entry.get("input_values") or {}
    return columns, {name: max(counts.get(name, 0), len(columns[name] - {None})) for name in inputs}


def _ranges(entry: Mapping[str, Any]) -> dict[str, tuple]:
    """Decision input -> (kind, lowest, highest, agreements below, agreements
    above): `ordered_ranges` of its verified values, with the agreements seen
    on values that lay beyond them (`extrapolated`)."""
    inputs = tuple(entry.get("inputs") or ())
    beyond = entry.get("extrapolated") or {}
    return {name: (*bounds, *beyond.get(name, (0, 0)))
            for name, bounds in ordered_ranges(inputs, entry.get("seen_inputs", ())).items()}


def _orders(entry: Mapping[str, Any], ranges: Mapping[str, tuple]) -> dict[tuple[str, str], frozenset]:
    """For each pair of decision inputs that both have a range of one kind (two numbers,
    two dates; `ranges` as `_ranges` gives them): how they compared in each value tuple
    seen with the reply (-1, 0, 1)."""
    inputs = tuple(entry.get("inputs") or ())
    rows = [tuple(row) for row in entry.get("seen_inputs", ())]
    names = sorted(ranges, key=inputs.index)
    return {(a, b): frozenset(_compare(row[inputs.index(a)], row[inputs.index(b)]) for row in rows)
            for i, a in enumerate(names) for b in names[i + 1:] if ranges[a][0] == ranges[b][0]}


def _compare(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 as `a` is below, equal to or above `b` (None: not of one ordered kind)."""
    x, y = _ordered(a), _ordered(b)
    if x is None or y is None or x[0] != y[0]:
        return None
    return (x[1] > y[1]) - (x[1] < y[1])


def _reordered(view: View, bindings: Mapping[str, str]) -> list[str]:
    """The pairs of ordered decision inputs that compare here as they never did in the
    values seen with the reply ("approve if amount < limit": amount 400 and limit 100,
    each seen, but never the amount above the limit)."""
    found = []
    for (a, b), seen in view.orders.items():
        order = _compare(bindings.get(a), bindings.get(b))
        if order is not None and order not in seen:
            found.append(f"{a} {'<=>'[order + 1]} {b}")
    return found


def _ordered(value: Any) -> tuple[str, Any] | None:
    """A value a threshold or a window is compared with, as (kind, comparable):
    a plain decimal number, or an ISO date (its text sorts as the date does)."""
    if type(value) is not str:
        return None
    if _PLAIN_NUMBER.fullmatch(value):
        return "number", float(value)
    if _ISO_DATE.fullmatch(value):
        return "date", value
    return None


def ordered_ranges(names: Iterable[str], rows: Iterable[Any]) -> dict[str, tuple]:
    """For each slot (a column of `rows`, the value tuples seen with a reply)
    whose every seen value is ordered and of one kind: (kind, lowest, highest).

    A decision that hangs on a number or a date mostly compares it with a
    limit or a window: a value between two that got this reply is on their
    side of any limit, a value beyond them may not be."""
    rows = [tuple(row) for row in rows]
    out: dict[str, tuple] = {}
    for index, name in enumerate(names):
        if names_identifier(name):
            continue
        values = [_ordered(row[index]) if index < len(row) else None for row in rows]
        if not values or any(v is None for v in values) or len({kind for kind, _ in values}) != 1:
            continue
        numbers = [v for _, v in values]
        out[name] = (values[0][0], min(numbers), max(numbers))
    return out


# A slot named by its API as an identifier (`order_id`, `userId`, `zip`, `postcode`,
# `phone`; a repeated name's `_2` aside): its numbers are looked up,
# not compared with a limit, so a new one beyond those seen is no new side of anything.
# Not "_number": an invoice number is an id, but a guest number or a priority number may be compared.
_SNAKE_IDENTIFIER = re.compile(r"(?:^|_)(?:id|uid|uuid|zip|zipcode|postcode|postal_code|phone)$")
_CAMEL_IDENTIFIER = re.compile(r"[a-z0-9](?:Id|ID|Uuid|Zip|Postcode)$")
_REPEAT_SUFFIX = re.compile(r"_\d+$")


def names_identifier(name: str) -> bool:
    """Whether a slot's name says its value is an identifier (compared for equality only)."""
    base = _REPEAT_SUFFIX.sub("", name)
    return bool(_SNAKE_IDENTIFIER.search(base.lower()) or _CAMEL_IDENTIFIER.search(base))


def _side(bounds: tuple, value: Any) -> int | None:
    """0 below the range, 1 above it, None inside; -1 for a value of another kind or form."""
    kind, low, high = bounds[:3]
    ordered = _ordered(value)
    if ordered is None or ordered[0] != kind:
        return -1
    return 0 if ordered[1] < low else 1 if ordered[1] > high else None


def _beyond(view: View, bindings: Mapping[str, str], needed: int) -> list[str]:
    """The ordered decision inputs whose value here lies beyond the range seen
    with the reply, on a side where fewer than `needed` values beyond it agreed
    (a field that only grows, a timestamp or a sequence number, earns its side
    that way), or that is of another kind or form than the values seen."""
    out = []
    for name, bounds in view.ranges.items():
        side = _side(bounds, bindings.get(name))
        if side is not None and (side < 0 or bounds[3 + side] < needed):
            out.append(name)
    return out


def rewritable_slots(shapes: Mapping[str, str], reply: Any, given_as_data: set[str] | frozenset = frozenset()) -> set[str]:
    """The slots of `reply` (a template) that the model may write in its own spelling:
    inside a tool call's arguments, with a value of prose or date shape, that the
    conversation before it holds only in running text (`given_as_data`: the slots
    a tool result or an earlier call already holds as data, which the model
    passes on as it is given)."""
    return {name for name in slots_in_calls(reply)
            if shapes.get(name, "text") not in KEPT_AS_GIVEN and name not in given_as_data}


def typed_whole(reply: Any, rewritable: Iterable[str], messages: Any) -> dict[str, list[str]]:
    """For each rewritable slot that a tool call's arguments hold inside a larger
    text (`{{v1}}.docx`: induction keeps the constant extension out of the slot),
    those texts, when the conversation before the reply (`messages`, its template
    nodes; the user's and the system prompt's words, not the model's) holds every
    one of them whole: the user typed 'Delta.docx', not "the Delta document".
    Rendered with a value that makes each a name a tool reads literally
    (`kept_as_given`), the call copies what the user typed."""
    calls = texts_in_calls(reply)
    said = _said(messages)
    out: dict[str, list[str]] = {}
    for name in rewritable:
        held = sorted({t for t in calls if any(type(p) is tuple and p[0] == name for p in parse_text(t))})
        if (held and any(t != placeholder(name) for t in held)
                and all(any(_holds_whole(text, t) for text in said) for t in held)):
            out[name] = held
    return out


# A quoted span of the user's words: the quote opens after no word character and closes
# before none ("the user's 'Drafts' folder": the apostrophe of "user's" opens nothing).
# Slots stand in the text as private-use characters (`_QUOTABLE`), so a span may hold
# a slot with constant words around it ('Report {{v1}}').
_QUOTE_PAIRS = (("'", "'"), ('"', '"'), ("`", "`"), ("\u2018", "\u2019"), ("\u201c", "\u201d"), ("\u00ab", "\u00bb"))
_QUOTED_SPAN = re.compile("|".join(rf"(?<!\w){re.escape(a)}([^{re.escape(a + b)}\n]{{1,200}}){re.escape(b)}(?!\w)"
                                   for a, b in _QUOTE_PAIRS))
_QUOTABLE = 0xE000  # the first private-use code point: a slot's stand-in in `quoted_slots`


def quoted_slots(rewritable: Iterable[str], messages: Any) -> set[str]:
    """The rewritable slots that the conversation before the reply (`messages`, its
    template nodes; the user's and the system prompt's words, not the model's) holds
    only inside quotes, wherever it holds them: "create a folder named 'Drafts'". A
    quoted value is one the user wants used as typed, so a model copies it far more
    reliably than a city it may know by another name; evidence still has to free it
    (TrustRules.free_quoted_after)."""
    names = sorted(set(rewritable))
    stand_in = {name: chr(_QUOTABLE + i) for i, name in enumerate(names)}
    held: dict[str, bool] = {}  # slot -> every occurrence so far inside quotes
    for text in _said(messages):
        line = "".join(part if type(part) is str else stand_in.get(part[0], " ") for part in parse_text(text))
        quoted = "".join(g for m in _QUOTED_SPAN.finditer(line) for g in m.groups() if g)
        for name, char in stand_in.items():
            if char in line:
                held[name] = held.get(name, True) and line.count(char) == quoted.count(char)
    return {name for name, inside in held.items() if inside}


def _holds_whole(text: str, inner: str) -> bool:
    """Whether a template text holds another (a call's `{{v1}}.docx`) as a whole
    token: not the start of 'Delta.docx2' or the end of 'old_Delta.docx'."""
    return re.search(rf"(?<![\w.\-/\\:@#]){re.escape(inner)}(?![\w\-/\\:@#]|\.\w)", text) is not None


def _said(messages: Any) -> list[str]:
    """The template texts of the user's and the system prompt's words in these template
    nodes: what the model was told, not what it wrote."""
    return [text for message in messages for text in texts_in(message) if not _model_wrote(message)]


def _model_wrote(node: Any) -> bool:
    """Whether a template node's message is the model's own (its earlier words are
    no evidence of what the user typed)."""
    message = node.get("message", node) if isinstance(node, dict) else None
    return isinstance(message, dict) and message.get("role") in ("assistant", "model")


def _written_as_typed(texts: Iterable[str] | None, bindings: Mapping[str, str]) -> bool:
    """Whether every call text holding a slot (`typed_whole`) renders, with these
    values, to a name a tool reads literally: the user's 'Delta.docx', copied."""
    if not texts:
        return False
    try:
        return all(kept_as_given(render_text(t, bindings)) for t in texts)
    except RenderError:
        return False


def _unverified(names: Iterable[str], verbatim: Mapping[str, Any], bindings: Mapping[str, str],
                whole: Mapping[str, Any] | None = None) -> list[str]:
    """The rewritable slots whose value here was never seen copied verbatim (nor is one
    kept as given, alone or inside the file name the user typed whole)."""
    whole = whole or {}
    return [name for name in names if bindings.get(name) not in verbatim.get(name, ())
            and not kept_as_given(bindings.get(name)) and not _written_as_typed(whole.get(name), bindings)]


def rewritten_slots(entry: Mapping[str, Any], expected: Any, actual: Any, bindings: Mapping[str, str]) -> tuple[str, ...]:
    """For a verification that disagreed: the rewritable slots whose new values
    explain it (the model's own spelling), or () when the template is wrong.
    Only a value never seen copied verbatim can be the model's own spelling; an
    ISO date is served as given, so its disagreement is the template's."""
    new = _unverified(entry.get("rewritable", ()), entry.get("verbatim") or {}, bindings, entry.get("whole"))
    return tuple(new) if new and rewrite_explains(expected, actual, bindings, new) else ()


def rewritable_in_reply(reply: Any, bindings: Mapping[str, str]) -> set[str]:
    """`rewritable_slots` when only a hit is at hand (its reply and values, not its
    template nodes): shapes from the values, and no slot counts as given as data."""
    return rewritable_slots({n: shape_of(v) for n, v in bindings.items()}, reply)


def kept_as_given(value: str | None) -> bool:
    """A value of a rewritable slot that the model passes into a call as it is:
    an ISO date (2027-03-14), a file name, a handle, a path."""
    if value is None:
        return False
    if _ISO_DATE.fullmatch(value):
        return True
    # Another date's form (14/03/2027, 09:30) is one the model may well rewrite.
    return (not fits("date", value) and _MACHINE_NAME.fullmatch(value) is not None and not _abbreviated(value)
            and not _words_joined(value))


def _abbreviated(value: str) -> bool:
    """Whether dots in a value are prose's, not a name's: an abbreviation the model may
    spell out ("L.A." -> "Los Angeles", "D.C", "St.Petersburg", "e.g"). No file name ends in
    a dot, an initialism is single letters, and a word after a dot that starts with a capital
    is the next word of a name, not an extension or a handle's part."""
    parts = value.split(".")
    if len(parts) < 2:
        return False
    return (value.endswith(".") or all(len(p) == 1 and p.isalpha() for p in parts)
            or any(p.isalpha() and p[0].isupper() for p in parts[1:]))


def _words_joined(value: str) -> bool:
    """Whether a "/", "\\" or ":" joins words, not a path's or an address's parts: a place and its
    country ("Milan/Italy", "paris:france", "Rome/IT"), which a model writes into a call its
    own way ("Milan, Italy"). Every part is letters only; a path ("docs/q3", "src/main.py",
    "/home/ann") or an address ("localhost:8080") has a part that is not."""
    parts = re.split(r"[/\\:]", value)
    return len(parts) > 1 and all(p.isalpha() for p in parts)


def with_rewritable(entry: Mapping[str, Any], reply: Any, bindings: Mapping[str, str]) -> Mapping[str, Any]:
    """An entry written before butter knew rewritable slots, judged as if it did.

    Its template nodes are not at hand on the hit path, so every prose slot in
    a tool call's arguments counts (a value a tool returned too): stricter than
    a template learned now, never looser. The values its recorded and verified
    runs had are the ones seen copied verbatim.
    """
    if entry.get("source") != "learned" or "rewritable" in entry:
        return entry
    slots = list(entry.get("slots") or ())
    names = rewritable_in_reply(reply, bindings) & set(slots)
    if not names:
        return {**entry, "rewritable": []}
    verbatim = {n: sorted({row[slots.index(n)] for row in entry.get("seen", ()) if len(row) == len(slots)} - {None})
                for n in names}
    return {**entry, "rewritable": sorted(names), "verbatim": verbatim}


def learned_entry(slot_names: list[str] | set[str], reply_slots: set[str], run_bindings, now: float,
                  rewritable: set[str] | tuple = (), whole: Mapping[str, list[str]] | None = None,
                  stated: set[str] | frozenset = frozenset(), carried: set[str] | frozenset = frozenset(),
                  quoted: set[str] | frozenset = frozenset()) -> dict:
    """A template reply induction just learned: on probation, its runs' values seen.
    `whole`: `typed_whole` of its rewritable slots. `stated`: the slots the reply
    states in its own text (`slots_stated`), `carried`: its numbers and dates in
    tool calls' arguments (`carried_ordered`); decision inputs like the unreached ones."""
    slots = sorted(slot_names)
    stated = sorted(set(stated) & set(slots))
    carried = sorted(set(carried) & set(slots))
    inputs = [s for s in slots if s not in reply_slots or s in stated or s in carried]
    entry = {"state": PROBATION, "source": "learned", "since": now, "slots": slots, "inputs": inputs,
             "inputs_free": not inputs, "agreements": 0, "input_agreements": 0, "seen": [], "seen_inputs": [],
             "why": "", "stated": stated, "carried": carried}
    # Always present (empty when none): an entry without the key is from before the rule (`with_rewritable`).
    entry.update(rewritable=sorted(rewritable), verbatim={name: [] for name in sorted(rewritable)}, rewritten={})
    whole = {name: list(texts) for name, texts in (whole or {}).items() if name in rewritable}
    if whole:  # absent when none: most entries, and those written before it was kept
        entry["whole"] = whole
    quoted = sorted(set(quoted) & set(rewritable))
    if quoted:  # absent when none, as `whole`
        entry["quoted"] = quoted
    for bindings in run_bindings:
        _remember(entry, bindings)
    return entry


def carried_ordered(shapes: Mapping[str, str], reply: Any) -> set[str]:
    """The slots a reply (a template) passes into a tool call's arguments whose values
    are numbers or dates: a limit or a window may decide which call they go to
    (`send_payment(amount=40)`, but `request_approval(amount=5000)`), so they are
    decision inputs although the reply shows them."""
    return {name for name in slots_in_calls(reply) if shapes.get(name) in ORDERED_SHAPES}


def with_inputs(entry: Mapping[str, Any], reply: Any, bindings: Mapping[str, str] | None = None) -> Mapping[str, Any]:
    """An entry written before butter treated the values a reply states in its text
    (`stated`), the numbers and dates it carries into tool calls (`carried`) and what
    its template lets vary unbound (VARYING, in this walk's `bindings`) as decision
    inputs, judged as if it did: those slots join its inputs, each with the values its
    recorded and verified runs had (none known for VARYING), and none freed until its
    own evidence frees it. A carried slot is told by its values seen (every one a
    number or a date)."""
    if entry.get("source") != "learned":
        return entry
    if bindings and VARYING in bindings and VARYING not in (entry.get("slots") or ()):
        entry = _with_varying(entry)
    if "stated" in entry and "carried" in entry:
        return entry
    slots = list(entry.get("slots") or ())
    inputs = list(entry.get("inputs") or ())
    rows = [row for row in entry.get("seen", ()) if len(row) == len(slots)]
    stated = (entry.get("stated") if "stated" in entry
              else sorted((slots_stated(reply) & set(slots)) - set(inputs)))
    if "carried" in entry:
        carried = entry["carried"]
    else:
        shapes = {n: {shape_of(str(row[i])) for row in rows} for i, n in enumerate(slots)}
        carried = sorted(n for n in slots_in_calls(reply) & set(slots)
                         if n not in inputs and n not in stated and shapes[n] and shapes[n] <= ORDERED_SHAPES)
    new = sorted((set(stated) | set(carried)) - set(inputs))
    if not new:
        return {**entry, "stated": stated, "carried": carried}
    inputs = sorted(inputs + new)
    return {**entry, "stated": stated, "carried": carried, "inputs": inputs,
            "seen_inputs": _seen_inputs(slots, inputs, rows), "inputs_free": False, "input_agreements": 0,
            "extrapolated": {}, "input_values": {n: c for n, c in (entry.get("input_values") or {}).items()
                                                if n not in new}}


def _with_varying(entry: Mapping[str, Any]) -> dict:
    """`with_inputs` for VARYING: an input of its own, no value of it seen."""
    slots = sorted([*(entry.get("slots") or ()), VARYING])
    at = slots.index(VARYING)
    rows = [[*row[:at], None, *row[at:]] for row in entry.get("seen", ()) if len(row) == len(slots) - 1]
    inputs = sorted([*(entry.get("inputs") or ()), VARYING])
    return {**entry, "slots": slots, "seen": rows, "inputs": inputs, "seen_inputs": _seen_inputs(slots, inputs, rows),
            "inputs_free": False, "input_agreements": 0}


def _seen_inputs(slots: list[str], inputs: list[str], rows: list) -> list[list]:
    """The distinct decision-input value tuples of the value rows `rows` (one per run, over `slots`)."""
    return [list(r) for r in dict.fromkeys(tuple(row[slots.index(n)] for n in inputs) for row in rows)]


def declared_entry(now: float) -> dict:
    return {"state": TRUSTED, "source": "declared", "since": now, "slots": [], "inputs": [], "inputs_free": True,
            "agreements": 0, "input_agreements": 0, "seen": [], "seen_inputs": [], "why": ""}


def merge_learned(existing: dict | None, fresh: dict, node_created: float = 0.0) -> dict:
    """The entry after induction (re)wrote a template: state kept, runs' values added.

    The same template learned again from more runs gets the same node and
    reply id, so it must not return to probation (or escape demotion). An
    entry older than its node belongs to a template that was forgotten and
    learned anew: it starts over.
    """
    if existing is None or existing.get("since", 0) < node_created:
        return fresh
    if existing.get("source") == "declared":
        return existing
    merged = dict(existing)
    for key in ("seen", "seen_inputs"):
        merged[key] = list(existing.get(key, []))
        known = {tuple(v) for v in merged[key]}
        merged[key] += [v for v in fresh.get(key, []) if tuple(v) not in known]
    # (`fresh` always says which slots are rewritable: `learned_entry`)
    merged["rewritable"] = sorted(set(existing.get("rewritable", ())) | set(fresh.get("rewritable", ())))
    merged["verbatim"] = {name: list(dict.fromkeys([*existing.get("verbatim", {}).get(name, ()),
                                                    *fresh.get("verbatim", {}).get(name, ())]))
                          for name in merged["rewritable"]}
    merged.setdefault("rewritten", {})
    # A slot's typed-whole call texts stand only while every learning of it agrees; an
    # entry without any (none, or from before they were kept) takes the fresh ones: the
    # same node and reply are the same template path.
    before = existing.get("whole")
    whole = {name: texts for name, texts in (fresh.get("whole") or {}).items()
             if name in merged["rewritable"] and (before is None or before.get(name) == texts)}
    merged.pop("whole", None)
    if whole:
        merged["whole"] = whole
    # Quoted likewise: a slot stays quoted while every learning of this template path agrees.
    before = existing.get("quoted")
    quoted = [name for name in fresh.get("quoted") or () if name in merged["rewritable"]
              and (before is None or name in before)]
    merged.pop("quoted", None)
    if quoted:
        merged["quoted"] = quoted
    _trim(merged)
    return merged


def dated_on_import(entry: Any, now: float) -> Any:
    """A trust entry as an import stores it: dated by the import. `merge_learned` starts an
    entry over when it is older than its node (the template was forgotten and learned anew),
    but an imported entry's own time says nothing of this database's nodes (a cassette's has
    none: 0): undated, a demotion it brings for a node that already stood here would be lost
    the next time the template is learned. A node forgotten after the import still starts over."""
    if isinstance(entry, dict):
        return {**entry, "since": max(now, entry.get("since") or 0)}
    return entry


def _remember(entry: dict, bindings: Mapping[str, str]) -> tuple[bool, bool]:
    """Add this run's values; (were all its values new, were its decision-input values new)."""
    full = _values(bindings, entry["slots"] or sorted(bindings))
    new_full = full not in {tuple(v) for v in entry["seen"]}
    if new_full:
        entry["seen"].append(list(full))
    new_inputs = False
    if entry["inputs"]:
        inputs = _values(bindings, entry["inputs"])
        new_inputs = inputs not in {tuple(v) for v in entry["seen_inputs"]}
        if new_inputs:
            entry["seen_inputs"].append(list(inputs))
    if entry.get("rewritable"):
        verbatim = entry["verbatim"] = {name: list(values) for name, values in entry.get("verbatim", {}).items()}
        for name in entry["rewritable"]:
            value = bindings.get(name)
            if value is not None and value not in verbatim.setdefault(name, []):
                verbatim[name].append(value)
    _trim(entry)
    return new_full, new_inputs


def _trim(entry: dict) -> None:
    for key in ("seen", "seen_inputs"):
        if len(entry.get(key, ())) > MAX_SEEN:
            entry[key] = entry[key][-MAX_SEEN:]
    for table in ("verbatim", "rewritten"):
        for name, values in (entry.get(table) or {}).items():
            if len(values) > MAX_SEEN:
                entry[table][name] = values[-MAX_SEEN:]


def judge(entry: View | Mapping[str, Any] | None, bindings: Mapping[str, str], rules: TrustRules) -> Judgement:
    """What to do with a lookup that a template reply would answer.

    Runs on the hit path, given the `prepare`d entry (a plain entry is
    prepared here); the commonest case (trusted, no decision input) looks at
    no value at all.
    """
    if entry is None:
        # A template reply with no trust entry was learned before butter kept
        # trust: it earns it like a new one.
        if not rules.verify:
            return SERVE_UNCHECKED
        return Judgement("verify", "learned before trust was kept: on probation", PROBATION)
    view = entry if type(entry) is View else prepare(entry, rules.keep_to_ranges)
    state = view.state
    if state == DEMOTED:
        # The why quotes values: it stays in the entry (`butter show`), out of miss lines.
        return REFUSE_DEMOTED
    if view.declared:
        return SERVE_DECLARED
    if not rules.verify:
        return SERVE_UNCHECKED
    freed_new = False
    if view.rewritable:
        verbatim = view.verbatim
        unseen = _unverified(view.rewritable, verbatim, bindings, view.whole)
        if unseen and state == TRUSTED:
            # Freed by evidence: the value's words seen copied verbatim with other numbers
            # (`word_form`), or enough values copied verbatim and none ever rewritten.
            forms = view.verbatim_forms or {}
            freed = [name for name in unseen if word_form(bindings.get(name) or "") in forms.get(name, ())
                     or (name not in view.rewrites and rules.frees(name in view.quoted, len(verbatim[name])))]
            freed_new = bool(freed)
            unseen = [name for name in unseen if name not in freed]
        if unseen:
            return Judgement("verify", f"{', '.join(unseen)} reach the reply only as the model writes them in a tool "
                                       "call, and these values were never seen copied verbatim with it", "rewritable")
    verdict = _judge_values(view, state, bindings, rules)
    # A new value of a freed rewritable slot: served like new decision inputs (sampled re-checks).
    return SERVE_NEW_INPUTS if freed_new and verdict is SERVE_TRUSTED else verdict


# Why a decision input is verified: the reply does not show it (it may decide the answer
# without appearing in it), states it in its own text (where a model says what it
# concluded about it: "Yes, 7 is prime"), or passes a number or a date into a tool call
# (a limit may decide which call).
_MAY_DECIDE = ("may decide the reply (it does not show them, states them in its own text, or passes a number or "
               "date into a tool call)")


def _judge_values(view: View, state: str, bindings: Mapping[str, str], rules: TrustRules) -> Judgement:
    """`judge` past the rewritable slots: the run's values, decision inputs, probation."""
    inputs = view.inputs
    if state == TRUSTED and view.inputs_free:
        if not inputs:
            return SERVE_TRUSTED
        if _values(bindings, inputs) in view.seen_inputs:
            return SERVE_TRUSTED
        unearned = [name for name in inputs if name != VARYING and view.input_evidence[name] < rules.free_inputs_after
                    and bindings.get(name) not in view.input_columns[name]]
        if VARYING in inputs and bindings.get(VARYING) not in view.input_columns[VARYING]:
            # Judged field by field, not as one value: a list of orders is new every run
            # (its ids), but its statuses are not (`_unearned_fields`).
            fields = _unearned_fields(view.varying, bindings.get(VARYING), rules.free_inputs_after)
            if fields:
                unearned.append(f"{VARYING} ({', '.join(fields)})")
        if unearned:
            # Agreements on new tuples free the inputs together, but each one is freed only by
            # its own: after "Is 7 prime? (ticket 103)", "(ticket 104)", ... nothing is known of 8.
            return Judgement("verify", f"decision input(s) {', '.join(unearned)} {_MAY_DECIDE}, and this "
                                       f"value of it was never seen with it (fewer than {rules.free_inputs_after} of "
                                       "its values seen, or verified as new)", "inputs")
        beyond = _beyond(view, bindings, rules.free_inputs_after) if rules.keep_to_ranges and view.ranges else ()
        if beyond:
            # Freed inputs still do not reach past their evidence: five balances
            # of 3-95 that were all "too low" say nothing about 5000.
            return Judgement("verify", f"decision input(s) {', '.join(beyond)} {_MAY_DECIDE}, and this "
                                       "number or date lies beyond the values verified with it (a limit may lie "
                                       "there)", "inputs")
        reordered = _reordered(view, bindings) if rules.keep_to_ranges and view.orders else ()
        if reordered:
            # Each within its range, but the decision may compare the two with each other.
            return Judgement("verify", f"decision inputs compare here as they never did with this reply "
                                       f"({', '.join(reordered)}): a decision may compare them", "inputs")
        return SERVE_NEW_INPUTS
    if _values(bindings, view.slots or tuple(sorted(bindings))) in view.seen:
        return SERVE_SEEN  # the values of a recorded or verified run: that answer is known
    if inputs and not view.inputs_free and _values(bindings, inputs) not in view.seen_inputs:
        return Judgement("verify", f"decision input(s) {', '.join(inputs)} {_MAY_DECIDE}, and these values "
                                   f"were never seen with it ({view.input_agreements} of {rules.free_inputs_after} "
                                   "verified values free them)", "inputs")
    if state != TRUSTED:
        return Judgement("verify", f"on probation ({view.agreements} of {rules.needed} verified agreements)",
                         PROBATION)
    return SERVE_TRUSTED


def after_verification(entry: dict, bindings: Mapping[str, str], agreed: bool, rules: TrustRules,
                       why: str, now: float, rewritten: tuple[str, ...] = ()) -> tuple[dict, str]:
    """The entry after the provider answered a verification (or a sampled re-check).

    `entry` is the template's (for one with none, `learned_entry` with no
    runs). `rewritten`: for a disagreement, the rewritable slots whose new
    values explain it (`rewrite_explains`). Returns (entry, event): "demoted",
    "rewritten" (the template stays; these values are never served),
    "promoted", "inputs freed", "agreed" (counted), "agreed again" (values
    seen before: no new evidence) or "already demoted".
    """
    entry = {**entry, "seen": list(entry.get("seen", [])), "seen_inputs": list(entry.get("seen_inputs", []))}
    if entry.get("state") == DEMOTED:
        return entry, "already demoted"
    if not agreed and rewritten and all(name in entry.get("rewritable", ()) for name in rewritten):
        notes = entry["rewritten"] = {name: list(values) for name, values in (entry.get("rewritten") or {}).items()}
        for name in rewritten:
            if bindings.get(name) not in notes.setdefault(name, []):
                notes[name].append(bindings.get(name))
        entry["last_rewritten"] = why
        _trim(entry)
        return entry, "rewritten"
    if not agreed:
        entry.update(state=DEMOTED, why=why, demoted_at=now)
        decided = deciding_inputs(entry, bindings)
        if decided:
            entry["decided_by"] = decided
        return entry, "demoted"
    ranges = ordered_ranges(entry.get("inputs") or (), entry["seen_inputs"])  # before this run's values
    columns = _input_evidence(entry)[0]  # before this run's values
    new_full, new_inputs = _remember(entry, bindings)
    if not new_full and not new_inputs:
        return entry, "agreed again"
    if new_inputs:
        _count_extrapolation(entry, ranges, bindings)
        _count_input_values(entry, columns, bindings)
    event = "agreed"
    if new_full:
        entry["agreements"] = entry.get("agreements", 0) + 1
    if new_inputs:
        entry["input_agreements"] = entry.get("input_agreements", 0) + 1
    entry["last_verified"] = now
    if entry.get("state") != TRUSTED and entry["agreements"] >= rules.needed:
        entry["state"] = TRUSTED
        event = "promoted"
    if (entry.get("state") == TRUSTED and not entry.get("inputs_free")
            and entry["input_agreements"] >= max(rules.free_inputs_after, rules.needed)):
        entry["inputs_free"] = True
        event = "promoted, decision inputs freed" if event == "promoted" else "decision inputs freed"
    return entry, event


def deciding_inputs(entry: Mapping[str, Any], bindings: Mapping[str, str]) -> list[str]:
    """For a disagreement: the decision inputs that can explain it, those whose value here
    was never seen with the reply (a shipped order's status, after pending and processing
    ones). Not an input named as an identifier: an order id decides through what the
    tool returns for it, which the template holds, not by its own value. Induction learns
    the runs again with these values kept literal, one branch per value (store/learning.py)."""
    columns = _input_evidence(entry)[0]
    return [name for name, seen in columns.items()
            if name in bindings and bindings[name] not in seen and not names_identifier(name)]


def _count_input_values(entry: dict, columns: Mapping[str, frozenset], bindings: Mapping[str, str]) -> None:
    """Note an agreement for each decision input whose value here was not seen with the
    reply before (`input_values`: slot -> count): enough of them free that input."""
    counts = entry["input_values"] = dict(entry.get("input_values") or {})
    for name, seen in columns.items():
        if bindings.get(name) not in seen:
            counts[name] = counts.get(name, 0) + 1


def _count_extrapolation(entry: dict, ranges: Mapping[str, tuple], bindings: Mapping[str, str]) -> None:
    """Note an agreement on a decision-input value beyond the range verified so far
    (`extrapolated`: slot -> [below, above]): enough of them open that side."""
    for name, bounds in ranges.items():
        side = _side(bounds, bindings.get(name))
        if side is not None and side >= 0:
            counts = entry["extrapolated"] = {n: list(c) for n, c in (entry.get("extrapolated") or {}).items()}
            counts.setdefault(name, [0, 0])[side] += 1


def _differences(a: Any, b: Any, in_call: bool, out: list) -> bool:
    """Collect (in a call's arguments, expected leaf, actual leaf) where `a` and
    `b` differ; False when they differ in structure (keys, list lengths, kinds)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return False
        return all(_differences(a[k], b[k], in_call or k in JSON_KEYS, out) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_differences(x, y, in_call, out) for x, y in zip(a, b))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    if canonical_json(a) != canonical_json(b):
        out.append((in_call, a, b))
    return True


def rewrite_explains(expected: Any, actual: Any, bindings: Mapping[str, str], names: Iterable[str]) -> bool:
    """Whether two answers differ only where a tool call's argument held one of
    these slots' values: the model wrote the value its own way ("Milano" for
    "Milan"), and nothing else about the answer changed."""
    values = [bindings[n] for n in names if bindings.get(n)]
    found: list = []
    if not values or not _differences(answer_of(expected), answer_of(actual), False, found) or not found:
        return False
    return all(in_call and isinstance(e, str) and isinstance(a, str) and _rewritten_around(e, a, values)
               for in_call, e, a in found)


def _rewritten_around(expected: str, actual: str, values: list[str]) -> bool:
    """Whether `actual` is `expected` with one of `values` written another way and the
    text around it kept: "Milano" for "Milan", "Milano, Italy" for "Milan, Italy", but
    not "Rome, France" for "Rome, Italy" (the template's own words changed)."""
    for value in values:
        start = expected.find(value)
        while start != -1:
            before, after = expected[:start], expected[start + len(value):]
            if len(actual) >= len(before) + len(after) and actual.startswith(before) and actual.endswith(after):
                return True
            start = expected.find(value, start + 1)
    return False


# -- explaining, for logs at debug level and the CLI ------------------------------------

def _brief(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if canonical_json(a) == canonical_json(b) else (where or "reply", a, b)


def disagreement(expected: Any, actual: Any, bindings: Mapping[str, str], names: list[str]) -> str:
    """Where the provider's answer left the template's, and with which values."""
    found = _first_difference(answer_of(expected), answer_of(actual))
    where = "the answers differ" if found is None else (
        f"{found[0].replace(chr(0) + 'json', 'json')}: template {_brief(found[1])}, provider {_brief(found[2])}")
    values = ", ".join(f"{n}={_brief(bindings[n], 24)}" for n in names if n in bindings)
    return f"{where}" + (f" (with {values})" if values else "")


def describe(entry: Mapping[str, Any] | None, rules: TrustRules = TrustRules()) -> str:
    """One line: state, counts and why."""
    if entry is None:
        return "probation (learned before trust was kept)"
    state = entry.get("state")
    if entry.get("source") == "declared":
        return "trusted (declared by the client: Butter-Bindings)"
    inputs = entry.get("inputs") or []
    parts = [f"{state}", f"{entry.get('agreements', 0)} of {rules.needed} verified agreements"]
    if inputs:
        freed = "freed" if entry.get("inputs_free") else "not free"
        stated = [name for name in entry.get("stated") or () if name in inputs]
        carried = [name for name in entry.get("carried") or () if name in inputs]
        said = (f"; the reply states {', '.join(stated)}" if stated else "") + (
            f"; the reply passes {', '.join(carried)} into a tool call" if carried else "")
        parts.append(f"decision inputs {', '.join(inputs)} {freed} ({entry.get('input_agreements', 0)} of "
                     f"{rules.free_inputs_after} verified values; {len(entry.get('seen_inputs', []))} seen{said})")
    text = f"{parts[0]} ({'; '.join(parts[1:])})"
    rewritable = entry.get("rewritable") or []
    if rewritable:
        verbatim = entry.get("verbatim") or {}
        rewritten = entry.get("rewritten") or {}
        whole = entry.get("whole") or {}

        quoted = set(entry.get("quoted") or ())

        def slot(n: str) -> str:
            seen, rewrites = len(verbatim.get(n, [])), len(rewritten.get(n, []))
            freed = state == TRUSTED and not rewrites and rules.frees(n in quoted, seen)
            typed = f"; names typed whole: {', '.join(whole[n])}" if whole.get(n) else ""
            said = "; quoted by the user" if n in quoted else ""
            numbered = any(word_form(v) != v for v in verbatim.get(n, []))
            said += "; served with new numbers in the words seen" if numbered and state == TRUSTED else ""
            return f"{n} ({seen} seen, {rewrites} rewritten{', freed' if freed else ''}{said}{typed})"
        text += "; served only for values the model copied verbatim: " + ", ".join(map(slot, rewritable))
    ranges = _ranges(entry) if rules.keep_to_ranges else None
    if ranges:
        def side(n: str, index: int) -> str:
            agreed = ranges[n][3 + index]
            return "open" if agreed >= rules.free_inputs_after else f"{agreed} of {rules.free_inputs_after}"
        text += "; numbers and dates kept to the range verified: " + ", ".join(
            f"{n} (beyond it: below {side(n, 0)}, above {side(n, 1)})" for n in sorted(ranges))
    if state == DEMOTED and entry.get("why"):
        text += f": {entry['why']}"
    if state == DEMOTED and entry.get("decided_by"):
        text += (f"; decided by {', '.join(entry['decided_by'])}: runs that share a value of it are learned "
                 "as a branch of their own")
    return text
