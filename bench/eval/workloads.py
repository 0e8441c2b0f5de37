"""What a workload is: flows whose runs differ only in values, plus look-alikes.

A flow has runs to record (one more per k) and held-out runs measured after
k recordings. Negative sets hold look-alike runs (a changed instruction, a
branch-deciding field, a missing parameter, ...) whose right answers differ
from the recorded flow's: they are replayed after every recording and must
never be served a wrong reply.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .script import Run


@dataclass
class Flow:
    name: str
    recorded: list[Run]
    held_out: list[Run]
    # Live traffic after the recorded runs, through the recording proxy: what
    # pays a template's probation (verified against the provider) when
    # verification is on. Look-alike runs may be mixed in, as in real traffic.
    probation: list[Run] = field(default_factory=list)


@dataclass
class Workload:
    name: str
    flows: list[Flow]
    negatives: dict[str, list[Run]] = field(default_factory=dict)
    note: str = ""
    ks: tuple[int, ...] = (1, 2, 3)  # after how many recorded runs per flow to measure
    substitutive: bool = True  # flows differ only in values (the >= 90 % target applies)

    def runs(self) -> list[Run]:
        out = [r for f in self.flows for r in f.recorded + f.held_out + f.probation]
        return out + [r for runs in self.negatives.values() for r in runs]
