"""Reading butter's own request headers: taken off the request, checked once.

Shared by `controls.py` (butter-mode, butter-namespace) and `bindings.py`
(Butter-Bindings, Butter-Disable-Induction): every butter header is removed
before the request goes upstream, and one sent twice with different values
is an error rather than a guess.
"""
from __future__ import annotations

from typing import MutableMapping


def pop_all(headers: MutableMapping[str, str], name: str) -> list[str]:
    """Every value of `name`, with the header removed from the request."""
    # mitmproxy's Headers keep repeated fields; get_all sees every one of them.
    get_all = getattr(headers, "get_all", None)
    found = list(get_all(name)) if get_all is not None else ([headers[name]] if name in headers else [])
    while name in headers:
        del headers[name]
    return found


def single(name: str, values: list[str], error: type[Exception]) -> str | None:
    """The one value a header was sent with (None if absent); `error` if it disagrees with itself."""
    cleaned = {v.strip() for v in values}
    if not cleaned:
        return None
    if len(cleaned) > 1:
        raise error(f"{name} was sent more than once with different values")
    return cleaned.pop()


def shown(value: str) -> str:
    """A value quoted for an error message, cut short if long."""
    return repr(value if len(value) <= 80 else value[:77] + "...")
