"""The conversation tree, sans-IO: ids, the lookup walk and record plans.

A root per context, a node per canonical message. Node ids are content
addresses (parent id + canonical message), so the same conversation computes
the same ids in every process and inserts are idempotent: two proxies that
record the same prefix write the same keys.

`lookup` reads through a `TreeReader` (the LMDB backend in production, a dict
in unit tests) and returns a decision; `plan_record` returns the writes a
miss needs. Neither does any I/O of its own.
"""
from __future__ import annotations

import marshal
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Protocol

from .agreement import answer_id
from .canonical import canonical_json, digest
from .model import Conversation, Hit, Message, Miss, NodeRecord, StoredReply


class IdMemo:
    """Node ids already computed, keyed on a cheaper form of the same value.

    Every lookup hashes the context (tools included) and every message again,
    and agents resend the same prefix turn after turn. The key is the value's
    `marshal` bytes (`_memo_text`), several times cheaper than any JSON text
    of it (`canonical_json` costs more still). It is sound: marshal's
    bytes load back into an equal value of the same types (`1`, `1.0` and
    `True` apart, key order kept), and the canonical bytes are a function of
    that value, so one key never maps to two ids. Equal values may still get
    two keys (key order, `0` and `0.0`, objects shared or not): a memo miss,
    never a wrong id. Bounded by entries and by key bytes, oldest out first.

    The same class remembers template matches (`_MATCHES`, see `_matched`).
    """

    def __init__(self, max_entries: int = 4096, max_chars: int = 8_000_000) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._ids: dict[tuple, tuple[Any, int]] = {}
        self._chars = 0
        self._lock = threading.Lock()  # the writer thread computes ids too

    def get(self, key: tuple) -> Any:
        found = self._ids.get(key)
        return found[0] if found is not None else None

    def put(self, key: tuple, node_id: Any, chars: int) -> None:
        if chars > self.max_chars // 16:
            return  # a huge value would evict everything else
        entry = (node_id, chars)
        with self._lock:
            # One hash of the key, not two: a template match's key holds the bindings so far.
            if self._ids.setdefault(key, entry) is not entry:
                return  # known already
            self._chars += chars
            while len(self._ids) > self.max_entries or self._chars > self.max_chars:
                oldest = next(iter(self._ids))
                self._chars -= self._ids.pop(oldest)[1]

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()
            self._chars = 0


_IDS = IdMemo()


def _memo_text(value: Any) -> bytes | None:
    """The memo key of a JSON value (see IdMemo); None when it has none.

    marshal copies strings as they are where JSON escapes them character by
    character, and it is the ~10 keys a hit computes that make it matter.
    It refuses anything but the exact builtin types (ValueError): such a
    value is simply not memoised, and canonical_json decides as before.
    """
    try:
        return marshal.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return None


def root_id(namespace: str, context: dict) -> bytes:
    text = _memo_text(context)
    key = ("root", namespace, text)
    found = _IDS.get(key) if text is not None else None
    if found is None:
        found = digest(b"root", namespace.encode("utf-8"), canonical_json(context))
        if text is not None:
            _IDS.put(key, found, len(text))
    return found


def child_id(parent: bytes, message: Message) -> bytes:
    return _child_id(parent, message, _memo_text(message))


def _child_id(parent: bytes, message: Message, text: bytes | None) -> bytes:
    key = ("node", parent, text)
    found = _IDS.get(key) if text is not None else None
    if found is None:
        found = digest(b"node", parent, canonical_json(message))
        if text is not None:
            _IDS.put(key, found, len(text))
    return found


_MATCHES = IdMemo()
_NO_MATCH: dict = {}  # a remembered "does not fit" (the memo's own None means "not known")


def _matched(matcher: "TemplateMatcher", template: NodeRecord, message: Message, text: bytes | None,
             bindings: dict) -> dict | None:
    """`matcher(template.content, message, bindings)`, remembered per process.

    Agents resend the same prefix turn after turn, so a walk meets the same
    message at the same template again and again. The key fixes every input
    of the match: the matcher; the template node's id, a content address
    (contents that share an id differ at most in `1` against `1.0` in a
    literal, which matching compares canonically anyway); the message's memo
    text, which tells `1` from `1.0` where a number slot would bind either;
    and the bindings so far. The dict remembered is never changed: the walk
    only reads bindings and copies them into a Hit.
    """
    if text is None:
        return matcher(template.content, message, bindings)
    key = ("match", matcher, template.node_id, text, tuple(bindings.items()))
    try:
        found = _MATCHES.get(key)
    except TypeError:  # a binding value that cannot be a key: match every time
        return matcher(template.content, message, bindings)
    if found is None:
        found = matcher(template.content, message, bindings)
        _MATCHES.put(key, _NO_MATCH if found is None else found, len(text))
        return found
    return None if found is _NO_MATCH else found


