"""Runtime semantics over both stores: SQLite (embedded) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import UserError
from bastion.runtime import (
    PostgresWakeup,
    RunConflictError,
    RunNotFoundError,
    RunOutcome,
    Runtime,
    SqlRunStore,
    Worker,
)
from bastion.runtime._types import EventSink
from bastion.types import RunContext


class EchoAgent:
    """Answers with its input; interrupts when asked to, then completes with the decision."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None

    async def invoke(
        self, input: Any, *, thread_id: str, context: RunContext, resume: Any = None, recover: bool = False,
        emit: EventSink | None = None, **_: Any,
    ) -> RunOutcome:  # fmt: skip
        self.calls.append({"input": input, "thread": thread_id, "resume": resume, "recover": recover})
        if emit:
            await emit("token", {"text": "working"})
        if self.gate is not None:
            await self.gate.wait()
        if input == "boom":
            raise RuntimeError("the agent crashed")
        if input == "approve-me" and resume is None:
            return RunOutcome("interrupted", interrupts=[{"id": "i1", "payload": {"tool": "refund"}}])
        return RunOutcome("completed", output={"echo": input, "decision": resume, "tenant": context.tenant})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return lambda: SqlRunStore.sqlite(tmp_path / "runs.db")
    url = request.getfixturevalue("pg_url")
    return lambda: SqlRunStore.postgres(url)


@pytest.fixture
async def runtime(store_factory: Any) -> AsyncIterator[tuple[Runtime, EchoAgent]]:
    agent = EchoAgent()
    rt = Runtime(store_factory(), {"echo": agent}, lease_seconds=3)
    async with rt:
        yield rt, agent


async def test_run_completes_and_streams_events(runtime: tuple[Runtime, EchoAgent]) -> None:
    rt, _ = runtime
    run = await rt.run(tenant="acme", agent="echo", input="hello", timeout=10)
    assert run.status == "completed" and run.output == {"echo": "hello", "decision": None, "tenant": "acme"}
    kinds = [kind async for _, kind, _ in rt.stream(run.id, tenant="acme", timeout=10)]
    assert kinds == ["run_queued", "run_started", "token", "run_completed"]


async def test_failure_is_recorded_not_lost(runtime: tuple[Runtime, EchoAgent]) -> None:
    rt, _ = runtime
    run = await rt.run(tenant="acme", agent="echo", input="boom", timeout=10)
    assert run.status == "failed" and run.error == "RuntimeError: the agent crashed"
    assert run.input == "boom"


async def test_interrupt_then_resume_with_decision(runtime: tuple[Runtime, EchoAgent]) -> None:
    rt, agent = runtime
    run = await rt.run(tenant="acme", agent="echo", input="approve-me", thread_id="t1", timeout=10)
    assert run.status == "interrupted" and run.interrupts == [{"id": "i1", "payload": {"tool": "refund"}}]
    await rt.resume(run.id, tenant="acme", decision={"i1": "approve"})
    done = await rt.wait(run.id, tenant="acme", timeout=10)
    assert done.status == "completed" and done.output["decision"] == {"i1": "approve"}
    assert agent.calls[-1]["recover"] is False  # a resume is not crash recovery
    with pytest.raises(UserError, match="not waiting for a decision"):
        await rt.resume(run.id, tenant="acme", decision="again")


async def test_cancel_a_running_run(runtime: tuple[Runtime, EchoAgent]) -> None:
    rt, agent = runtime
    agent.gate = asyncio.Event()  # never set: the run blocks until cancelled
    run = await rt.create_run(tenant="acme", agent="echo", input="slow")
    async for _, kind, _ in rt.stream(run.id, tenant="acme", timeout=10):
        if kind == "token":
            break
    await rt.cancel(run.id, tenant="acme")
    done = await rt.wait(run.id, tenant="acme", timeout=10)
    assert done.status == "cancelled"


