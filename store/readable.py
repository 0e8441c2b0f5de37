"""Messages and replies as blocks a page can draw, whatever the wire format.

A block is a plain dict with a `type`:

    text         {"text"}                       what a person or the model wrote
    thinking     {"text"}                       reasoning, shown collapsed
    tool_call    {"name", "arguments"}          arguments parsed when they are JSON text
    tool_result  {"ref"?, "name"?, "result"}    the result parsed when it is JSON text
    data         {"label", "value"}             anything else, as JSON (images, opaque blobs)

OpenAI Chat / Ollama messages (`content`, `tool_calls`, `reasoning…`),
Anthropic content blocks, Gemini parts, Responses items and each format's
canonical reply are all read here, so the web view needs one renderer.
Template messages arrive with their slots already shown as `{{name}}`
(store.inspect.message_of).
"""
from __future__ import annotations

import json
from typing import Any

Block = dict[str, Any]
THINKING_KEYS = ("reasoning_content", "reasoning", "thinking")
# Keys that are bookkeeping of a message, not something to read.
QUIET_KEYS = frozenset({"role", "content", "parts", "tool_calls", "tool_call_ref", "tool_call_id", "type", "name",
                        "id", "status", "refusal", "annotations", "audio", "function_call", *THINKING_KEYS})


def parsed(value: Any) -> Any:
    """JSON text opened up (tool arguments and results usually are); anything else as it is."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def message_blocks(message: Any) -> list[Block]:
    if not isinstance(message, dict):
        return [{"type": "data", "label": "value", "value": message}]
    blocks: list[Block] = []
    kind = message.get("type")
    if kind in ("function_call", "custom_tool_call"):  # Responses items
        return [{"type": "tool_call", "name": str(message.get("name", "?")),
                 "arguments": parsed(message.get("arguments", message.get("input")))}]
    if kind in ("function_call_output", "custom_tool_call_output"):
        return [{"type": "tool_result", "ref": message.get("call_id"), "result": parsed(message.get("output"))}]
    if kind == "reasoning":
        summary = " ".join(p.get("text", "") for p in message.get("summary") or [] if isinstance(p, dict))
        return [{"type": "thinking", "text": summary or "(encrypted reasoning)"}]
    for key in THINKING_KEYS:
        if isinstance(message.get(key), str) and message[key]:
            blocks.append({"type": "thinking", "text": message[key]})
    role = message.get("role")
    ref = message.get("tool_call_ref", message.get("tool_call_id"))  # a position: 0 is a ref
    content = message.get("content")
    if role == "tool" or (ref is not None and isinstance(content, str)):
        blocks.append({"type": "tool_result", "ref": ref, "name": message.get("name"), "result": parsed(content)})
    elif isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        blocks.extend(b for part in content for b in _part_blocks(part))
    if isinstance(message.get("parts"), list):  # Gemini
        blocks.extend(b for part in message["parts"] for b in _part_blocks(part))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        blocks.append({"type": "text", "text": "refused: " + message["refusal"]})
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict):
            fn = call.get("function") if isinstance(call.get("function"), dict) else call
            blocks.append({"type": "tool_call", "name": str(fn.get("name", "?")),
                           "arguments": parsed(fn.get("arguments", fn.get("input")))})
    rest = {k: v for k, v in message.items() if k not in QUIET_KEYS and v not in (None, "", [], {})}
    if rest:
        blocks.append({"type": "data", "label": "other fields", "value": rest})
    return blocks


def _part_blocks(part: Any) -> list[Block]:
    if isinstance(part, str):
        return [{"type": "text", "text": part}]
    if not isinstance(part, dict):
        return [{"type": "data", "label": "part", "value": part}]
    kind = part.get("type")
    if kind in ("thinking", "reasoning"):
        return [{"type": "thinking", "text": str(part.get("thinking") or part.get("text") or "")}]
    if kind == "redacted_thinking":
        return [{"type": "thinking", "text": "(redacted thinking)"}]
    if kind in ("tool_use", "server_tool_use"):
        return [{"type": "tool_call", "name": str(part.get("name", "?")), "arguments": parsed(part.get("input"))}]
    if kind == "tool_result" or (isinstance(kind, str) and kind.endswith("_tool_result")):
        inner = part.get("content")
        if isinstance(inner, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in inner):
            inner = "".join(p.get("text", "") for p in inner)
        return [{"type": "tool_result", "ref": part.get("tool_use_id"), "result": parsed(inner)}]
    if isinstance(part.get("functionCall"), dict):
        call = part["functionCall"]
        return [{"type": "tool_call", "name": str(call.get("name", "?")), "arguments": call.get("args")}]
    if isinstance(part.get("functionResponse"), dict):
        response = part["functionResponse"]
        return [{"type": "tool_result", "name": response.get("name"), "result": response.get("response")}]
    if isinstance(part.get("text"), str):
        if part.get("thought") is True:  # Gemini thought summaries
            return [{"type": "thinking", "text": part["text"]}]
        return [{"type": "text", "text": part["text"]}]
    return [{"type": "data", "label": str(kind or "part"), "value": part}]


def reply_blocks(reply: Any) -> list[Block]:
    """A canonical reply (each format keeps the provider's own response shape) as blocks."""
    if not isinstance(reply, dict):
        return [{"type": "data", "label": "reply", "value": reply}]
    blocks: list[Block] = []
    if isinstance(reply.get("choices"), list):  # OpenAI Chat and compatible servers
        many = len(reply["choices"]) > 1
        for i, choice in enumerate(reply["choices"]):
            if many:
                blocks.append({"type": "data", "label": f"choice {i}", "value": choice.get("finish_reason")})
            blocks.extend(message_blocks(choice.get("message") or {}))
        return blocks
    if isinstance(reply.get("candidates"), list):  # Gemini
        for candidate in reply["candidates"]:
            blocks.extend(message_blocks((candidate or {}).get("content") or {}))
        return blocks
    if isinstance(reply.get("output"), list):  # Responses
        for item in reply["output"]:
            blocks.extend(message_blocks(item) if not (isinstance(item, dict) and item.get("type") == "message")
                          else message_blocks({"content": item.get("content")}))
        return blocks
    if isinstance(reply.get("message"), dict):  # Ollama
        return message_blocks(reply["message"])
    if isinstance(reply.get("content"), list):  # Anthropic
        return [b for part in reply["content"] for b in _part_blocks(part)]
    return [{"type": "data", "label": "reply", "value": reply}]
