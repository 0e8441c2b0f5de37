"""Which template children of a node a concrete message could match (sans-IO).

A lookup that leaves the exact path tries a node's template children one by
one with `templates.match_message`, and most of them fail. `TemplateSet`
holds one node's template children with an index built once, so a message is
matched only against templates it passes a cheap necessary test for.

Each template gets one *probe*, a fact every message it matches must have,
read from the marker format documented in store/templates.py and nothing
else:

- `eq`: a literal string outside any marker (a role, a tool name, a content
  part's type) must be the message's string at the same path, and a text
  marker without placeholders must equal it whole;
- `head` / `tail`: a text marker's first (last) literal must start (end) the
  message's string at that path.

Heads and tails are keyed by their first (last) `KEY_CHARS` characters, or
whole when shorter, so every probe is one dict look-up. A template whose
content offers no probe (one slot is the whole string, everything varies
inside a JSON marker, an unknown marker) is always a candidate. Per template
the rarest probe among its siblings is chosen. The test is only ever
necessary, never sufficient: the index may propose a template that then
fails to match, never hide one that would match. Candidates keep the
children's order, so the walk tries them in the same order as without it.

Agents resend the same conversation prefix turn after turn, so the walk asks
the same node about the same message again and again: given the message's
memo text (store/tree.py, the message's exact serialisation), a set answers
a message it has seen from memory (at most `MEMO_SIZE` per set).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from .model import Message, NodeRecord
from .templates import MARK, parse_text

KEY_CHARS = 24
MEMO_SIZE = 256
MIN_INDEXED = 2  # with one template, matching it costs about what a probe does

Path = tuple[str | int, ...]
# (path, kind, key length): one look-up in the message per group.
Group = tuple[Path, str, int]
_ABSENT = object()


def probes(content: Any) -> list[tuple[Group, str]]:
    """Every (group, key) fact a message must have to match this template content."""
    message = content.get("message", _ABSENT) if isinstance(content, dict) else _ABSENT
    if message is _ABSENT:
        return []
    return list(_probes(message, ()))


def _probes(t: Any, path: Path) -> Iterator[tuple[Group, str]]:
    if type(t) is str:
        yield (path, "eq", 0), t
    elif type(t) is dict:
        kind = t.get(MARK)
        if kind is None:
            for key, value in t.items():
                if type(key) is str:
                    yield from _probes(value, path + (key,))
        elif kind == "text" and type(t.get("t")) is str:
            parts = parse_text(t["t"])
            if len(parts) == 1:
                yield (path, "eq", 0), parts[0]
                return
            head, tail = parts[0], parts[-1]
            if head:
                n = min(len(head), KEY_CHARS)
                yield (path, "head", n), head[:n]
            if tail:
                n = min(len(tail), KEY_CHARS)
                yield (path, "tail", n), tail[-n:]
        # number and json markers, and any marker this version does not know:
        # no probe from inside them (a JSON marker's constraints apply to the
        # parsed string, which is too dear to parse just to filter).
    elif type(t) is list:
        for i, value in enumerate(t):
            yield from _probes(value, path + (i,))


def _at(message: Any, path: Path) -> Any:
    for step in path:
        if type(step) is str:
            if type(message) is not dict:
                return _ABSENT
            message = message.get(step, _ABSENT)
            if message is _ABSENT:
                return _ABSENT
        else:
            if type(message) is not list or step >= len(message):
                return _ABSENT
            message = message[step]
    return message


class TemplateSet:
    """One node's template children (in stored order) and their probe index."""

    __slots__ = ("templates", "_always", "_groups", "_seen")

    def __init__(self, templates: Sequence[NodeRecord]):
        self.templates: list[NodeRecord] = list(templates)
        self._seen: dict[bytes, list[NodeRecord]] = {}
        self._always: list[int] = []
        # group -> key -> indices of the templates whose probe it is
        self._groups: dict[Group, dict[str, list[int]]] = {}
        if len(self.templates) < MIN_INDEXED:
            self._always = list(range(len(self.templates)))
            return
        facts = [list(dict.fromkeys(probes(t.content))) for t in self.templates]
        sharing: dict[tuple[Group, str], int] = {}
        for fs in facts:
            for fact in fs:
                sharing[fact] = sharing.get(fact, 0) + 1
        for i, fs in enumerate(facts):
            if not fs:
                self._always.append(i)
                continue
            # The rarest fact among the siblings; a longer key breaks ties.
            group, key = min(fs, key=lambda f: (sharing[f], -len(f[1])))
            self._groups.setdefault(group, {}).setdefault(key, []).append(i)

    def candidates(self, message: Message, text: bytes | None = None) -> list[NodeRecord]:
        """The templates `message` passes the probe of, in stored order;
        `text`, the message's memo text, lets a message seen before be answered from memory."""
        if not self._groups:
            return self.templates
        if text is not None:
            found = self._seen.get(text)
            if found is None:
                found = self._seen[text] = self.candidates(message)
                if len(self._seen) > MEMO_SIZE:
                    self._seen.clear()
            return found
        found = list(self._always)
        for (path, kind, n), buckets in self._groups.items():
            value = _at(message, path)
            if type(value) is not str:
                continue  # every probe wants a string there: none of these can match
            if kind == "eq":
                hit = buckets.get(value)
            elif len(value) < n:
                continue
            elif kind == "head":
                hit = buckets.get(value[:n])
            else:
                hit = buckets.get(value[len(value) - n:])
            if hit:
                found += hit
        if len(found) > 1:
            found.sort()
        return [self.templates[i] for i in found]
