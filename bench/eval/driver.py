"""The agent: plays a scripted run through butter with the real openai SDK.

Each step sends the conversation so far, reads what came back (and butter's
`butter-cache` header), asks the oracle what the right answer was, and then
continues on the ground-truth path: after a wrong hit or a replay miss the
agent carries on with the oracle's answer, so every later request is still
one a correct run would send and is measured on its own.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import openai

from .oracle import RUN_HEADER, Oracle
from .script import Reply, Run, same_reply


@dataclass
class StepResult:
    step: int
    status: str  # butter-cache header: hit, miss, replay-miss, ...
    right: bool  # the reply the agent got equals the ground truth
    expected: str = ""
    served: str = ""
    request: dict | None = None  # kept for misses, so they can be explained


@dataclass
class RunResult:
    run_id: str
    flow: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return sum(1 for s in self.steps if s.status == "hit")

    @property
    def wrong_hits(self) -> list[StepResult]:
        return [s for s in self.steps if s.status == "hit" and not s.right]

    @property
    def wrong_misses(self) -> list[StepResult]:
        """Provider answers that disagree with the oracle: a bug in the harness."""
        return [s for s in self.steps if s.status != "hit" and s.status != "replay-miss" and not s.right]


def _ask(client: openai.OpenAI, run: Run, messages: list[dict], tools: list[dict], stream: bool
         ) -> tuple[str, str | None, list[tuple[str, Any]], list[str]]:
    """One request: (butter-cache status, content, [(name, args)], tool-call ids)."""
    kwargs: dict[str, Any] = {"model": run.model, "messages": messages,
                              "extra_headers": {RUN_HEADER: run.run_id}}
    if tools:
        kwargs["tools"] = tools
    try:
        raw = client.chat.completions.with_raw_response.create(stream=stream, **kwargs)
    except openai.APIStatusError as e:
        status = e.response.headers.get("butter-cache", f"error {e.status_code}")
        if status != "replay-miss":
            raise
        return status, None, [], []
    status = raw.headers.get("butter-cache", "")
    parsed = raw.parse()
    if not stream:
        message = parsed.choices[0].message
        calls = message.tool_calls or []
        return (status, message.content, [(c.function.name, _args(c.function.arguments)) for c in calls],
                [c.id for c in calls])
    content: list[str] = []
    by_index: dict[int, dict] = {}
    for chunk in parsed:
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                content.append(delta.content)
            for tc in delta.tool_calls or []:
                slot = by_index.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
    calls = [by_index[i] for i in sorted(by_index)]
    return (status, "".join(content) or None, [(c["name"], _args(c["arguments"])) for c in calls],
            [c["id"] for c in calls])


def _args(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"__unparsable__": text}


def _assistant_message(reply: Reply, ids: list[str]) -> dict:
    if not reply.tool_calls:
        return {"role": "assistant", "content": reply.content or ""}
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
        for call_id, (name, args) in zip(ids, reply.tool_calls)]}


def play(client: openai.OpenAI, oracle: Oracle, run: Run, *, stream: bool = False) -> RunResult:
    result = RunResult(run.run_id, run.flow)
    messages: list[dict] = [{"role": "system", "content": run.system}] if run.system else []
    index = 0
    for turn in run.turns:
        if turn.user is not None:
            messages.append({"role": "user", "content": turn.user})
        for step in turn.steps:
            status, content, calls, ids = _ask(client, run, messages, list(turn.tools), stream)
            expected = oracle.expected(run.run_id, messages)
            right = status != "replay-miss" and same_reply(content, calls, expected)
            served = Reply(content, tuple(calls)).describe() if status != "replay-miss" else ""
            request = None
            if status != "hit":
                request = {"model": run.model, "messages": list(messages), "tools": list(turn.tools)}
            result.steps.append(StepResult(index, status, right, expected.describe() if not right else "",
                                           served if not right else "", request))
            index += 1
            # Continue on the ground-truth path; keep the ids the agent was
            # given when the reply was right (as a real agent would echo them).
            if not right or len(ids) != len(expected.tool_calls):
                ids = ["call_" + secrets.token_hex(12) for _ in expected.tool_calls]
            messages.append(_assistant_message(expected, ids))
            for call_id, output in zip(ids, step.results):
                messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    return result
