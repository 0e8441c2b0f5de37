"""A scripted OpenAI Responses API model for the refund workflow, and the
agent loops that drive it through the real `openai` SDK.

The model answers as the real API does: fresh ids on every response, plain
JSON or SSE with named events and `sequence_number`, and server-side state
(`previous_response_id` works only for responses it stored, `store` defaults
to true; an unknown `previous_response_id` is the API's 400
`previous_response_not_found`). Like the real API it checks what it is sent
back: a tool output must answer a call in the conversation, a reasoning
item's `encrypted_content` must be a blob it issued, byte for byte, and a
reasoning item without one, in a stored request, is looked up by id (404
for an id it never issued). Leniency: with `store: false` the real API
refuses every reasoning item without its blob; this fake lets them by, so
stateless runs without encrypted reasoning still run. Decisions:

    no tool output yet      -> reasoning + call get_order(order_id)
    one tool output         -> reasoning + call refund(order_id, amount)
    two tool outputs        -> reasoning + final text naming order and amount
"""
from __future__ import annotations

import json
import re
import secrets
import threading
from typing import Any

from .openai_chat import ORDERS
from .provider import Call, JSONReply, StreamReply

TOOLS = [
    {"type": "function", "name": "get_order", "description": "Look up an order",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}},
    {"type": "function", "name": "refund", "description": "Refund an order",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                    "required": ["order_id", "amount"]}},
]
INSTRUCTIONS = "You are a support agent. Use the tools, then answer in one sentence."


class FakeResponsesModel:
    """The provider side: its own store of responses, like the real API."""

    def __init__(self) -> None:
        self.stored: dict[str, list[dict]] = {}  # response id -> whole conversation incl. its output
        self.issued_blobs: set[str] = set()
        self.issued_reasoning: set[str] = set()  # ids of the reasoning items it made
        self.lock = threading.Lock()

    def __call__(self, call: Call) -> JSONReply | StreamReply:
        body = call.json
        items = _items(body.get("input"))
        previous = body.get("previous_response_id")
        with self.lock:
            if previous is not None and previous not in self.stored:
                return _error(400, f"Previous response with id '{previous}' not found.", "previous_response_not_found",
                              "previous_response_id")
            conversation = list(self.stored.get(previous, [])) + items
            unknown = self._unknown_item(items) if body.get("store", True) else None
            if unknown:
                return _error(404, f"Item with id '{unknown}' not found.", None, "input")
            problem = self._check(conversation)
            if problem:
                return _error(400, problem, "invalid_request", "input")
            response = self._respond(body, conversation)
            if body.get("store", True):
                self.stored[response["id"]] = conversation + response["output"]
        if body.get("stream"):
            return StreamReply(stream_events(response))
        return JSONReply(response)

    def _unknown_item(self, items: list[dict]) -> str | None:
        """A reasoning item sent back without its blob names an item the provider must hold."""
        for item in items:
            if item.get("type") == "reasoning" and not item.get("encrypted_content") \
                    and item.get("id") not in self.issued_reasoning:
                return str(item.get("id"))
        return None

    def _check(self, conversation: list[dict]) -> str | None:
        calls = {i.get("call_id") for i in conversation if i.get("type") == "function_call"}
        for item in conversation:
            if item.get("type") == "function_call_output" and item.get("call_id") not in calls:
                return f"No tool call found for function call output with call_id {item.get('call_id')}."
            blob = item.get("encrypted_content")
            if item.get("type") == "reasoning" and blob is not None and blob not in self.issued_blobs:
                return "The encrypted content for a reasoning item could not be verified."
        return None

    def _respond(self, body: dict, conversation: list[dict]) -> dict:
        outputs = [i for i in conversation if i.get("type") == "function_call_output"]
        user = next(i for i in conversation if i.get("role") == "user")
        content = user["content"]
        text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
        order_id = re.search(r"\d+", text).group(0)
        # The first step's summary names no value; the later ones name the order, a value their
        # text states (butter verifies such a value like a decision input: docs/trust.md).
        summary = f"Step {len(outputs) + 1} for order {order_id}." if outputs else "Step 1: look the order up."
        reasoning: dict[str, Any] = {"id": "rs_" + secrets.token_hex(12), "type": "reasoning",
                                     "summary": [{"type": "summary_text", "text": summary}]}
        self.issued_reasoning.add(reasoning["id"])
        if "reasoning.encrypted_content" in (body.get("include") or []):
            # Opaque, with bytes a careless proxy would mangle: padding,
            # slashes, a unicode escape and a literal backslash.
            blob = "gAAAAB" + secrets.token_urlsafe(24) + "/+==\\u00e9\u00e9\\"
            self.issued_blobs.add(blob)
            reasoning["encrypted_content"] = blob
        output: list[dict] = [reasoning]
        if len(outputs) < 2:
            if not outputs:
                name, args = "get_order", {"order_id": order_id}
            else:
                order = json.loads(outputs[0]["output"])
                name, args = "refund", {"order_id": order["order_id"], "amount": order["amount"]}
            output.append({"id": "fc_" + secrets.token_hex(12), "type": "function_call", "status": "completed",
                           "arguments": json.dumps(args), "call_id": "call_" + secrets.token_hex(12), "name": name})
        else:
            order = json.loads(outputs[0]["output"])
            answer = f"Refunded {order['amount']} for order {order['order_id']} ({order['customer']})."
            output.append({"id": "msg_" + secrets.token_hex(12), "type": "message", "status": "completed",
                           "role": "assistant",
                           "content": [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}]})
        return {
            "id": "resp_" + secrets.token_hex(16), "object": "response", "created_at": 1760000000,
            "status": "completed", "background": False, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None, "model": body["model"] + "-2025-04-14", "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": "medium", "summary": "auto"}, "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default", "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": body.get("tool_choice", "auto"),
            "tools": [{**t, "strict": False} for t in body.get("tools") or []], "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": {"input_tokens": 81, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 27,
                      "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 108},
            "user": body.get("user"), "metadata": body.get("metadata") or {},
        }


