"""Threads are tenant-scoped in storage: checkpoints, step journal and pending interrupts live
under `thread_key(tenant, thread_id)`, on SQLite and PostgreSQL, and `Runtime.delete_thread`
removes all of it (the HTTP-level attacks are in tests/adversarial/test_tenancy.py)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph.agent import Agent
from bastion.runtime import (
    AgentRunnable,
    RunConflictError,
    RunNotFoundError,
    Runtime,
    SqlRunStore,
    ThreadNotFoundError,
    thread_key,
)
from bastion.testing import DirectToolExecutor, FunctionModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

GATE = asyncio.Event()


@tool
async def block() -> str:
    """Wait until released."""
    await GATE.wait()
    return "released"


@tool(side_effect="irreversible")
def pay(amount: float) -> str:
    """Pay an amount."""
    return f"paid {amount}"


def reply(request: ModelRequest) -> str | ToolCall:
    last = request.messages[-1]
    if last.role == "tool":
        return "done"
    if last.text == "slow":
        return ToolCall("block", {})
    if last.text.startswith("pay"):
        return ToolCall("pay", {"amount": 10})
    return json.dumps([m.text for m in request.messages if m.role == "user"])


@dataclass
class Setup:
    runtime: Runtime
    checkpointer: Any
    count_rows: Any  # (storage key) -> {table: rows} for checkpoints, writes and journal


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    if request.param == "postgres":
        import psycopg

        from bastion.checkpoint import PostgresCheckpointer

        url: str = request.getfixturevalue("pg_url")
        checkpointer: Any = PostgresCheckpointer(url)
        store = SqlRunStore.postgres(url)
        tables = ("bastion_checkpoints", "bastion_writes", "bastion_journal")

        def count_rows(key: str) -> dict[str, int]:
            with psycopg.connect(url) as conn:
                return {
                    t.removeprefix("bastion_"): conn.execute(  # type: ignore[index]
                        f"SELECT count(*) FROM {t} WHERE thread_id = %s", (key,)
                    ).fetchone()[0]
                    for t in tables
                }
    else:
        checkpointer = SqliteCheckpointer(tmp_path / "cp.db")
        store = SqlRunStore.sqlite(tmp_path / "runs.db")

        def count_rows(key: str) -> dict[str, int]:
            with sqlite3.connect(tmp_path / "cp.db") as conn:
                return {
                    t: conn.execute(f"SELECT count(*) FROM {t} WHERE thread_id = ?", (key,)).fetchone()[0]
                    for t in ("checkpoints", "writes", "journal")
                }

    agent = Agent(FunctionModel(reply), tools=[block, pay], name="a", checkpointer=checkpointer,
                  tool_executor=DirectToolExecutor(approval=["pay"]))  # fmt: skip
    runtime = Runtime(store, {"a": AgentRunnable(agent)}, lease_seconds=5)
    async with runtime:
        yield Setup(runtime, checkpointer, count_rows)
    await checkpointer.aclose()


def test_thread_keys_are_injective() -> None:
    pairs = [("a", "b/c"), ("a/b", "c"), ("a%2Fb", "c"), ("a", "t"), ("b", "t"), ("", "a/t"), ("a", "t/~rollback")]
    keys = [thread_key(t, th) for t, th in pairs]
    assert len(set(keys)) == len(keys)
    assert all(k.count("/") == 1 for k in keys)  # never a sub-agent's `<key>/<call>` or a rollback aside
    assert thread_key("acme", "t1") == "acme/t1"


async def test_tenants_naming_the_same_thread_do_not_share_state(setup: Setup) -> None:
    rt = setup.runtime
    a = await rt.run(tenant="a", agent="a", input="my PIN is 4242", thread_id="t", timeout=10)
    b = await rt.run(tenant="b", agent="a", input="what did I say?", thread_id="t", timeout=10)
    assert json.loads(b.output) == ["what did I say?"]
    again = await rt.run(tenant="a", agent="a", input="next", thread_id="t", timeout=10)
    assert json.loads(again.output) == ["my PIN is 4242", "next"]
    assert a.status == "completed"
    for tenant in ("a", "b"):
        rows = setup.count_rows(thread_key(tenant, "t"))
        assert rows["checkpoints"] > 0 and rows["journal"] > 0  # the step journal is scoped too
    assert setup.count_rows("t") == {k: 0 for k in setup.count_rows("t")}  # nothing under the raw id


async def test_delete_thread_removes_checkpoints_journal_and_pending_approvals(setup: Setup) -> None:
    rt = setup.runtime
    await rt.run(tenant="a", agent="a", input="secret", thread_id="t", timeout=10)
    await rt.run(tenant="b", agent="a", input="other tenant", thread_id="t", timeout=10)
    waiting = await rt.run(tenant="a", agent="a", input="pay please", thread_id="p", timeout=10)
    assert waiting.status == "interrupted"
    assert setup.count_rows(thread_key("a", "p"))["writes"] > 0  # the pending interrupt

    with pytest.raises(ThreadNotFoundError):
        await rt.delete_thread("p", tenant="b")  # B cannot delete A's thread (and learns nothing)
    await rt.delete_thread("t", tenant="a")
    await rt.delete_thread("p", tenant="a")
    for thread in ("t", "p"):
        assert set(setup.count_rows(thread_key("a", thread)).values()) == {0}
        assert await rt.list_runs(tenant="a", thread_id=thread) == []
    assert setup.count_rows(thread_key("b", "t"))["checkpoints"] > 0  # B's own "t" is untouched
    with pytest.raises(RunNotFoundError):
        await rt.resume(waiting.id, tenant="a", decision="approve")
    with pytest.raises(ThreadNotFoundError):
        await rt.delete_thread("t", tenant="a")
    fresh = await rt.run(tenant="a", agent="a", input="hello", thread_id="t", timeout=10)
    assert json.loads(fresh.output) == ["hello"]


async def test_delete_thread_refuses_while_a_run_is_queued_or_running(setup: Setup) -> None:
    rt = setup.runtime
    GATE.clear()
    slow = await rt.create_run(tenant="a", agent="a", input="slow", thread_id="busy")
    try:
        with pytest.raises(RunConflictError):
            await rt.delete_thread("busy", tenant="a")
    finally:
        GATE.set()
    assert (await rt.wait(slow.id, tenant="a", timeout=10)).status == "completed"
    await rt.delete_thread("busy", tenant="a")


async def test_rollback_and_fork_stay_within_the_tenant(setup: Setup) -> None:
    rt = setup.runtime
    await rt.run(tenant="a", agent="a", input="A's message", thread_id="t", timeout=10)
    history = await rt.thread_history("t", tenant="a")
    # B rolls back its own "t" (cancelling nothing of A's) and cannot fork A's checkpoints.
    await rt.run(tenant="b", agent="a", input="B one", thread_id="t", multitask="rollback", timeout=10)
    with pytest.raises(ThreadNotFoundError):
        await rt.fork_thread("t", tenant="b", checkpoint_id=history[0]["checkpoint_id"])
    with pytest.raises(ThreadNotFoundError):
        await rt.thread_history("nope", tenant="a")
    assert await rt.thread_history("t", tenant="a") == history
    forked = await rt.fork_thread("t", tenant="a", new_thread_id="t2")
    fork_history = await rt.thread_history(forked, tenant="a")  # a fork has state before it has runs
    assert fork_history[0]["checkpoint_id"] == history[0]["checkpoint_id"]
    again = await rt.fork_thread(forked, tenant="a", checkpoint_id=history[0]["checkpoint_id"])
    out = await rt.run(tenant="a", agent="a", input="on the fork", thread_id=again, timeout=10)
    assert json.loads(out.output) == ["A's message", "on the fork"]
