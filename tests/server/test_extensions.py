"""Traces, costs and memory over HTTP: tenant-scoped like everything else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bastion.gateway import Gateway
from bastion.graph.agent import Agent
from bastion.memory import HashingEmbedder, MemoryItem, Namespace, SQLiteMemoryStore
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import FunctionModel, serve_app
from bastion.types import ModelRequest


def _priced(request: ModelRequest) -> str:
    return f"echo {request.messages[-1].text}"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    env = ProjectEnv(home=tmp_path / "home")
    memory = SQLiteMemoryStore(tmp_path / "mem.db", HashingEmbedder())
    await memory.put(Namespace("acme"), MemoryItem("acme's secret recipe uses cardamom"))
    await memory.put(Namespace("evil"), MemoryItem("evil's plan involves cardamom too"))
    await memory.flush()
    # The model is priced so cost attribution has something to add up.
    gateway = Gateway(models={"test:echo": FunctionModel(_priced, name="test:echo")},
                      pricing={"test:echo": {"input": 1.0, "output": 2.0}})  # fmt: skip
    agent = Agent(gateway.model("test:echo"), name="echo", checkpointer=env.checkpointer())
    keys = {"k-acme": ("acme", "operator"), "k-evil": ("evil", "operator")}
    project = Project({"echo": agent}, memory=memory, api_keys=keys, on_close=[memory.close, gateway.aclose])
    parts, stack = await build_server(project, env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base, aiohttp.ClientSession() as session:

        async def call(key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, **kw) as r:
                return r.status, await r.json()

        yield base, call


async def test_traces_and_costs_are_per_tenant(served: tuple[str, Any]) -> None:
    _, call = served
    status, run = await call("k-acme", "POST", "/v1/runs", json={"agent": "echo", "input": "hello", "wait": True})
    assert status == 201 and run["status"] == "completed" and run["trace_id"]
    status, trace = await call("k-acme", "GET", f"/v1/runs/{run['id']}/trace")
    names = [s["name"] for s in trace["spans"]]
    assert status == 200 and "invoke_agent echo" in names and "chat echo" in names
    chat = next(s for s in trace["spans"] if s["name"] == "chat echo")
    assert chat["attributes"]["gen_ai.usage.input_tokens"] > 0 and chat["attributes"]["bastion.cost.usd"] > 0
    assert (await call("k-acme", "GET", f"/v1/traces/{run['trace_id']}"))[0] == 200
    # Another tenant can name neither the run's trace nor the trace itself.
    assert (await call("k-evil", "GET", f"/v1/runs/{run['id']}/trace"))[0] == 404
    assert (await call("k-evil", "GET", f"/v1/traces/{run['trace_id']}"))[0] == 404
    assert (await call("k-evil", "GET", "/v1/traces"))[1] == []
    listed = (await call("k-acme", "GET", "/v1/traces"))[1]
    assert [t["trace_id"] for t in listed] == [run["trace_id"]]

    status, costs = await call("k-acme", "GET", "/v1/costs?by=model")
    assert status == 200 and costs[0]["key"] == "echo" and costs[0]["cost_usd"] > 0
    assert (await call("k-evil", "GET", "/v1/costs?by=model"))[1] == []
    status, body = await call("k-acme", "GET", "/v1/costs?by=nonsense")
    assert status == 422 and "by" in body["error"]["message"]


async def test_memory_search_is_per_tenant(served: tuple[str, Any]) -> None:
    _, call = served
    status, hits = await call("k-acme", "GET", "/v1/memory/search?q=cardamom")
    assert status == 200 and [h["text"] for h in hits] == ["acme's secret recipe uses cardamom"]
    status, hits = await call("k-evil", "GET", "/v1/memory/search?q=cardamom")
    assert [h["text"] for h in hits] == ["evil's plan involves cardamom too"]
    status, _ = await call("k-acme", "GET", "/v1/memory/search?q=")
    assert status == 422


async def test_metrics_endpoint_exposes_prometheus_text(served: tuple[str, Any]) -> None:
    base, call = served
    await call("k-acme", "POST", "/v1/runs", json={"agent": "echo", "input": "count me", "wait": True})
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        text = await r.text()
    assert r.status == 200 and "gen_ai_client_token_usage" in text


async def test_promote_a_run_to_an_eval_dataset(served: tuple[str, Any]) -> None:
    _, call = served
    _, run = await call("k-acme", "POST", "/v1/runs", json={"agent": "echo", "input": "ping", "wait": True})
    body = {"run_id": run["id"], "expected": {"output_contains": ["ping"]}}
    status, case = await call("k-acme", "POST", "/v1/evals/datasets/regressions/cases", json=body)
    assert status == 201, case
    assert case["input"] == "ping" and case["expected"] == {"output_contains": ["ping"]}
    assert (await call("k-acme", "GET", "/v1/evals/datasets"))[1] == [{"name": "regressions", "cases": 1}]
    status, dataset = await call("k-acme", "GET", "/v1/evals/datasets/regressions")
    assert status == 200 and dataset["cases"][0]["metadata"]["run_id"] == run["id"]
    # Another tenant neither sees the dataset nor can promote acme's run.
    assert (await call("k-evil", "GET", "/v1/evals/datasets"))[1] == []
    assert (await call("k-evil", "GET", "/v1/evals/datasets/regressions"))[0] == 404
    assert (await call("k-evil", "POST", "/v1/evals/datasets/mine/cases", json={"run_id": run["id"]}))[0] == 404
    assert (await call("k-acme", "GET", "/v1/evals/datasets/..%2Fescape"))[0] in (404, 422)


async def test_cost_series_buckets_spend_over_time(served: tuple[str, Any]) -> None:
    _, call = served
    await call("k-acme", "POST", "/v1/runs", json={"agent": "echo", "input": "spend", "wait": True})
    status, data = await call("k-acme", "GET", "/v1/costs/series?by=model&hours=1&buckets=6")
    assert status == 200 and len(data["series"]["echo"]) == 6 and sum(data["series"]["echo"]) > 0
    assert (await call("k-evil", "GET", "/v1/costs/series?by=model"))[1]["series"] == {}
