"""Read-side views of the tree for people: indexes, summaries, explanations.

Built on the backend's plain reads; nothing here writes. The CLI's `stats`,
`tree`, `show` and `explain` are thin printers over these functions, so the
questions they answer are testable with a temporary database and no CLI.
Messages are summarised generically (OpenAI, Anthropic, Gemini and Ollama
canonical shapes all keep text under `text`/`content` and name tools in
`tool_calls`, `tool_use` blocks or `functionCall` parts).
"""
from __future__ import annotations

import difflib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import trust, trust_ledger
from .lmdb_backend import LmdbBackend
from .model import Conversation, Hit, Message, Miss, NodeRecord, StoredReply
from .tree import ServePolicy

SLOT = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)(?: [+-]\d{1,3}d)?\s*\}\}")  # `{{today +1d}}`: a date offset
# Misses are counted per namespace, API and model (the proxy adds to them in
# batches, like hits); a miss may have no node to hang on (a new context).
MISSES_TABLE = "misses"
# Induction jobs a proxy skipped (addon/induction_queue.py): {"n": count} per
# kind, `coalesced` and `dropped`.
INDUCTION_SKIPS_TABLE = "induction-skips"


def miss_key(namespace: str, context: dict) -> bytes:
    return "\x00".join((namespace, str(context.get("api", "?")), str(context.get("model", "?")))).encode("utf-8")


# -- the whole tree in memory ----------------------------------------------------

@dataclass
class TreeIndex:
    """Every node, its children, replies and hit statistics, by id."""

    nodes: dict[bytes, NodeRecord] = field(default_factory=dict)
    children: dict[bytes, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    replies: dict[bytes, list[StoredReply]] = field(default_factory=lambda: defaultdict(list))
    stats: dict[bytes, dict] = field(default_factory=dict)
    misses: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (namespace, api, model) -> {n, last}
    _root_of: dict[bytes, bytes] = field(default_factory=dict)

    def roots(self) -> list[NodeRecord]:
        roots = [n for n in self.nodes.values() if n.kind == "root"]
        return sorted(roots, key=lambda n: (n.namespace, str(n.content.get("model")), n.node_id))

    def root_of(self, node_id: bytes) -> bytes | None:
        """The root above a node (memoised; a broken chain gives None)."""
        seen: list[bytes] = []
        current: bytes | None = node_id
        while current is not None and current not in self._root_of:
            node = self.nodes.get(current)
            if node is None:
                current = None
                break
            seen.append(current)
            if node.parent is None:
                self._root_of[current] = current
                break
            current = node.parent
        found = self._root_of.get(current) if current is not None else None
        for n in seen:
            if found is not None:
                self._root_of[n] = found
        return found

    def path_to(self, node_id: bytes) -> list[NodeRecord]:
        """Root first, ending at `node_id`."""
        path: list[NodeRecord] = []
        current: bytes | None = node_id
        while current is not None and current in self.nodes and len(path) < 100_000:
            node = self.nodes[current]
            path.append(node)
            current = node.parent
        return path[::-1]

    def hits(self, node_id: bytes) -> int:
        return int(self.stats.get(node_id, {}).get("hits", 0))

    def kids(self, node_id: bytes) -> list[NodeRecord]:
        found = [self.nodes[c] for c in self.children.get(node_id, ()) if c in self.nodes]
        return sorted(found, key=lambda n: (n.kind != "message", n.created, n.node_id))


def load_index(backend: LmdbBackend) -> TreeIndex:
    index = TreeIndex()
    for node in backend.iter_nodes():
        index.nodes[node.node_id] = node
        if node.parent is not None:
            index.children[node.parent].append(node.node_id)
    for node_id, reply in backend.iter_replies():
        index.replies[node_id].append(reply)
    for node_id, raw in backend.iter_raw("stats"):
        index.stats[node_id] = raw
    for key, raw in backend.iter_aux(MISSES_TABLE):
        parts = key.decode("utf-8", "replace").split("\x00")
        if len(parts) == 3 and isinstance(raw, dict):
            index.misses[(parts[0], parts[1], parts[2])] = raw
    return index


# -- messages for people -----------------------------------------------------------

def _parts(message: Message) -> list[dict]:
    out: list[dict] = []
    for key in ("content", "parts"):
        value = message.get(key)
        if isinstance(value, list):
            out.extend(p for p in value if isinstance(p, dict))
    return out


def tool_calls_of(message: Message) -> list[tuple[str, Any]]:
    """(tool name, arguments) for every tool call a message makes."""
    calls: list[tuple[str, Any]] = []
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict):
            fn = call.get("function") if isinstance(call.get("function"), dict) else call
            calls.append((str(fn.get("name", "?")), fn.get("arguments", fn.get("input"))))
    if message.get("type") in ("function_call", "custom_tool_call"):  # a Responses item
        calls.append((str(message.get("name", "?")), message.get("arguments", message.get("input"))))
    for part in _parts(message):
        if part.get("type") == "tool_use":
            calls.append((str(part.get("name", "?")), part.get("input")))
        if isinstance(part.get("functionCall"), dict):
            calls.append((str(part["functionCall"].get("name", "?")), part["functionCall"].get("args")))
    return calls


