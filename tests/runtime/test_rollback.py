"""The `rollback` multitask strategy: cancel the active run and undo what it wrote to the thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph.agent import Agent
from bastion.runtime import AgentRunnable, Runtime, SqlRunStore, thread_key
from bastion.testing import DirectToolExecutor, FunctionModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

GATE = asyncio.Event()
STARTED = asyncio.Event()


@tool
async def block() -> str:
    """Wait until released (the run is cancelled first)."""
    STARTED.set()
    await GATE.wait()
    return "released"


def reply(request: ModelRequest) -> str | ToolCall:
    last = request.messages[-1]
    if last.role == "tool":
        return "done"
    return ToolCall("block", {}) if last.text == "slow" else f"echo {last.text}"


async def test_rollback_restores_the_thread_to_before_the_cancelled_run(tmp_path: Path) -> None:
    GATE.clear()
    STARTED.clear()
    checkpointer = SqliteCheckpointer(tmp_path / "cp.db")
    agent = Agent(FunctionModel(reply), tools=[block], name="a", checkpointer=checkpointer,
                  tool_executor=DirectToolExecutor())  # fmt: skip
    rt = Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {"a": AgentRunnable(agent)}, lease_seconds=5)
    async with rt:
        first = await rt.run(tenant="t", agent="a", input="hello", thread_id="th", timeout=10)
        assert first.output == "echo hello"
        slow = await rt.create_run(tenant="t", agent="a", input="slow", thread_id="th")
        await asyncio.wait_for(STARTED.wait(), 10)  # the slow run has written its first checkpoints
        newer = await rt.create_run(tenant="t", agent="a", input="again", thread_id="th", multitask="rollback")
        done = await rt.wait(newer.id, tenant="t", timeout=10)
        assert (await rt.get_run(slow.id, tenant="t")).status == "cancelled"
        assert done.status == "completed" and done.output == "echo again"
        events = [k for _, k, _ in await rt.store.events(slow.id)]
        assert "run_rolled_back" in events
    result = await agent.run("and now?", thread_id=thread_key("t", "th"))
    users = [m.text for m in result.messages if m.role == "user"]
    assert users == ["hello", "again", "and now?"]  # the cancelled run's "slow" turn is gone
    checkpointer.close()


async def test_retention_prunes_idle_threads_but_keeps_pending_approvals(tmp_path: Path) -> None:
    import time

    checkpointer = SqliteCheckpointer(tmp_path / "cp.db")

    def approve_or_echo(request: ModelRequest) -> str | ToolCall:
        last = request.messages[-1]
        if last.role == "tool":
            return "done"
        return ToolCall("block", {}) if last.text == "needs approval" else f"echo {last.text}"

    agent = Agent(FunctionModel(approve_or_echo), tools=[block], name="a", checkpointer=checkpointer,
                  tool_executor=DirectToolExecutor(approval=["block"]))  # fmt: skip
    rt = Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {"a": AgentRunnable(agent)}, lease_seconds=5)
    async with rt:
        done = await rt.run(tenant="t", agent="a", input="hi", thread_id="old", timeout=10)
        waiting = await rt.run(tenant="t", agent="a", input="needs approval", thread_id="pending", timeout=10)
        assert done.status == "completed" and waiting.status == "interrupted"
        assert await checkpointer.get(thread_key("t", "old")) is not None
        assert await rt.prune(older_than=time.time() - 3600) == []  # nothing is an hour old yet
        deleted = await rt.prune(older_than=time.time() + 1)
        assert deleted == [("t", "old")]  # the thread waiting for a human is kept
        assert await rt.list_runs(tenant="t", thread_id="old") == []
        assert await checkpointer.get(thread_key("t", "old")) is None
        assert await checkpointer.get(thread_key("t", "pending")) is not None
        assert [t["thread_id"] for t in await rt.store.list_threads("t")] == ["pending"]
    checkpointer.close()


async def test_json_inputs_reach_the_agent_as_text_or_messages(tmp_path: Path) -> None:
    from bastion.types import Message

    seen: list[str] = []

    def remember(request: ModelRequest) -> str:
        seen.append(request.messages[-1].text)
        return "ok"

    agent = Agent(FunctionModel(remember), name="a", checkpointer=SqliteCheckpointer(tmp_path / "cp.db"))
    rt = Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {"a": AgentRunnable(agent)}, lease_seconds=5)
    async with rt:
        assert (await rt.run(tenant="t", agent="a", input={"ticket": 7, "title": "printer"}, timeout=10)).status == (
            "completed"
        )
        messages = [Message.user("from a list of messages").to_dict()]
        assert (await rt.run(tenant="t", agent="a", input=messages, timeout=10)).status == "completed"
    assert seen == ['{"ticket": 7, "title": "printer"}', "from a list of messages"]
    assert agent.checkpointer is not None
    agent.checkpointer.close()
