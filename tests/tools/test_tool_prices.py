"""Priced tool calls: a tool declares a price per call and per unit; the runner holds the price in
every budget of the call before the body runs (refusing a call the remainder cannot pay, body
untouched), charges it when the body returns, charges nothing when it fails; the cost lands on
the tool's span, so cost rollups by tool and run include it, and on the agent run's cost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import UserError
from bastion.gateway import Budget, BudgetLimits, Gateway, Spend, SQLiteBudgetStore
from bastion.graph.agent import Agent
from bastion.policy import AuditLog, Policy, StaticSecretProvider, ToolGateway
from bastion.testing import ScriptedModel
from bastion.tools import ToolPrice, ToolRunner, tool
from bastion.tracing import TraceStore, TracingHandle, configure_tracing, cost_by
from bastion.tracing._cost import total_cost
from bastion.types import RunContext, ToolCall, ToolResult

CTX = RunContext(tenant="acme", user="bob", run_id="r1")


def test_prices_per_call_and_per_unit() -> None:
    @tool(price=0.01)
    def lookup(q: str) -> str:
        return q

    @tool(price=ToolPrice(per_call=0.001, per_unit=0.002, unit="page", units="pages"))
    def fetch(url: str, pages: int = 1) -> str:
        return url

    @tool(price=ToolPrice(per_unit=0.5, unit="url", units=lambda a: len(a["urls"])))
    def crawl(urls: list[str]) -> int:
        return len(urls)

    assert lookup.price == ToolPrice(per_call=0.01)
    assert fetch.price is not None and fetch.price.cost({"url": "x", "pages": 5}) == pytest.approx((0.011, 5.0))
    assert crawl.price is not None and crawl.price.cost({"urls": ["a", "b"]}) == (1.0, 2.0)
    with pytest.raises(UserError, match="units="):
        ToolPrice(per_unit=0.1)
    with pytest.raises(UserError, match=">= 0"):
        ToolPrice(per_call=-1)
    with pytest.raises(UserError, match="USD per call"):
        tool(price="free")(lambda: None)  # type: ignore[call-overload]


@pytest.fixture
def budget(tmp_path: Path) -> Iterator[Budget]:
    store = SQLiteBudgetStore(tmp_path / "budgets.db")
    yield Budget(user=BudgetLimits(usd=0.05, period="day"), tenant=BudgetLimits(usd=1.0), store=store)
    store.close()


async def test_runner_charges_budgets_and_refuses_before_the_body_runs(budget: Budget) -> None:
    ran: list[int] = []

    @tool(price=ToolPrice(per_call=0.01, per_unit=0.005, unit="page", units="pages"))
    def fetch(pages: int) -> str:
        ran.append(pages)
        return "ok"

    runner = ToolRunner(budget=budget)
    result = await runner.run(fetch, ToolCall("fetch", {"pages": 2}, id="c1"), context=CTX)  # $0.02
    assert not result.is_error and ran == [2]
    [(day_key, _), *_] = [(k, v) for k, v in budget.charges(CTX) if k.startswith("user:")]
    assert (await budget.spent(day_key)).usd == pytest.approx(0.02)
    assert (await budget.spent("tenant:acme")).usd == pytest.approx(0.02)

    refused = await runner.run(fetch, ToolCall("fetch", {"pages": 6}, id="c2"), context=CTX)  # $0.04 > $0.03 left
    assert refused.is_error and isinstance(refused.content, dict)
    assert refused.content["type"] == "budget_exceeded" and refused.content["scope"] == day_key
    assert "costs $0.040000 and was not run" in refused.content["error"]
    assert ran == [2]  # the body never ran
    assert (await budget.spent(day_key)).reserved_usd == 0  # nothing left held

    await runner.run(fetch, ToolCall("fetch", {"pages": 4}, id="c3"), context=CTX)  # exactly $0.03: fits
    assert (await budget.spent(day_key)).usd == pytest.approx(0.05)
    other = await runner.run(
        fetch, ToolCall("fetch", {"pages": 0}, id="c4"), context=RunContext(tenant="acme", user="amy")
    )
    assert not other.is_error  # per user


async def test_concurrent_priced_calls_never_cross_the_limit(budget: Budget) -> None:
    ran: list[str] = []

    @tool(price=0.01)
    async def sms(to: str) -> str:
        await asyncio.sleep(0)  # let the other calls interleave between hold and settle
        ran.append(to)
        return "sent"

    runner = ToolRunner(budget=budget)
    results = await asyncio.gather(
        *(runner.run(sms, ToolCall("sms", {"to": str(i)}, id=f"s{i}"), context=CTX) for i in range(20))
    )
    refused = [r for r in results if r.is_error]
    assert len(ran) == 5 and len(refused) == 15  # $0.05 a day for bob buys exactly five
    assert all(isinstance(r.content, dict) and r.content["type"] == "budget_exceeded" for r in refused)
    day = next(k for k, _ in budget.charges(CTX) if k.startswith("user:"))
    assert (await budget.spent(day)).usd == pytest.approx(0.05)


async def test_failed_call_is_not_charged_and_bad_units_are_refused(budget: Budget) -> None:
    @tool(price=0.02)
    def flaky() -> str:
        raise RuntimeError("upstream 500")

    @tool(price=ToolPrice(per_unit=0.01, units=lambda a: -1))
    def odd() -> str:
        return "never"

    runner = ToolRunner(budget=budget)
    failed = await runner.run(flaky, ToolCall("flaky", {}, id="f1"), context=CTX)
    assert failed.is_error and (await budget.spent("tenant:acme")) == Spend()  # released, not charged
    bad = await runner.run(odd, ToolCall("odd", {}, id="o1"), context=CTX)
    assert bad.is_error and isinstance(bad.content, dict) and bad.content["type"] == "invalid_arguments"


@pytest.fixture
def traces(tmp_path: Path) -> Iterator[tuple[TraceStore, TracingHandle]]:
    store = TraceStore(tmp_path / "traces.db")
    handle = configure_tracing(otlp_endpoint="", exporters=[], store=store, capture_content="off")
    try:
        yield store, handle
    finally:
        handle.shutdown()
        store.close()


async def test_agent_run_rolls_tool_costs_into_traces_run_cost_and_budgets(
    tmp_path: Path, traces: tuple[TraceStore, TracingHandle]
) -> None:
    store, handle = traces
    budget = Budget(tenant=BudgetLimits(usd=0.10), store=SQLiteBudgetStore(tmp_path / "b.db"))

    @tool(price=ToolPrice(per_call=0.01, per_unit=0.001, unit="result", units="n"))
    def search(q: str, n: int = 10) -> list[str]:
        return [q] * n

    model = ScriptedModel([ToolCall("search", {"q": "bastion", "n": 20}, id="s1"), "found it"], name="test:s")
    gw = Gateway(models=[model], budgets=budget, cache=False, pricing={"test:s": {"input": 1.0, "output": 1.0}})
    executor = ToolGateway(
        Policy({"researcher": ["search"]}),
        audit=AuditLog(tmp_path / "audit.db"),
        secrets=StaticSecretProvider({}),
        runner=ToolRunner(budget=budget),
    )
    agent: Agent[Any] = Agent("test:s", name="researcher", tools=[search], tool_executor=executor, gateway=gw)
    done = await agent.run("find bastion", context=RunContext(tenant="acme", user="bob", team="core"))
    assert done.output == "found it"
    model_cost = gw.stats.cost_usd
    assert model_cost > 0
    assert done.cost == pytest.approx(model_cost + 0.03)  # the run's cost includes the tool's $0.03
    assert (await budget.spent("tenant:acme")).usd == pytest.approx(model_cost + 0.03)

    assert handle.force_flush(5)
    store.flush(5)
    by_tool = {r.key: (r.cost_usd, r.calls) for r in cost_by(store, "tool", tenant="acme")}
    assert by_tool["search"] == (pytest.approx(0.03), 1)
    by_team = {r.key: r.cost_usd for r in cost_by(store, "team")}
    assert by_team["core"] == pytest.approx(model_cost + 0.03)
    assert total_cost(store, tenant="acme") == pytest.approx(model_cost + 0.03)
    [span] = [
        s for t in store.list_traces() for s in store.get_trace(t.trace_id).spans if s.name == "execute_tool search"
    ]
    assert span.attributes["bastion.tool.units"] == 20 and span.attributes["bastion.tool.unit"] == "result"


async def test_tool_refused_by_budget_inside_an_agent_run_reaches_the_model(tmp_path: Path) -> None:
    budget = Budget(session=BudgetLimits(usd=0.015))
    ran: list[str] = []

    @tool(price=0.01)
    def sms(to: str) -> str:
        ran.append(to)
        return "sent"

    model = ScriptedModel(
        [ToolCall("sms", {"to": "a"}, id="m1"), ToolCall("sms", {"to": "b"}, id="m2"), "one sent"], name="test:p"
    )
    executor = ToolGateway(
        Policy({"notifier": ["sms"]}),
        audit=AuditLog(tmp_path / "audit.db"),
        secrets=StaticSecretProvider({}),
        runner=ToolRunner(budget=budget),
    )
    agent: Agent[Any] = Agent(model, name="notifier", tools=[sms], tool_executor=executor)
    done = await agent.run("text a and b", context=RunContext(tenant="t", session="s"))
    assert done.output == "one sent" and ran == ["a"]
    results: list[ToolResult] = [r for m in model.requests[2].messages for r in m.tool_results]
    assert isinstance(results[-1].content, dict) and results[-1].content.get("type") == "budget_exceeded"


async def test_an_agent_with_a_budgeted_gateway_charges_its_priced_tools_by_default() -> None:
    # no tool_executor given: the agent's default tool gateway charges the model gateway's budget
    budget = Budget(session=BudgetLimits(usd=0.015))
    ran: list[str] = []

    @tool(price=0.01)
    def sms(to: str) -> str:
        ran.append(to)
        return "sent"

    model = ScriptedModel(
        [ToolCall("sms", {"to": "a"}, id="m1"), ToolCall("sms", {"to": "b"}, id="m2"), "one sent"], name="test:d"
    )
    gw = Gateway(models=[model], budgets=budget, cache=False, pricing={"test:d": {"input": 0.0, "output": 0.0}})
    agent: Agent[Any] = Agent("test:d", name="notifier", tools=[sms], gateway=gw)
    done = await agent.run("text a and b", context=RunContext(tenant="t", session="s"))
    assert done.output == "one sent" and ran == ["a"]
    assert (await budget.spent("session:t/s")).usd == pytest.approx(0.01)
