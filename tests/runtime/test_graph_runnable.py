"""A compiled graph deploys like an agent: on a real server it fans out with `Send`, retries a
node, pauses on an interrupt answered over HTTP, streams node updates over SSE, keeps its
checkpoints per tenant-scoped thread (history and fork over HTTP), and records a trace."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import aiohttp
import pytest

from bastion.errors import ConfigError
from bastion.graph import END, START, Graph, NodeConfig, RetryPolicy, Send, append, emit, interrupt
from bastion.runtime import GraphRunnable
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import serve_app

KEYS = {"key-a": ("a", "operator"), "key-b": ("b", "operator")}
ATTEMPTS: dict[str, int] = {}  # flaky node attempts per storage key (the server runs in this process)


class State(TypedDict, total=False):
    question: str
    topics: list[str]
    results: Annotated[list[str], append]
    tries: int
    approved: Any


def plan(state: State) -> State:
    return {"topics": state["question"].split()}


def fan_out(state: State) -> list[Send]:
    return [Send("work", topic) for topic in state["topics"]]


async def work(topic: str) -> State:
    emit("progress", {"topic": topic})
    return {"results": [f"notes on {topic}"]}


def flaky(state: State, config: NodeConfig) -> State:
    key = str(config.thread_id)
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] == 1:
        raise ConnectionError("the search backend hung up")  # retried by the node's RetryPolicy
    return {"tries": ATTEMPTS[key]}


def review(state: State) -> State:
    decision = interrupt({"question": "publish?", "results": sorted(state.get("results", []))})
    return {"approved": decision}


def build_graph() -> Graph:
    g = Graph(State)
    g.add_node("plan", plan)
    g.add_node("work", work)
    g.add_node("flaky", flaky, retry=RetryPolicy(max_attempts=3, base_delay=0.01, jitter="none"))
    g.add_node("review", review)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", fan_out)
    g.add_edge("work", "flaky")
    g.add_edge("flaky", "review")
    g.add_edge("review", END)
    return g


Call = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Call]]:
    ATTEMPTS.clear()
    database = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    env = ProjectEnv(home=tmp_path / "home", database_url=database)  # runs, checkpoints: SQLite or PostgreSQL
    app = build_graph().compile(checkpointer=env.checkpointer(), name="research", trace_nodes=True)
    agents = {
        "research": app,  # picked up as GraphRunnable by Project.runnables()
        "ask": GraphRunnable(app, input="question", output="approved"),
    }
    parts, stack = await build_server(Project(agents, api_keys=KEYS), env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base, aiohttp.ClientSession() as session:

        async def call(key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, **kw) as r:
                return r.status, await r.json()

        yield base, call


async def sse(base: str, key: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's events over SSE; the stream ends when the run ends or pauses (bounded)."""
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.get(f"{base}/v1/runs/{run_id}/stream", headers=headers) as r,
    ):
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = await r.text()
    events: list[tuple[str, dict[str, Any]]] = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_a_graph_runs_pauses_resumes_and_streams_over_http(served: tuple[str, Call]) -> None:
    base, call = served
    body = {"agent": "research", "input": {"question": "alpha beta gamma"}, "thread_id": "t1", "wait": True}
    status, run = await call("key-a", "POST", "/v1/runs", json=body)
    assert status == 201 and run["status"] == "interrupted", run
    [pending] = run["interrupts"]
    assert pending["payload"] == {
        "question": "publish?",
        "results": ["notes on alpha", "notes on beta", "notes on gamma"],
    }
    assert pending["node"] == "review" and pending["id"]
    status, inbox = await call("key-a", "GET", "/v1/approvals")
    assert [a["run_id"] for a in inbox] == [run["id"]] and inbox[0]["interrupts"][0]["id"] == pending["id"]

    events = await sse(base, "key-a", run["id"])
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["run_queued", "run_started"] and kinds[-2:] == ["run_interrupted", "end"]
    updates = [(d["node"], d["data"]) for k, d in events if k == "update"]
    assert ("plan", {"topics": ["alpha", "beta", "gamma"]}) in updates
    assert sorted(d["results"][0] for n, d in updates if n == "work") == [
        "notes on alpha", "notes on beta", "notes on gamma",
    ]  # fmt: skip
    assert ("flaky", {"tries": 2}) in updates  # the first attempt failed and was retried
    assert sorted(d["data"]["topic"] for k, d in events if k == "progress") == ["alpha", "beta", "gamma"]

    # The UI's decision shape: {interrupt_id: decision}; the graph continues from its checkpoint.
    decision = {pending["id"]: {"action": "approve"}}
    status, resumed = await call("key-a", "POST", f"/v1/approvals/{run['id']}", json={"decision": decision})
    assert status == 200 and resumed["status"] in ("queued", "running", "completed")  # a worker may be quick
    tail = await sse(base, "key-a", run["id"])
    assert [k for k, _ in tail][-2:] == ["run_completed", "end"]
    status, done = await call("key-a", "GET", f"/v1/runs/{run['id']}")
    assert done["status"] == "completed" and done["error"] is None
    assert done["output"]["approved"] == {"action": "approve"} and done["output"]["tries"] == 2
    assert sorted(done["output"]["results"]) == ["notes on alpha", "notes on beta", "notes on gamma"]
    assert sum(ATTEMPTS.values()) == 2  # resuming did not re-run the retried node

    # One trace for both attempts (the resumed root continues the paused run's trace), each
    # attempt rooted like an agent's, with the node spans under it.
    status, trace = await call("key-a", "GET", f"/v1/runs/{run['id']}/trace")
    names = [s["name"] for s in trace["spans"]]
    assert status == 200 and trace["trace_ids"] == [done["trace_id"]]
    assert names.count("invoke_agent research") == 2 and "graph node flaky" in names
    flaky_spans = [s for s in trace["spans"] if s["name"] == "graph node flaky"]
    assert flaky_spans and all(s["status"] == "ok" for s in flaky_spans)


