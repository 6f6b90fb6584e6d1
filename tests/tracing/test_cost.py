from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from bastion.errors import UserError
from bastion.tracing import (
    CallbackSink,
    CostAlert,
    CostMonitor,
    LogSink,
    SpanRecord,
    TraceStore,
    WebhookSink,
    configure_tracing,
    cost_by,
    cost_series,
    spans,
)
from bastion.tracing import (
    semconv as sc,
)
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, ToolResult, Usage

T0 = 1_700_000_000.0
_n = 0


def priced(
    cost: float,
    *,
    at: float = T0,
    run: str = "r1",
    tenant: str = "acme",
    user: str = "u1",
    team: str = "core",
    agent: str = "sup",
    session: str = "s1",
    model: str | None = "gpt-4o",
    tool: str | None = None,
) -> SpanRecord:
    global _n
    _n += 1
    attrs: dict[str, Any] = {
        sc.BASTION_COST_USD: cost,
        sc.BASTION_RUN_ID: run,
        sc.BASTION_TENANT_ID: tenant,
        sc.BASTION_USER_ID: user,
        sc.BASTION_TEAM_ID: team,
        sc.GEN_AI_AGENT_NAME: agent,
        sc.GEN_AI_CONVERSATION_ID: session,
        sc.GEN_AI_USAGE_INPUT_TOKENS: 10,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 5,
    }
    if tool:
        attrs[sc.GEN_AI_TOOL_NAME] = tool
        attrs[sc.GEN_AI_OPERATION_NAME] = "execute_tool"
    elif model:
        attrs[sc.GEN_AI_REQUEST_MODEL] = model
        attrs[sc.GEN_AI_OPERATION_NAME] = "chat"
    return SpanRecord(f"trace-{run}", f"span{_n:08d}", None, "x", int(at * 1e9), int(at * 1e9) + 1, attributes=attrs)


def test_cost_rollups_per_dimension_and_window(store: TraceStore) -> None:
    store.add(
        [
            priced(1.0, run="r1", model="gpt-4o"),
            priced(2.0, run="r1", model="gpt-4o-mini", at=T0 + 10),
            priced(0.5, run="r1", tool="web_search", at=T0 + 20),
            priced(4.0, run="r2", tenant="globex", user="u2", team="ml", agent="coder", session="s2", at=T0 + 3600),
        ]
    )

    def rollup(dim: Any, **kw: Any) -> dict[str | None, float]:
        return {r.key: r.cost_usd for r in cost_by(store, dim, **kw)}

    assert rollup("run") == {"r2": 4.0, "r1": 3.5}
    assert rollup("tenant") == {"globex": 4.0, "acme": 3.5}
    assert rollup("user") == {"u2": 4.0, "u1": 3.5}
    assert rollup("team") == {"ml": 4.0, "core": 3.5}
    assert rollup("agent") == {"coder": 4.0, "sup": 3.5}
    assert rollup("session") == {"s2": 4.0, "s1": 3.5}
    assert rollup("model") == {"gpt-4o": 5.0, "gpt-4o-mini": 2.0, None: 0.5}
    assert rollup("tool") == {"web_search": 0.5, None: 7.0}
    assert rollup("run", since=T0, until=T0 + 15) == {"r1": 3.0}
    assert rollup("model", tenant="acme") == {"gpt-4o-mini": 2.0, "gpt-4o": 1.0, None: 0.5}
    [row] = cost_by(store, "run", run_id="r1")
    assert (row.calls, row.input_tokens, row.output_tokens) == (3, 30, 15)
    series = cost_series(store, "tenant", bucket_s=1800, since=T0, until=T0 + 7200)
    assert series == {"acme": [3.5, 0.0, 0.0, 0.0], "globex": [0.0, 0.0, 4.0, 0.0]}
    with pytest.raises(UserError, match="unknown cost dimension"):
        cost_by(store, "planet")  # type: ignore[arg-type]


def test_costs_recorded_by_span_helpers_roll_up_by_agent_and_tool(store: TraceStore) -> None:
    handle = configure_tracing(otlp_endpoint="", store=store, metrics=False)
    ctx = RunContext(tenant="acme", run_id="run-x", agent="researcher")
    try:
        with spans.agent("researcher", ctx):
            with spans.chat("openai:gpt-4o", ModelRequest([Message.user("q")], context=ctx)) as c:
                c.record_response(
                    ModelResponse(Message.assistant("a"), Usage(1, 1), model="openai:gpt-4o", cost_usd=0.03)
                )
            with spans.tool("paid_api", "c1") as t:
                t.record_result(ToolResult("c1", "paid_api", "ok"), cost_usd=0.01)
        handle.force_flush()
    finally:
        handle.shutdown()
    assert {r.key: r.cost_usd for r in cost_by(store, "agent")} == {"researcher": pytest.approx(0.04)}
    assert {r.key: r.cost_usd for r in cost_by(store, "tool")} == {None: 0.03, "paid_api": 0.01}
    [trace] = store.list_traces(run_id="run-x")
    assert trace.cost_usd == pytest.approx(0.04)


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]], asyncio.Event]]:
    received: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/fail":
            return web.Response(status=500, text="down")
        received.append(await request.json())
        got.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", received, got
    finally:
        await runner.cleanup()


