"""Credentials: found, used for the namespace, and kept out of everything else.

`split` returns the credential a request carries (for the namespace hash)
and the headers and query with every secret removed, which is all the wire
adapters ever see. Nothing in this module logs.

What counts as a credential is decided by name, not by a list of providers,
so a gateway's key butter has never heard of still separates tenants:

- headers: `authorization`, `x-api-key`, `api-key`, `x-goog-api-key`,
  `cookie`, and any name that contains `auth` or ends in `-key`/`apikey`,
  `-token`, `-secret`, `-password` (`x-litellm-api-key`, `helicone-auth`,
  `cf-aig-authorization`, `x-portkey-api-key`, `ocp-apim-subscription-key`,
  `x-amz-security-token`, ...), except `idempotency-key`, which is fresh on
  every request;
- query parameters: `key`, `api_key`, `apikey`, `token`, `access_token`,
  `sig`, `signature`, `auth`, and any name that contains `auth` or
  `credential` or ends in `_key`, `_token`, `_secret`, `_signature`,
  `_password` (after `-` becomes `_`).

Every one of them is left out of what the adapters see (so never stored) and
all of them together make the namespace: two tenants that differ in any one
credential never share a tree. The provider's own key, whether it is sent as
`Authorization: Bearer k`, `x-api-key: k`, `api-key: k`, `x-goog-api-key: k`
or `?key=k`, counts as one credential, so it is one namespace either way.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

# The provider's key, whatever the header or parameter it comes in: one value.
PRIMARY_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
PRIMARY_QUERY = ("key", "api_key", "apikey", "api-key")
# Identifying but not secret: dropped as well, they never change the answer.
DROPPED_HEADERS = ("openai-organization", "openai-project")
_SECRET_HEADER_NAME = re.compile(r"auth|(?:^|[-_])(?:key|token|secret|password)$|apikey$|^cookie$")
# `-key` headers that are no secret: fresh on every request (so they must not
# split the cache) or part of the HTTP machinery.
_NOT_SECRET_HEADERS = frozenset({"idempotency-key", "x-idempotency-key", "sec-websocket-key"})
_SECRET_QUERY_NAMES = frozenset({"key", "api_key", "apikey", "token", "access_token", "sig", "signature", "auth",
                                 "password", "secret"})
_SECRET_QUERY_NAME = re.compile(r"auth|credential|_(?:key|token|secret|signature|password)$|apikey$")
# Cookies a CDN or load balancer sets on every client and an HTTP client
# sends back by itself (httpx keeps them): they say nothing about who asks,
# and would otherwise give each agent a namespace of its own per half hour.
INFRASTRUCTURE_COOKIES = re.compile(r"__cf_bm|_cfuvid|cf_clearance|__cflb|__cfruid|awsalb\w*|awselb\w*", re.I)


@lru_cache(maxsize=1024)
def is_secret_header(name: str) -> bool:
    """Does a header of this (lower-case) name carry a credential?"""
    return name not in _NOT_SECRET_HEADERS and _SECRET_HEADER_NAME.search(name) is not None


@lru_cache(maxsize=1024)
def is_secret_query(name: str) -> bool:
    """Does a query parameter of this name carry a credential?"""
    name = name.lower().replace("-", "_")
    return name in _SECRET_QUERY_NAMES or _SECRET_QUERY_NAME.search(name) is not None


def split(headers: dict[str, str], query: dict[str, str]) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """(the credential for the namespace, headers and query without a secret)."""
    lower = {k.lower(): v for k, v in headers.items()}
    found: set[tuple[str, str]] = set()  # (label, value); label "" is the provider's key
    clean_headers: dict[str, str] = {}
    for name, value in lower.items():
        if not is_secret_header(name):
            if name not in DROPPED_HEADERS:
                clean_headers[name] = value
            continue
        if name == "cookie":
            value = _tenant_cookies(value)
        elif value[:7].lower() == "bearer ":
            value = value[7:].strip()  # `Bearer k` and `x-api-key: k` are one key
        if value:
            found.add(("" if name in PRIMARY_HEADERS else f"header:{name}", value))
    clean_query: dict[str, str] = {}
    for name, value in query.items():
        if not is_secret_query(name):
            clean_query[name] = value
        elif value:
            found.add(("" if name.lower() in PRIMARY_QUERY else f"query:{name.lower()}", value))
    return _credential(found), clean_headers, clean_query


def _credential(found: set[tuple[str, str]]) -> str | None:
    if not found:
        return None
    if len(found) == 1:
        label, value = next(iter(found))
        if not label:
            return value  # the provider's key alone: the namespace it always had
    # Several credentials (or a gateway's own): all of them, named, in one
    # value. It starts with a NUL, which no header value can hold, so it is
    # never the same text as a lone key.
    return "\x00" + json.dumps(sorted(found), ensure_ascii=False, separators=(",", ":"))


def _tenant_cookies(header: str) -> str:
    """The cookies that may identify a tenant, in a stable order."""
    pairs = []
    for item in header.split(";"):
        name, _, value = item.strip().partition("=")
        if name and not INFRASTRUCTURE_COOKIES.fullmatch(name):
            pairs.append(f"{name}={value}")
    return "; ".join(sorted(pairs))
