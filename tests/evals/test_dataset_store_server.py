"""`/v1/evals/datasets` on two servers sharing one PostgreSQL database (issue 13): a run
promoted through one server is listed and read through the other, tenant-scoped; and
`ProjectEnv` hands out the store that matches the deployment."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from bastion.evals import JsonlDatasetStore, PostgresDatasetStore
from bastion.gateway import MemorySemanticStore, PostgresSemanticStore, ResponseCache, SQLiteCacheStore
from bastion.graph.agent import Agent
from bastion.memory import HashingEmbedder
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import FunctionModel, serve_app

KEYS = {"k-acme": ("acme", "operator"), "k-evil": ("evil", "operator")}


def project(env: ProjectEnv) -> Project:
    agent = Agent(FunctionModel(lambda r: f"echo {r.messages[-1].text}"), name="echo", checkpointer=env.checkpointer())
    return Project({"echo": agent}, api_keys=KEYS)


async def test_two_servers_on_one_database_see_the_same_datasets(pg_url: str, tmp_path: Path) -> None:
    async with AsyncExitStack() as outer, aiohttp.ClientSession() as session:
        bases: list[str] = []
        for i in range(2):  # two servers, each with its own home, one database
            env = ProjectEnv(home=tmp_path / f"home{i}", database_url=pg_url)
            parts, stack = await build_server(project(env), env, lease_seconds=5)
            await outer.enter_async_context(stack)
            bases.append(await outer.enter_async_context(serve_app(parts.app, lifespan="off")))

        async def call(server: int, key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {key}"}
            async with session.request(method, bases[server] + path, headers=headers, **kw) as r:
                return r.status, await r.json()

        status, run = await call(0, "k-acme", "POST", "/v1/runs", json={"agent": "echo", "input": "ping", "wait": True})
        assert status == 201 and run["status"] == "completed"
        body = {"run_id": run["id"], "expected": {"output_contains": ["ping"]}}
        status, case = await call(0, "k-acme", "POST", "/v1/evals/datasets/regressions/cases", json=body)
        assert status == 201, case
        # The other server lists and reads it; the other tenant sees nothing on either server.
        assert (await call(1, "k-acme", "GET", "/v1/evals/datasets"))[1] == [{"name": "regressions", "cases": 1}]
        status, dataset = await call(1, "k-acme", "GET", "/v1/evals/datasets/regressions")
        assert status == 200 and [c["id"] for c in dataset["cases"]] == [case["id"]]
        assert dataset["cases"][0]["metadata"]["run_id"] == run["id"]
        for server in (0, 1):
            assert (await call(server, "k-evil", "GET", "/v1/evals/datasets"))[1] == []
            assert (await call(server, "k-evil", "GET", "/v1/evals/datasets/regressions"))[0] == 404
        # Appended through the second server, seen through the first.
        status, _ = await call(1, "k-acme", "POST", "/v1/evals/datasets/regressions/cases", json=body)
        assert status == 201
        assert (await call(0, "k-acme", "GET", "/v1/evals/datasets"))[1] == [{"name": "regressions", "cases": 2}]
        assert (await call(0, "k-acme", "GET", "/v1/evals/datasets/bad%20name"))[0] == 422
    # Nothing was written under either home for the datasets.
    assert not (tmp_path / "home0" / "evals").exists() and not (tmp_path / "home1" / "evals").exists()


async def test_project_env_hands_out_stores_matching_the_deployment(pg_url: str, tmp_path: Path) -> None:
    embedded = ProjectEnv(home=tmp_path / "home")
    scaled = ProjectEnv(home=tmp_path / "home2", database_url=pg_url)
    datasets = [embedded.eval_datasets(), scaled.eval_datasets()]
    assert isinstance(datasets[0], JsonlDatasetStore) and datasets[0].root == tmp_path / "home" / "evals"
    assert isinstance(datasets[1], PostgresDatasetStore)
    caches = [embedded.semantic_cache(HashingEmbedder(), threshold=0.9), scaled.semantic_cache(HashingEmbedder())]
    assert isinstance(caches[0].store, MemorySemanticStore) and caches[0].threshold == 0.9
    assert isinstance(caches[1].store, PostgresSemanticStore)
    exact = embedded.response_cache()
    assert isinstance(exact, ResponseCache) and isinstance(exact.store, SQLiteCacheStore)
    assert exact.store.path == tmp_path / "home" / "cache.db"
    exact.close()
    for store in datasets:
        await store.aclose()
    for cache in caches:
        await cache.aclose()
