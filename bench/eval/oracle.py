"""The oracle: a fake model that answers every request as the ground truth says.

It plays a `Run`'s scripted replies back in OpenAI Chat Completions format
(plain JSON or SSE, with tool calls and fresh ids, as the real API does),
using tests/fakes for the wire shapes. The request names its run in an
`x-eval-run` header, which butter passes upstream untouched and keeps out of
its keys; the step is the number of assistant messages already in the
conversation. The evaluation asks the same oracle what the right answer to
every request is, served or not, so a wrong hit cannot hide.
"""
from __future__ import annotations

import threading

from tests.fakes.openai_chat import completion, stream_chunks
from tests.fakes.provider import Call, JSONReply, StreamReply

from .script import Reply, Run

RUN_HEADER = "x-eval-run"


class Oracle:
    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def register(self, run: Run) -> None:
        with self._lock:
            self._runs[run.run_id] = run

    def expected(self, run_id: str, messages: list[dict]) -> Reply:
        """The reply the ground truth gives for this conversation of this run."""
        with self._lock:
            run = self._runs[run_id]
        step = sum(1 for m in messages if m.get("role") == "assistant")
        return run.steps()[step].reply

    def handler(self, call: Call) -> JSONReply | StreamReply:
        """The FakeProvider handler: answer as a model that follows the script."""
        body = call.json
        run_id = call.headers.get(RUN_HEADER)
        if not run_id:
            return JSONReply({"error": {"message": "oracle: no run header", "type": "invalid_request_error"}}, 400)
        reply = self.expected(run_id, body["messages"])
        full = completion(reply.decision(), body["model"])
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamReply(stream_chunks(full, include_usage))
        return JSONReply(full)
