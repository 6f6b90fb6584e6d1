"""The Model contract: what every wire format, test double and the gateway itself implement.

A Model speaks one API (`openai_chat`, `anthropic`, `gemini`, `llamacpp`); where it sends
requests and with which credentials is the Provider's business (see `_providers.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from bastion.types import ModelRequest, ModelResponse, ResponseDone, StreamEvent


@runtime_checkable
class Model(Protocol):
    """One model behind one API. `name` is its `"provider:model"` address."""

    @property
    def name(self) -> str: ...

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Send one request and return the whole response."""
        ...

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream the response; the last event is always `ResponseDone`."""
        ...


async def stream_via_request(model: Model, request: ModelRequest) -> AsyncIterator[StreamEvent]:
    """A `stream()` for models that cannot stream: one text delta, then done."""
    response = await model.request(request)
    if response.text:
        from bastion.types import TextDelta

        yield TextDelta(response.text)
    yield ResponseDone(response)


async def collect(stream: AsyncIterator[StreamEvent]) -> ModelResponse:
    """Drain a stream and return its final response."""
    final: ModelResponse | None = None
    async for event in stream:
        if isinstance(event, ResponseDone):
            final = event.response
    if final is None:
        from bastion.errors import InvalidResponseError

        raise InvalidResponseError("stream ended without a final response")
    return final