def text_of(message: Message) -> str:
    """The readable text of a message: its text parts, else its tool result."""
    texts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    output = message.get("output")  # a Responses function_call_output item
    if isinstance(output, str):
        texts.append(output)
    elif isinstance(output, list):
        texts.append(text_of({"content": output}))
    for part in _parts(message):
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "tool_result":
            inner = part.get("content")
            texts.append(inner if isinstance(inner, str) else text_of({"content": inner}) if isinstance(inner, list)
                         else json.dumps(inner, ensure_ascii=False))
        elif isinstance(part.get("functionResponse"), dict):
            texts.append(json.dumps(part["functionResponse"].get("response"), ensure_ascii=False))
    return " ".join(t for t in texts if t)


def role_of(message: Message) -> str:
    role = message.get("role")
    if role is None and isinstance(message.get("type"), str):
        role = message["type"]  # Responses API items
    return str(role or "?")


def _args_brief(arguments: Any) -> str:
    if isinstance(arguments, dict):
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                         for k, v in arguments.items())
    if arguments is None:
        return ""
    return str(arguments)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def summarise(message: Message, width: int = 60) -> str:
    """`role: first words → tool(args)`, on one line."""
    role = role_of(message)
    pieces = []
    text = text_of(message)
    if text:
        pieces.append(f'"{_clip(text, width)}"')
    for name, arguments in tool_calls_of(message):
        pieces.append(f"→ {name}({_clip(_args_brief(arguments), max(width // 2, 10))})")
    ref = message.get("tool_call_ref") or message.get("tool_call_id") or message.get("call")  # `call`: Responses
    label = f"{role}[{ref}]" if ref else role
    return f"{label}: {' '.join(pieces)}" if pieces else label


def tool_names(context: dict) -> list[str]:
    """The names of the tools a root's context offers (every wire format's shape)."""
    tools = (context.get("params") or {}).get("tools") or context.get("tools") or []
    names = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        declarations = tool.get("functionDeclarations")
        if isinstance(declarations, list):  # Gemini: one tool entry holds every function
            names += [str(d.get("name", "?")) for d in declarations if isinstance(d, dict)]
            continue
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        # A built-in tool names itself by type (Responses, Anthropic) or by its only key (Gemini's googleSearch).
        only_key = next(iter(tool)) if len(tool) == 1 else None
        names.append(str(fn.get("name") or tool.get("type") or only_key or "?"))
    return names


def summarise_context(context: dict) -> str:
    """A root's context on one line: api, model, server, tool names, parameters."""
    params = dict(context.get("params") or {})
    params.pop("tools", None)
    names = tool_names(context)
    bits = [str(context.get("api", "?")), str(context.get("model", "?"))]
    if context.get("upstream"):
        bits.append(f"at {context['upstream']}")
    if names:
        bits.append("tools: " + ", ".join(n for n in names if n))
    rest = {k: v for k, v in params.items() if k not in ("tools",)}
    if rest:
        bits.append(_clip(json.dumps(rest, ensure_ascii=False, sort_keys=True), 60))
    return "  ".join(bits)


