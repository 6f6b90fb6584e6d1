"""Circuit breakers: closed -> open -> half_open -> closed/open, driven by an injected clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import (
    CircuitOpenError,
    ContextWindowExceededError,
    ModelHTTPError,
    ProviderUnavailableError,
    UserError,
)
from bastion.gateway import CircuitBreaker, CircuitBreakerConfig, Gateway, RetryPolicy
from bastion.testing import FunctionModel, ScriptedModel
from bastion.types import Message, ModelRequest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def req() -> ModelRequest:
    return ModelRequest([Message.user("hi")])


def test_state_machine() -> None:
    clock = Clock()
    b = CircuitBreaker("test:m", CircuitBreakerConfig(failure_threshold=3, cooldown=10), clock)
    for _ in range(2):
        assert b.acquire()
        b.record_failure()
    assert b.state == "closed"
    b.record_success()  # resets the consecutive count
    for _ in range(3):
        b.record_failure()
    assert b.state == "open" and not b.acquire()
    assert b.retry_in() == 10
    clock.now = 9.9
    assert b.state == "open"
    clock.now = 10.0
    assert b.state == "half_open"
    assert b.acquire()  # the one probe
    assert not b.acquire()  # nobody else while it runs
    b.record_failure()  # probe failed: open again, cool-down restarts
    assert b.state == "open" and b.retry_in() == 10
    clock.now = 20.0
    assert b.acquire()
    b.record_success()
    assert b.state == "closed" and b.acquire() and b.acquire()


def test_cancelled_probe_lets_another_through() -> None:
    clock = Clock()
    b = CircuitBreaker("x", CircuitBreakerConfig(failure_threshold=1, cooldown=1), clock)
    b.record_failure()
    clock.now = 1
    assert b.acquire() and not b.acquire()
    b.release()
    assert b.acquire()


def test_failure_rate_opens_a_flaky_breaker() -> None:
    b = CircuitBreaker(
        "x", CircuitBreakerConfig(failure_threshold=100, failure_rate=0.5, window=10, min_calls=10), Clock()
    )
    for _ in range(4):  # alternate: never two failures in a row
        b.record_success()
        b.record_failure()
    assert b.state == "closed"  # only 8 calls so far
    b.record_success()
    b.record_failure()
    assert b.state == "open"


def test_config_validation() -> None:
    with pytest.raises(UserError, match="failure_rate"):
        CircuitBreakerConfig(failure_rate=1.5)
    with pytest.raises(UserError, match="min_calls"):
        CircuitBreakerConfig(window=5, min_calls=6)


async def test_gateway_fails_fast_when_open_then_probes() -> None:
    clock = Clock()
    outcomes: list[object] = [ProviderUnavailableError(503, "down")] * 2 + ["recovered", "again"]
    m = ScriptedModel(outcomes, name="test:m")  # type: ignore[arg-type]
    gw = Gateway(
        models=[m],
        cache=False,
        retry=RetryPolicy.none(),
        breaker=CircuitBreakerConfig(failure_threshold=2, cooldown=30),
        clock=clock,
    )
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            await gw.request(req(), "test:m")
    assert gw.breaker_states() == {"test:m": "open"}
    with pytest.raises(CircuitOpenError, match=r"test:m.*30\.0s"):
        await gw.request(req(), "test:m")
    assert len(m.requests) == 2  # failed fast: the model was not called
    clock.now = 30
    assert gw.breaker_states() == {"test:m": "half_open"}
    assert (await gw.request(req(), "test:m")).text == "recovered"
    assert gw.breaker_states() == {"test:m": "closed"}


async def test_half_open_admits_a_single_concurrent_probe() -> None:
    clock = Clock()
    release = asyncio.Event()
    entered = asyncio.Event()
    calls = 0

    async def fn(request: ModelRequest) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ProviderUnavailableError(503, "down")
        entered.set()
        await release.wait()
        return "probe ok"

    gw = Gateway(
        models=[FunctionModel(fn, name="test:f")],
        cache=False,
        retry=RetryPolicy.none(),
        breaker=CircuitBreakerConfig(failure_threshold=1, cooldown=5),
        clock=clock,
    )
    with pytest.raises(ProviderUnavailableError):
        await gw.request(req(), "test:f")
    clock.now = 5
    probe = asyncio.create_task(gw.request(req(), "test:f"))
    await asyncio.wait_for(entered.wait(), 5)  # the probe is inside the model now
    with pytest.raises(CircuitOpenError):
        await gw.request(req(), "test:f")
    release.set()
    assert (await asyncio.wait_for(probe, 5)).text == "probe ok"
    assert gw.breaker_states()["test:f"] == "closed"


@pytest.mark.parametrize("error", [ModelHTTPError(400, "bad"), ContextWindowExceededError("long")])
async def test_caller_errors_do_not_open_the_breaker(error: Exception) -> None:
    m = ScriptedModel([error] * 5, name="test:m")
    gw = Gateway(models=[m], cache=False, retry=RetryPolicy.none(), breaker=CircuitBreakerConfig(failure_threshold=2))
    for _ in range(5):
        with pytest.raises(type(error)):
            await gw.request(req(), "test:m")
    assert gw.breaker_states() == {"test:m": "closed"}


@settings(max_examples=200, deadline=None)
@given(
    threshold=st.integers(min_value=1, max_value=5),
    steps=st.lists(st.sampled_from(["ok", "fail", "tick"]), max_size=60),
)
def test_breaker_matches_a_reference_model(threshold: int, steps: list[str]) -> None:
    """Against a tiny reference: opens on `threshold` consecutive failures, half-opens after
    the cool-down, a probe decides; calls are refused while open."""
    clock = Clock()
    b = CircuitBreaker("x", CircuitBreakerConfig(failure_threshold=threshold, cooldown=10), clock)
    state, streak, opened_at = "closed", 0, 0.0
    for step in steps:
        if step == "tick":
            clock.now += 5
            continue
        if state == "open" and clock.now - opened_at >= 10:
            state = "half_open"
        allowed = b.acquire()
        assert allowed == (state != "open"), (state, step)
        if not allowed:
            continue
        if step == "ok":
            b.record_success()
            state, streak = "closed", 0
        else:
            b.record_failure()
            streak += 1
            if state == "half_open" or streak >= threshold:
                state, streak, opened_at = "open", 0, clock.now
        assert b.state == state
