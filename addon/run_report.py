"""What one proxy process did, written to a file for `butter run`'s summary.

    mitmdump -s addon/butter.py --set butter_run_report=/tmp/run.json

Counted in the proxy (not read back from the database's totals), so several
proxies sharing one database each report only their own traffic. The file
is replaced atomically every few seconds and when the proxy stops; it holds
counts, formats, models and where each replay-miss left the tree, never a
request's content or a credential.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from butter.store.inspect import tokens_of

# A run that misses thousands of times needs the count, not every line.
MAX_LISTED_MISSES = 50


@dataclass
class RunReport:
    path: str
    requests: int = 0  # LLM requests butter understood and decided on
    hits: int = 0
    template_hits: int = 0  # of `hits`: served from a template, with this run's values
    tokens_saved: int = 0
    misses: int = 0  # forwarded to the provider (auto mode) or refused (replay mode)
    recorded: int = 0
    replay_misses: int = 0
    passed_through: int = 0  # not understood, mode off, internal error
    by_model: Counter = field(default_factory=Counter)  # "format model" -> requests
    replay_miss_list: list[dict] = field(default_factory=list)
    dirty: bool = False

    def hit(self, fmt: str, model: object, reply: dict, template: bool) -> None:
        self._request(fmt, model)
        self.hits += 1
        self.template_hits += template
        self.tokens_saved += tokens_of(reply)

    def miss(self, fmt: str, model: object, where: str, replay: bool) -> None:
        self._request(fmt, model)
        self.misses += 1
        if replay:
            self.replay_misses += 1
            if len(self.replay_miss_list) < MAX_LISTED_MISSES:
                self.replay_miss_list.append({"format": fmt, "model": str(model), "where": where})

    def passed(self, fmt: str, model: object) -> None:
        self._request(fmt, model)
        self.passed_through += 1

    def record(self) -> None:
        self.recorded += 1
        self.dirty = True

    def _request(self, fmt: str, model: object) -> None:
        self.requests += 1
        self.by_model[f"{fmt} {model}"] += 1
        self.dirty = True

    def as_dict(self) -> dict:
        return {"requests": self.requests, "hits": self.hits, "template_hits": self.template_hits,
                "provider_calls_saved": self.hits, "tokens_saved": self.tokens_saved, "misses": self.misses,
                "recorded": self.recorded, "replay_misses": self.replay_misses,
                "passed_through": self.passed_through, "by_model": dict(self.by_model),
                "replay_miss_list": self.replay_miss_list}

    def write(self, force: bool = False) -> None:
        if not (self.dirty or force):
            return
        self.dirty = False
        target = Path(self.path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".butter-run-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.as_dict(), f, indent=2)
        os.replace(tmp, target)
