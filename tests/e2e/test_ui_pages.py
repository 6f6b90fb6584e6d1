"""The web UI's pages as a reader sees them, in a real headless chromium against a real server
(agents on scripted models, a real SQLite memory store, the OpenAI-compatible proxy with a
virtual key): the run page folds streamed tokens, the memory browser searches a chosen
namespace, the login dialog reports a rejected key, the costs page names proxy spend and draws
no empty bars. The screenshots in docs/img/ are taken here."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.checkpoint import SqliteCheckpointer
from bastion.gateway import Gateway
from bastion.gateway.proxy import SQLiteKeyStore, mint_key
from bastion.graph.agent import Agent
from bastion.memory import MemoryItem, Namespace, SQLiteMemoryStore
from bastion.policy import Policy, ToolGateway
from bastion.server._project import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import FunctionModel, ScriptedModel, serve_app
from bastion.tools import tool
from bastion.types import ToolCall

pytestmark = pytest.mark.browser

IMG = Path(__file__).parents[2] / "docs" / "img"
# The docs' pictures are rewritten only on request (`BASTION_UPDATE_SCREENSHOTS=1 make test`), so an
# ordinary test run leaves the tree clean; otherwise the pictures go to a scratch folder.
UPDATE_DOCS = os.environ.get("BASTION_UPDATE_SCREENSHOTS") == "1"
KEY = "ui-key"
# a long streamed answer: one token event per word
ANSWER = " ".join(f"Step {i}: the parcel left the depot and is on its way to you." for i in range(1, 21))


@tool(side_effect="irreversible")
def refund(order_id: int, amount: float) -> str:
    """Refund an order (cannot be undone)."""
    return f"refunded {amount} for order {order_id}"


@tool(side_effect="read")
def track(order_id: int) -> str:
    """Where a parcel is."""
    return f"order {order_id}: in transit, arriving tomorrow"


@dataclass
class Site:
    base: str
    proxy_key: str


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    env = ProjectEnv(home=tmp_path / "home")
    env.home.mkdir(parents=True)
    with SQLiteKeyStore.for_home(env.home) as keys:  # where `python -m bastion.gateway.proxy mint` writes
        proxy_key, _ = await mint_key(keys, tenant="acme", user="ana")
    checkpointer = SqliteCheckpointer(tmp_path / "cp.db")
    memory = SQLiteMemoryStore(tmp_path / "memory.db")
    kb = Namespace("acme", scope="kb")  # not the default scope: the browser must be told where to look
    await memory.put(kb, MemoryItem("You can return any item within 30 days of delivery for a full refund.",
                                    kind="chunk", metadata={"source": "returns.md"}))  # fmt: skip
    await memory.put(Namespace("acme"), MemoryItem("Ana prefers e-mail over phone calls."))
    # Every model call goes through the gateway (priced, traced): the tracker's model costs money,
    # the support agent's is free, and the proxy's `cheap` model is called with a virtual key.
    gateway = Gateway(
        models={
            "tracker": ScriptedModel([ToolCall("track", {"order_id": 1042}), ANSWER], name="test:tracker"),
            "support": ScriptedModel([ToolCall("refund", {"order_id": 1044, "amount": 89.0})], name="test:free"),
            "cheap": FunctionModel(lambda request: "Hello from the proxy.", name="test:cheap"),
        },
        pricing={"test:tracker": {"input": 2.5, "output": 10.0}, "test:free": 0.0,
                 "test:cheap": {"input": 150.0, "output": 600.0}},
    )  # fmt: skip
    policy = ToolGateway(Policy({"support": ["refund"], "tracker": ["track"]}))
    support = Agent(
        gateway.model("support"), tools=[refund], name="support", checkpointer=checkpointer, tool_executor=policy,
    )  # fmt: skip
    tracker = Agent(
        gateway.model("tracker"), tools=[track], name="tracker", checkpointer=checkpointer, tool_executor=policy,
    )  # fmt: skip
    project = Project({"support": support, "tracker": tracker}, api_keys={KEY: ("acme", "operator")},
                      memory=memory, gateway=gateway)  # fmt: skip
    parts, stack = await build_server(project, env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base:
        yield Site(base, proxy_key)
    await gateway.aclose()
    await memory.close()
    checkpointer.close()


async def _call(base: str, method: str, path: str, key: str = KEY, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        async with s.request(method, f"{base}{path}", json=body) as r:
            return r.status, await r.json()


async def _run(base: str, agent: str, text: str) -> dict[str, Any]:
    status, run = await _call(
        base, "POST", "/v1/runs", body={"agent": agent, "input": text, "wait": True, "timeout": 30}
    )
    assert status == 201, run
    return run


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


async def _shot(page: Any, name: str, *, full_page: bool = False) -> None:
    folder = IMG if UPDATE_DOCS else Path(tempfile.gettempdir()) / "bastion-ui-shots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    await page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size < 200_000, f"{name} is {path.stat().st_size} bytes; keep docs images small"
    width, height = _png_size(path)
    assert width >= 1000 and height >= 400, (name, width, height)


async def test_run_page_folds_streamed_tokens_and_screenshots(site: Site, browser_page: Any) -> None:
    base, page = site.base, browser_page
    await page.set_viewport_size({"width": 1280, "height": 800})
    tracked = await _run(base, "tracker", "Where is my order 1042?")
    assert tracked["status"] == "completed"
    pending = await _run(base, "support", "Please refund order 1044")
    assert pending["status"] == "interrupted"
    status, events = await _call(base, "GET", f"/v1/runs/{tracked['id']}/events")
    tokens = [e for e in events if e["kind"] == "token"]
    assert status == 200 and len(tokens) == len(ANSWER.split(" "))  # one event per streamed word

    await page.goto(f"{base}/#key={KEY}")
    await page.wait_for_selector(f"tr[data-run='{pending['id']}'] .status.interrupted")
    await page.wait_for_selector(f"tr[data-run='{tracked['id']}'] .status.completed")
    await _shot(page, "ui-runs.png")

    await page.goto(f"{base}/#/runs/{tracked['id']}")
    await page.wait_for_selector("#run-status.completed")
    await page.wait_for_selector("#events details.event")
    kinds = await page.locator("#events details.event").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert kinds.count("token") == 1, kinds  # 300 token events, one row
    assert len(kinds) == len(events) - len(tokens) + 1
    token_row = page.locator("#events details.event[data-kind=token]")
    assert f"tokens ×{len(tokens)}" in await token_row.locator("summary").inner_text()
    assert await token_row.get_attribute("open") is None  # folded
    await token_row.locator("summary").click()
    assert ANSWER in " ".join((await token_row.locator("pre").inner_text()).split())  # the text they spell
    height = await page.evaluate("document.documentElement.scrollHeight")
    assert height < 2500, f"run page is {height}px tall"
    names = await page.locator("#trace .span-row").evaluate_all("rows => rows.map(r => r.dataset.span)")
    assert "invoke_agent tracker" in names and any(n.startswith("execute_tool track") for n in names)
    await token_row.locator("summary").click()  # folded again for the picture
    await _shot(page, "ui-run.png", full_page=True)

    await page.click("a[data-tab=approvals]")
    await page.wait_for_selector(f".approval[data-run='{pending['id']}'] .risk")
    await _shot(page, "ui-approvals.png")


async def test_memory_browser_searches_the_chosen_namespace(site: Site, browser_page: Any) -> None:
    page = browser_page
    await page.goto(f"{site.base}/#key={KEY}")
    await page.click("a[data-tab=memory]")
    await page.fill("#mem-q", "return")
    await page.press("#mem-q", "Enter")
    await page.wait_for_function("document.getElementById('mem-results')?.textContent.trim().length > 0")
    assert "within 30 days" not in await page.locator("#mem-results").inner_text()  # not in the default scope
    await page.fill("#mem-scope", "kb")
    await page.click("#mem-form button[type=submit]")
    await page.wait_for_function("document.getElementById('mem-results')?.textContent.includes('within 30 days')")
    assert "returns.md" not in page.url  # (the hit is shown; its source is metadata)
    assert "scope=kb" in page.url and "q=return" in page.url  # the choice is kept in the link
    # the agent field suggests the project's agents
    options = await page.locator("#mem-agents option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["support", "tracker"]
    # reloading the link runs the same search
    await page.reload()
    await page.wait_for_function("document.getElementById('mem-results')?.textContent.includes('within 30 days')")
    assert await page.locator("#mem-scope").input_value() == "kb"
    # a scoped search still sees memory shared at the tenant level
    await page.fill("#mem-q", "e-mail")
    await page.press("#mem-q", "Enter")
    await page.wait_for_function("document.getElementById('mem-results')?.textContent.includes('prefers e-mail')")
    await _shot(page, "ui-memory.png")


async def test_login_dialog_closes_on_a_key_link_and_reports_a_rejected_key(site: Site, browser_page: Any) -> None:
    base, page = site.base, browser_page
    await page.goto(f"{base}/#/runs")
    await page.wait_for_selector("dialog#login[open]")
    assert await page.locator("#login-error").inner_text() == ""  # no key yet is not an error
    # the #key= link printed by `make demo`, opened while the key box is up
    await page.goto(f"{base}/#key={KEY}")
    await page.wait_for_selector("#runs-table")
    assert await page.locator("dialog#login[open]").count() == 0
    # Enter in an empty key box never replaces the key
    await page.evaluate("document.getElementById('login').showModal()")
    await page.press("#login-key", "Enter")
    assert "Enter an API key" in await page.locator("#login-error").inner_text()
    assert await page.evaluate("localStorage.getItem('bastion.key')") == KEY
    await page.keyboard.press("Escape")
    status, _ = await _call(base, "GET", "/v1/runs", key=await page.evaluate("localStorage.getItem('bastion.key')"))
    assert status == 200
    # a wrong key is reported in the dialog, which stays up; the right one closes it
    await page.evaluate("localStorage.clear()")
    await page.goto(f"{base}/?fresh=1#/runs")
    await page.wait_for_selector("dialog#login[open]")
    await page.fill("#login-key", "wrong-key")
    await page.click("#login-form button")
    await page.wait_for_function("document.getElementById('login-error').textContent.includes('rejected')")
    assert await page.locator("dialog#login[open]").count() == 1
    assert "bastion keys create" in await page.locator("#login-error").inner_text()
    await page.fill("#login-key", KEY)
    await page.press("#login-key", "Enter")
    await page.wait_for_selector("#runs-table")
    assert await page.locator("dialog#login[open]").count() == 0


async def test_costs_page_names_proxy_spend_and_draws_no_empty_bars(site: Site, browser_page: Any) -> None:
    base, page = site.base, browser_page
    await page.set_viewport_size({"width": 1280, "height": 800})
    assert (await _run(base, "tracker", "Where is my order 1042?"))["status"] == "completed"  # priced
    assert (await _run(base, "support", "Please refund order 1044"))["status"] == "interrupted"  # $0
    body = {"model": "cheap", "messages": [{"role": "user", "content": "Say hello to the costs page, please."}]}
    status, reply = await _call(base, "POST", "/openai/v1/chat/completions", key=site.proxy_key, body=body)
    assert status == 200, reply
    status, rows = await _call(base, "GET", "/v1/costs?by=agent")
    by_key = {r["key"]: r["cost_usd"] for r in rows}
    assert by_key.get(None, 0) > 0 and by_key["tracker"] > 0 and by_key.get("support") == 0, rows

    await page.goto(f"{base}/#key={KEY}")
    await page.click("a[data-tab=costs]")
    await page.wait_for_selector("#costs-table")
    await page.wait_for_function("!document.getElementById('cost-series').textContent.includes('…')")
    table = await page.locator("#costs-table tbody tr").all_inner_texts()
    keys = [row.split("\t")[0].strip() for row in table]
    assert "proxy (no agent)" in keys and "tracker" in keys and "support" in keys, table
    assert "None" not in " ".join(table) and "" not in keys
    for row in await page.locator("#costs-table tbody tr").all():
        cost = float((await row.locator("td").nth(3).inner_text()).lstrip("$"))
        bars = row.locator(".cost-bar")
        assert await bars.count() == (1 if cost > 0 else 0)
        if cost > 0:
            assert (await bars.bounding_box())["width"] >= 1
    series = page.locator("#cost-series .series-row[data-key]")
    labels = await series.locator(".series-key").all_inner_texts()
    assert sorted(labels) == ["proxy (no agent)", "tracker"], labels  # support spent $0: no empty chart
    for row in await series.all():
        assert await row.locator("rect:not(.spark-bg)").count() >= 1
    await _shot(page, "ui-costs.png", full_page=True)

    await page.click("a[href='#/costs?by=user']")
    # (while the page loads it has no heading yet)
    await page.wait_for_function("document.querySelector('#view h2')?.textContent === 'Costs by user'")
    await page.wait_for_selector("#costs-table tbody tr")
    users = await page.locator("#costs-table tbody tr td:first-child").all_inner_texts()
    assert "ana" in users and "None" not in users and "" not in users