async def test_input_and_output_mapping(served: tuple[str, Call]) -> None:
    _, call = served
    # A string input goes into the configured key; the output is the configured key.
    status, run = await call("key-a", "POST", "/v1/runs", json={"agent": "ask", "input": "one", "wait": True})
    assert run["status"] == "interrupted", run
    status, resumed = await call("key-a", "POST", f"/v1/runs/{run['id']}/resume", json={"decision": "ship it"})
    assert status == 200 and resumed["status"] in ("queued", "running", "completed")  # a worker may be quick
    done = await wait_done(call, "key-a", run["id"])
    assert done["status"] == "completed" and done["output"] == "ship it"
    # The default mapping takes a JSON object: anything else fails the run with how to fix it.
    status, bad = await call("key-a", "POST", "/v1/runs", json={"agent": "research", "input": "text", "wait": True})
    assert bad["status"] == "failed" and "GraphRunnable(graph, input='<state key>')" in bad["error"]
    # Unknown state keys are refused by the graph, naming them.
    body = {"agent": "research", "input": {"qestion": "typo"}, "wait": True}
    status, bad = await call("key-a", "POST", "/v1/runs", json=body)
    assert bad["status"] == "failed" and "qestion" in bad["error"]


async def wait_done(call: Call, key: str, run_id: str) -> dict[str, Any]:
    """A resumed run's final state (`wait` applies to creating a run, not to resuming one)."""
    for _ in range(200):  # bounded: 200 x 50 ms
        _, run = await call(key, "GET", f"/v1/runs/{run_id}")
        if run["status"] in ("completed", "failed", "cancelled", "interrupted"):
            return run
        await asyncio.sleep(0.05)  # polling a real server's run status, bounded above
    raise AssertionError(f"run {run_id} did not finish: {run}")


