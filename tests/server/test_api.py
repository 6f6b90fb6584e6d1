"""The HTTP API over a real uvicorn server on 127.0.0.1 with a real SQLite run store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.runtime import RunOutcome, Runtime, SqlRunStore, Webhook, sign
from bastion.runtime._types import EventSink
from bastion.server import SQLiteApiKeyStore, create_app
from bastion.testing import serve_app
from bastion.types import RunContext


class Agent:
    description = "echoes; asks approval for refunds"

    async def invoke(
        self, input: Any, *, thread_id: str, context: RunContext, resume: Any = None, recover: bool = False,
        emit: EventSink | None = None, **_: Any,
    ) -> RunOutcome:  # fmt: skip
        if emit:
            await emit("token", {"text": "thinking"})
        if input == "refund" and resume is None:
            return RunOutcome("interrupted", interrupts=[{"id": "int_1", "payload": {"risk_summary": "refund $40"}}])
        return RunOutcome("completed", output={"echo": input, "decision": resume}, cost_usd=0.0)


class Api:
    def __init__(self, base: str, session: aiohttp.ClientSession, keys: dict[str, str]) -> None:
        self.base, self.session, self.keys = base, session, keys

    async def call(self, method: str, path: str, key: str | None = "acme", **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        headers.update(kw.pop("headers", {}))
        async with self.session.request(method, self.base + path, headers=headers, **kw) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text and r.content_type == "application/json" else text)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    keys = SQLiteApiKeyStore(tmp_path / "keys.db")
    plain = {
        "acme": keys.add("key-acme", "acme", "operator").key_id and "key-acme",
        "viewer": keys.add("key-viewer", "acme", "viewer").key_id and "key-viewer",
        "evil": keys.add("key-evil", "evil", "admin").key_id and "key-evil",
    }
    runtime = Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {"echo": Agent()}, lease_seconds=5)
    hook = Webhook("ticket", "echo", secret="hook-secret", tenant="acme")
    app = create_app(runtime, keys, webhooks=[hook])
    async with serve_app(app) as base, aiohttp.ClientSession() as session:
        yield Api(base, session, plain)
    keys.close()


async def test_create_and_wait_for_a_run(api: Api) -> None:
    status, run = await api.call("POST", "/v1/runs", json={"agent": "echo", "input": "hi", "wait": True})
    assert status == 201, run
    assert run["status"] == "completed" and run["output"] == {"echo": "hi", "decision": None}
    status, listed = await api.call("GET", "/v1/runs")
    assert [r["id"] for r in listed] == [run["id"]]
    status, events = await api.call("GET", f"/v1/runs/{run['id']}/events")
    assert [e["kind"] for e in events] == ["run_queued", "run_started", "token", "run_completed"]


async def test_sse_stream(api: Api) -> None:
    _, run = await api.call("POST", "/v1/runs", json={"agent": "echo", "input": "stream me"})
    status, body = await api.call("GET", f"/v1/runs/{run['id']}/stream")
    assert status == 200
    kinds = [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("event: ")]
    assert kinds[-2:] == ["run_completed", "end"] and "token" in kinds


async def test_approval_flow_through_the_inbox(api: Api) -> None:
    _, run = await api.call("POST", "/v1/runs", json={"agent": "echo", "input": "refund", "wait": True})
    assert run["status"] == "interrupted"
    _, inbox = await api.call("GET", "/v1/approvals")
    assert inbox[0]["run_id"] == run["id"] and inbox[0]["interrupts"][0]["payload"]["risk_summary"] == "refund $40"
    status, _ = await api.call("POST", f"/v1/approvals/{run['id']}", key="viewer", json={"decision": "approve"})
    assert status == 403  # viewers cannot decide
    status, _ = await api.call("POST", f"/v1/approvals/{run['id']}", json={"decision": {"int_1": "approve"}})
    assert status == 200
    for _ in range(200):  # bounded: the worker picks the resumed run up
        _, done = await api.call("GET", f"/v1/runs/{run['id']}")
        if done["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert done["output"]["decision"] == {"int_1": "approve"}


async def test_auth_and_tenant_isolation(api: Api) -> None:
    _, run = await api.call("POST", "/v1/runs", json={"agent": "echo", "input": "mine", "wait": True})
    assert (await api.call("GET", "/v1/runs", key=None))[0] == 401
    status, body = await api.call("GET", "/v1/runs", headers={"Authorization": "Bearer nope"}, key=None)
    assert status == 401 and body["error"]["message"] == "invalid API key"
    for method, path in [
        ("GET", f"/v1/runs/{run['id']}"), ("GET", f"/v1/runs/{run['id']}/events"),
        ("GET", f"/v1/runs/{run['id']}/stream"), ("POST", f"/v1/runs/{run['id']}/cancel"),
    ]:  # fmt: skip
        status, _ = await api.call(method, path, key="evil")
        assert status == 404, path
    assert (await api.call("GET", "/v1/runs", key="evil"))[1] == []
    assert (await api.call("GET", "/v1/threads", key="evil"))[1] == []
    assert (await api.call("GET", "/v1/approvals", key="evil"))[1] == []
    status, _ = await api.call("POST", "/v1/runs", key="viewer", json={"agent": "echo", "input": "x"})
    assert status == 403


async def test_bad_input_gets_clear_4xx(api: Api) -> None:
    status, body = await api.call("POST", "/v1/runs", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 422 and "invalid request" in body["error"]["message"]
    status, body = await api.call("POST", "/v1/runs", json={"agent": "echo"})
    assert status == 422 and "input" in body["error"]["message"]
    status, body = await api.call("POST", "/v1/runs", json={"agent": "ghost", "input": 1})
    assert status == 400 and "registered agents" in body["error"]["message"]
    status, body = await api.call("POST", "/v1/runs", json={"agent": "echo", "input": 1, "timeout": -1})
    assert status == 422 and "timeout" in body["error"]["message"]
    status, _ = await api.call("GET", "/v1/runs/run_missing")
    assert status == 404


async def test_threads_and_multitask_reject(api: Api) -> None:
    status, thread = await api.call("POST", "/v1/threads", json={"metadata": {"customer": "c1"}})
    assert status == 201
    tid = thread["thread_id"]
    await api.call("POST", "/v1/runs", json={"agent": "echo", "input": "refund", "thread_id": tid, "wait": True})
    status, body = await api.call("POST", "/v1/runs", json={"agent": "echo", "input": "again", "thread_id": tid})
    assert status == 409 and "multitask_strategy" in body["error"]["message"]
    _, runs = await api.call("GET", f"/v1/threads/{tid}/runs")
    assert len(runs) == 1
    _, threads = await api.call("GET", "/v1/threads")
    assert threads[0]["metadata"] == {"customer": "c1"}


async def test_webhook_trigger_requires_signature(api: Api) -> None:
    body = json.dumps({"title": "printer on fire"}).encode()
    status, _ = await api.call("POST", "/v1/triggers/ticket", key=None, data=body)
    assert status == 400
    headers = {"X-Bastion-Signature": sign("hook-secret", body)}
    status, run = await api.call("POST", "/v1/triggers/ticket", key=None, data=body, headers=headers)
    assert status == 202 and run["metadata"] == {"trigger": "webhook:ticket"}
    assert (await api.call("POST", "/v1/triggers/nope", key=None, data=body))[0] == 404


async def test_health_ready_ui_and_openapi(api: Api) -> None:
    assert (await api.call("GET", "/health", key=None))[1] == {"status": "ok"}
    assert (await api.call("GET", "/ready", key=None))[1]["agents"] == ["echo"]
    status, html = await api.call("GET", "/", key=None)
    assert status == 200 and "<title>Bastion</title>" in html
    assert (await api.call("GET", "/ui/../_app.py", key=None))[0] == 404
    _, spec = await api.call("GET", "/openapi.json", key=None)
    assert {"/v1/runs", "/v1/runs/{run_id}/resume", "/v1/approvals", "/v1/threads"} <= set(spec["paths"])
