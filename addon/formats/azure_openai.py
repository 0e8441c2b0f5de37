"""Azure OpenAI chat completions: OpenAI's wire format at Azure's paths.

- classic: `.../openai/deployments/{deployment}/chat/completions?api-version=...`
  The deployment in the path picks the model (the body's `model` is ignored
  by Azure), and `api-version` can change the reply's shape, so both are in
  the key.
- v1: `.../openai/v1/chat/completions`, no api-version, model in the body:
  plain OpenAI Chat, and the very path Groq uses (`api.groq.com/openai/v1`).
  A path cannot tell the two apart, and nothing needs to, so the generic
  OpenAI Chat adapter serves it.

Auth is the `api-key` header (or an Entra bearer token); both are removed
before an adapter sees the request. The body, the replies and their
Azure-only fields (`prompt_filter_results`, `content_filter_results`, the
async-filter chunks with `object: ""`) are OpenAI Chat's business, which
this adapter inherits. A lower PRIORITY than the generic adapter makes the
deployment paths Azure's.
"""
from __future__ import annotations

import re

from .base import NotUnderstood, WireRequest
from .openai_chat import OpenAIChat

PRIORITY = 50
_CLASSIC = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions/?$")


class AzureOpenAIChat(OpenAIChat):
    name = "azure-openai-chat"
    kind = "azure-openai-chat"

    def recognise(self, method: str, path: str) -> bool:
        return _CLASSIC.search(path) is not None

    def model_of(self, request: WireRequest, body: dict) -> str:
        classic = _CLASSIC.search(request.path)
        if classic is None:
            raise NotUnderstood("not an Azure deployment path")
        return classic["deployment"]

    def extra_context(self, request: WireRequest) -> dict:
        version = request.query.get("api-version")
        if not version:
            raise NotUnderstood("an Azure deployment path without api-version")
        return {"api-version": version}


FORMAT = AzureOpenAIChat()
