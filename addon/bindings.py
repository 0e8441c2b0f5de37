"""The template headers, as hosted Butter accepts them: read, check, remove.

    Butter-Bindings: {"customer": "Ana Ruiz", "order_id": "1234"}
        a flat JSON object, name -> value (a string or a number); each value
        becomes the placeholder `{{name}}` at once: the request is recorded
        as a template and looked up with these values bound (and values a
        tool of the run returned that its later output repeats become slots
        too; a value that is a whole message stays literal: store/declared.py)
    Butter-Disable-Induction: true
        learn nothing from this request (induction runs on the others)

Both are butter's, not the provider's: `take` removes them from the request
whatever their values, so they never go upstream. An invalid value is an
error the client sees (a 400 in the provider's error shape), never a silent
miss: a client that believes its bindings are in use must not be told
otherwise by a slowly growing bill.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import MutableMapping

from butter.addon import request_headers
from butter.store.templates import NAME_RE, number_text

BINDINGS_HEADER = "butter-bindings"
DISABLE_INDUCTION_HEADER = "butter-disable-induction"
HEADERS = (BINDINGS_HEADER, DISABLE_INDUCTION_HEADER)
ERROR_CODE = "butter_invalid_header"
MAX_NAMES = 64
MAX_VALUE_CHARS = 4096
TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class RequestBindings:
    values: dict[str, str] = field(default_factory=dict)  # name -> value; empty: none declared
    induction: bool = True  # False: Butter-Disable-Induction


class BindingsError(ValueError):
    """A template header butter cannot honour."""


def take(headers: MutableMapping[str, str]) -> RequestBindings:
    """Remove both headers from `headers` and return their meaning.

    Raises BindingsError for an invalid value, after the headers are removed.
    """
    raw = {name: request_headers.pop_all(headers, name) for name in HEADERS}
    values = parse_bindings(request_headers.single(BINDINGS_HEADER, raw[BINDINGS_HEADER], BindingsError))
    induction = True
    flag = request_headers.single(DISABLE_INDUCTION_HEADER, raw[DISABLE_INDUCTION_HEADER], BindingsError)
    if flag is not None:
        if flag.lower() in TRUE:
            induction = False
        elif flag.lower() not in FALSE:
            raise BindingsError(f"Butter-Disable-Induction: {request_headers.shown(flag)} is not true or false")
    return RequestBindings(values, induction)


def parse_bindings(text: str | None) -> dict[str, str]:
    """name -> value from the header's JSON; raises BindingsError saying what is wrong."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BindingsError(f"Butter-Bindings is not JSON ({e}); send a flat object such as "
                            '{"name": "Steve"}') from None
    if not isinstance(data, dict):
        raise BindingsError("Butter-Bindings must be a flat JSON object of name -> value")
    if len(data) > MAX_NAMES:
        raise BindingsError(f"Butter-Bindings has {len(data)} names; at most {MAX_NAMES}")
    values: dict[str, str] = {}
    for name, value in data.items():
        if not NAME_RE.fullmatch(name):
            raise BindingsError(f"Butter-Bindings: {request_headers.shown(name)} is not a placeholder name; use letters, "
                                "digits, '_', '.' or '-', starting with a letter or '_'")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BindingsError(f"Butter-Bindings: the value of {name!r} must be a string or a number, "
                                f"not {type(value).__name__ if value is not None else 'null'}")
        text_value = value if isinstance(value, str) else number_text(value)
        if not text_value:
            raise BindingsError(f"Butter-Bindings: the value of {name!r} is empty")
        if len(text_value) > MAX_VALUE_CHARS:
            raise BindingsError(f"Butter-Bindings: the value of {name!r} is longer than {MAX_VALUE_CHARS} characters")
        values[name] = text_value
    return values
