"""Hard budgets: reserve an estimate before the call, settle with real usage after, refuse with
a message that says how to raise the limit; concurrent calls never slip past a limit. Every
behaviour runs over the in-memory and the SQLite (real file) stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.errors import BudgetExceededError, ProviderUnavailableError, UserError
from bastion.gateway import (
    Budget,
    BudgetLimits,
    BudgetStore,
    Gateway,
    MemoryBudgetStore,
    RetryPolicy,
    Spend,
    SQLiteBudgetStore,
)
from bastion.gateway._budget import Violation
from bastion.gateway._gateway import estimate_prompt_tokens
from bastion.testing import FunctionModel, ScriptedModel
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, RunContext, Usage


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore()
    elif request.param == "sqlite":
        s = SQLiteBudgetStore(tmp_path / "budget.db")
        yield s
        s.close()
    else:
        from bastion.gateway import PostgresBudgetStore

        pg = PostgresBudgetStore(request.getfixturevalue("pg_url"))
        yield pg
        await pg.aclose()


def req(max_tokens: int = 100, **ctx: object) -> ModelRequest:
    return ModelRequest(
        [Message.user("what is the weather like")],
        settings=ModelSettings(max_tokens=max_tokens),
        context=RunContext(**ctx),  # type: ignore[arg-type]
    )


def fixed_usage(tokens_in: int, tokens_out: int, name: str = "test:m") -> FunctionModel:
    return FunctionModel(
        lambda r: ModelResponse(Message.assistant("ok"), usage=Usage(tokens_in, tokens_out, requests=1)), name=name
    )


async def test_refuses_when_the_estimate_would_cross(store: BudgetStore) -> None:
    budget = Budget(run=BudgetLimits(tokens=300), store=store)
    gw = Gateway(models=[fixed_usage(10, 90)], budgets=budget, cache=False)
    await gw.request(req(run_id="r1"), "test:m")  # estimate ~107, real 100
    await gw.request(req(run_id="r1"), "test:m")
    spend = await budget.spent("run:default/r1")
    assert spend.tokens == 200 and spend.reserved_tokens == 0
    with pytest.raises(BudgetExceededError) as info:
        await gw.request(req(run_id="r1"), "test:m")  # 200 + ~107 > 300
    e = info.value
    assert e.scope == "run:default/r1" and e.limit == 300 and e.used == 200
    message = str(e)
    assert "limit 300 tokens" in message and "used 200 tokens" in message
    assert "Budget(run=BudgetLimits(tokens=...))" in message and "overrides=" in message
    assert gw.stats.budget_refusals == 1
    # other runs are unaffected; nothing was lost from the refused call
    await gw.request(req(run_id="r2"), "test:m")
    assert (await budget.spent("run:default/r1")).tokens == 200


async def test_scopes_tenant_user_session_day(store: BudgetStore) -> None:
    budget = Budget(
        tenant=BudgetLimits(tokens=10_000),
        user=BudgetLimits(tokens=10_000),
        session=BudgetLimits(tokens=10_000),
        day=BudgetLimits(tokens=250),
        store=store,
        today=lambda: "2026-11-23",
    )
    ctx = {"tenant": "acme", "user": "bob", "session": "s1"}
    assert [k for k, _ in budget.charges(RunContext(**ctx))] == [
        "tenant:acme",
        "user:acme/bob",
        "session:acme/s1",
        "day:acme/2026-11-23",
    ]
    gw = Gateway(models=[fixed_usage(20, 80)], budgets=budget, cache=False)
    await gw.request(req(**ctx), "test:m")
    for key in ("tenant:acme", "user:acme/bob", "session:acme/s1", "day:acme/2026-11-23"):
        assert (await budget.spent(key)).tokens == 100
    await gw.request(req(tenant="acme"), "test:m")
    with pytest.raises(BudgetExceededError, match="day:acme/2026-11-23"):
        await gw.request(req(tenant="acme", user="carol"), "test:m")
    assert (await budget.spent("user:acme/carol")).tokens == 0  # refused everywhere, not half-charged
    await gw.request(req(tenant="other"), "test:m")  # another tenant has its own day


async def test_overrides_per_key() -> None:
    budget = Budget(tenant=BudgetLimits(tokens=50), overrides={"tenant:big": BudgetLimits(tokens=10_000)})
    gw = Gateway(models=[fixed_usage(10, 10)], budgets=budget, cache=False)
    await gw.request(req(tenant="big"), "test:m")
    with pytest.raises(BudgetExceededError):
        await gw.request(req(tenant="small"), "test:m")
    with pytest.raises(UserError, match="must start with"):
        Budget(overrides={"acme": BudgetLimits(tokens=1)})


async def test_usd_limits_are_priced(store: BudgetStore) -> None:
    budget = Budget(user=BudgetLimits(usd=0.01), store=store)
    gw = Gateway(
        models=[fixed_usage(1000, 1000, name="acme:m")],
        pricing={"acme:m": {"input": 2.0, "output": 2.0}},  # $0.004 per call
        budgets=budget,
        cache=False,
    )
    await gw.request(req(max_tokens=1000, user="u"), "acme:m")
    await gw.request(req(max_tokens=1000, user="u"), "acme:m")
    assert (await budget.spent("user:default/u")).usd == pytest.approx(0.008)
    # the estimate (~1011 tokens at $2/MTok, ~$0.002) would cross $0.01
    with pytest.raises(BudgetExceededError, match=r"limit \$0\.010000"):
        await gw.request(req(max_tokens=1000, user="u"), "acme:m")
    await gw.request(req(max_tokens=500, user="u"), "acme:m")  # a smaller estimate still fits


async def test_failed_calls_release_their_reservation(store: BudgetStore) -> None:
    budget = Budget(run=BudgetLimits(tokens=150), store=store)
    gw = Gateway(
        models=[ScriptedModel([ProviderUnavailableError(503, "x"), "ok"], name="test:m")],
        budgets=budget,
        cache=False,
        retry=RetryPolicy.none(),
    )
    with pytest.raises(ProviderUnavailableError):
        await gw.request(req(run_id="r"), "test:m")
    assert await budget.spent("run:default/r") == Spend()
    await gw.request(req(run_id="r"), "test:m")  # the reservation is free again


async def test_concurrent_calls_never_overspend(store: BudgetStore) -> None:
    gate = asyncio.Event()
    started = 0
    probe = req(max_tokens=100, tenant="t")
    estimate = estimate_prompt_tokens(probe) + 100

    async def answer(r: ModelRequest) -> ModelResponse:
        nonlocal started
        started += 1
        await gate.wait()
        return ModelResponse(Message.assistant("ok"), usage=Usage(estimate - 100, 100, requests=1))

    limit = 1000
    budget = Budget(tenant=BudgetLimits(tokens=limit), store=store)
    gw = Gateway(models=[FunctionModel(answer, name="test:m")], budgets=budget, cache=False)
    tasks = [asyncio.create_task(gw.request(req(max_tokens=100, tenant="t"), "test:m")) for _ in range(20)]
    # Every task either reserved (and now waits at the gate) or was refused.
    refused = 0
    while started + refused < 20:
        done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done or started + refused == 20, "tasks stalled"
        refused = sum(1 for t in tasks if t.done() and isinstance(t.exception(), BudgetExceededError))
    assert started == limit // estimate
    spend = await budget.spent("tenant:t")
    assert spend.reserved_tokens == started * estimate <= limit
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert sum(isinstance(r, ModelResponse) for r in results) == started
    spend = await budget.spent("tenant:t")
    assert spend.tokens == started * estimate <= limit and spend.reserved_tokens == 0


async def test_overspend_is_bounded_by_one_call_when_estimates_are_low() -> None:
    # The model uses far more than the estimate (no max_tokens, tiny default): the budget can be
    # crossed by that one call, and every later call is refused.
    budget = Budget(run=BudgetLimits(tokens=500), default_output_tokens=10)
    gw = Gateway(models=[fixed_usage(10, 390)], budgets=budget, cache=False)
    await gw.request(ModelRequest([Message.user("x")], context=RunContext(run_id="r")), "test:m")
    await gw.request(ModelRequest([Message.user("x")], context=RunContext(run_id="r")), "test:m")
    with pytest.raises(BudgetExceededError):
        await gw.request(ModelRequest([Message.user("x")], context=RunContext(run_id="r")), "test:m")
    assert (await budget.spent("run:default/r")).tokens == 800  # 500 + at most one call (400)


async def test_sqlite_spend_is_shared_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    first, second = SQLiteBudgetStore(path), SQLiteBudgetStore(path)  # as two processes would
    try:
        limits = [("tenant:x", BudgetLimits(tokens=100))]
        rid = await first.try_reserve(limits, 60, 0.0)
        assert isinstance(rid, str)
        refused = await second.try_reserve(limits, 60, 0.0)  # sees the other's reservation
        assert isinstance(refused, Violation) and refused.spend.reserved_tokens == 60
        await first.settle(rid, 55, 0.0)
    finally:
        first.close()
        second.close()
    reopened = SQLiteBudgetStore(path)
    try:
        assert (await reopened.spent("tenant:x")).tokens == 55
    finally:
        reopened.close()


@pytest.mark.postgres
async def test_postgres_spend_is_shared_between_stores(pg_url: str) -> None:
    from bastion.gateway import PostgresBudgetStore

    first, second = PostgresBudgetStore(pg_url), PostgresBudgetStore(pg_url)  # as two hosts would
    try:
        limits = [("tenant:x", BudgetLimits(tokens=100)), ("day:x/2026-01-01", BudgetLimits(tokens=1000))]
        rid = await first.try_reserve(limits, 60, 0.0)
        assert isinstance(rid, str)
        refused = await second.try_reserve(limits, 60, 0.0)
        assert isinstance(refused, Violation) and refused.key == "tenant:x" and refused.spend.reserved_tokens == 60
        await first.settle(rid, 55, 0.25)
        assert await second.spent("tenant:x") == Spend(55, 0.25, 0, 0.0)
        assert await second.spent("day:x/2026-01-01") == Spend(55, 0.25, 0, 0.0)
    finally:
        await first.aclose()
        await second.aclose()


async def test_sqlite_reservations_of_dead_processes_expire(tmp_path: Path) -> None:
    s = SQLiteBudgetStore(tmp_path / "b.db", reservation_ttl=-1)  # already expired when written
    try:
        assert isinstance(await s.try_reserve([("tenant:x", BudgetLimits(tokens=100))], 90, 0.0), str)
        assert (await s.spent("tenant:x")).reserved_tokens == 0
        assert isinstance(await s.try_reserve([("tenant:x", BudgetLimits(tokens=100))], 90, 0.0), str)
    finally:
        s.close()


def test_limits_must_not_be_negative() -> None:
    with pytest.raises(UserError):
        BudgetLimits(tokens=-1)