_FORGOTTEN = [0]  # how often forget_memos ran (see memo_epoch)


def forget_memos() -> None:
    """Drop the per-process node-id and template-match memos (for cold timings and tests)."""
    _IDS.clear()
    _MATCHES.clear()
    _FORGOTTEN[0] += 1


def memo_epoch() -> int:
    """Changes with every forget_memos: a memo of request values kept elsewhere
    (store/cache.py's judgements) starts over when it does, as these do."""
    return _FORGOTTEN[0]


class TreeReader(Protocol):
    def has_node(self, node_id: bytes) -> bool: ...
    def replies(self, node_id: bytes) -> list[StoredReply]: ...
    def template_children(self, node_id: bytes) -> list[NodeRecord]: ...
    # Optional: `template_candidates(node_id, message, text)`, the template children
    # in the same order minus some that cannot match `message` (an index);
    # without it every template child is tried. Optional too:
    # `may_have_exact_child(node_id)`, asked only of a node the walk reached
    # through a template; False lets the walk skip hashing the message.


@dataclass(frozen=True)
class ServePolicy:
    """What a reply needs before it is served. Every rule leans to missing."""

    min_observations: int = 1
    # For a reply reached through a template: None counts observations as
    # above; with verification on, 1 (the template's trust counts verified
    # agreements instead, store/trust.py).
    template_min_observations: int | None = None

    def choose(self, replies: Iterable[StoredReply], templated: bool = False) -> StoredReply | None:
        least = self._least(templated)
        eligible = [r for r in replies if not r.bad and r.count >= least]
        if not eligible:
            return None
        # Reputation first, then agreement, then recency; the id breaks ties so
        # two processes choose the same reply.
        return max(eligible, key=lambda r: (r.score, r.count, r.last_seen, r.reply_id))

    def _least(self, templated: bool) -> int:
        if templated and self.template_min_observations is not None:
            return self.template_min_observations
        return self.min_observations

    def why_not(self, replies: Iterable[StoredReply], templated: bool = False) -> str:
        """Why `choose` found nothing, for a miss's explanation."""
        replies = list(replies)
        if not replies:
            return "no reply is recorded here"
        good = [r for r in replies if not r.bad]
        if not good:
            return "every reply here is marked bad (feedback, or a template demoted by a verification)"
        most = max(r.count for r in good)
        return (f"the reply here has {most} of the {self._least(templated)} agreeing observations "
                "butter_min_observations asks for")


# A template matcher: (template message, concrete message, bindings so far)
# -> the bindings extended, or None when the message does not fit.
TemplateMatcher = Callable[[Message, Message, dict], "dict | None"]
# A template explainer: the same arguments -> which literal or slot failed.
TemplateExplainer = Callable[[Message, Message, dict], str]


