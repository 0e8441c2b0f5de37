"""Credentials: found, used for the namespace, and kept out of everything else.

`split` returns the one credential a request carries (for the namespace hash)
and the headers and query with every secret removed, which is all the wire
adapters ever see. Nothing in this module logs.
"""
from __future__ import annotations

SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization",
                  "cookie", "x-amz-security-token")
# Identifying but not secret: dropped as well, they never change the answer.
DROPPED_HEADERS = ("openai-organization", "openai-project")
SECRET_QUERY = ("key",)
CREDENTIAL_ORDER = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def split(headers: dict[str, str], query: dict[str, str]) -> tuple[str | None, dict[str, str], dict[str, str]]:
    lower = {k.lower(): v for k, v in headers.items()}
    credential = next((lower[h] for h in CREDENTIAL_ORDER if lower.get(h)), None)
    if credential is None:
        credential = next((query[q] for q in SECRET_QUERY if query.get(q)), None)
    if credential and credential.lower().startswith("bearer "):
        credential = credential[7:].strip()  # `Bearer k` and `x-api-key: k` are one key
    clean_headers = {k: v for k, v in lower.items() if k not in SECRET_HEADERS and k not in DROPPED_HEADERS}
    clean_query = {k: v for k, v in query.items() if k not in SECRET_QUERY}
    return credential, clean_headers, clean_query
