"""Durability: approvals pause and resume a run, a crash resumes where it stopped, and no
completed model or tool call is ever repeated. Runs against every available checkpointer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import UserError
from bastion.graph.agent import Agent
from bastion.testing import DirectToolExecutor, ScriptedModel
from bastion.tools import Tool, ToolCallContext, tool
from bastion.types import ToolCall, ToolResult


def sqlite_checkpointer(path: Path) -> Any:
    try:
        from bastion.checkpoint import SqliteCheckpointer
    except ImportError:
        pytest.skip("SqliteCheckpointer has not landed yet")
    return SqliteCheckpointer(str(path))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def checkpointer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    import bastion.checkpoint as cp

    if request.param == "memory":
        saver = cp.MemoryCheckpointer()
    elif request.param == "sqlite":
        saver = sqlite_checkpointer(tmp_path / "runs.db")
    else:
        try:
            from bastion.checkpoint import PostgresCheckpointer
        except ImportError:
            pytest.skip("PostgresCheckpointer has not landed yet")
        saver = PostgresCheckpointer(request.getfixturevalue("pg_url"))
    yield saver
    await saver.aclose()


def make_tools(counter: Any) -> tuple[Tool, Tool]:
    @tool(side_effect="read")
    def search(query: str) -> str:
        """Search the catalogue."""
        counter.hit("search")
        return f"found {query}"

    @tool(side_effect="irreversible")
    def pay(amount: int) -> str:
        """Pay an invoice."""
        counter.hit("pay")
        return f"paid {amount}"

    return search, pay


def script() -> ScriptedModel:
    return ScriptedModel(
        [
            [ToolCall("search", {"query": "invoice 7"}, id="s1"), ToolCall("pay", {"amount": 40}, id="p1")],
            "Paid invoice 7.",
        ]
    )


async def test_approval_interrupt_then_approve_repeats_nothing(checkpointer: Any, counter: Any) -> None:
    model = script()
    executor = DirectToolExecutor(approval={"pay"})
    agent = Agent(model, tools=make_tools(counter), tool_executor=executor, checkpointer=checkpointer)

    paused = await agent.run("Pay invoice 7", thread_id="t-approve")
    assert paused.interrupted and paused.output is None
    (pending,) = paused.interrupts
    assert pending.value["type"] == "tool_approval" and pending.value["tool"] == "pay"
    assert pending.value["arguments"] == {"amount": 40}
    assert (counter["search"], counter["pay"], len(model.requests)) == (1, 0, 1)

    with pytest.raises(UserError, match="waiting on 1 interrupt"):
        await agent.run("something else", thread_id="t-approve")  # would orphan the pending calls

    done = await agent.resume(True, thread_id="t-approve")
    assert done.output == "Paid invoice 7." and not done.interrupted
    # the sibling search and the first model call were not repeated on resume
    assert (counter["search"], counter["pay"], len(model.requests)) == (1, 1, 2)
    contents = {r.tool_call_id: r.content for m in model.requests[1].messages for r in m.tool_results}
    assert contents == {"s1": "found invoice 7", "p1": "paid 40"}
    assert done.usage.requests == 2


async def test_approval_denied_reaches_the_model_as_an_error(checkpointer: Any, counter: Any) -> None:
    model = script()
    agent = Agent(
        model,
        tools=make_tools(counter),
        tool_executor=DirectToolExecutor(approval={"pay"}),
        checkpointer=checkpointer,
    )
    paused = await agent.run("Pay invoice 7", thread_id="t-deny")
    done = await agent.resume({paused.interrupts[0].id: "reject"}, thread_id="t-deny")
    assert counter["pay"] == 0 and counter["search"] == 1
    denied = next(r for m in model.requests[1].messages for r in m.tool_results if r.tool_call_id == "p1")
    assert denied.is_error and denied.content["type"] == "approval_rejected"
    assert done.output == "Paid invoice 7."  # the scripted model says so regardless


class CrashOnce:
    """An executor that dies (as a process would) the first time it sees one call id."""

    def __init__(self, inner: DirectToolExecutor, crash_on: str) -> None:
        self.inner = inner
        self.crash_on = crash_on
        self.crashed = False

    async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolCallContext) -> ToolResult:
        if call.id == self.crash_on and not self.crashed:
            self.crashed = True
            raise ConnectionResetError("simulated crash")
        return await self.inner.execute(call, tools, context)


async def test_crash_mid_tools_resumes_only_the_failed_call(checkpointer: Any, counter: Any) -> None:
    model = script()
    executor = CrashOnce(DirectToolExecutor(), crash_on="p1")
    agent = Agent(model, tools=make_tools(counter), tool_executor=executor, checkpointer=checkpointer)
    with pytest.raises(ConnectionResetError):
        await agent.run("Pay invoice 7", thread_id="t-crash")
    assert (counter["search"], counter["pay"], len(model.requests)) == (1, 0, 1)
    with pytest.raises(UserError, match=r"stopped before finishing \(at tool\)"):
        await agent.run("new input", thread_id="t-crash")

    done = await agent.resume(thread_id="t-crash")
    assert done.output == "Paid invoice 7."
    assert (counter["search"], counter["pay"], len(model.requests)) == (1, 1, 2)


async def test_a_new_agent_instance_resumes_a_stored_interrupt(tmp_path: Path, counter: Any) -> None:
    db = tmp_path / "restart.db"
    model = script()
    first = sqlite_checkpointer(db)
    tools = make_tools(counter)
    agent = Agent(model, tools=tools, tool_executor=DirectToolExecutor(approval={"pay"}), checkpointer=first)
    assert (await agent.run("Pay invoice 7", thread_id="t-restart")).interrupted
    await first.aclose()

    second = sqlite_checkpointer(db)  # as after a process restart
    revived = Agent(model, tools=tools, tool_executor=DirectToolExecutor(approval={"pay"}), checkpointer=second)
    done = await revived.resume(True, thread_id="t-restart")
    await second.aclose()
    assert done.output == "Paid invoice 7."
    assert (counter["search"], counter["pay"], len(model.requests)) == (1, 1, 2)


class RecordingExecutor(DirectToolExecutor):
    """Keeps the history each call was given (what the policy gateway's taint rules read)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.histories: dict[str, list[str]] = {}

    async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolCallContext) -> ToolResult:
        self.histories[call.id] = [m.role for m in context.messages]
        return await super().execute(call, tools, context)