async def test_multitask_reject_enqueue_interrupt(runtime: tuple[Runtime, EchoAgent]) -> None:
    rt, agent = runtime
    agent.gate = asyncio.Event()
    first = await rt.create_run(tenant="acme", agent="echo", input="one", thread_id="busy")
    with pytest.raises(RunConflictError, match="already has an active run"):
        await rt.create_run(tenant="acme", agent="echo", input="two", thread_id="busy")
    queued = await rt.create_run(tenant="acme", agent="echo", input="two", thread_id="busy", multitask="enqueue")
    await asyncio.sleep(0)  # let the worker loop look at the queue once
    assert (await rt.get_run(queued.id, tenant="acme")).status == "queued"  # waits behind the first run
    agent.gate.set()
    assert (await rt.wait(first.id, tenant="acme", timeout=10)).status == "completed"
    assert (await rt.wait(queued.id, tenant="acme", timeout=10)).status == "completed"
    assert [c["input"] for c in agent.calls] == ["one", "two"]

    agent.gate = asyncio.Event()
    slow = await rt.create_run(tenant="acme", agent="echo", input="slow", thread_id="busy")
    newer = await rt.create_run(tenant="acme", agent="echo", input="newer", thread_id="busy", multitask="interrupt")
    agent.gate.set()
    assert (await rt.wait(slow.id, tenant="acme", timeout=10)).status == "cancelled"
    assert (await rt.wait(newer.id, tenant="acme", timeout=10)).status == "completed"


async def test_tenants_cannot_see_each_other(runtime: tuple[Runtime, EchoAgent]) -> None:
    rt, _ = runtime
    run = await rt.run(tenant="acme", agent="echo", input="secret", timeout=10)
    with pytest.raises(RunNotFoundError):
        await rt.get_run(run.id, tenant="evil")
    with pytest.raises(RunNotFoundError):
        await rt.cancel(run.id, tenant="evil")
    assert await rt.list_runs(tenant="evil") == []
    assert [r.id for r in await rt.list_runs(tenant="acme")] == [run.id]


async def test_unknown_agent_is_a_user_error(runtime: tuple[Runtime, EchoAgent]) -> None:
    rt, _ = runtime
    with pytest.raises(UserError, match="registered agents: \\['echo'\\]"):
        await rt.create_run(tenant="acme", agent="nope", input="x")


async def test_expired_lease_is_recovered_by_another_worker(store_factory: Any) -> None:
    store = store_factory()
    agent = EchoAgent()
    rt = Runtime(store, {"echo": agent}, workers=0)
    run = await rt.create_run(tenant="acme", agent="echo", input="hello")
    # A worker claims the run and dies without heartbeating: its lease expires.
    dead = await store.claim("dead-worker", lease_seconds=0.05)
    assert dead is not None and dead.id == run.id
    assert await store.claim("other", lease_seconds=30) is None  # lease still live
    await asyncio.sleep(0.06)  # let the 50 ms lease lapse (this is the scenario, not synchronisation)
    worker = Worker(store, {"echo": agent}, lease_seconds=30, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    done = await rt.wait(run.id, tenant="acme", timeout=10)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert done.status == "completed" and done.attempts == 2
    assert agent.calls[-1]["recover"] is True
    # The dead worker coming back cannot overwrite the result (fencing by lease owner).
    assert not await store.finish(run.id, "dead-worker", RunOutcome("completed", output="stale"), None)
    assert (await rt.get_run(run.id, tenant="acme")).output["echo"] == "hello"
    await store.close()


async def test_worker_drains_in_flight_runs_on_stop(store_factory: Any) -> None:
    store = store_factory()
    agent = EchoAgent()
    agent.gate = asyncio.Event()
    rt = Runtime(store, {"echo": agent}, workers=0)
    run = await rt.create_run(tenant="acme", agent="echo", input="drain-me")
    worker = Worker(store, {"echo": agent}, poll_interval=0.05)
    task = asyncio.create_task(worker.run())
    async for _, kind, _ in rt.stream(run.id, tenant="acme", timeout=10):
        if kind == "token":
            break
    worker.stop()  # what SIGTERM does
    assert not task.done()
    agent.gate.set()
    await asyncio.wait_for(task, 10)
    assert (await rt.get_run(run.id, tenant="acme")).status == "completed"
    await store.close()


@pytest.mark.postgres
async def test_postgres_listen_notify_wakes_idle_workers(pg_url: str) -> None:
    store = SqlRunStore.postgres(pg_url)
    agent = EchoAgent()
    # A long poll interval: only NOTIFY can make this fast enough to finish within the bound.
    wakeup = PostgresWakeup(pg_url)
    worker = Worker(store, {"echo": agent}, poll_interval=60, wakeup=wakeup)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(wakeup.listening.wait(), 10)
    api = Runtime(SqlRunStore.postgres(pg_url), {"echo": agent}, workers=0)
    run = await api.create_run(tenant="acme", agent="echo", input="wake")
    done = await api.wait(run.id, tenant="acme", timeout=10)
    assert done.status == "completed"
    worker.stop()
    await asyncio.wait_for(task, 10)
    await wakeup.close()
    await store.close()
    await api.store.close()
