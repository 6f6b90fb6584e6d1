"""Retries: computed back-off delays (full jitter), Retry-After, what is and is not retried,
per-attempt timeouts and the total deadline. The clock and sleep are injected: nothing waits."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import (
    ContextWindowExceededError,
    InvalidResponseError,
    ModelHTTPError,
    ModelTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    UserError,
)
from bastion.gateway import Gateway, RetryPolicy
from bastion.testing import FunctionModel, ScriptedModel
from bastion.types import Message, ModelRequest, ModelSettings


class FakeTime:
    """A clock that only moves when the gateway sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def req(text: str = "hi", **settings: object) -> ModelRequest:
    return ModelRequest([Message.user(text)], settings=ModelSettings(**settings))  # type: ignore[arg-type]


def gateway(model: object, t: FakeTime, rand: float = 0.5, **kw: object) -> Gateway:
    return Gateway(models=[model], cache=False, clock=t.clock, sleep=t.sleep, rand=lambda: rand, **kw)  # type: ignore[arg-type]


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    p = RetryPolicy(max_attempts=10, base_delay=0.25, max_delay=2.0)
    assert [p.backoff(n, lambda: 1.0) for n in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert [p.backoff(n, lambda: 0.5) for n in range(1, 5)] == [0.125, 0.25, 0.5, 1.0]
    assert p.backoff(3, lambda: 0.0) == 0.0
    assert RetryPolicy(jitter="none", base_delay=1, max_delay=3).backoff(3, lambda: 0.0) == 3.0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(UserError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(UserError, match="jitter"):
        RetryPolicy(jitter="half")  # type: ignore[arg-type]


async def test_retries_unavailable_with_computed_delays() -> None:
    t = FakeTime()
    m = ScriptedModel(
        [ProviderUnavailableError(503, "down"), ProviderUnavailableError(502, "down"), "ok"], name="test:m"
    )
    gw = gateway(m, t, rand=0.5, retry=RetryPolicy(max_attempts=3, base_delay=0.25, max_delay=8))
    resp = await gw.request(req(), "test:m")
    assert resp.text == "ok"
    assert t.sleeps == [0.125, 0.25]  # 0.5 * 0.25, 0.5 * 0.5
    assert len(m.requests) == 3
    assert gw.stats.retries == 2


async def test_honours_retry_after() -> None:
    t = FakeTime()
    m = ScriptedModel([RateLimitError(429, "slow down", retry_after=3.5), "ok"], name="test:m")
    gw = gateway(m, t, retry=RetryPolicy(max_attempts=2, base_delay=0.25))
    assert (await gw.request(req(), "test:m")).text == "ok"
    assert t.sleeps == [3.5]


async def test_rate_limit_without_hint_uses_backoff() -> None:
    t = FakeTime()
    m = ScriptedModel([RateLimitError(429, "slow down"), "ok"], name="test:m")
    gw = gateway(m, t, rand=1.0, retry=RetryPolicy(max_attempts=2, base_delay=0.4))
    await gw.request(req(), "test:m")
    assert t.sleeps == [0.4]


async def test_retry_after_longer_than_allowed_gives_up_at_once() -> None:
    t = FakeTime()
    m = ScriptedModel([RateLimitError(429, "come back tomorrow", retry_after=3600), "never"], name="test:m")
    gw = gateway(m, t, retry=RetryPolicy(max_attempts=3, max_retry_after=60))
    with pytest.raises(RateLimitError) as info:
        await gw.request(req(), "test:m")
    assert info.value.retry_after == 3600
    assert t.sleeps == [] and m.remaining == 1


@pytest.mark.parametrize(
    "error",
    [
        ModelHTTPError(400, "bad request"),
        ModelHTTPError(401, "bad key"),
        ContextWindowExceededError("too long"),
        InvalidResponseError("garbage"),
    ],
)
async def test_caller_mistakes_are_not_retried(error: Exception) -> None:
    t = FakeTime()
    m = ScriptedModel([error, "never"], name="test:m")
    gw = gateway(m, t, retry=RetryPolicy(max_attempts=5))
    with pytest.raises(type(error)):
        await gw.request(req(), "test:m")
    assert len(m.requests) == 1 and t.sleeps == []


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    t = FakeTime()
    m = ScriptedModel([ProviderUnavailableError(503, f"down {i}") for i in range(5)], name="test:m")
    gw = gateway(m, t, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(ProviderUnavailableError, match="down 2") as info:
        await gw.request(req(), "test:m")
    assert info.value.model == "test:m"
    assert len(m.requests) == 3 and len(t.sleeps) == 2


async def test_per_attempt_timeout_then_success() -> None:
    calls = 0
    never = asyncio.Event()

    async def fn(request: ModelRequest) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await never.wait()  # hangs until the gateway's attempt timeout cancels it
        return "second attempt"

    t = FakeTime()
    gw = gateway(FunctionModel(fn, name="test:slow"), t, retry=RetryPolicy(max_attempts=2, attempt_timeout=0.05))
    resp = await asyncio.wait_for(gw.request(req(), "test:slow"), 10)
    assert resp.text == "second attempt" and calls == 2


async def test_request_timeout_setting_wins_and_raises_model_timeout() -> None:
    never = asyncio.Event()

    async def fn(request: ModelRequest) -> str:
        await never.wait()
        return "unreachable"

    t = FakeTime()
    gw = gateway(FunctionModel(fn, name="test:hang"), t, retry=RetryPolicy(max_attempts=2, attempt_timeout=60))
    with pytest.raises(ModelTimeoutError, match=r"within 0\.05s"):
        await asyncio.wait_for(gw.request(req(timeout=0.05), "test:hang"), 10)
    assert len(t.sleeps) == 1  # timed out twice, retried once


async def test_total_deadline_stops_retrying() -> None:
    t = FakeTime()
    m = ScriptedModel([RateLimitError(429, "x", retry_after=4.0)] * 5, name="test:m")
    gw = gateway(m, t, retry=RetryPolicy(max_attempts=5, deadline=10.0))
    with pytest.raises(ModelTimeoutError, match=r"deadline of 10\.0s") as info:
        await gw.request(req(), "test:m")
    assert t.sleeps == [4.0, 4.0]  # a third 4 s wait would end past the 10 s deadline
    assert isinstance(info.value.__cause__, RateLimitError)
    assert len(m.requests) == 3


async def test_unexpected_exceptions_propagate_untouched() -> None:
    t = FakeTime()
    m = ScriptedModel([KeyError("bug")], name="test:m")
    gw = gateway(m, t, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(KeyError):
        await gw.request(req(), "test:m")
    assert t.sleeps == [] and gw.breaker_states() == {"test:m": "closed"}


@settings(max_examples=200, deadline=None)
@given(
    failures=st.integers(min_value=1, max_value=60),
    r=st.floats(min_value=0, max_value=1),
    base=st.floats(min_value=0, max_value=10),
    cap=st.floats(min_value=0, max_value=100),
)
def test_full_jitter_stays_within_the_exponential_cap(failures: int, r: float, base: float, cap: float) -> None:
    p = RetryPolicy(max_attempts=100, base_delay=base, max_delay=cap)
    delay = p.backoff(failures, lambda: r)
    ceiling = min(cap, base * 2 ** (failures - 1))
    assert 0 <= delay <= ceiling
    assert delay == pytest.approx(r * ceiling)