async def test_tools_see_the_history_also_after_a_restart(tmp_path: Path, counter: Any) -> None:
    db = tmp_path / "history.db"
    first_saver = sqlite_checkpointer(db)
    first = RecordingExecutor(approval={"pay"})
    agent = Agent(script(), tools=make_tools(counter), tool_executor=first, checkpointer=first_saver)
    await agent.run("Pay invoice 7", thread_id="h")
    await first_saver.aclose()
    assert first.histories == {"s1": ["user", "assistant"], "p1": ["user", "assistant"]}

    second_saver = sqlite_checkpointer(db)
    second = RecordingExecutor(approval={"pay"})
    model = ScriptedModel(["Paid invoice 7."])  # the turn still to come
    revived = Agent(model, tools=make_tools(counter), tool_executor=second, checkpointer=second_saver)
    await revived.resume(True, thread_id="h")  # a new process: the history comes from the checkpoint
    await second_saver.aclose()
    assert second.histories == {"p1": ["user", "assistant"]}


async def test_parallel_tool_calls_do_not_copy_the_history_into_checkpoints(tmp_path: Path) -> None:
    marker = "MARKER-" + "x" * 2000

    @tool
    def noop(i: int) -> int:
        return i

    saver = sqlite_checkpointer(tmp_path / "bytes.db")
    calls = [ToolCall("noop", {"i": i}, id=f"n{i}") for i in range(4)]
    agent = Agent(ScriptedModel([calls, "done"]), tools=[noop], tool_executor=DirectToolExecutor(), checkpointer=saver)
    await agent.run(marker, thread_id="bytes")
    stored = [r.payload for r in await saver.list("bytes")]
    for record in await saver.list("bytes"):
        stored += [w.payload for w in await saver.get_writes("bytes", "", record.checkpoint_id)]
    await saver.aclose()
    # the user message is written once (the message log's delta), not once per tool call
    assert sum(p.count("MARKER-") for p in stored) == 1