def lookup(
    conversation: Conversation,
    namespace: str,
    reader: TreeReader,
    policy: ServePolicy = ServePolicy(),
    match_template: TemplateMatcher | None = None,
    bindings: dict | None = None,
    explain_template: TemplateExplainer | None = None,
    accept: Callable[[Hit], bool] | None = None,
) -> Hit | Miss:
    """Walk the request's messages from its root: a hit only if all match.

    `accept` judges a hit reached through templates: one it refuses (a
    template on probation) is kept aside while the walk looks on for another
    (an older template that matches too and is trusted); it is returned only
    if none is accepted.

    At each step the exact child is tried first, then the template children of
    that node (when a matcher is given). The walk backtracks into templates
    only as far as it must, and the deepest point reached is kept so a miss
    can say where it left the tree. `bindings` are values the client declared
    (Butter-Bindings): every template slot of that name must agree with them.
    """
    root = root_id(namespace, conversation.context)
    if not reader.has_node(root):
        return Miss("new-context", -1, None, "no recording for this model, tools and parameters")
    messages = conversation.messages
    best_miss: list[Miss] = []
    # Where the deepest miss happened: its message, bindings and node (whose
    # template children explain it).
    best_templates: list[tuple[Message, dict, bytes]] = []
    refused: list[Hit] = []
    # The request's own exact path holds replies, none servable (marked bad, or short of
    # observations): what was recorded for this very request outranks any template's guess.
    recorded_unservable: list[bool] = []
    candidates = getattr(reader, "template_candidates", None)
    exact_possible = getattr(reader, "may_have_exact_child", None)

    def note_miss(depth: int, node: bytes, path: tuple[bytes, ...], reason: str, detail: str) -> None:
        if not best_miss or depth > best_miss[0].matched:
            best_miss[:] = [Miss(reason, depth, node, detail, path)]

    def steps(node: bytes, depth: int, bindings: dict, templated: bool) -> Iterator[tuple[bytes, dict, bool]]:
        """The children to try below `node`, in order: the exact one, then each
        template the message fits (matched only when the walk gets to it)."""
        message = messages[depth]
        text = texts[depth]
        if not templated or exact_possible is None or exact_possible(node):
            exact = _child_id(node, message, text)
            if reader.has_node(exact):
                yield exact, bindings, False
        if match_template is not None:
            templates = candidates(node, message, text) if candidates is not None else reader.template_children(node)
            for template in templates:
                extended = _matched(match_template, template, message, text, bindings)
                if extended is not None:
                    yield template.node_id, extended, True

    def arrive(node: bytes, depth: int, bindings: dict, path: tuple[bytes, ...], below: bool) -> Hit | None:
        """At the end of the messages: the node's reply, or a note of why not.

        `below`: some node on the path was reached through a template."""
        replies = reader.replies(node)
        chosen = policy.choose(replies, below)
        if chosen is None:
            if replies and not below:
                recorded_unservable.append(True)
            note_miss(depth, node, path, "no-reply", f"every message matched, but {policy.why_not(replies, below)}")
            return None
        if below and recorded_unservable:
            return None  # the exact path (tried first) said why not: its miss stands
        hit = Hit(node, chosen.reply, chosen.reply_id, dict(bindings), path, below)
        if below and accept is not None and not accept(hit):
            if not refused:
                refused.append(hit)  # kept aside: another template may match and be servable
            return None
        return hit

    def leave(node: bytes, depth: int, bindings: dict, path: tuple[bytes, ...]) -> None:
        """Every child of `node` was tried and none led to a hit."""
        message = messages[depth]
        if match_template is not None and (not best_miss or depth > best_miss[0].matched):
            best_templates[:] = [(message, bindings, node)]
        # Positions people read are 1-based ("message 1" is the first).
        note_miss(depth, node, path, "diverged", f"message {depth + 1} ({message.get('role', '?')}) is new at this point")

    # Depth-first with an explicit stack (a conversation of thousands of
    # messages must not meet Python's recursion limit): each frame is a node
    # on the current path with the iterator of its children still to try, so
    # the order of tries, the backtracking into templates and the notes of
    # the deepest miss are those of the plain recursive walk.
    texts = [_memo_text(m) for m in messages]  # once each, for the exact id and the template matches
    start = dict(bindings or {})
    hit: Hit | None = None
    if not messages:
        hit = arrive(root, 0, start, (root,), False)
    else:
        frames = [(root, 0, start, (root,), False, steps(root, 0, start, False))]
        while frames:
            node, depth, at, path, below, children = frames[-1]
            step = next(children, None)
            if step is None:
                frames.pop()
                leave(node, depth, at, path)
                continue
            child, extended, templated = step
            child_path, child_below = path + (child,), below or templated
            if depth + 1 == len(messages):
                hit = arrive(child, depth + 1, extended, child_path, child_below)
                if hit is not None:
                    break
                continue
            frames.append((child, depth + 1, extended, child_path, child_below,
                           steps(child, depth + 1, extended, templated)))
    if hit is not None:
        return hit
    if refused:
        return refused[0]
    miss = best_miss[0]
    if explain_template is not None and miss.reason == "diverged" and best_templates:
        message, at, node = best_templates[0]
        templates = reader.template_children(node)  # all of them: the index may have skipped the nearest
        if templates:
            nearest = templates[0]
            miss = replace(miss, template=nearest.node_id,
                           template_failure=explain_template(nearest.content, message, at))
    return miss


@dataclass(frozen=True)
class NodeWrite:
    node_id: bytes
    parent: bytes | None
    depth: int
    kind: str
    content: dict


def plan_record(conversation: Conversation, namespace: str) -> tuple[list[NodeWrite], bytes]:
    """Every node of the exact path and the id the reply attaches to.

    The backend writes them with no-overwrite puts, so the nodes a prefix
    already has cost one failed put each and the suffix is what gets added.
    """
    root = root_id(namespace, conversation.context)
    writes = [NodeWrite(root, None, 0, "root", conversation.context)]
    node = root
    for depth, message in enumerate(conversation.messages, start=1):
        nxt = child_id(node, message)
        writes.append(NodeWrite(nxt, node, depth, "message", message))
        node = nxt
    return writes, node


def reply_id(reply: dict) -> bytes:
    """The reply's id at its node: the same for every recording of one answer.

    Bookkeeping (`usage`, `system_fingerprint`, durations) is left out, so two
    identical answers from a real provider are one reply observed twice and
    can meet `butter_min_observations` (store/agreement.py).
    """
    return answer_id(reply)