async def test_history_fork_and_tenant_isolation(served: tuple[str, Call]) -> None:
    base, call = served
    body = {"agent": "research", "input": {"question": "alpha beta"}, "thread_id": "t1", "wait": True}
    _, run = await call("key-a", "POST", "/v1/runs", json=body)
    assert run["status"] == "interrupted"
    status, history = await call("key-a", "GET", "/v1/threads/t1/history")
    assert status == 200 and {h["agent"] for h in history} == {"research"}
    steps = [h["step"] for h in history]
    assert steps == sorted(steps, reverse=True) and steps[-1] == 0  # newest first, down to the input
    after_plan = next(h for h in history if h["step"] == 1)

    # Time travel: a fork at the checkpoint after `plan` has no results yet; new input on it
    # starts from that state, and the original thread is untouched.
    fork_body = {"checkpoint_id": after_plan["checkpoint_id"], "thread_id": "t1-fork"}
    status, fork = await call("key-a", "POST", "/v1/threads/t1/fork", json=fork_body)
    assert status == 201 and fork["thread_id"] == "t1-fork"
    body = {"agent": "research", "input": {"question": "delta"}, "thread_id": "t1-fork", "wait": True}
    _, forked = await call("key-a", "POST", "/v1/runs", json=body)
    assert forked["status"] == "interrupted" and forked["interrupts"][0]["payload"]["results"] == ["notes on delta"]
    _, original = await call("key-a", "GET", "/v1/threads/t1/history")
    assert [h["checkpoint_id"] for h in original] == [h["checkpoint_id"] for h in history]

    # Another tenant cannot name tenant a's thread, run or checkpoint ...
    assert (await call("key-b", "GET", "/v1/threads/t1/history"))[0] == 404
    assert (await call("key-b", "POST", "/v1/threads/t1/fork", json=fork_body))[0] == 404
    assert (await call("key-b", "GET", f"/v1/runs/{run['id']}"))[0] == 404
    assert (await call("key-b", "POST", f"/v1/runs/{run['id']}/resume", json={"decision": "approve"}))[0] == 404
    assert (await call("key-b", "GET", "/v1/approvals"))[1] == []
    # ... and the same thread id is a different, empty thread for it.
    body = {"agent": "research", "input": {"question": "zeta"}, "thread_id": "t1", "wait": True}
    _, theirs = await call("key-b", "POST", "/v1/runs", json=body)
    assert theirs["status"] == "interrupted" and theirs["interrupts"][0]["payload"]["results"] == ["notes on zeta"]
    _, their_history = await call("key-b", "GET", "/v1/threads/t1/history")
    assert not {h["checkpoint_id"] for h in their_history} & {h["checkpoint_id"] for h in history}
    # Deleting tenant a's thread removes its checkpoints; b's thread of the same id stays.
    assert (await call("key-a", "POST", f"/v1/runs/{run['id']}/cancel"))[0] == 200
    async with (
        aiohttp.ClientSession() as s,
        s.delete(f"{base}/v1/threads/t1", headers={"Authorization": "Bearer key-a"}) as r,
    ):
        assert r.status == 204
    assert (await call("key-a", "GET", "/v1/threads/t1/history"))[0] == 404
    assert [h["checkpoint_id"] for h in (await call("key-b", "GET", "/v1/threads/t1/history"))[1]] == [
        h["checkpoint_id"] for h in their_history
    ]


def test_a_graph_without_checkpointer_is_refused_at_load() -> None:
    project = Project({"research": build_graph().compile()})
    with pytest.raises(ConfigError, match=r"compile\(checkpointer=env.checkpointer\(\)\)"):
        project.runnables()


class Counter(TypedDict, total=False):
    n: int
    seen: Annotated[list[str], append]


async def test_a_recovered_graph_run_continues_at_the_step_it_died_in(tmp_path: Path) -> None:
    from bastion.checkpoint import SqliteCheckpointer
    from bastion.types import RunContext

    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    def first(state: Counter) -> Counter:
        calls.append("first")
        return {"seen": ["first"]}

    async def second(state: Counter) -> Counter:
        calls.append("second")
        entered.set()
        await release.wait()  # the first attempt dies here
        return {"seen": ["second"]}

    g = Graph(Counter)
    g.add_node("first", first)
    g.add_node("second", second)
    g.add_edge(START, "first")
    g.add_edge("first", "second")
    g.add_edge("second", END)
    runnable = GraphRunnable(g.compile(checkpointer=SqliteCheckpointer(tmp_path / "cp.db")))
    context = RunContext(tenant="a", session="t", run_id="run_1")
    before = await runnable.latest_checkpoint("a/t")
    attempt = asyncio.create_task(runnable.invoke({"n": 1}, thread_id="a/t", context=context, checkpoint_before=before))
    await asyncio.wait_for(entered.wait(), 10)
    attempt.cancel()  # what a worker's death looks like to the run: it stops mid-node
    with pytest.raises(asyncio.CancelledError):
        await attempt
    release.set()
    outcome = await runnable.invoke(None, thread_id="a/t", context=context, recover=True, checkpoint_before=before)
    assert outcome.status == "completed" and outcome.output == {"n": 1, "seen": ["first", "second"]}
    assert calls == ["first", "second", "second"]  # the finished step was not repeated
    assert [h["step"] for h in await runnable.history("a/t")] == [2, 1, 0]
