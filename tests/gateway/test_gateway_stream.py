"""Streaming through the gateway: retries and fallbacks only before the first event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bastion.errors import AllModelsFailedError, ProviderUnavailableError, RateLimitError
from bastion.gateway import Budget, BudgetLimits, Gateway, RetryPolicy
from bastion.testing import ScriptedModel
from bastion.types import (
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    RunContext,
    StreamEvent,
    TextDelta,
    Usage,
)


class FlakyStreamModel:
    """Streams from a script of outcomes: an exception before the first event, or a list of
    text chunks, optionally followed by an exception mid-stream."""

    def __init__(self, name: str, script: list[BaseException | tuple[list[str], BaseException | None]]) -> None:
        self._name = name
        self.script = list(script)
        self.opened = 0
        self.closed = 0

    @property
    def name(self) -> str:
        return self._name

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise NotImplementedError("FlakyStreamModel only streams")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.opened += 1
        step = self.script.pop(0)
        try:
            if isinstance(step, BaseException):
                raise step
            chunks, tail = step
            for chunk in chunks:
                yield TextDelta(chunk)
            if tail is not None:
                raise tail
            text = "".join(chunks)
            usage = Usage(input_tokens=10, output_tokens=len(chunks), requests=1)
            yield ResponseDone(ModelResponse(Message.assistant(text), usage=usage, model=self._name))
        finally:
            self.closed += 1


async def no_sleep(_: float) -> None:
    return None


def req(**ctx: object) -> ModelRequest:
    return ModelRequest([Message.user("hi")], context=RunContext(**ctx), settings=ModelSettings(max_tokens=10))  # type: ignore[arg-type]


async def test_retries_before_the_first_token() -> None:
    m = FlakyStreamModel("test:s", [RateLimitError(429, "busy", retry_after=0), (["he", "llo"], None)])
    gw = Gateway(models=[m], cache=False, sleep=no_sleep, retry=RetryPolicy(max_attempts=2))
    events = [e async for e in gw.stream(req(), "test:s")]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["he", "llo"]
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.response.text == "hello" and done.response.cost_usd == 0.0
    assert m.opened == 2 and m.closed == 2


async def test_falls_back_before_the_first_token() -> None:
    a = FlakyStreamModel("test:a", [ProviderUnavailableError(503, "down")])
    b = FlakyStreamModel("test:b", [(["from b"], None)])
    gw = Gateway(models=[a, b], tiers={"t": ["test:a", "test:b"]}, cache=False, retry=RetryPolicy.none())
    events = [e async for e in gw.stream(req(), "t")]
    assert isinstance(events[-1], ResponseDone) and events[-1].response.model == "test:b"


async def test_error_after_the_first_token_propagates_without_retry() -> None:
    a = FlakyStreamModel("test:a", [(["par", "tial"], ProviderUnavailableError(502, "cut")), (["never"], None)])
    b = FlakyStreamModel("test:b", [(["never"], None)])
    gw = Gateway(
        models=[a, b], tiers={"t": ["test:a", "test:b"]}, cache=False, sleep=no_sleep, retry=RetryPolicy(max_attempts=3)
    )
    seen: list[str] = []
    with pytest.raises(ProviderUnavailableError, match="cut"):
        async for e in gw.stream(req(), "t"):
            if isinstance(e, TextDelta):
                seen.append(e.text)
    assert seen == ["par", "tial"]
    assert a.opened == 1 and b.opened == 0 and a.closed == 1


async def test_all_fail_before_first_token() -> None:
    a = FlakyStreamModel("test:a", [ProviderUnavailableError(503, "a")])
    b = FlakyStreamModel("test:b", [ProviderUnavailableError(503, "b")])
    gw = Gateway(models=[a, b], tiers={"t": ["test:a", "test:b"]}, cache=False, retry=RetryPolicy.none())
    with pytest.raises(AllModelsFailedError) as info:
        async for _ in gw.stream(req(), "t"):
            pass
    assert len(info.value.errors) == 2


async def test_consumer_breaking_early_closes_the_upstream_stream() -> None:
    m = FlakyStreamModel("test:s", [(["a", "b", "c"], None)])
    gw = Gateway(models=[m], cache=False)
    stream = gw.stream(req(), "test:s")
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert m.closed == 1
    assert gw.model("test:s").name == "test:s"


async def test_stream_settles_budget_with_real_usage() -> None:
    budget = Budget(run=BudgetLimits(tokens=1000))
    gw = Gateway(models=[ScriptedModel(["one two three"], name="test:s")], cache=False, budgets=budget)
    events = [e async for e in gw.stream(req(run_id="r1"), "test:s")]
    final = events[-1]
    assert isinstance(final, ResponseDone)
    spend = await budget.spent("run:default/r1")
    assert spend.tokens == final.response.usage.total_tokens and spend.reserved_tokens == 0
