"""The wire adapters, one module per format, found by discovery.

Each module defines `FORMAT`, an instance of `base.WireFormat`. Discovery
keeps this file free of a list every new adapter would have to edit. Order
matters only when two adapters claim one path, so `PRIORITY` (lower first)
breaks the tie, e.g. Azure's deployment paths before generic OpenAI Chat.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import NotUnderstood, ParsedRequest, WireFormat, WireRequest, WireResponse


def _discover() -> list[WireFormat]:
    found: list[tuple[int, WireFormat]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in {"base", "sse"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        fmt = getattr(module, "FORMAT", None)
        if isinstance(fmt, WireFormat):
            found.append((getattr(module, "PRIORITY", 100), fmt))
    return [fmt for _, fmt in sorted(found, key=lambda pair: (pair[0], pair[1].name))]


FORMATS: list[WireFormat] = _discover()


def recognise(method: str, path: str) -> WireFormat | None:
    """The adapter for an LLM request, or None for any other traffic."""
    if method != "POST":
        return None
    for fmt in FORMATS:
        if fmt.recognise(method, path):
            return fmt
    return None


__all__ = ["FORMATS", "NotUnderstood", "ParsedRequest", "WireFormat", "WireRequest", "WireResponse", "recognise"]