def slots_of(content: Any) -> list[str]:
    """Template placeholder names (`{{name}}`) anywhere in a node's content."""
    found: list[str] = []
    for match in SLOT.finditer(json.dumps(content, ensure_ascii=False)):
        if match.group(1) not in found:
            found.append(match.group(1))
    return found


def unmark(value: Any) -> Any:
    """A template message with its markers shown as `{{slot}}` text, for reading."""
    if isinstance(value, dict):
        marker = value.get("$butter")
        if marker in ("text", "dates"):  # "dates": a reply text with a date offset, `{{today +1d}}`
            return value.get("t", "")
        if marker == "number":
            return "{{" + str(value.get("slot")) + "}}"
        if marker == "json":
            return json.dumps(unmark(value.get("value")), ensure_ascii=False)
        if marker == "any":  # structured data free to vary
            return f"<any {value.get('shape') or value.get('kind')}>"
        if marker == "opt":
            return unmark(value.get("value"))
        if marker == "list":
            items = [unmark(v) for v in value.get("head") or []]
            return items + ([unmark(value["item"]), "..."] if value.get("item") is not None else [])
        if marker == "keys":  # an object keyed by values: `{"{{user_id}}": [...]}`
            return {unmark(k) if isinstance(k, dict) else k: unmark(v) for k, v in value.get("fields") or []}
        return {(k + "?" if isinstance(v, dict) and v.get("$butter") == "opt" else k): unmark(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [unmark(v) for v in value]
    return value


def message_of(node: NodeRecord) -> Message:
    """The message a node stands for (a template's with readable slots)."""
    if node.kind == "template" and isinstance(node.content.get("message"), dict):
        return unmark(node.content["message"])
    return node.content


def node_slots(node: NodeRecord) -> list[str]:
    if node.kind == "template" and isinstance(node.content.get("slots"), dict):
        return sorted(node.content["slots"])
    return slots_of(node.content) if node.kind == "template" else []


def node_summary(node: NodeRecord, width: int = 60) -> str:
    if node.kind == "root":
        return summarise_context(node.content)
    text = summarise(message_of(node), width)
    slots = node_slots(node)
    shapes = node.content.get("slots") if node.kind == "template" else None
    if isinstance(shapes, dict):
        return f"{text}  slots: " + ", ".join(f"{name} ({shapes[name]})" for name in slots) if slots else text
    return f"{text}  slots: {', '.join(slots)}" if slots else text


def matches_text(node: NodeRecord, needle: str) -> bool:
    return needle.lower() in json.dumps(node.content, ensure_ascii=False).lower()


# -- one node in full (`butter show`, the web view) -------------------------------------

def node_detail(backend: LmdbBackend, node_id: bytes, policy: ServePolicy = ServePolicy()
                ) -> tuple[dict, list[NodeRecord], list[StoredReply], list[tuple[bytes, str, NodeRecord | None]]]:
    """A node's path (root first), replies, statistics and children, as a JSON-able dict
    plus the records it was built from. One read transaction."""
    with backend.snapshot() as snap:
        node = snap.node(node_id)
        if node is None:
            raise LookupError(f"no node {node_id.hex()}")
        path = [node]
        while path[0].parent is not None:
            parent = snap.node(path[0].parent)
            if parent is None:
                break
            path.insert(0, parent)
        replies = snap.replies(node_id)
        children = [(cid, kind, snap.node(cid)) for cid, kind in snap.children_of(node_id)]
        stats = snap.stats(node_id)
    templated = any(n.kind == "template" for n in path)
    # A template reply's trust (store/trust.py); an exact reply has none.
    trusts = {r.reply_id: trust_ledger.read(backend, node_id, r.reply_id) for r in replies} if templated else {}
    root = path[0] if path[0].kind == "root" else None
    chosen = policy.choose(replies)
    data = {
        "id": node_id.hex(), "kind": node.kind, "depth": node.depth, "created": node.created,
        "namespace": root.namespace if root else None,
        "context": root.content if root else None,
        "path": [{"id": n.node_id.hex(), "kind": n.kind, "depth": n.depth, "slots": node_slots(n),
                  "content": n.content} for n in path if n.kind != "root"],
        "replies": [{"id": r.reply_id.hex(), "count": r.count, "first_seen": r.first_seen, "last_seen": r.last_seen,
                     "streamed": r.streamed, "score": r.score, "bad": r.bad, "served": chosen is r,
                     "tokens": tokens_of(r.reply), "reply": r.reply,
                     "trust": ({"state": (trusts.get(r.reply_id) or {}).get("state", trust.PROBATION),
                                "entry": trusts.get(r.reply_id), "summary": trust.describe(trusts.get(r.reply_id))}
                               if templated else None)} for r in replies],
        "stats": {"hits": int(stats.get("hits", 0)), "last_hit": stats.get("last_hit"),
                  "tokens_saved": int(stats.get("hits", 0)) * (tokens_of(chosen.reply) if chosen else 0)},
        "children": [{"id": cid.hex(), "kind": kind, "summary": node_summary(c) if c else "?"}
                     for cid, kind, c in children],
    }
    return data, path, replies, children


# -- statistics ---------------------------------------------------------------------

def tokens_of(reply: dict) -> int:
    """Total tokens a reply cost, whatever the provider calls them."""
    usage = reply.get("usage") or reply.get("usageMetadata") or {}
    if isinstance(usage, dict) and usage:
        if isinstance(usage.get("total_tokens"), int):
            return usage["total_tokens"]
        if isinstance(usage.get("totalTokenCount"), int):
            return usage["totalTokenCount"]
        pairs = (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens"),
                 ("promptTokenCount", "candidatesTokenCount"))
        for a, b in pairs:
            if isinstance(usage.get(a), int) or isinstance(usage.get(b), int):
                return int(usage.get(a) or 0) + int(usage.get(b) or 0)
    if isinstance(reply.get("prompt_eval_count"), int) or isinstance(reply.get("eval_count"), int):  # Ollama
        return int(reply.get("prompt_eval_count") or 0) + int(reply.get("eval_count") or 0)
    return 0


def served_reply(replies: Iterable[StoredReply], policy: ServePolicy = ServePolicy()) -> StoredReply | None:
    """The reply the serving rule picks, else the most observed one (for display)."""
    replies = list(replies)
    return policy.choose(replies) or (max(replies, key=lambda r: (r.count, r.reply_id)) if replies else None)


def stats_rows(index: TreeIndex) -> list[dict]:
    """One row per (namespace, api, model): counts, hits, savings."""
    rows: dict[tuple[str, str, str], dict] = {}

    def row_for(key: tuple[str, str, str]) -> dict:
        return rows.setdefault(key, {"namespace": key[0], "api": key[1], "model": key[2], "roots": 0, "nodes": 0,
                                     "templates": 0, "replies": 0, "observations": 0, "hits": 0, "misses": 0,
                                     "tokens_saved": 0, "last_hit": 0.0})

    on_template_path: dict[bytes, bool] = {}

    def learned(node_id: bytes) -> bool:
        """Is this node a template or below one (made by induction, not by a provider's answer)?"""
        walked: list[bytes] = []
        current: bytes | None = node_id
        found = False
        while current is not None and current not in on_template_path:
            node = index.nodes.get(current)
            if node is None:
                break
            walked.append(current)
            if node.kind == "template":
                found = True
                break
            current = node.parent
        else:
            found = on_template_path.get(current, False) if current is not None else False
        for n in walked:
            on_template_path[n] = found
        return found

    for node in index.nodes.values():
        root_id_ = index.root_of(node.node_id)
        root = index.nodes.get(root_id_) if root_id_ else None
        key = (root.namespace, str(root.content.get("api", "?")), str(root.content.get("model", "?"))) if root \
            else ("?", "?", "?")
        row = row_for(key)
        row["nodes"] += 1
        row["roots"] += node.kind == "root"
        row["templates"] += node.kind == "template"
        replies = index.replies.get(node.node_id, [])
        row["replies"] += len(replies)
        if not learned(node.node_id):
            # A reply on a template's path counts the runs it was learned from, each already counted at its own node.
            row["observations"] += sum(r.count for r in replies)
        hits = index.hits(node.node_id)
        row["hits"] += hits
        row["last_hit"] = max(row["last_hit"], float(index.stats.get(node.node_id, {}).get("last_hit", 0) or 0))
        chosen = served_reply(replies)
        if hits and chosen is not None:
            row["tokens_saved"] += hits * tokens_of(chosen.reply)
    for key, counted in index.misses.items():
        # A namespace that only ever missed (or was cleared) still shows its misses.
        row_for(key)["misses"] += int(counted.get("n", 0))
    for row in rows.values():
        # Every hit is a provider call that did not happen.
        row["provider_calls_saved"] = row["hits"]
    return sorted(rows.values(), key=lambda r: (r["namespace"], r["api"], r["model"]))


# -- explain: why a request would miss -----------------------------------------------

def _json_container(value: Any) -> Any:
    """A string holding a JSON object or array, parsed; else None."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, (dict, list)) else None
    return None


def expand_json_strings(value: Any) -> Any:
    """Tool results and arguments that are JSON text, opened up so a diff shows fields."""
    inner = _json_container(value)
    if inner is not None:
        return expand_json_strings(inner)
    if isinstance(value, dict):
        return {k: expand_json_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_json_strings(v) for v in value]
    return value


def _pretty(value: Any) -> list[str]:
    return json.dumps(expand_json_strings(value), indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def diff_lines(old: Any, new: Any, old_label: str = "recorded", new_label: str = "request") -> list[str]:
    return list(difflib.unified_diff(_pretty(old), _pretty(new), old_label, new_label, n=2, lineterm=""))


def similarity(a: Any, b: Any) -> float:
    sa = json.dumps(a, sort_keys=True, ensure_ascii=False)
    sb = json.dumps(b, sort_keys=True, ensure_ascii=False)
    return difflib.SequenceMatcher(None, sa, sb, autojunk=False).ratio()


def first_difference(old: Any, new: Any, where: str = "") -> str | None:
    """A JSON path to the first place two values differ, e.g. `content[0].text`
    (or `content[0].text{}.amount` inside a string that holds JSON)."""
    old_inner, new_inner = _json_container(old), _json_container(new)
    if old_inner is not None and new_inner is not None:
        return first_difference(old_inner, new_inner, f"{where}{{}}")
    if type(old) is not type(new):
        return where or "(whole value)"
    if isinstance(old, dict):
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                return _join(where, key)
            found = first_difference(old[key], new[key], _join(where, key))
            if found:
                return found
        return None
    if isinstance(old, list):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return f"{where}[{min(len(old), len(new))}]" if len(old) != len(new) else None
    return None if old == new else (where or "(whole value)")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


@dataclass
class Explanation:
    hit: bool
    namespace: str
    reason: str
    detail: str
    matched: int  # messages matched below the root; -1: no root
    total: int  # messages in the request
    node: bytes | None  # the hit node or the deepest node reached
    path: list[bytes] = field(default_factory=list)
    differing_message: Message | None = None
    nearest: list[dict] = field(default_factory=list)  # siblings: id, summary, similarity, first_difference, diff
    replies: list[dict] = field(default_factory=list)  # at the node, with why each is (not) served
    templates: list[dict] = field(default_factory=list)  # template children tried and what failed
    # For a new context: other namespaces that hold exactly this context.
    other_namespaces: list[str] = field(default_factory=list)


def explain(backend: LmdbBackend, namespace: str, conversation: Conversation,
            outcome: Hit | Miss, policy: ServePolicy = ServePolicy(), *,
            template_explainer: Any = None, max_siblings: int = 3) -> Explanation:
    """Turn a lookup outcome into what a person needs to see.

    `template_explainer(template_content, message, bindings) -> str` names
    the slot or literal that kept a template from matching (default: the
    one `store.templates` provides, when it is there).
    """
    messages = conversation.messages
    if isinstance(outcome, Hit):
        return Explanation(True, namespace, "hit", "every message matched and a servable reply is recorded",
                           len(messages), len(messages), outcome.node_id, list(outcome.path))
    out = Explanation(False, namespace, outcome.reason, outcome.detail, outcome.matched, len(messages),
                      outcome.deepest, list(outcome.path))
    with backend.snapshot() as snap:
        if outcome.deepest is None:
            # No root: compare with the recorded contexts of this namespace.
            candidates = []
            for node in backend.iter_nodes():
                if node.kind != "root":
                    continue
                if node.namespace == namespace:
                    candidates.append(node)
                elif node.content == conversation.context and node.namespace not in out.other_namespaces:
                    out.other_namespaces.append(node.namespace)
            scored = sorted(candidates, key=lambda n: -similarity(n.content, conversation.context))
            for node in scored[:max_siblings]:
                out.nearest.append({"node": node.node_id, "summary": summarise_context(node.content),
                                    "similarity": round(similarity(node.content, conversation.context), 3),
                                    "first_difference": first_difference(node.content, conversation.context),
                                    "diff": diff_lines(node.content, conversation.context)})
            if not candidates:
                out.detail += "; this namespace has no recordings at all (another credential or namespace?)"
            return out
        if outcome.matched >= len(messages):
            for reply in snap.replies(outcome.deepest):
                why = ("marked bad" if reply.bad else
                       f"seen {reply.count} time(s), needs {policy.min_observations}"
                       if reply.count < policy.min_observations else "servable")
                out.replies.append({"reply": reply.reply_id, "count": reply.count, "bad": reply.bad,
                                    "score": reply.score, "why": why})
            return out
        message = messages[outcome.matched]
        out.differing_message = message
        bindings = _bindings_along(snap, outcome.path, messages)
        if template_explainer is None:
            template_explainer = _default_template_explainer()
        siblings = []
        for cid, kind in snap.children_of(outcome.deepest):
            node = snap.node(cid)
            if node is None:
                continue
            if kind == "template":
                failed = template_explainer(node.content, message, bindings) if template_explainer else None
                out.templates.append({"node": cid, "summary": node_summary(node), "slots": node_slots(node),
                                      "failed": failed or "the message does not fit this template"})
            siblings.append(node)
        scored = sorted(siblings, key=lambda n: -similarity(message_of(n), message))
        for node in scored[:max_siblings]:
            recorded = message_of(node)
            out.nearest.append({"node": node.node_id, "kind": node.kind, "summary": node_summary(node),
                                "similarity": round(similarity(recorded, message), 3),
                                "first_difference": first_difference(recorded, message),
                                "diff": diff_lines(recorded, message)})
    return out


def _default_template_explainer() -> Any:
    try:
        from . import templates
    except ImportError:  # templates not part of this build
        return None
    return getattr(templates, "explain_mismatch", None)


def _bindings_along(snap: Any, path: Iterable[bytes], messages: tuple[Message, ...]) -> dict:
    """The bindings the walk had made by the deepest node (templates on the path)."""
    bindings: dict = {}
    try:
        from . import templates
    except ImportError:
        return bindings
    for depth, node_id in enumerate(list(path)[1:]):
        node = snap.node(node_id)
        if node is not None and node.kind == "template" and depth < len(messages):
            bindings = templates.match_message(node.content, messages[depth], bindings) or bindings
    return bindings


def induction_skips(backend: LmdbBackend) -> dict[str, int]:
    """Induction jobs skipped by proxies, by kind (coalesced, dropped)."""
    return {key.decode(): raw.get("n", 0) for key, raw in backend.iter_aux(INDUCTION_SKIPS_TABLE)}
