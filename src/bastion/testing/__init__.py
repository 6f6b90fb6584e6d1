"""Public test doubles. Use these instead of ad-hoc mocks.

- `ScriptedModel` / `FunctionModel`: in-process models with scripted or computed replies.
- `DirectToolExecutor`: a tool executor without the policy layer (validate, invoke, wrap
  errors, optional human approval via a graph interrupt).
- `HashingEmbedder`: a deterministic, instant embedder for memory tests (no model files).
- `FakeOpenAIServer`: a real HTTP server on 127.0.0.1 speaking the OpenAI Chat Completions
  API, which can be told to be slow, fail with 429/5xx, time out, answer malformed JSON or
  cut a stream mid-way; it also speaks both batch APIs (`BatchFaults`: expiry, failed
  requests, batches that end only when polled or released).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.testing._models import FunctionModel, Reply, ScriptedModel, stream_response, to_response
from bastion.testing._tools import DirectToolExecutor

if TYPE_CHECKING:
    from bastion.memory import HashingEmbedder
    from bastion.testing._fake_batch import BatchFaults
    from bastion.testing._fake_server import FakeOpenAIServer, FakeReply, Fault
    from bastion.testing._postgres import postgres_server
    from bastion.testing._serve import serve_app

__all__ = [
    "BatchFaults",
    "DirectToolExecutor",
    "FakeOpenAIServer",
    "FakeReply",
    "Fault",
    "FunctionModel",
    "HashingEmbedder",
    "Reply",
    "ScriptedModel",
    "postgres_server",
    "serve_app",
    "stream_response",
    "to_response",
]


def __getattr__(name: str) -> Any:
    if name == "serve_app":
        from bastion.testing._serve import serve_app

        return serve_app
    if name == "HashingEmbedder":
        from bastion.memory import HashingEmbedder

        return HashingEmbedder
    if name == "postgres_server":
        from bastion.testing._postgres import postgres_server

        return postgres_server
    if name == "BatchFaults":
        from bastion.testing._fake_batch import BatchFaults

        return BatchFaults
    if name in {"FakeOpenAIServer", "FakeReply", "Fault"}:
        from bastion.testing import _fake_server

        return getattr(_fake_server, name)
    raise AttributeError(f"module 'bastion.testing' has no attribute {name!r}")
