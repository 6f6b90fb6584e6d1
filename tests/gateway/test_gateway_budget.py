"""Hard budgets: each call's `max_tokens` is clamped to what the remainder of every scope can pay
for (minus what calls in flight hold), the worst case is reserved and settled with the real usage
after; a call that cannot pay for a minimal answer is refused with a message naming the scope and
what remains; an unpriced model under a USD limit is refused. Every behaviour runs over the
in-memory, SQLite (real file) and PostgreSQL stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import BudgetExceededError, ConfigError, ProviderUnavailableError, UserError
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
from bastion.gateway._budget import Claim, Grant, Violation, grant
from bastion.gateway._gateway import estimate_prompt_tokens, with_max_tokens
from bastion.testing import FakeOpenAIServer, FakeReply, FunctionModel, ScriptedModel
from bastion.types import (
    ImagePart,
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    RunContext,
    Usage,
)


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


def req(max_tokens: int | None = 100, **ctx: object) -> ModelRequest:
    return ModelRequest(
        [Message.user("what is the weather like")],
        settings=ModelSettings(max_tokens=max_tokens),
        context=RunContext(**ctx),  # type: ignore[arg-type]
    )


PROMPT = estimate_prompt_tokens(req())


def fixed_usage(tokens_in: int, tokens_out: int, name: str = "test:m") -> FunctionModel:
    return FunctionModel(
        lambda r: ModelResponse(Message.assistant("ok"), usage=Usage(tokens_in, tokens_out, requests=1)), name=name
    )


def honest(name: str = "test:m", *, output: int | None = None, seen: list[int] | None = None) -> FunctionModel:
    """A provider that honours max_tokens: it writes `output` tokens (default: all it may)."""

    def answer(r: ModelRequest) -> ModelResponse:
        cap = r.settings.max_tokens
        assert cap is not None, "a budgeted call must reach the provider with a max_tokens"
        if seen is not None:
            seen.append(cap)
        used = cap if output is None else min(output, cap)
        prompt = estimate_prompt_tokens(r) // 4  # providers count fewer tokens than the bound
        return ModelResponse(
            Message.assistant("x" * used), usage=Usage(prompt, used, requests=1), finish_reason="length"
        )

    return FunctionModel(answer, name=name)


def test_prompt_bound_counts_every_part_generously() -> None:
    text = "héllo wörld " * 10
    plain = estimate_prompt_tokens(ModelRequest([Message.user(text)]))
    assert plain >= len(text.encode())  # one token per UTF-8 byte at most
    with_image = ModelRequest([Message("user", [ImagePart("https://x/y.png")])])
    assert estimate_prompt_tokens(with_image) >= 1_000


async def test_clamps_max_tokens_to_the_remainder_instead_of_refusing(store: BudgetStore) -> None:
    # (c) a key limited to 150 tokens used to refuse its first call ("needs up to 1069 tokens").
    seen: list[int] = []
    budget = Budget(run=BudgetLimits(tokens=150), store=store)
    gw = Gateway(models=[honest(seen=seen)], budgets=budget, cache=False)
    response = await gw.request(req(max_tokens=None, run_id="r"), "test:m")
    assert seen == [150 - PROMPT]
    assert response.usage.output_tokens == 150 - PROMPT
    spend = await budget.spent("run:default/r")
    assert spend.reserved_tokens == 0 and spend.tokens == response.usage.total_tokens <= 150


async def test_a_cap_below_the_remainder_is_kept(store: BudgetStore) -> None:
    seen: list[int] = []
    budget = Budget(run=BudgetLimits(tokens=10_000), store=store)
    gw = Gateway(models=[honest(seen=seen, output=5)], budgets=budget, cache=False)
    await gw.request(req(max_tokens=40, run_id="r"), "test:m")
    await gw.request(req(max_tokens=None, run_id="r"), "test:m")
    # an uncapped call under a limit is sent with the budget's default cap, never without one
    assert seen == [40, budget.default_output_tokens]


async def test_refuses_when_not_even_a_minimal_answer_fits(store: BudgetStore) -> None:
    budget = Budget(run=BudgetLimits(tokens=300), store=store)
    gw = Gateway(models=[fixed_usage(10, 90)], budgets=budget, cache=False)
    await gw.request(req(run_id="r1"), "test:m")
    await gw.request(req(run_id="r1"), "test:m")
    assert await budget.spent("run:default/r1") == Spend(200, 0.0, 0, 0.0)
    # 100 left: enough for the prompt bound plus 16 output tokens, so clamped, not refused
    await gw.request(req(run_id="r1"), "test:m")
    assert (await budget.spent("run:default/r1")).tokens == 300
    with pytest.raises(BudgetExceededError) as info:
        await gw.request(req(run_id="r1"), "test:m")
    e = info.value
    assert e.scope == "run:default/r1" and e.limit == 300 and e.used == 300
    message = str(e)
    assert "'run:default/r1' is exhausted" in message and "0 tokens of its limit of 300 tokens remain" in message
    assert f"needs at least {PROMPT + budget.min_output_tokens} tokens" in message
    assert "Budget(run=BudgetLimits(tokens=...))" in message and "overrides=" in message
    assert gw.stats.budget_refusals == 1
    await gw.request(req(run_id="r2"), "test:m")  # other runs are unaffected
    assert (await budget.spent("run:default/r1")).tokens == 300


async def test_scopes_tenant_user_session_day_clamp_to_the_tightest(store: BudgetStore) -> None:
    budget = Budget(
        tenant=BudgetLimits(tokens=10_000),
        user=BudgetLimits(tokens=10_000),
        session=BudgetLimits(tokens=10_000),
        day=BudgetLimits(tokens=250),
        store=store,
        today=lambda: "2026-11-23",
    )
    ctx: dict[str, Any] = {"tenant": "acme", "user": "bob", "session": "s1"}
    assert [k for k, _ in budget.charges(RunContext(**ctx))] == [
        "tenant:acme",
        "user:acme/bob",
        "session:acme/s1",
        "day:acme/2026-11-23",
    ]
    seen: list[int] = []
    gw = Gateway(models=[honest(seen=seen, output=80)], budgets=budget, cache=False)
    first = await gw.request(req(**ctx), "test:m")
    for key in ("tenant:acme", "user:acme/bob", "session:acme/s1", "day:acme/2026-11-23"):
        assert (await budget.spent(key)).tokens == first.usage.total_tokens
    second = await gw.request(req(max_tokens=500, tenant="acme", user="carol"), "test:m")
    assert seen[1] == 250 - first.usage.total_tokens - PROMPT  # the day scope is the tightest
    left = 250 - first.usage.total_tokens - second.usage.total_tokens
    await gw.request(req(tenant="acme", user="dave"), "test:m")
    assert seen[2] == left - PROMPT
    with pytest.raises(BudgetExceededError, match="day:acme/2026-11-23"):
        await gw.request(req(tenant="acme", user="erin"), "test:m")
    assert (await budget.spent("day:acme/2026-11-23")).tokens <= 250
    assert (await budget.spent("user:acme/erin")).tokens == 0  # refused everywhere, not half-charged
    await gw.request(req(tenant="other"), "test:m")  # another tenant has its own day


async def test_overrides_per_key() -> None:
    budget = Budget(tenant=BudgetLimits(tokens=50), overrides={"tenant:big": BudgetLimits(tokens=10_000)})
    gw = Gateway(models=[fixed_usage(10, 10)], budgets=budget, cache=False)
    await gw.request(req(tenant="big"), "test:m")
    with pytest.raises(BudgetExceededError):
        await gw.request(req(tenant="small"), "test:m")  # 50 < prompt bound + 16
    with pytest.raises(UserError, match="must start with"):
        Budget(overrides={"acme": BudgetLimits(tokens=1)})


async def test_usd_limits_clamp_by_price(store: BudgetStore) -> None:
    seen: list[int] = []
    budget = Budget(user=BudgetLimits(usd=0.01), store=store)
    gw = Gateway(
        models=[honest("acme:m", seen=seen)],
        pricing={"acme:m": {"input": 1.0, "output": 4.0}},
        budgets=budget,
        cache=False,
    )
    # $0.01 pays the prompt bound at $1/MTok plus (0.01 - PROMPT/1e6) / 4e-6 output tokens
    response = await gw.request(req(max_tokens=None, user="u"), "acme:m")
    affordable = int((0.01 - PROMPT * 1e-6) / 4e-6)
    assert affordable - 1 <= seen[0] <= affordable
    spend = await budget.spent("user:default/u")
    assert spend.usd == pytest.approx(response.cost_usd) and spend.usd <= 0.01 and spend.reserved_usd == 0
    with pytest.raises(BudgetExceededError, match=r"\$0\.01000000? |limit of \$0\.010000"):
        while True:  # spend the rest: it never crosses the limit
            await gw.request(req(max_tokens=None, user="u"), "acme:m")
    assert (await budget.spent("user:default/u")).usd <= 0.01 + 1e-12


async def test_unpriced_model_under_a_usd_limit_is_refused_until_priced() -> None:
    # (a) used to make 30 of 30 calls with a ledger of $0.00
    budget = Budget(tenant=BudgetLimits(usd=0.0001))
    gw = Gateway(models=[fixed_usage(10, 10, name="acme:new")], budgets=budget, cache=False)
    with pytest.raises(ConfigError) as info:
        await gw.request(req(), "acme:new")
    message = str(info.value)
    assert "'acme:new' has no known price" in message and "'tenant:default'" in message
    assert "Gateway(pricing=" in message
    assert gw.stats.budget_refusals == 1 and gw.stats.calls == 1
    priced = Gateway(
        models=[fixed_usage(10, 10, name="acme:new")],
        pricing={"acme:new": {"input": 1.0, "output": 1.0}},
        budgets=budget,
        cache=False,
    )
    assert (await priced.request(req(), "acme:new")).cost_usd == pytest.approx(20e-6)
    # a token-only limit needs no price
    tokens_only = Gateway(
        models=[fixed_usage(10, 10, name="acme:new")], budgets=Budget(tenant=BudgetLimits(tokens=1000)), cache=False
    )
    await tokens_only.request(req(), "acme:new")


async def test_fallback_chain_is_reserved_at_its_dearest_model() -> None:
    seen: list[int] = []
    budget = Budget(tenant=BudgetLimits(usd=0.001))
    gw = Gateway(
        models=[ScriptedModel([ProviderUnavailableError(503, "down")], name="cheap:m"), honest("dear:m", seen=seen)],
        tiers={"smart": ["cheap:m", "dear:m"]},
        pricing={"cheap:m": 0.1, "dear:m": {"input": 1.0, "output": 10.0}},
        budgets=budget,
        cache=False,
        retry=RetryPolicy.none(),
    )
    await gw.request(req(max_tokens=None), "smart")
    assert seen[0] <= int((0.001 - PROMPT * 1e-6) / 10e-6)  # priced at dear:m's $10/MTok output
    assert (await budget.spent("tenant:default")).usd <= 0.001


async def test_provider_caps_in_extra_are_clamped_too() -> None:
    sent: list[ModelRequest] = []

    def answer(r: ModelRequest) -> ModelResponse:
        sent.append(r)
        return ModelResponse(Message.assistant("ok"), usage=Usage(5, 5, requests=1))

    budget = Budget(tenant=BudgetLimits(tokens=200))
    gw = Gateway(models=[FunctionModel(answer, name="test:m")], budgets=budget, cache=False)
    r = req(max_tokens=None)
    r.settings.extra["max_completion_tokens"] = 10_000
    await gw.request(r, "test:m")
    assert sent[0].settings.max_tokens == 200 - PROMPT and "max_completion_tokens" not in sent[0].settings.extra
    assert r.settings.max_tokens is None and r.settings.extra == {"max_completion_tokens": 10_000}  # not mutated


def test_the_clamped_copy_keeps_every_field() -> None:
    # with_max_tokens spells the fields out (speed): a field added to either class must be added there.
    assert [f.name for f in fields(ModelSettings)] == [
        "temperature",
        "max_tokens",
        "top_p",
        "stop",
        "seed",
        "timeout",
        "extra",
        "prompt_cache",
    ]
    assert [f.name for f in fields(ModelRequest)] == [
        "messages", "tools", "tool_choice", "output", "settings", "context", "cacheable",
    ]  # fmt: skip
    r = ModelRequest(
        [Message.user("x")],
        tool_choice="required",
        settings=ModelSettings(
            temperature=0.1, max_tokens=9, top_p=0.5, stop=["s"], seed=3, timeout=2.0, prompt_cache=False
        ),
        context=RunContext(tenant="t"),
        cacheable=True,
    )
    assert with_max_tokens(r, 5, {"k": 1}) == replace(r, settings=replace(r.settings, max_tokens=5, extra={"k": 1}))


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


@pytest.mark.parametrize("unit", ["tokens", "usd"])
async def test_fifty_concurrent_uncapped_calls_never_overspend(store: BudgetStore, unit: str) -> None:
    # (b) 50 concurrent calls without max_tokens used to spend $0.015-0.026 of a $0.01 key.
    gate = asyncio.Event()
    arrived = 0

    async def answer(r: ModelRequest) -> ModelResponse:
        nonlocal arrived
        arrived += 1
        await asyncio.wait_for(gate.wait(), 10)
        cap = r.settings.max_tokens
        assert cap is not None
        return ModelResponse(Message.assistant("x"), usage=Usage(PROMPT // 4, cap, requests=1))

    limits = BudgetLimits(tokens=20_000) if unit == "tokens" else BudgetLimits(usd=0.01)
    budget = Budget(tenant=limits, store=store)
    gw = Gateway(
        models=[FunctionModel(answer, name="acme:m")],
        pricing={"acme:m": {"input": 0.5, "output": 2.0}},  # 4,096 tokens out = $0.008
        budgets=budget,
        cache=False,
    )

    async def call() -> ModelResponse | BaseException:
        try:
            return await gw.request(req(max_tokens=None, tenant="t"), "acme:m")
        except BudgetExceededError as e:
            return e

    tasks = [asyncio.create_task(call()) for _ in range(50)]
    while arrived + sum(t.done() for t in tasks) < 50:  # every call reserved (now at the gate) or was refused
        done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done or arrived + sum(t.done() for t in tasks) == 50, "calls stalled"
    held = await budget.spent("tenant:t")
    if unit == "tokens":
        assert held.reserved_tokens <= 20_000
    else:
        assert held.reserved_usd <= 0.01 + 1e-12
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    ok = [r for r in results if isinstance(r, ModelResponse)]
    assert len(ok) == arrived >= 2 and len(ok) < 50  # some clamped calls ran, the rest were refused
    spend = await budget.spent("tenant:t")
    assert spend.reserved_tokens == 0 and spend.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert spend.tokens == sum(r.usage.total_tokens for r in ok)
    assert spend.usd == pytest.approx(sum(r.cost_usd or 0.0 for r in ok))
    if unit == "tokens":
        assert spend.tokens <= 20_000
    else:
        assert spend.usd <= 0.01 + 1e-12


async def test_a_provider_that_overspends_is_recorded_and_stops_further_calls(store: BudgetStore) -> None:
    budget = Budget(run=BudgetLimits(tokens=500), store=store)
    gw = Gateway(models=[fixed_usage(10, 900)], budgets=budget, cache=False)  # ignores max_tokens
    await gw.request(req(max_tokens=None, run_id="r"), "test:m")
    assert (await budget.spent("run:default/r")).tokens == 910  # the real spend, above the limit
    with pytest.raises(BudgetExceededError, match="0 tokens of its limit of 500 tokens remain"):
        await gw.request(req(run_id="r"), "test:m")


async def test_a_call_without_reported_usage_is_charged_its_reservation(store: BudgetStore) -> None:
    budget = Budget(run=BudgetLimits(tokens=1_000), store=store)
    gw = Gateway(
        models=[FunctionModel(lambda r: ModelResponse(Message.assistant("ok"), usage=Usage()), name="test:m")],
        budgets=budget,
        cache=False,
    )
    await gw.request(req(max_tokens=100, run_id="r"), "test:m")
    assert (await budget.spent("run:default/r")).tokens == PROMPT + 100  # the worst case it held


async def test_streams_are_clamped_and_settled(store: BudgetStore) -> None:
    seen: list[int] = []
    budget = Budget(run=BudgetLimits(tokens=150), store=store)
    gw = Gateway(models=[honest(seen=seen)], budgets=budget, cache=False)
    final = [
        e.response async for e in gw.stream(req(max_tokens=None, run_id="r"), "test:m") if isinstance(e, ResponseDone)
    ]
    assert seen == [150 - PROMPT] and len(final) == 1
    assert (await budget.spent("run:default/r")).tokens == final[0].usage.total_tokens <= 150


async def test_fake_server_honours_the_clamp_over_http(store: BudgetStore) -> None:
    async with FakeOpenAIServer() as srv:
        # second reply: explicit usage, i.e. a provider that ignores max_tokens
        srv.reply("word " * 400, FakeReply("overspent", usage=Usage(10, 5_000)))
        budget = Budget(session=BudgetLimits(tokens=200), store=store)
        gw = Gateway(models={"fake": srv.model()}, budgets=budget, cache=False)
        try:
            first = await gw.request(req(max_tokens=None, session="s"), "fake")
            assert srv.requests[-1].body["max_tokens"] == 200 - PROMPT
            assert first.finish_reason == "length" and first.usage.output_tokens == 200 - PROMPT
            assert first.usage.input_tokens <= PROMPT  # the bound holds for the fake's count too
            await gw.request(req(max_tokens=None, session="s2"), "fake")
            assert (await budget.spent("session:default/s2")).tokens == 5_010
            with pytest.raises(BudgetExceededError):
                await gw.request(req(session="s2"), "fake")
            assert srv.count == 2
        finally:
            await gw.aclose()


def test_grant_is_the_largest_output_every_scope_can_pay() -> None:
    lim = BudgetLimits(tokens=1000, usd=0.01)
    spend = Spend(tokens=100, usd=0.002, reserved_tokens=100, reserved_usd=0.002)
    claim = Claim(tokens=50, usd=0.001, max_output=10_000, usd_per_output=1e-5, min_output=16)
    out = grant([("tenant:t", lim, spend)], claim)
    assert out == 500  # USD: (0.01 - 0.004 - 0.001) / 1e-5; tokens would allow 750
    assert grant([("tenant:t", BudgetLimits(tokens=1000), spend)], claim) == 750
    small = Claim(tokens=50, usd=0.0, max_output=5, min_output=5)
    assert grant([("tenant:t", lim, spend)], small) == 5
    full = Spend(tokens=990)
    v = grant([("tenant:t", lim, full)], claim)
    assert isinstance(v, Violation) and v.unit == "tokens" and v.needed == 66


async def test_sqlite_spend_is_shared_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    first, second = SQLiteBudgetStore(path), SQLiteBudgetStore(path)  # as two processes would
    try:
        limits = [("tenant:x", BudgetLimits(tokens=100))]
        granted = await first.try_reserve(limits, Claim(10, 0.0, 50, min_output=16))
        assert isinstance(granted, Grant) and granted.output == 50
        clamped = await second.try_reserve(limits, Claim(10, 0.0, 50, min_output=16))  # sees the first's 60
        assert isinstance(clamped, Grant) and clamped.output == 30
        refused = await second.try_reserve(limits, Claim(10, 0.0, 50, min_output=16))
        assert isinstance(refused, Violation) and refused.spend.reserved_tokens == 100
        await first.settle(granted.id, ["tenant:x"], 55, 0.0)
        await second.settle(clamped.id, ["tenant:x"], 40, 0.0)
    finally:
        first.close()
        second.close()
    reopened = SQLiteBudgetStore(path)
    try:
        assert await reopened.spent("tenant:x") == Spend(95, 0.0, 0, 0.0)
    finally:
        reopened.close()


@pytest.mark.postgres
async def test_postgres_spend_is_shared_between_stores(pg_url: str) -> None:
    from bastion.gateway import PostgresBudgetStore

    first, second = PostgresBudgetStore(pg_url), PostgresBudgetStore(pg_url)  # as two hosts would
    try:
        limits = [("tenant:x", BudgetLimits(tokens=100)), ("day:x/2026-01-01", BudgetLimits(tokens=1000))]
        granted = await first.try_reserve(limits, Claim(10, 0.0, 50, min_output=16))
        assert isinstance(granted, Grant) and granted.output == 50
        refused = await second.try_reserve(limits, Claim(30, 0.0, 50, min_output=16))
        assert isinstance(refused, Violation) and refused.key == "tenant:x" and refused.spend.reserved_tokens == 60
        await first.settle(granted.id, [k for k, _ in limits], 55, 0.25)
        assert await second.spent("tenant:x") == Spend(55, 0.25, 0, 0.0)
        assert await second.spent("day:x/2026-01-01") == Spend(55, 0.25, 0, 0.0)
    finally:
        await first.aclose()
        await second.aclose()


async def test_sqlite_reservations_of_dead_processes_expire(tmp_path: Path) -> None:
    s = SQLiteBudgetStore(tmp_path / "b.db", reservation_ttl=-1)  # already expired when written
    try:
        claim = Claim(40, 0.0, 50)
        first = await s.try_reserve([("tenant:x", BudgetLimits(tokens=100))], claim)
        assert isinstance(first, Grant) and (await s.spent("tenant:x")).reserved_tokens == 0
        assert isinstance(await s.try_reserve([("tenant:x", BudgetLimits(tokens=100))], claim), Grant)
        # a call that outlived its reservation still records what it spent
        await s.settle(first.id, ["tenant:x"], 70, 0.0)
        assert (await s.spent("tenant:x")).tokens == 70
    finally:
        s.close()


def test_limits_must_not_be_negative() -> None:
    with pytest.raises(UserError):
        BudgetLimits(tokens=-1)
    with pytest.raises(UserError):
        Budget(min_output_tokens=0)
