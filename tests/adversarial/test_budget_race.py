"""Budgets under attack: a running `bastion serve` whose gateway is the OpenAI-compatible proxy,
virtual keys with hard limits, the official `openai` client firing 50 calls at once with no
`max_tokens`, against a `FakeOpenAIServer` that honours `max_tokens` (the model is the only
double). Spend is read back from the deployment's budget store (SQLite file or PostgreSQL).

Issue 11, defect 5: (a) an unpriced model under a USD limit made 30 of 30 calls with a ledger of
$0.00; (b) 50 concurrent uncapped calls spent $0.015-0.026 of a $0.01 key; (c) a 150-token key
refused its first call instead of clamping it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bastion.gateway import Budget, BudgetLimits, Gateway, Spend, SQLiteBudgetStore
from bastion.gateway.proxy import mint_key, open_key_store
from bastion.gateway.proxy._budgets import key_scope
from bastion.testing import FakeOpenAIServer
from bastion.types import Message, ModelRequest, ModelResponse, RunContext

openai = pytest.importorskip("openai")

APP = f"{Path(__file__).parent / 'budget_app.py'}:build"
# gpt-4o-mini's list prices: 4,096 output tokens (the default cap of an uncapped call) = $0.0025
PRICES = {"openai-compat:*#priced-model": {"input": 0.15, "output": 0.60}}
LONG = "lorem " * 2_000  # ~3,000 tokens: more than a $0.01 key can pay for in one call


def cost(usage: Any, rates: dict[str, float]) -> float:
    return (usage.prompt_tokens * rates["input"] + usage.completion_tokens * rates["output"]) / 1e6


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(record=True) as srv:
        yield srv


async def mint(home: Path, database: str | None = None, **limits: Any) -> tuple[str, str]:
    """A virtual key of tenant `a` in the deployment's key store: (plaintext, budget scope)."""
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    store = open_key_store(home, database)
    try:
        plaintext, record = await mint_key(store, tenant="a", **limits)
    finally:
        store.close()
    return plaintext, key_scope(record)


async def spent(served: Any, scope: str) -> Spend:
    if served.database:
        from bastion.gateway import PostgresBudgetStore

        pg = PostgresBudgetStore(served.database)
        try:
            return await pg.spent(scope)
        finally:
            await pg.aclose()
    store = SQLiteBudgetStore(served.home / "budgets.db")
    try:
        return await store.spent(scope)
    finally:
        store.close()


def client(served: Any, key: str) -> Any:
    # max_retries=0: a refusal must surface, not be retried behind the test's back
    return openai.AsyncOpenAI(base_url=f"{served.url}/openai/v1", api_key=key, max_retries=0, timeout=30)


async def fire(api: Any, n: int, model: str = "priced") -> list[Any]:
    """`n` concurrent uncapped calls: the completions, or the `openai` errors they raised."""

    async def one(i: int) -> Any:
        try:
            return await api.chat.completions.create(model=model, messages=[{"role": "user", "content": f"go {i}"}])
        except openai.APIStatusError as e:
            return e

    return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 60)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str | None:
    """None: budgets in `<home>/budgets.db`; else the PostgreSQL URL given to `--database`."""
    return request.getfixturevalue("pg_url") if request.param == "postgres" else None