async def test_run_anomaly_alert_is_posted_to_a_real_webhook(
    store: TraceStore, webhook: tuple[str, list[dict[str, Any]], asyncio.Event]
) -> None:
    url, received, got = webhook
    store.add([priced(0.10 + 0.01 * i, run=f"base{i}", at=T0 + i) for i in range(10)])
    store.add([priced(1.50, run="spike", at=T0 + 100), priced(0.12, run="normal", at=T0 + 101)])
    failures: list[CostAlert] = []
    monitor = CostMonitor(
        store,
        [WebhookSink(url + "/fail"), WebhookSink(url + "/alerts"), CallbackSink(failures.append)],
        factor=3.0,
        min_baseline=5,
    )
    assert await monitor.check_run("normal") is None
    alert = await monitor.check_run("spike")
    assert alert is not None and alert.kind == "run_anomaly" and alert.key == "spike"
    await asyncio.wait_for(got.wait(), timeout=5)
    assert received[0]["alert"]["kind"] == "run_anomaly"
    assert received[0]["alert"]["key"] == "spike"
    assert received[0]["alert"]["observed_usd"] == pytest.approx(1.5)
    assert received[0]["alert"]["ratio"] > 3
    assert monitor.delivery_failures == 1  # the 500 sink, and the others still got it
    assert failures == [alert]
    assert await monitor.check_run("spike") is None  # fires once
    assert len(received) == 1


async def test_run_without_enough_history_does_not_alert(store: TraceStore) -> None:
    store.add([priced(0.1, run="a", at=T0), priced(5.0, run="b", at=T0 + 1)])
    monitor = CostMonitor(store, [CallbackSink(lambda a: None)], min_baseline=5)
    assert await monitor.check_run("b") is None
    assert await monitor.check_run("missing") is None


async def test_tenant_anomaly_and_budget_thresholds(store: TraceStore, caplog: pytest.LogCaptureFixture) -> None:
    now = T0 + 30 * 3600
    # one dollar per hour for a day, then 10 dollars in the last hour
    store.add([priced(1.0, run=f"h{h}", at=now - 3600 * (h + 1) - 60) for h in range(24)])
    store.add([priced(10.0, run="burst", at=now - 60)])
    monitor = CostMonitor(store, [LogSink()], window_s=3600, baseline_windows=24, factor=3.0)
    with caplog.at_level(logging.WARNING, logger="bastion.cost"):
        alert = await monitor.check_tenant("acme", now=now)
    assert alert is not None and alert.kind == "tenant_anomaly"
    assert alert.ratio == pytest.approx(10.0)
    assert "tenant acme spent $10.0000" in caplog.text
    assert await monitor.check_tenant("acme", now=now) is None  # once per window
    assert await monitor.check_tenant("globex", now=now) is None

    crossed = await monitor.check_budget("tenant:acme:monthly", used_usd=85, limit_usd=100)
    assert [a.baseline_usd for a in crossed] == [100] and crossed[0].ratio == pytest.approx(0.85)
    assert await monitor.check_budget("tenant:acme:monthly", used_usd=90, limit_usd=100) == []
    over = await monitor.check_budget("tenant:acme:monthly", used_usd=101, limit_usd=100)
    assert len(over) == 1 and "threshold 100%" in over[0].message
    with pytest.raises(UserError, match="limit must be positive"):
        await monitor.check_budget("x", 1, 0)
    with pytest.raises(UserError, match="above 1"):
        CostMonitor(store, factor=0.5)
    with pytest.raises(UserError, match="http"):
        WebhookSink("ftp://x")


async def test_check_recent_scans_new_runs(store: TraceStore) -> None:
    store.add([priced(0.1, run=f"b{i}", at=T0 + i) for i in range(6)] + [priced(9.0, run="big", at=T0 + 50)])
    alerts: list[CostAlert] = []
    monitor = CostMonitor(store, [CallbackSink(alerts.append)], min_baseline=5)
    found = await monitor.check_recent(now=T0 + 100)
    assert [a.key for a in found if a.kind == "run_anomaly"] == ["big"]
    assert alerts == found
