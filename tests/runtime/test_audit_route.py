"""`GET /v1/runs/{id}/audit` on an embedded server: the project's tool decisions, written to the
deployment's audit log (`env.audit_log()`, `<home>/audit.db`), for the caller's own runs only.
The scaled-out case (PostgreSQL, read through another server than the one that created the run,
after workers appended) is in `test_scaleout.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bastion.graph.agent import Agent
from bastion.policy import Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import ScriptedModel, serve_app
from bastion.tools import tool
from bastion.types import ToolCall

Call = Callable[..., Awaitable[tuple[int, Any]]]
KEYS = {"k-acme": ("acme", "viewer"), "k-acme-op": ("acme", "operator"), "k-evil": ("evil", "operator")}


@tool(side_effect="read")
def lookup(q: str) -> str:
    """Look something up."""
    return f"result for {q}"


@tool(side_effect="irreversible")
def wipe(q: str) -> str:
    """Never granted."""
    return "wiped"


@asynccontextmanager
async def serve(home: Path, *, audited: bool) -> AsyncIterator[Call]:
    env = ProjectEnv(home=home)
    script = [ToolCall("lookup", {"q": "x"}, id="l1"), ToolCall("wipe", {"q": "y"}, id="w1"), "done"]
    executor = ToolGateway(Policy({"clerk": ["lookup"]}), audit=env.audit_log() if audited else None)
    agent = Agent(
        ScriptedModel(script * 3, name="test:scripted"), name="clerk", tools=[lookup, wipe],
        tool_executor=executor, checkpointer=env.checkpointer(),
    )  # fmt: skip
    project = Project({"clerk": agent}, api_keys=KEYS, on_close=[executor.close])
    parts, stack = await build_server(project, env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base, aiohttp.ClientSession() as session:

        async def call(key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, **kw) as r:
                return r.status, await r.json()

        yield call


async def test_a_run_s_tool_decisions_are_served_to_its_tenant_only(tmp_path: Path) -> None:
    async with serve(tmp_path / "home", audited=True) as call:
        status, run = await call("k-acme-op", "POST", "/v1/runs", json={"agent": "clerk", "input": "go", "wait": True})
        assert status == 201 and run["status"] == "completed", run
        status, other = await call("k-evil", "POST", "/v1/runs", json={"agent": "clerk", "input": "go", "wait": True})
        assert status == 201, other

        status, rows = await call("k-acme", "GET", f"/v1/runs/{run['id']}/audit")  # a viewer may read it
        assert status == 200, rows
        assert [(r["event"], r["tool"], r["tool_call_id"]) for r in rows] == [
            ("allow", "lookup", "l1"),
            ("deny", "wipe", "w1"),
        ]
        assert all(r["agent"] == "clerk" for r in rows) and rows[0]["seq"] < rows[1]["seq"]
        assert rows[1]["reasons"], rows[1]  # why it was denied

        for key, run_id in (("k-evil", run["id"]), ("k-acme", other["id"])):  # the other tenant's run
            status, body = await call(key, "GET", f"/v1/runs/{run_id}/audit")
            assert status == 404, body
        status, body = await call("k-acme", "GET", "/v1/runs/run_nothing/audit")
        assert status == 404, body


async def test_a_project_without_an_audit_log_gets_no_route_and_no_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with serve(home, audited=False) as call:
        status, run = await call("k-acme-op", "POST", "/v1/runs", json={"agent": "clerk", "input": "go", "wait": True})
        assert status == 201, run
        status, _ = await call("k-acme", "GET", f"/v1/runs/{run['id']}/audit")
        assert status == 404
    assert not (home / "audit.db").exists()
