"""Server-sent events: a tolerant parser and a plain encoder.

The parser follows the WHATWG rules the SDKs use: CR, LF or CRLF line ends,
`:` comment lines ignored (OpenRouter sends them), multi-line `data:` joined,
one optional space after the colon.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Event:
    event: str
    data: str


def parse(body: bytes) -> Iterator[Event]:
    text = body.decode("utf-8")
    event, data = "", []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if data:
                yield Event(event, "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield Event(event, "\n".join(data))


def encode(data: Any, event: str | None = None) -> bytes:
    """One event; `data` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode("utf-8")
