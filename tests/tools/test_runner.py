"""The execution wrapper: validation, timeouts, retries, idempotency journal, breaker."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from bastion.errors import ToolArgumentsError
from bastion.gateway import CircuitBreakerConfig
from bastion.tools import (
    CircuitBreaker,
    MemoryJournal,
    RetryPolicy,
    SqliteJournal,
    ToolRunner,
    idempotency_key,
    tool,
)
from bastion.types import ToolCall


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_runner(**kw: Any) -> tuple[ToolRunner, list[float]]:
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    return ToolRunner(sleep=sleep, rng=random.Random(1), **kw), slept


async def test_invalid_arguments_list_every_problem() -> None:
    @tool
    def transfer(amount: float, iban: str) -> str:
        return "ok"

    runner, _ = make_runner()
    result = await runner.run(transfer, ToolCall("transfer", {"amount": "lots", "extra": 1}))
    assert result.is_error
    assert result.content["type"] == "invalid_arguments"
    paths = {p["path"] for p in result.content["problems"]}
    assert paths == {"amount", "iban", "extra"}


async def test_timeout_becomes_error_result() -> None:
    never = asyncio.Event()

    @tool(timeout=0.05, idempotent=False)
    async def slow() -> str:
        await never.wait()
        return "never"

    runner, _ = make_runner()
    result = await asyncio.wait_for(runner.run(slow, ToolCall("slow", {})), 5)
    assert result.is_error and result.content["type"] == "timeout"


async def test_idempotent_tool_retried_with_jittered_backoff() -> None:
    calls = 0

    @tool(side_effect="read")
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("reset by peer")
        return "data"

    runner, slept = make_runner(retry=RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=1.0))
    result = await runner.run(flaky, ToolCall("flaky", {}))
    assert not result.is_error and result.content == "data"
    assert calls == 3
    assert len(slept) == 2
    assert 0 <= slept[0] <= 0.1 and 0 <= slept[1] <= 0.2


async def test_non_idempotent_tool_never_retried() -> None:
    calls = 0

    @tool(side_effect="write")
    def send() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("reset")

    runner, slept = make_runner()
    result = await runner.run(send, ToolCall("send", {}), run_id="r1")
    assert result.is_error and result.content["type"] == "ConnectionError"
    assert calls == 1 and slept == []


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_resumed_run_never_repeats_completed_side_effect(backend: str, tmp_path: Any) -> None:
    effects: list[float] = []

    @tool(side_effect="irreversible")
    def pay(amount: float) -> dict[str, Any]:
        effects.append(amount)
        return {"paid": amount, "receipt": f"r{len(effects)}"}

    call = ToolCall("pay", {"amount": 10.0}, id="call_1")
    if backend == "memory":
        journal = MemoryJournal()
        first, _ = make_runner(journal=journal)
        r1 = await first.run(pay, call, run_id="run-a")
        again, _ = make_runner(journal=journal)
        r2 = await again.run(pay, call, run_id="run-a")
    else:
        path = tmp_path / "journal.db"
        with SqliteJournal(path) as j1:
            first, _ = make_runner(journal=j1)
            r1 = await first.run(pay, call, run_id="run-a")
        with SqliteJournal(path) as j2:  # a new process resuming the run
            again, _ = make_runner(journal=j2)
            r2 = await again.run(pay, call, run_id="run-a")
            # a different run is a different side effect
            r3 = await again.run(pay, call, run_id="run-b")
            assert r3.content["receipt"] == "r2"
    assert effects == ([10.0] if backend == "memory" else [10.0, 10.0])
    assert r1.content == r2.content == {"paid": 10.0, "receipt": "r1"}


async def test_interrupted_side_effect_reported_as_unknown_not_repeated(tmp_path: Any) -> None:
    effects = 0

    @tool(side_effect="write")
    def write() -> str:
        nonlocal effects
        effects += 1
        return "done"

    call = ToolCall("write", {}, id="call_9")
    with SqliteJournal(tmp_path / "j.db") as j:
        # simulate a crash after `begin` and before `complete`
        assert await j.begin(idempotency_key("run", call.id, {}), "write") is None
        runner, _ = make_runner(journal=j)
        result = await runner.run(write, call, run_id="run")
    assert effects == 0
    assert result.is_error and result.content["type"] == "outcome_unknown"


async def test_failed_side_effect_can_be_retried_later() -> None:
    attempts = 0

    @tool(side_effect="write")
    def write() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("temporary")
        return "ok"

    runner, _ = make_runner()
    call = ToolCall("write", {}, id="c")
    assert (await runner.run(write, call, run_id="r")).is_error
    assert (await runner.run(write, call, run_id="r")).content == "ok"


async def test_circuit_breaker_opens_then_half_opens() -> None:
    clock = FakeClock()
    healthy = False

    @tool(side_effect="read", idempotent=False)
    def api() -> str:
        if not healthy:
            raise OSError("down")
        return "up"

    runner, _ = make_runner(breaker_threshold=2, breaker_reset_after=10.0, clock=clock)
    for _ in range(2):
        assert (await runner.run(api, ToolCall("api", {}))).content["type"] == "OSError"
    blocked = await runner.run(api, ToolCall("api", {}))
    assert blocked.content["type"] == "circuit_open"
    clock.now = 11.0
    healthy = True
    assert (await runner.run(api, ToolCall("api", {}))).content == "up"
    assert runner.breaker("api").state == "closed"


def test_breaker_half_open_failure_reopens() -> None:
    clock = FakeClock()
    b = CircuitBreaker("api", CircuitBreakerConfig(failure_threshold=1, cooldown=5), clock)
    b.record_failure()
    assert b.state == "open" and not b.acquire()
    clock.now = 6
    assert b.acquire() and not b.acquire()  # one trial only
    b.record_failure()
    assert b.state == "open"


async def test_tool_exception_never_escapes() -> None:
    @tool
    def boom(x: int) -> int:
        raise ToolArgumentsError("x must be even", tool="boom")

    runner, _ = make_runner()
    result = await runner.run(boom, ToolCall("boom", {"x": 1}))
    assert result.is_error and "x must be even" in result.content["error"]
