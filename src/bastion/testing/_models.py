"""Model test doubles: no network, deterministic, record the requests they get (the last 100 by default)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeAlias

from bastion.errors import UserError
from bastion.types import (
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

KEEP_REQUESTS = 100
"""How many recent requests a test model keeps in `.requests` unless told otherwise: enough for any
assertion, bounded so a model serving a load test does not grow without end. Each request holds
its whole conversation: at 1,000 kept, a worker serving one 1,000-run thread held 100 MB of old
requests (`keep_requests=0` keeps none; `None` keeps all)."""


class RecentRequests(list[ModelRequest]):
    """A list that keeps only the newest `maxlen` requests (all of them when `maxlen` is None)."""

    def __init__(self, maxlen: int | None) -> None:
        super().__init__()
        self.maxlen = maxlen

    def append(self, request: ModelRequest) -> None:
        super().append(request)
        if self.maxlen is not None and len(self) > self.maxlen:
            del self[0]


Reply: TypeAlias = ModelResponse | Message | str | list[ToolCall] | ToolCall | BaseException
"""What a scripted turn may be: a whole response, an assistant message, plain text, tool calls,
or an exception to raise."""


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def to_response(reply: Reply, request: ModelRequest, model: str) -> ModelResponse:
    """Normalise a scripted reply into a `ModelResponse` with plausible usage."""
    if isinstance(reply, BaseException):
        raise reply
    if isinstance(reply, ModelResponse):
        return reply
    if isinstance(reply, str):
        message = Message.assistant(reply)
    elif isinstance(reply, ToolCall):
        message = Message.assistant(tool_calls=[reply])
    elif isinstance(reply, list):
        message = Message.assistant(tool_calls=reply)
    else:
        message = reply
    prompt = sum(_estimate_tokens(m.text) for m in request.messages)
    usage = Usage(input_tokens=prompt, output_tokens=_estimate_tokens(message.text), requests=1)
    finish = "tool_calls" if message.tool_calls else "stop"
    return ModelResponse(message=message, usage=usage, model=model, finish_reason=finish, cost_usd=0.0)


async def stream_response(response: ModelResponse) -> AsyncIterator[StreamEvent]:
    """Stream a response word by word, then its tool calls, then `ResponseDone`."""
    text = response.message.text if response.message.role == "assistant" else ""
    words = text.split(" ")
    for i, word in enumerate(words):
        if word or i:
            yield TextDelta(word if i == 0 else " " + word)
    import json

    for i, call in enumerate(response.tool_calls):
        yield ToolCallDelta(index=i, id=call.id, name=call.name, arguments_delta=json.dumps(call.arguments))
    yield ResponseDone(response)


class ScriptedModel:
    """Answers with `replies` in order; raises `UserError` when the script runs out.

    >>> model = ScriptedModel(["hello", ToolCall("get_weather", {"city": "Paris"})])
    """

    def __init__(
        self, replies: Sequence[Reply], *, name: str = "test:scripted", keep_requests: int | None = KEEP_REQUESTS
    ) -> None:
        self._replies = list(replies)
        self._name = name
        self._calls = 0
        self.requests = RecentRequests(keep_requests)
        """The most recent requests (all of them with `keep_requests=None`)."""

    @property
    def name(self) -> str:
        return self._name

    @property
    def remaining(self) -> int:
        return len(self._replies)

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        self._calls += 1
        if not self._replies:
            raise UserError(
                f"ScriptedModel {self._name!r} ran out of replies after {self._calls - 1} calls; "
                "add more replies to the script"
            )
        return to_response(self._replies.pop(0), request, self._name)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        response = await self.request(request)
        async for event in stream_response(response):
            yield event


ModelFunction: TypeAlias = Callable[[ModelRequest], Reply | Awaitable[Reply]]


class FunctionModel:
    """Answers by calling `fn(request)` (sync or async), for tests whose replies depend on input."""

    def __init__(
        self, fn: ModelFunction, *, name: str = "test:function", keep_requests: int | None = KEEP_REQUESTS
    ) -> None:
        self._fn = fn
        self._name = name
        self.requests = RecentRequests(keep_requests)
        """The most recent requests (all of them with `keep_requests=None`)."""

    @property
    def name(self) -> str:
        return self._name

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        reply = self._fn(request)
        if inspect.isawaitable(reply):
            reply = await reply
        return to_response(reply, request, self._name)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        response = await self.request(request)
        async for event in stream_response(response):
            yield event
