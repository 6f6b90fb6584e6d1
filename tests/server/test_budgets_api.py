"""`GET /v1/budgets` on a real server: the caller's tenant's limits with spend (model calls and
priced tool calls alike) and period, nothing of another tenant's; and the costs page shows them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.gateway import Budget, BudgetLimits, Gateway
from bastion.graph.agent import Agent
from bastion.policy import AuditLog, Policy, StaticSecretProvider, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import ScriptedModel, serve_app
from bastion.tools import ToolRunner, tool
from bastion.types import ToolCall

Call = Callable[..., Awaitable[tuple[int, Any]]]
KEYS = {"k-acme": ("acme", "operator"), "k-acme-view": ("acme", "viewer"), "k-evil": ("evil", "operator")}


@tool(price=0.02)
def lookup(q: str) -> str:
    """A paid lookup."""
    return f"result for {q}"


async def serve(tmp_path: Path, budgets: bool) -> AsyncIterator[tuple[str, Call]]:
    env = ProjectEnv(home=tmp_path / "home")
    budget = (
        Budget(
            tenant=[BudgetLimits(usd=1.0), BudgetLimits(tokens=1_000_000, period="day", tz="Europe/Paris")],
            run=BudgetLimits(usd=0.5),
            store=env.budget_store(),
        )
        if budgets
        else None
    )
    model = ScriptedModel([ToolCall("lookup", {"q": "x"}, id="l1"), "done"] * 5, name="test:scripted")
    gateway = Gateway(models=[model], budgets=budget, pricing={"test:scripted": {"input": 1.0, "output": 1.0}})
    executor = ToolGateway(
        Policy({"clerk": ["lookup"]}),
        audit=AuditLog(tmp_path / "audit.db"),
        secrets=StaticSecretProvider({}),
        runner=ToolRunner(budget=budget),
    )
    agent = Agent(
        gateway.model("test:scripted"),
        name="clerk",
        tools=[lookup],
        tool_executor=executor,
        checkpointer=env.checkpointer(),
    )
    project = Project({"clerk": agent}, gateway=gateway, api_keys=KEYS, on_close=[gateway.aclose])
    parts, stack = await build_server(project, env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base, aiohttp.ClientSession() as session:

        async def call(key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, **kw) as r:
                return r.status, await r.json()

        yield base, call


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Call]]:
    async for s in serve(tmp_path, budgets=True):
        yield s


async def test_budgets_list_limits_spend_and_period_per_tenant(served: tuple[str, Call]) -> None:
    _, call = served
    status, run = await call("k-acme", "POST", "/v1/runs", json={"agent": "clerk", "input": "look", "wait": True})
    assert status == 201 and run["status"] == "completed", run
    status, body = await call("k-acme-view", "GET", "/v1/budgets")  # a viewer may read them
    assert status == 200 and body["tenant"] == "acme" and body["configured"] is True
    lines = {b["key"]: b for b in body["budgets"]}
    total = lines["tenant:acme"]
    assert total["scope"] == "tenant" and total["period"] is None and total["resets"] is None
    assert total["limit_usd"] == 1.0 and total["spent_usd"] > 0.02  # the model calls plus the $0.02 tool call
    assert total["remaining_usd"] == pytest.approx(1.0 - total["spent_usd"])
    assert total["used"] == pytest.approx(total["spent_usd"])
    [day] = [b for b in body["budgets"] if b["period"] == "day"]
    assert day["key"].startswith("tenant:acme@day:") and day["key"].endswith("[Europe/Paris]")
    assert day["tz"] == "Europe/Paris" and day["limit_tokens"] == 1_000_000 and day["spent_tokens"] > 0
    starts, resets = datetime.fromisoformat(day["starts"]), datetime.fromisoformat(day["resets"])
    assert (starts.hour, resets.hour) == (0, 0) and starts < datetime.fromisoformat(body["now"]) < resets
    [per_run] = [b for b in body["budgets"] if b["scope"] == "run"]
    assert per_run["id"] == run["id"] and per_run["spent_usd"] == pytest.approx(total["spent_usd"])

    status, first = await call("k-acme", "GET", "/v1/budgets?limit=1")
    assert status == 200 and [b["key"] for b in first["budgets"]] == ["tenant:acme"]  # tenant lines first
    assert (await call("k-acme", "GET", "/v1/budgets?limit=0"))[0] == 422

    status, other = await call("k-evil", "GET", "/v1/budgets")
    assert status == 200 and other["tenant"] == "evil"
    assert all(b["key"].split(":", 1)[1].startswith("evil") for b in other["budgets"])
    assert {b["scope"] for b in other["budgets"]} == {"tenant"} and all(b["spent_usd"] == 0 for b in other["budgets"])
    async with aiohttp.ClientSession() as anonymous, anonymous.get(served[0] + "/v1/budgets") as r:
        assert r.status == 401


async def test_without_budgets_the_route_says_so(tmp_path: Path) -> None:
    async for _, call in serve(tmp_path, budgets=False):
        status, body = await call("k-acme", "GET", "/v1/budgets")
        assert status == 200 and body == {"tenant": "acme", "configured": False, "budgets": []}


@pytest.mark.browser
async def test_costs_page_shows_budgets_in_chromium(served: tuple[str, Call], browser_page: Any) -> None:
    base, call = served
    page = browser_page
    status, run = await call("k-acme", "POST", "/v1/runs", json={"agent": "clerk", "input": "look", "wait": True})
    assert status == 201 and run["status"] == "completed"
    await page.goto(f"{base}/#key=k-acme")
    await page.goto(f"{base}/#/costs?by=tool")
    await page.wait_for_selector("#budgets-table")
    rows = await page.locator("#budgets-table tbody tr").all_inner_texts()
    costs = await page.locator("#costs-table").inner_text()
    assert "lookup" in costs  # the priced tool is a cost row of its own
    tenant = next(r for r in rows if r.startswith("tenant acme") and "none" in r)
    assert "$1.00" in tenant and "never" in tenant
    day = next(r for r in rows if "day (Europe/Paris)" in r)
    assert "1000000 tok" in day and " 00:00" in day  # resets at local midnight
    assert any(r.startswith(f"run {run['id']}") for r in rows)


@pytest.mark.browser
async def test_a_slow_page_left_behind_does_not_paint_over_the_next(
    served: tuple[str, Call], browser_page: Any
) -> None:
    """The runs list answers only after the reader has moved to the costs page: its late render
    lands in its own (detached) page and the costs page stays (the flake CI caught in stop 20)."""
    import asyncio

    from playwright.async_api import Route

    base, _ = served
    page = browser_page
    release = asyncio.Event()

    async def hold(route: Route) -> None:
        await asyncio.wait_for(release.wait(), 30)
        await route.continue_()

    await page.route("**/v1/runs?limit=200", hold)
    try:
        async with page.expect_request("**/v1/runs?limit=200"):
            await page.goto(f"{base}/#key=k-acme")  # the runs list, its answer held back
        await page.evaluate("window.runsPage = state.page")
        await page.goto(f"{base}/#/costs?by=tool")
        await page.wait_for_selector("#budgets-table")
        release.set()
        await page.wait_for_function("window.runsPage.querySelector('#runs-table') !== null")
        assert await page.locator("#view #budgets-table").count() == 1
        assert await page.locator("#view #runs-table").count() == 0
    finally:
        release.set()  # a held request must not outlive the test
