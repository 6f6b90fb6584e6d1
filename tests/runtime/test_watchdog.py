"""The watchdog: whatever a runnable does wrong, its run ends `failed` with the error recorded and
a `run_failed` event, and `POST /v1/runs` with `wait: true` answers. Deliberately broken
runnables on a real server (uvicorn on 127.0.0.1). Also: a failed run keeps its trace id and can
be promoted to an eval case with default settings (content capture off)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypedDict

import aiohttp
import pytest

from bastion.graph import END, START, Graph
from bastion.graph.agent import Agent
from bastion.runtime import RunOutcome
from bastion.server import Project, ProjectEnv
from bastion.server._serve import build_server
from bastion.testing import FunctionModel, serve_app
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

KEYS = {"key-a": ("a", "operator")}


class WrongSignature:
    async def invoke(self, input: Any) -> RunOutcome:  # no thread_id/context/...: a TypeError at the call
        return RunOutcome("completed", output=input)


class RaisesInInvoke:
    async def invoke(self, input: Any, **kw: Any) -> RunOutcome:
        raise ValueError("the runnable blew up")


class RaisesInEmit:
    async def invoke(self, input: Any, *, emit: Any, **kw: Any) -> RunOutcome:
        await emit("progress", {"step": 1})
        loop: dict[str, Any] = {}
        loop["self"] = loop
        await emit("progress", loop)  # the event sink cannot store a circular payload: it raises
        return RunOutcome("completed", output="unreachable")


class ExitsTheProcess:
    async def invoke(self, input: Any, **kw: Any) -> RunOutcome:
        raise SystemExit(3)  # must fail this run, not stop the server


class ReturnsGarbage:
    async def invoke(self, input: Any, **kw: Any) -> Any:
        return {"status": "completed", "output": "a dict is not a RunOutcome"}


class ReturnsBadStatus:
    async def invoke(self, input: Any, **kw: Any) -> RunOutcome:
        return RunOutcome("done")  # type: ignore[arg-type]  # not a status a runnable may return


class UnstorableOutput:
    async def invoke(self, input: Any, **kw: Any) -> RunOutcome:
        loop: list[Any] = []
        loop.append(loop)
        return RunOutcome("completed", output=loop)


class AsyncGeneratorInvoke:
    async def invoke(self, input: Any, **kw: Any) -> AsyncIterator[str]:
        yield "a runnable is not a generator"


class SyncInvoke:
    def invoke(self, input: Any, **kw: Any) -> RunOutcome:
        return RunOutcome("completed", output="sync")


class FailsMidway:
    async def invoke(self, input: Any, *, emit: Any, **kw: Any) -> RunOutcome:
        async def steps() -> AsyncIterator[int]:
            yield 1
            yield 2
            raise ConnectionResetError("the upstream closed the stream midway")

        async for step in steps():
            await emit("step", {"n": step})
        return RunOutcome("completed")


class BrokenLatestCheckpoint:
    async def latest_checkpoint(self, thread_id: str) -> str | None:
        raise OSError("the checkpoint database is gone")

    async def invoke(self, input: Any, **kw: Any) -> RunOutcome:
        return RunOutcome("completed", output="never reached")


class NotAnAgent:
    """Wrapped in AgentRunnable by the project, but its stream() is not the agent API: an adapter bug."""

    name = "impostor"

    def stream(self, input: Any) -> None:
        raise AssertionError("called with the wrong arguments; the adapter's call fails first")


CASES: dict[str, tuple[Any, str]] = {
    "wrong_signature": (WrongSignature(), "cannot be called as async def invoke(self, input, *, thread_id"),
    "raises": (RaisesInInvoke(), "ValueError: the runnable blew up"),
    "raises_in_emit": (RaisesInEmit(), "Circular reference"),
    "sys_exit": (ExitsTheProcess(), "RuntimeError: the run raised SystemExit(3)"),
    "garbage": (ReturnsGarbage(), "returned dict, not a bastion.runtime.RunOutcome"),
    "bad_status": (ReturnsBadStatus(), "RunOutcome.status is 'done'"),
    "unstorable": (UnstorableOutput(), "the run's outcome could not be recorded"),
    "async_generator": (AsyncGeneratorInvoke(), "invoke() is an async generator"),
    "sync": (SyncInvoke(), "returned RunOutcome, not an awaitable"),
    "fails_midway": (FailsMidway(), "ConnectionResetError: the upstream closed the stream midway"),
    "broken_latest": (BrokenLatestCheckpoint(), "OSError: the checkpoint database is gone"),
    "adapter_bug": (NotAnAgent(), "TypeError"),
}


@tool
def lookup(order: str) -> str:
    """Look an order up."""
    return f"order {order}: shipped"


def _lookup_then_crash(request: ModelRequest) -> str | ToolCall:
    if request.messages[-1].role == "tool":
        raise RuntimeError("the model provider crashed")
    return ToolCall("lookup", {"order": "42"})


class Failing(TypedDict, total=False):
    x: int


def _node_fails(state: Failing) -> Failing:
    raise RuntimeError("the node crashed")


Call = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Call, Any]]:
    env = ProjectEnv(home=tmp_path / "home")
    g = Graph(Failing)
    g.add_node("crash", _node_fails)
    g.add_edge(START, "crash")
    g.add_edge("crash", END)
    agents: dict[str, Any] = {name: runnable for name, (runnable, _) in CASES.items()}
    agents["support"] = Agent(FunctionModel(_lookup_then_crash), name="support", tools=[lookup])
    agents["pipeline"] = g.compile(checkpointer=env.checkpointer())
    parts, stack = await build_server(Project(agents, api_keys=KEYS), env, lease_seconds=5)
    async with stack, serve_app(parts.app, lifespan="off") as base, aiohttp.ClientSession() as session:

        async def call(key: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, **kw) as r:
                return r.status, await r.json()

        yield base, call, parts


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_broken_runnable_ends_its_run_as_failed(
    served: tuple[str, Call, Any], case: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, call, _ = served
    started = time.monotonic()
    body = {"agent": case, "input": "hello", "wait": True, "timeout": 20}
    if case == "broken_latest":  # (a thread opened for its run is not read: it has no past)
        body["thread_id"] = "has-a-past"
    status, run = await call("key-a", "POST", "/v1/runs", json=body)
    assert status == 201 and time.monotonic() - started < 10  # `wait` answered, long before its timeout
    expected = CASES[case][1]
    assert run["status"] == "failed" and expected in (run["error"] or ""), run
    _, events = await call("key-a", "GET", f"/v1/runs/{run['id']}/events")
    assert events[-1]["kind"] == "run_failed" and expected in events[-1]["data"]["error"]
    assert sum(e["kind"] == "run_failed" for e in events) == 1
    if case == "fails_midway":  # what happened before the failure is kept
        assert [e["data"]["n"] for e in events if e["kind"] == "step"] == [1, 2]
    assert "Task exception was never retrieved" not in caplog.text


async def test_the_worker_survives_broken_runnables_and_callbacks(served: tuple[str, Call, Any]) -> None:
    _, call, parts = served

    def broken_callback(run_id: str) -> None:
        raise RuntimeError("a done callback crashed")

    for worker in parts.runtime.workers:
        worker.done_callbacks.insert(0, broken_callback)
    for name in sorted(CASES):  # every slot a failure took is given back
        body = {"agent": name, "input": "x", "wait": True, "thread_id": f"t-{name}"}  # (named: read)
        status, run = await call("key-a", "POST", "/v1/runs", json=body)
        assert run["status"] == "failed"
    # The callbacks after the broken one still run: `wait` is woken, not left to its poll.
    status, run = await call("key-a", "POST", "/v1/runs", json={"agent": "raises", "input": "x", "wait": True})
    assert run["status"] == "failed"
    status, runs = await call("key-a", "GET", "/v1/runs?status=running")
    assert status == 200 and runs == []


async def test_a_failed_run_keeps_its_trace_and_promotes_with_default_settings(
    served: tuple[str, Call, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, call, _ = served
    status, run = await call(
        "key-a", "POST", "/v1/runs", json={"agent": "support", "input": "where is 42?", "wait": True}
    )
    assert run["status"] == "failed" and "the model provider crashed" in run["error"], run
    assert run["trace_id"], "a failed run must keep the trace of its attempt"
    status, trace = await call("key-a", "GET", f"/v1/runs/{run['id']}/trace")
    root = next(s for s in trace["spans"] if s["name"] == "invoke_agent support")
    assert root["status"] == "error" and run["trace_id"] in trace["trace_ids"]
    assert "bastion.run.input" not in root["attributes"]  # default settings: content capture is off

    body = {"run_id": run["id"], "golden": True}
    status, case = await call("key-a", "POST", "/v1/evals/datasets/failures/cases", json=body)
    assert status == 201, case
    assert case["input"] == "where is 42?" and case["metadata"]["trace_id"] == run["trace_id"]
    # The tool call's arguments are not in the trace (capture off): they come from the run's events.
    assert case["expected"]["tool_calls"] == [{"name": "lookup", "arguments": {"order": "42"}}]

    # A failing graph keeps its trace too.
    status, run = await call("key-a", "POST", "/v1/runs", json={"agent": "pipeline", "input": {"x": 1}, "wait": True})
    assert run["status"] == "failed" and "RuntimeError: the node crashed" in run["error"] and run["trace_id"]
    status, case = await call(
        "key-a", "POST", "/v1/evals/datasets/failures/cases", json={"run_id": run["id"], "golden": True}
    )
    assert status == 201 and case["input"] == {"x": 1} and case["expected"]["tool_calls"] == []


class Completes:
    async def invoke(self, input: Any, **kw: Any) -> RunOutcome:
        return RunOutcome("completed", output=input)


async def test_a_run_cancelled_before_its_first_step_leaves_no_unawaited_coroutine(tmp_path: Path) -> None:
    """A cancel can land between the task's creation and its first step (the `interrupt`
    strategy racing a claim): the runnable's coroutine must be closed, not left to warn."""
    import gc

    from bastion.runtime import SqlRunStore, Worker, new_run
    from bastion.runtime._watchdog import Attempt

    store = SqlRunStore.sqlite(tmp_path / "runs.db")
    worker = Worker(store, {"ok": Completes()})
    await store.create(new_run(tenant="a", thread_id=None, agent="ok", input="x"))
    run = await store.claim(worker.id, 30)
    assert run is not None
    task = await worker._start(run, worker.agents["ok"], Attempt())  # pyright: ignore[reportPrivateUsage]
    task.cancel()  # before the task ran at all
    with pytest.raises(asyncio.CancelledError):
        await task
    gc.collect()  # a never-awaited coroutine would warn here, and warnings are errors
    await store.close()
