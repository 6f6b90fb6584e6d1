"""The web UI in a real headless chromium against a real server: runs list, run page with its
trace tree, and approving a pending tool call from the approvals inbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph.agent import Agent
from bastion.policy import Policy, ToolGateway
from bastion.server._project import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import ScriptedModel, serve_app
from bastion.tools import tool
from bastion.types import ToolCall

pytestmark = pytest.mark.browser

REFUNDS: list[tuple[int, float]] = []


@tool(side_effect="irreversible")
def refund(order_id: int, amount: float) -> str:
    """Refund an order (cannot be undone)."""
    REFUNDS.append((order_id, amount))
    return f"refunded {amount} for order {order_id}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    REFUNDS.clear()
    env = ProjectEnv(home=tmp_path / "home")
    checkpointer = SqliteCheckpointer(tmp_path / "cp.db")
    model = ScriptedModel([ToolCall("refund", {"order_id": 1042, "amount": 40.0}), "Your refund is on its way."])
    agent = Agent(
        model, tools=[refund], name="support", checkpointer=checkpointer,
        tool_executor=ToolGateway(Policy({"support": ["refund"]})),
    )  # fmt: skip
    project = Project({"support": agent}, api_keys={"ui-key": ("acme", "operator")})
    parts, stack = await build_server(project, env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base:
        yield base, "ui-key"
    checkpointer.close()


async def _create_run(base: str, key: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        body = {"agent": "support", "input": "Please refund order 1042", "wait": True, "timeout": 30}
        async with s.post(f"{base}/v1/runs", json=body) as r:
            assert r.status == 201
            return await r.json()


async def test_approve_a_pending_tool_call_from_the_ui(server: tuple[str, str], browser_page: Any) -> None:
    base, key = server
    run = await _create_run(base, key)
    assert run["status"] == "interrupted" and REFUNDS == []
    page = browser_page

    await page.goto(f"{base}/#key={key}")
    await page.wait_for_selector(f"tr[data-run='{run['id']}'] .status.interrupted")

    await page.click("a[data-tab=approvals]")
    card = page.locator(f".approval[data-run='{run['id']}']")
    await card.wait_for()
    risk = await card.locator(".risk").inner_text()
    assert "'refund'" in risk and "cannot be undone" in risk and "40.00" in risk  # written by the system
    # the user named the order but no amount: the approver sees where each value came from
    assert await card.locator(".level.flagged").count() == 1
    rows = await card.locator("table.provenance tr.risky").all_inner_texts()
    assert len(rows) == 1 and "amount" in rows[0] and "NOT IN THE CONVERSATION" in rows[0]
    assert "from the user's request" in await card.locator("table.provenance").inner_text()  # the order id
    assert '"order_id": 1042' in await card.locator(".edit-args").input_value()  # the arguments, editable
    await card.locator("button.approve").click()
    await page.wait_for_selector(".decided")

    for _ in range(300):  # bounded: the worker resumes the run after the decision
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
            async with s.get(f"{base}/v1/runs/{run['id']}") as r:
                status = (await r.json())["status"]
        if status == "completed":
            break
        await asyncio.sleep(0.05)
    assert status == "completed" and REFUNDS == [(1042, 40.0)]

    await page.goto(f"{base}/#/runs/{run['id']}")
    await page.wait_for_selector("#run-status.completed")
    assert "Your refund is on its way." in await page.locator("#run-output").inner_text()
    names = await page.locator("#trace .span-row").evaluate_all("rows => rows.map(r => r.dataset.span)")
    assert "invoke_agent support" in names and any(n.startswith("execute_tool refund") for n in names)
    await page.screenshot(path=str(Path(__file__).parent / "ui-run.png"))


async def test_ui_asks_for_a_key_and_rejects_a_wrong_one(server: tuple[str, str], browser_page: Any) -> None:
    base, _ = server
    page = browser_page
    await page.goto(f"{base}/#/runs")
    await page.wait_for_selector("dialog#login[open]")
    await page.fill("#login-key", "wrong-key")
    await page.click("#login-form button")
    # 401: the dialog stays up and says why (it used to ask again silently)
    await page.wait_for_function("document.getElementById('login-error').textContent.includes('rejected')")
    assert await page.locator("dialog#login[open]").count() == 1
    assert await page.locator("#runs-table").count() == 0


async def test_costs_and_memory_pages_render(server: tuple[str, str], browser_page: Any) -> None:
    base, key = server
    page = browser_page
    await page.goto(f"{base}/#key={key}")
    await page.click("a[data-tab=costs]")
    await page.wait_for_selector("#costs-table")
    await page.wait_for_function("document.getElementById('cost-series').textContent !== '…'")
    assert "No cost recorded yet." in await page.locator("#costs-table").inner_text()  # scripted model: $0
    await page.click("a[data-tab=memory]")
    await page.fill("#mem-q", "refund policy")
    await page.press("#mem-q", "Enter")
    # This server has no memory store: the page says so instead of failing silently.
    await page.wait_for_function("document.getElementById('mem-results').textContent.length > 0")
    assert await page.locator("#mem-results").inner_text() == "Not Found"