async def test_fifty_concurrent_uncapped_calls_never_cross_a_usd_key_limit(
    database: str | None, upstream: FakeOpenAIServer, bastion_server: Callable[..., Any], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    key, scope = await mint(home, database, max_budget_usd=0.01)
    env = {"BUDGET_UPSTREAM": upstream.base_url, "BUDGET_PRICES": json.dumps(PRICES)}
    served = bastion_server(APP, home=home, env=env, database=database)
    upstream.reply(*[LONG] * 400)
    api = client(served, key)
    try:
        completions: list[Any] = []
        refusals: list[Any] = []
        for _wave in range(10):  # waves of 50 until the key is spent
            results = await fire(api, 50)
            done = [r for r in results if not isinstance(r, Exception)]
            completions += done
            refusals += [r for r in results if isinstance(r, Exception)]
            if not done:
                break
        else:
            pytest.fail("the key never ran out")
    finally:
        await api.close()
    assert completions and refusals
    for e in refusals:
        assert e.status_code == 429 and e.code == "budget_exceeded", e
        assert f"{scope!r} is exhausted" in e.message and "remain" in e.message
    # the last calls were clamped to what was left (the script is ~3,000 tokens long)
    clamped = [c for c in completions if c.choices[0].finish_reason == "length"]
    assert clamped and all(0 < c.usage.completion_tokens < 3_000 for c in clamped)
    expected = sum(cost(c.usage, PRICES["openai-compat:*#priced-model"]) for c in completions)
    spend = await spent(served, scope)
    assert spend.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert spend.usd == pytest.approx(expected, rel=1e-9)
    assert spend.usd <= 0.01 + 1e-12  # the hard limit: never crossed
    # ... and nearly used up: what is left cannot pay for a prompt bound plus 16 output tokens
    assert spend.usd > 0.01 - 0.0001
    assert spend.tokens == sum(c.usage.total_tokens for c in completions)


async def test_fifty_concurrent_streams_never_cross_a_usd_key_limit(
    upstream: FakeOpenAIServer, bastion_server: Callable[..., Any], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    key, scope = await mint(home, max_budget_usd=0.01)
    env = {"BUDGET_UPSTREAM": upstream.base_url, "BUDGET_PRICES": json.dumps(PRICES)}
    served = bastion_server(APP, home=home, env=env)
    upstream.reply(*[LONG] * 100)
    api = client(served, key)

    async def one(i: int) -> Any:
        try:
            stream = await api.chat.completions.create(
                model="priced",
                messages=[{"role": "user", "content": f"go {i}"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
            return usage
        except openai.APIStatusError as e:
            return e

    try:
        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 60)
    finally:
        await api.close()
    usages = [r for r in results if not isinstance(r, Exception)]
    refusals = [r for r in results if isinstance(r, Exception)]
    assert usages and refusals and all(u is not None for u in usages)
    assert all(e.status_code == 429 and e.code == "budget_exceeded" for e in refusals)
    spend = await spent(served, scope)
    assert spend.usd == pytest.approx(sum(cost(u, PRICES["openai-compat:*#priced-model"]) for u in usages), rel=1e-9)
    assert spend.usd <= 0.01 + 1e-12 and spend.reserved_usd == pytest.approx(0.0, abs=1e-12)


async def test_a_150_token_key_gets_a_clamped_first_call(
    upstream: FakeOpenAIServer, bastion_server: Callable[..., Any], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    key, scope = await mint(home, max_tokens=150)
    served = bastion_server(APP, home=home, env={"BUDGET_UPSTREAM": upstream.base_url})
    upstream.reply(LONG, LONG)
    api = client(served, key)
    try:
        first = await api.chat.completions.create(model="unpriced", messages=[{"role": "user", "content": "hello"}])
        sent = upstream.requests[-1].body["max_tokens"]
        assert 100 < sent < 150  # the key's 150 tokens minus a bound of the prompt
        assert first.choices[0].finish_reason == "length" and first.usage.completion_tokens == sent
        assert first.usage.total_tokens <= 150
        assert (await spent(served, scope)).tokens == first.usage.total_tokens
        with pytest.raises(openai.RateLimitError) as info:  # what is left pays for no answer
            await api.chat.completions.create(model="unpriced", messages=[{"role": "user", "content": "again"}])
        assert f"{scope!r} is exhausted" in info.value.message
    finally:
        await api.close()
    assert (await spent(served, scope)).tokens <= 150


async def test_an_unpriced_model_under_a_usd_limit_is_refused_until_priced(
    upstream: FakeOpenAIServer, bastion_server: Callable[..., Any], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    key, scope = await mint(home, max_budget_usd=0.0001)
    env = {"BUDGET_UPSTREAM": upstream.base_url, "BUDGET_PRICES": json.dumps(PRICES)}
    served = bastion_server(APP, home=home, env=env)
    api = client(served, key)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await api.chat.completions.create(model="unpriced", messages=[{"role": "user", "content": "hi"}])
        assert "has no known price" in info.value.message and scope in info.value.message
        assert "pricing=" in info.value.message  # says how to fix it
        assert upstream.count == 0  # refused before the provider was called
    finally:
        await api.close()
    served.stop()
    # the operator configures a price: the same key now works, until its $0.0001 is spent
    rates = {"input": 1.0, "output": 2.0}
    env["BUDGET_PRICES"] = json.dumps({**PRICES, "openai-compat:*#unpriced-model": rates})
    served = bastion_server(APP, home=home, env=env)
    upstream.reply(*["word " * 40] * 30)  # 40 output tokens: ~$0.0001 buys about one call
    api = client(served, key)
    answered: list[Any] = []
    try:
        for i in range(30):
            try:
                answered.append(
                    await api.chat.completions.create(model="unpriced", messages=[{"role": "user", "content": f"{i}"}])
                )
            except openai.RateLimitError as e:
                assert f"{scope!r} is exhausted" in e.message
    finally:
        await api.close()
    assert 1 <= len(answered) < 30
    spend = await spent(served, scope)
    assert spend.usd == pytest.approx(sum(cost(c.usage, rates) for c in answered), rel=1e-9)
    assert 0 < spend.usd <= 0.0001 + 1e-12


async def test_gateways_sharing_a_store_never_overspend(
    database: str | None, upstream: FakeOpenAIServer, tmp_path: Path
) -> None:
    # Two gateways with their own store objects, as two server processes would have, 25 calls
    # each at once: the remainder is granted atomically across them.
    def store() -> Any:
        if database is None:
            return SQLiteBudgetStore(tmp_path / "budgets.db")
        from bastion.gateway import PostgresBudgetStore

        return PostgresBudgetStore(database)

    rates = PRICES["openai-compat:*#priced-model"]
    gateways = [
        Gateway(
            tiers={"m": f"openai-compat:{upstream.base_url}#priced-model"},
            pricing=PRICES,
            budgets=Budget(tenant=BudgetLimits(usd=0.005), store=store()),
            cache=False,
        )
        for _ in range(2)
    ]
    upstream.reply(*[LONG] * 50)

    async def call(gw: Gateway, i: int) -> ModelResponse | Exception:
        try:
            return await gw.request(ModelRequest([Message.user(f"go {i}")], context=RunContext(tenant="t")), "m")
        except Exception as e:
            return e

    try:
        results = await asyncio.wait_for(asyncio.gather(*(call(gateways[i % 2], i) for i in range(50))), 60)
        spend = await gateways[0].budgets.spent("tenant:t")  # type: ignore[union-attr]
    finally:
        for gw in gateways:
            await gw.aclose()
    ok = [r for r in results if isinstance(r, ModelResponse)]
    refused = [r for r in results if not isinstance(r, ModelResponse)]
    assert ok and refused and all(type(e).__name__ == "BudgetExceededError" for e in refused)
    assert spend.usd == pytest.approx(sum(r.cost_usd or 0.0 for r in ok), rel=1e-9)
    assert spend.usd == pytest.approx(
        sum((r.usage.input_tokens * rates["input"] + r.usage.output_tokens * rates["output"]) / 1e6 for r in ok),
        rel=1e-9,
    )
    assert spend.usd <= 0.005 + 1e-12 and spend.reserved_usd == pytest.approx(0.0, abs=1e-12)
