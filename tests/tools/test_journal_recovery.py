"""The idempotency journal of an agent run lives in the run's checkpointer: a run stopped inside
a side-effecting tool and continued by a fresh agent (another process, another worker) never
runs that tool again; the model is told the outcome is unknown and the audit trail says so.

The in-process "crash" is a cancellation inside the tool body: like a kill, it leaves the
journal's `begin` record without an end. Real SIGKILLs are in tests/runtime/test_chaos.py and
tests/adversarial/test_crash_side_effects.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.checkpoint import MemoryCheckpointer, SqliteCheckpointer
from bastion.graph.agent import Agent
from bastion.graph.agent._journal import StepJournal
from bastion.policy import AuditLog, Policy, ToolGateway
from bastion.testing import FunctionModel
from bastion.tools import MemoryJournal, ToolRunner, idempotency_key, tool, use_journal
from bastion.types import ModelRequest, ToolCall, ToolResult

BOUND = 10.0


def _model(tool_name: str) -> FunctionModel:
    def answer(request: ModelRequest) -> ToolCall | str:
        results = [r for m in request.messages for r in m.tool_results]
        if not results:
            return ToolCall(tool_name, {"item": "x"}, id="call_1")
        content = results[-1].content
        kind = content.get("type") if isinstance(content, dict) else None
        return f"{tool_name}: {kind or content}"

    return FunctionModel(answer)


class Blocking:
    """A tool body that signals it started, then blocks until the test stops it."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()

    async def body(self, item: str) -> str:
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            await asyncio.Event().wait()  # cancelled by the test
        return f"ran {item} #{self.calls}"


def _agent(kind: str, checkpointer: Any, fn: Any, audit: AuditLog, *, idempotent: bool = False) -> Agent[Any]:
    side_effect = "read" if kind == "read" else "write"
    t = tool(name=kind, side_effect=side_effect, idempotent=idempotent)(fn)
    gateway = ToolGateway(Policy({"worker": [kind]}), audit=audit)
    return Agent(_model(kind), tools=[t], name="worker", tool_executor=gateway, checkpointer=checkpointer)


async def _stop_inside_tool(agent: Agent[Any], blocking: Blocking, thread: str) -> None:
    run = asyncio.create_task(agent.run("x", thread_id=thread))  # the argument comes from the user
    await asyncio.wait_for(blocking.started.wait(), BOUND)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, BOUND)


@pytest.fixture(params=["memory", "sqlite"])
async def checkpointers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Two handles on the same durable state, as two processes would have."""
    if request.param == "memory":
        shared = MemoryCheckpointer()
        yield shared, shared
        return
    pair = SqliteCheckpointer(tmp_path / "cp.db"), SqliteCheckpointer(tmp_path / "cp.db")
    yield pair
    for cp in pair:
        await cp.aclose()


async def test_write_interrupted_inside_tool_is_reported_unknown_not_rerun(checkpointers: Any) -> None:
    first_cp, second_cp = checkpointers
    blocking = Blocking()
    first_audit, second_audit = AuditLog(), AuditLog()
    await _stop_inside_tool(_agent("write", first_cp, blocking.body, first_audit), blocking, "t1")

    # A fresh agent and gateway: nothing carried over in memory, only the checkpointer's state.
    result = await asyncio.wait_for(
        _agent("write", second_cp, blocking.body, second_audit).resume(thread_id="t1"), BOUND
    )
    assert blocking.calls == 1  # never re-run
    assert result.output == "write: outcome_unknown"  # the model saw it
    tool_result = next(r for m in result.messages for r in m.tool_results)
    assert tool_result.is_error and "outcome is unknown" in tool_result.content["error"]
    [entry] = second_audit.entries(event="outcome_unknown")
    assert entry.tool == "write" and entry.tool_call_id == "call_1"


@pytest.mark.parametrize(("kind", "idempotent"), [("read", True), ("write", True)])
async def test_idempotent_or_read_only_tool_is_run_again(checkpointers: Any, kind: str, idempotent: bool) -> None:
    first_cp, second_cp = checkpointers
    blocking = Blocking()
    await _stop_inside_tool(_agent(kind, first_cp, blocking.body, AuditLog(), idempotent=idempotent), blocking, "t2")
    agent = _agent(kind, second_cp, blocking.body, AuditLog(), idempotent=idempotent)
    result = await asyncio.wait_for(agent.resume(thread_id="t2"), BOUND)
    assert blocking.calls == 2
    assert result.output.startswith(f"{kind}: ") and "ran x #2" in result.output  # spotlighted tool output


async def test_completed_write_replays_its_result_when_the_task_runs_again(tmp_path: Path) -> None:
    calls: list[str] = []

    async def body(item: str) -> str:
        calls.append(item)
        return f"ran {item}"

    cp = SqliteCheckpointer(tmp_path / "cp.db")
    journal = StepJournal(cp, "t3", "", "task-1")
    key = "run:call_1:abc"
    assert await journal.begin(key, "write") is None
    await journal.complete(key, ToolResult("call_1", "write", "ran x"))
    replay = await StepJournal(cp, "t3", "", "task-1").begin(key, "write")
    await cp.aclose()
    assert replay is not None and replay.state == "done"
    assert replay.result is not None and replay.result.content == "ran x"
    assert calls == []


async def test_begin_is_exclusive_across_processes_and_abort_allows_a_clean_retry(tmp_path: Path) -> None:
    cp_a, cp_b = SqliteCheckpointer(tmp_path / "cp.db"), SqliteCheckpointer(tmp_path / "cp.db")
    a, b = StepJournal(cp_a, "t4", "", "task-1"), StepJournal(cp_b, "t4", "", "task-1")
    outcomes = await asyncio.gather(a.begin("k", "write"), b.begin("k", "write"))
    winners = [o for o in outcomes if o is None]
    assert len(winners) == 1  # exactly one may run the body
    loser = next(o for o in outcomes if o is not None)
    assert loser.state == "pending"
    owner = a if outcomes[0] is None else b
    await owner.abort("k")  # the body failed cleanly: it may run again
    assert await b.begin("k", "write") is None
    assert (await a.begin("k", "write")) is not None  # and that attempt is pending again
    await cp_a.aclose()
    await cp_b.aclose()


async def test_scoped_journal_takes_the_place_of_the_runners_own() -> None:
    runs = 0

    @tool(side_effect="write")
    def send() -> str:
        nonlocal runs
        runs += 1
        return "sent"

    own, scoped = MemoryJournal(), MemoryJournal()
    runner = ToolRunner(journal=own)
    call = ToolCall("send", {}, id="c1")
    with use_journal(scoped):  # no run id needed: a scoped journal is per run already
        assert (await runner.run(send, call)).content == "sent"
        assert (await runner.run(send, call)).content == "sent"  # replayed, not run again
    assert runs == 1
    key = idempotency_key("", "c1", {})
    recorded = await scoped.begin(key, "send")
    assert recorded is not None and recorded.state == "done"
    assert await own.begin(key, "send") is None  # the runner's own journal was never used
