"""Per-request control headers: read, check, and remove before upstream.

    butter-mode: auto|record|replay|off    this request's mode, over the proxy's
    butter-namespace: NAME                 this request's tree, shared by every
                                           credential that names it

They are butter's, not the provider's: `take` removes them from the request
whatever their values, so they never reach the provider, and an invalid
value is refused (the addon answers with a 400 in the provider's own error
shape) rather than quietly replaced by a default: a test suite that asks for
`replay` and gets `auto` would spend money and pass for the wrong reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import MutableMapping

from butter.addon import request_headers

MODE_HEADER = "butter-mode"
NAMESPACE_HEADER = "butter-namespace"
CONTROL_HEADERS = (MODE_HEADER, NAMESPACE_HEADER)
MODES = ("auto", "record", "replay", "off")
# Short, printable, and free of the `:` that separates stored namespace kinds.
NAMESPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ERROR_CODE = "butter_invalid_header"


@dataclass(frozen=True)
class Controls:
    mode: str | None = None  # None: the proxy's `butter_mode`
    namespace: str | None = None  # None: the proxy's `butter_namespace`, else per credential


class ControlError(ValueError):
    """A control header with a value butter cannot honour."""


def take(headers: MutableMapping[str, str]) -> Controls:
    """Remove butter's control headers from `headers` and return their meaning.

    Raises ControlError for an invalid or contradictory value, after the
    headers are already removed.
    """
    values = {name: request_headers.pop_all(headers, name) for name in CONTROL_HEADERS}
    mode = _single(MODE_HEADER, values[MODE_HEADER])
    namespace = _single(NAMESPACE_HEADER, values[NAMESPACE_HEADER])
    if mode is not None:
        mode = mode.lower()
        if mode not in MODES:
            raise ControlError(f"{MODE_HEADER}: {request_headers.shown(mode)} is not a mode; use one of {', '.join(MODES)}")
    if namespace is not None and not NAMESPACE_NAME.fullmatch(namespace):
        raise ControlError(f"{NAMESPACE_HEADER}: {request_headers.shown(namespace)} is not a namespace name; use 1 to 64 "
                           "letters, digits, '.', '_' or '-', starting with a letter or digit")
    return Controls(mode, namespace)


def _single(name: str, values: list[str]) -> str | None:
    value = request_headers.single(name, values, ControlError)
    if value == "":
        raise ControlError(f"{name} is empty")
    return value