def _items(value: Any) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value)


def _error(status: int, message: str, code: str, param: str | None) -> JSONReply:
    return JSONReply({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}},
                     status=status)


def stream_events(response: dict) -> list[bytes]:
    """The event stream the real API sends for a finished response."""
    events: list[dict] = []

    def add(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    add("response.created", response=opening)
    add("response.in_progress", response=opening)
    for n, item in enumerate(response["output"]):
        where = {"item_id": item["id"], "output_index": n}
        if item["type"] == "reasoning":
            add("response.output_item.added", output_index=n, item={"id": item["id"], "type": "reasoning", "summary": []})
            for s, part in enumerate(item["summary"]):
                add("response.reasoning_summary_part.added", **where, summary_index=s, part={"type": "summary_text", "text": ""})
                for word in re.findall(r"\S+\s*", part["text"]):
                    add("response.reasoning_summary_text.delta", **where, summary_index=s, delta=word,
                        obfuscation=secrets.token_hex(3))
                add("response.reasoning_summary_text.done", **where, summary_index=s, text=part["text"])
                add("response.reasoning_summary_part.done", **where, summary_index=s, part=part)
        elif item["type"] == "function_call":
            add("response.output_item.added", output_index=n, item={**item, "status": "in_progress", "arguments": ""})
            for start in range(0, len(item["arguments"]), 5):
                add("response.function_call_arguments.delta", **where, delta=item["arguments"][start:start + 5],
                    obfuscation=secrets.token_hex(3))
            add("response.function_call_arguments.done", **where, arguments=item["arguments"])
        else:
            add("response.output_item.added", output_index=n, item={**item, "status": "in_progress", "content": []})
            for c, part in enumerate(item["content"]):
                add("response.content_part.added", **where, content_index=c,
                    part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""})
                for word in re.findall(r"\S+\s*", part["text"]):
                    add("response.output_text.delta", **where, content_index=c, delta=word, logprobs=[],
                        obfuscation=secrets.token_hex(3))
                add("response.output_text.done", **where, content_index=c, text=part["text"], logprobs=[])
                add("response.content_part.done", **where, content_index=c, part=part)
        add("response.output_item.done", output_index=n, item=item)
    add("response.completed", response=response)
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


