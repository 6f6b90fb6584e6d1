"""Cost alerts: spend attributed to the root run, a robust (median/MAD) baseline, absolute
limits for tenants without history, deduplication that survives a restart, and the monitor
running inside a real server without being called."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.config import get_settings
from bastion.gateway import Gateway
from bastion.graph.agent import Agent, Supervisor
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import DirectToolExecutor, FunctionModel, serve_app
from bastion.tracing import CallbackSink, CostAlert, CostMonitor, SpanRecord, TraceStore, TracingHandle
from bastion.tracing import semconv as sc
from bastion.tracing._alert_ledger import PostgresAlertLedger, SQLiteAlertLedger
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, Usage

T0 = 1_700_000_000.0
_n = 0


def span(
    cost: float, *, trace: str, at: float, agent: str = "solo", tenant: str = "acme", parent: str | None = None
) -> SpanRecord:
    global _n
    _n += 1
    attrs: dict[str, Any] = {
        sc.BASTION_COST_USD: cost,
        sc.BASTION_RUN_ID: f"run-{trace}",
        sc.BASTION_TENANT_ID: tenant,
        sc.GEN_AI_AGENT_NAME: agent,
        sc.GEN_AI_OPERATION_NAME: "chat",
    }
    return SpanRecord(trace, f"s{_n:08d}", parent, "x", int(at * 1e9), int(at * 1e9) + 1000, attributes=attrs)


def priced_model(name: str, tokens: list[int]) -> FunctionModel:
    """A model whose calls use `tokens[0]` input tokens (the test raises it for the spike)."""

    async def reply(request: ModelRequest) -> ModelResponse:
        text = f"{name} did: {request.messages[-1].text}"
        return ModelResponse(message=Message.assistant(text), usage=Usage(tokens[0], 0, requests=1))

    return FunctionModel(reply, name=f"test:{name}")


async def test_a_spike_under_a_rule_routed_supervisor_alerts_on_the_root_run(
    traced: TracingHandle, store: TraceStore
) -> None:
    # The router is a rule: the supervisor itself spends nothing, its members spend everything.
    # Labelled by max(agent) ("tech") and compared with past runs of "tech" only (none: billing
    # answered them all), this spike never alerted.
    def rule(messages: list[Message]) -> str | None:
        if messages[-1].role == "assistant":
            return None
        return "tech" if "crash" in messages[-1].text else "billing"

    tokens = [10_000]  # $0.01 at $1 per million tokens
    price = {"input": 1.0, "output": 1.0}
    gateway = Gateway(
        models=[priced_model("billing", tokens), priced_model("tech", tokens)],
        pricing={"test:billing": price, "test:tech": price},
    )
    ex = DirectToolExecutor()
    members = [Agent(gateway.model(f"test:{n}"), name=n, tool_executor=ex) for n in ("billing", "tech")]
    sup = Supervisor(members, router=rule, name="helpdesk")
    for i in range(6):
        await sup.run(f"invoice {i}", context=RunContext(tenant="acme", run_id=f"base{i}"))
    tokens[0] = 1_730_000  # $1.73: 173x
    await sup.run("the app crashes", context=RunContext(tenant="acme", run_id="spike"))
    traced.force_flush()
    alerts: list[CostAlert] = []
    monitor = CostMonitor(store, [CallbackSink(alerts.append)], min_baseline=5)
    found = await monitor.check_recent()
    assert [(a.kind, a.key) for a in found] == [("run_anomaly", "spike")]
    [alert] = found
    assert alert.observed_usd == pytest.approx(1.73)
    assert alert.baseline_usd == pytest.approx(0.01)  # the whole root run, not one agent's share
    assert alert.ratio == pytest.approx(173)
    assert "agent helpdesk" in alert.message and alert.tenant == "acme"
    assert alerts == found


async def test_an_earlier_spike_does_not_inflate_the_baseline(store: TraceStore) -> None:
    store.add([span(0.10, trace=f"b{i}", at=T0 + i) for i in range(9)])
    store.add([span(10.0, trace="old-spike", at=T0 + 20)])  # mean of the ten: $1.09; median $0.10
    store.add([span(1.0, trace="now", at=T0 + 30), span(0.12, trace="normal", at=T0 + 31)])
    monitor = CostMonitor(store, [CallbackSink(lambda a: None)], factor=3.0, min_baseline=5)
    alert = await monitor.check_run("run-now")
    assert alert is not None and alert.kind == "run_anomaly"  # 3x a mean of $1.09 would not alert
    assert alert.baseline_usd == pytest.approx(0.10)
    assert await monitor.check_run("run-normal") is None


async def test_an_earlier_spike_does_not_inflate_a_tenants_baseline(store: TraceStore) -> None:
    now = T0 + 30 * 3600
    # $1 an hour for a day, except one $100 hour: the mean is $5.13 an hour, the median $1
    hourly = [100.0 if h == 5 else 1.0 for h in range(24)]
    store.add([span(c, trace=f"h{h}", at=now - 3600 * (h + 1) - 60, tenant="t") for h, c in enumerate(hourly)])
    store.add([span(5.0, trace="burst", at=now - 60, tenant="t")])
    monitor = CostMonitor(store, [CallbackSink(lambda a: None)], window_s=3600, baseline_windows=24, factor=3.0)
    alert = await monitor.check_tenant("t", now=now)
    assert alert is not None and alert.kind == "tenant_anomaly"  # 3x the mean ($15.38) would not alert
    assert alert.baseline_usd == pytest.approx(1.0) and alert.ratio == pytest.approx(5.0)


async def test_a_new_tenant_alerts_on_absolute_limits(store: TraceStore) -> None:
    now = time.time()
    store.add(
        [span(2.0, trace="first", at=now - 30, tenant="fresh"), span(3.0, trace="first", at=now - 29, tenant="fresh")]
    )
    quiet = CostMonitor(store, [CallbackSink(lambda a: None)])
    assert await quiet.check_recent(now=now) == []  # no history: the relative rules cannot fire
    monitor = CostMonitor(
        store, [CallbackSink(lambda a: None)], run_limit_usd=1.0, tenant_limit_usd=100.0,
        tenant_limits={"fresh": 4.0}, ledger=None,
    )  # fmt: skip
    found = await monitor.check_recent(now=now)
    assert sorted((a.kind, a.key) for a in found) == [("run_threshold", "run-first"), ("tenant_threshold", "fresh")]
    run_alert = next(a for a in found if a.kind == "run_threshold")
    assert run_alert.observed_usd == pytest.approx(5.0) and run_alert.baseline_usd == 1.0
    tenant_alert = next(a for a in found if a.kind == "tenant_threshold")
    assert tenant_alert.baseline_usd == 4.0  # the tenant's own limit, over the default of 100


def _open_store(backend: str, path: Path, request: pytest.FixtureRequest) -> Any:
    if backend == "postgres":
        from bastion.tracing._store_pg import PostgresTraceStore

        url = request.getfixturevalue("pg_url")
        return PostgresTraceStore(url)
    return TraceStore(path)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_deduplication_survives_a_restart(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "traces.db"
    now = time.time()
    with _open_store(backend, path, request) as first_store:
        first_store.add([span(0.1, trace=f"b{i}", at=now - 100 + i) for i in range(6)])
        first_store.add([span(5.0, trace="big", at=now - 10)])
        first = CostMonitor(first_store, [CallbackSink(lambda a: None)], min_baseline=5)
        assert [a.key for a in await first.check_recent(now=now)] == ["run-big"]
        assert [a.ratio for a in await first.check_budget("tenant:acme", 90, 100)] == [0.9]
        first.close()
    with _open_store(backend, path, request) as second_store:  # a restarted process: a new store and monitor, same file
        sent: list[CostAlert] = []
        second = CostMonitor(second_store, [CallbackSink(sent.append)], min_baseline=5)
        assert await second.check_recent(now=now) == []
        assert await second.check_budget("tenant:acme", 95, 100) == []  # the 80% threshold fired already
        assert [a.kind for a in await second.check_budget("tenant:acme", 101, 100)] == ["budget_threshold"]
        assert len(sent) == 1
        second.close()
    ledger = SQLiteAlertLedger(path) if backend == "sqlite" else PostgresAlertLedger(request.getfixturevalue("pg_url"))
    try:
        assert [a["key"] for a in ledger.recent(tenant="acme")] == ["run-big"]
    finally:
        ledger.close()


def _spender(gateway: Gateway) -> Agent[object]:
    return Agent(gateway.model("test:spender"), name="spender", tool_executor=DirectToolExecutor())


@pytest.fixture
def alert_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BASTION_COST_ALERT_INTERVAL_S", "0.2")
    monkeypatch.setenv("BASTION_COST_ALERT_RUN_USD", "1.0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("alert_settings")
async def test_the_server_runs_the_monitor_without_being_called(tmp_path: Path) -> None:
    keys = {"k-acme": ("acme", "operator"), "k-evil": ("evil", "operator")}
    # 2.5M tokens at $1 per million: each run costs $2.50, over the $1 per-run limit
    gateway = Gateway(
        models=[priced_model("spender", [2_500_000])], pricing={"test:spender": {"input": 1.0, "output": 1.0}}
    )
    project = Project({"spender": _spender(gateway)}, gateway=gateway, api_keys=keys, on_close=[gateway.aclose])
    parts, stack = await build_server(project, ProjectEnv(home=tmp_path / "home"), lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base, aiohttp.ClientSession() as session:

        async def get(key: str, path: str) -> Any:
            async with session.get(base + path, headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        body = {"agent": "spender", "input": "go", "wait": True}
        async with session.post(base + "/v1/runs", json=body, headers={"Authorization": "Bearer k-acme"}) as r:
            assert r.status in (200, 201), await r.text()
            run = await r.json()
        alerts: list[dict[str, Any]] = []
        async with asyncio.timeout(15):  # the monitor checks every 0.2 s
            while not alerts:
                alerts = await get("k-acme", "/v1/alerts")
                if not alerts:
                    await asyncio.sleep(0.1)  # poll interval, bounded by the timeout above
        assert [(a["kind"], a["key"], a["tenant"]) for a in alerts] == [("run_threshold", run["id"], "acme")]
        assert alerts[0]["observed_usd"] == pytest.approx(2.5)
        assert await get("k-evil", "/v1/alerts") == []  # another tenant's alerts are not listed


SCALEOUT_APP = f"{Path(__file__).parents[1] / 'runtime' / 'scaleout_app.py'}:build"  # runs cost $0.005


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, key: str, body: Any = None) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


@pytest.mark.postgres
def test_a_worker_runs_the_monitor_without_being_called(pg_url: str, tmp_path: Path) -> None:
    """The server's own monitor is off: only the worker's can have fired the alert."""
    base_env = {**os.environ, "BASTION_CACHE_ENABLED": "false", "BASTION_COST_ALERT_RUN_USD": "0.001"}
    base_env["BASTION_SECRET_AUDIT_KEY"] = "shared-audit-key"  # the app audits its tools in PostgreSQL
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str], interval: str) -> None:
        (tmp_path / name).mkdir()
        argv = [sys.executable, "-m", "bastion.cli", "--home", str(tmp_path / name), *args]
        argv += ["--app", SCALEOUT_APP, "--database", pg_url]
        env = {**base_env, "BASTION_COST_ALERT_INTERVAL_S": interval}
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))

    def logs() -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log"))

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        spawn("server", ["serve", "--workers", "0", "--port", str(port)], "0")
        spawn("worker", ["worker", "--lease", "2", "--concurrency", "2"], "0.2")
        deadline = time.monotonic() + 60
        run: dict[str, Any] | None = None
        alerts: list[dict[str, Any]] = []
        while not alerts:
            assert time.monotonic() < deadline, logs()
            assert all(p.poll() is None for p in procs), logs()
            try:
                if run is None:
                    run = _http("POST", url + "/v1/runs", "key-a", {"agent": "clerk", "input": "hi"})
                alerts = _http("GET", url + "/v1/alerts", "key-a")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # the server is still starting
            if not alerts:
                time.sleep(0.1)  # polling other processes over HTTP, bounded by the deadline
        assert run is not None
        assert [(a["kind"], a["key"], a["tenant"]) for a in alerts] == [("run_threshold", run["id"], "a")]
        assert _http("GET", url + "/v1/alerts", "key-b") == []
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
