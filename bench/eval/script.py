"""A run, written down in advance: what the agent says and what the model
should answer at every step.

A workload is turned into `Run`s before anything is sent: the user turns,
the tool list of each turn, and for each step the assistant message the
ground truth says a model gives and the tool outputs the real backend
returned for it. The oracle provider plays these back as a model would, and
the same script tells the evaluation what a correct served reply is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """An assistant message: either text or tool calls (name, arguments)."""

    content: str | None = None
    tool_calls: tuple[tuple[str, dict], ...] = ()

    def decision(self) -> dict:
        """The shape tests/fakes/openai_chat.completion() takes."""
        if self.tool_calls:
            return {"tool_calls": [(name, args) for name, args in self.tool_calls]}
        return {"content": self.content or ""}

    def describe(self) -> str:
        if self.tool_calls:
            return "; ".join(f"{n}({json.dumps(a, ensure_ascii=False)})" for n, a in self.tool_calls)
        return repr(self.content)


@dataclass(frozen=True)
class Step:
    reply: Reply
    results: tuple[str, ...] = ()  # one tool output per tool call, in order


@dataclass(frozen=True)
class Turn:
    user: str | None  # None: no new user message (BFCL miss_func adds a tool instead)
    tools: tuple[dict, ...]
    steps: tuple[Step, ...]


@dataclass
class Run:
    run_id: str
    flow: str  # runs of one flow differ only in values
    system: str
    turns: list[Turn]
    model: str = "gpt-4o-mini"
    values: dict[str, Any] = field(default_factory=dict)  # what this run varied, for reports
    # For a look-alike: the recorded flow's run with the same values. Where the
    # two send the very same request but their ground truths answer it
    # differently, the data contradicts itself; no cache can tell them apart.
    twin: "Run | None" = None

    def steps(self) -> list[Step]:
        return [s for t in self.turns for s in t.steps]


def same_reply(served_content: str | None, served_calls: list[tuple[str, Any]], expected: Reply) -> bool:
    """Whether a served assistant message says what the ground truth says.

    Text must be equal; tool calls equal in order, name and parsed arguments
    (a template may render JSON with other spacing, which means the same).
    """
    if (served_content or None) != (expected.content or None):
        return False
    if len(served_calls) != len(expected.tool_calls):
        return False
    for (name, args), (want_name, want_args) in zip(served_calls, expected.tool_calls):
        if name != want_name or args != want_args:
            return False
    return True


def request_keys(run: Run) -> list[str]:
    """Each step's request (tools and messages, ids left out) as one string.

    Two runs whose requests at some step have equal keys sent byte-for-byte
    the same question, whatever their scripts say the answer is.
    """
    keys: list[str] = []
    messages: list[dict] = [{"role": "system", "content": run.system}] if run.system else []
    for turn in run.turns:
        if turn.user is not None:
            messages.append({"role": "user", "content": turn.user})
        for step in turn.steps:
            keys.append(json.dumps([list(turn.tools), messages], sort_keys=True, ensure_ascii=False))
            reply = step.reply
            messages = messages + [{"role": "assistant", "content": reply.content,
                                    "calls": [[n, a] for n, a in reply.tool_calls]}]
            messages += [{"role": "tool", "content": out} for out in step.results]
    return keys