# -- the agent side: what an unmodified agent does with the SDK ----------------

MODES = ("plain", "events", "helper")


def run_agent(client: Any, order_id: str, *, mode: str = "plain", stateful: bool = False,
              encrypted_reasoning: bool | None = None, declare: bool = False, model: str = "gpt-4.1-mini") -> dict:
    """A tool loop as agents write it, stateless (whole input resent,
    store=False, encrypted reasoning carried along) or stateful
    (previous_response_id; encrypted reasoning only when asked). Returns
    what a person would check. With `declare`, the agent tells butter the
    run's values in a `Butter-Bindings` header as soon as it knows them."""
    if encrypted_reasoning is None:
        encrypted_reasoning = not stateful
    history: list[Any] = [{"role": "user", "content": f"Please refund order {order_id}."}]
    pending: list[Any] = list(history)
    previous: str | None = None
    run: dict[str, Any] = {"calls": [], "cache": [], "ids": [], "items": []}
    known = {"order_id": order_id} if declare else None
    for _ in range(5):
        kwargs: dict[str, Any] = {"model": model, "instructions": INSTRUCTIONS, "tools": TOOLS}
        if known is not None:
            kwargs["extra_headers"] = {"Butter-Bindings": json.dumps(known)}
        if encrypted_reasoning:
            kwargs["include"] = ["reasoning.encrypted_content"]
        if stateful:
            kwargs.update(input=pending, previous_response_id=previous) if previous else kwargs.update(input=pending)
        else:
            kwargs.update(input=history, store=False)
        response, cache = _create(client, mode, kwargs)
        run["cache"].append(cache)
        run["ids"].append(response.id)
        run["items"].append([(item.type, getattr(item, "id", None), getattr(item, "call_id", None)) for item in response.output])
        history += response.output  # agents feed the SDK's own objects back
        previous, pending = response.id, []
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            run["answer"] = response.output_text
            return run
        for fc in calls:
            args = json.loads(fc.arguments)
            run["calls"].append((fc.name, args))
            result = ORDERS[args["order_id"]] if fc.name == "get_order" else {"refunded": True}
            if known is not None and fc.name == "get_order":
                known.update(customer=result["customer"], amount=result["amount"])
            output = {"type": "function_call_output", "call_id": fc.call_id, "output": json.dumps(result)}
            history.append(output)
            pending.append(output)
    raise AssertionError("the agent did not finish")


def _create(client: Any, mode: str, kwargs: dict) -> tuple[Any, str]:
    if mode == "plain":
        raw = client.responses.with_raw_response.create(**kwargs)
        return raw.parse(), raw.headers.get("butter-cache", "")
    if mode == "helper":
        with client.responses.stream(**kwargs) as stream:
            for _ in stream:
                pass
            return stream.get_final_response(), stream._response.headers.get("butter-cache", "")
    if mode == "events":
        return _from_raw_events(client, kwargs)
    raise ValueError(mode)


def _from_raw_events(client: Any, kwargs: dict) -> tuple[Any, str]:
    """Read the raw event stream as an agent without the helper does, and
    check the protocol on the way: numbering, order, text deltas."""
    raw = client.responses.with_raw_response.create(stream=True, **kwargs)
    kinds: list[str] = []
    added: set[int] = set()
    texts: dict[tuple[int, int], str] = {}
    done: dict[int, Any] = {}
    final = None
    for n, event in enumerate(raw.parse()):
        assert event.sequence_number == n, f"sequence_number {event.sequence_number} at position {n}"
        kinds.append(event.type)
        if event.type == "response.output_item.added":
            added.add(event.output_index)
        elif event.type.endswith(".delta"):
            assert event.output_index in added, f"{event.type} before its output_item.added"
            if event.type == "response.output_text.delta":
                key = (event.output_index, event.content_index)
                texts[key] = texts.get(key, "") + event.delta
        elif event.type == "response.output_item.done":
            done[event.output_index] = event.item
        elif event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert final is not None
    assert [i.model_dump() for i in final.output] == [done[i].model_dump() for i in sorted(done)]
    for (index, content), text in texts.items():
        assert final.output[index].content[content].text == text
    return final, raw.headers.get("butter-cache", "")
