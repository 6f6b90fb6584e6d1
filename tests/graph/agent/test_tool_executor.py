"""DirectToolExecutor: the test double every agent test runs its tools through; its results
have the production shape (`{"error": message, "type": kind}`, the `ToolRunner`'s kinds)."""

from __future__ import annotations

import asyncio

from bastion.testing import DirectToolExecutor
from bastion.tools import ToolCallContext, tool
from bastion.types import ToolCall


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(trust="trusted")
async def explode(reason: str) -> str:
    raise RuntimeError(f"boom: {reason}")


@tool(timeout=0.05)
async def hang() -> str:
    await asyncio.Event().wait()
    return "never"


TOOLS = {t.name: t for t in (add, explode, hang)}


async def test_valid_call_runs_and_is_labelled_with_trust() -> None:
    executor = DirectToolExecutor()
    result = await executor.execute(ToolCall("add", {"a": 2, "b": "3"}, id="c1"), TOOLS, ToolCallContext())
    assert (result.content, result.is_error, result.trust, result.tool_call_id) == (5, False, "untrusted", "c1")
    assert [c.id for c in executor.calls] == ["c1"]


async def test_bad_arguments_are_a_structured_error_and_the_tool_does_not_run() -> None:
    executor = DirectToolExecutor()
    result = await executor.execute(ToolCall("add", {"a": "x"}), TOOLS, ToolCallContext())
    assert result.is_error
    assert result.content["type"] == "invalid_arguments"
    assert {d["path"] for d in result.content["problems"]} == {"a", "b"}
    assert executor.calls == []


async def test_unknown_tool_lists_the_available_ones() -> None:
    result = await DirectToolExecutor().execute(ToolCall("nope", {}), TOOLS, ToolCallContext())
    assert result.is_error and result.content["type"] == "unknown_tool"
    assert "add, explode, hang" in result.content["error"]


async def test_exceptions_and_timeouts_come_back_as_error_results() -> None:
    executor = DirectToolExecutor()
    failed = await executor.execute(ToolCall("explode", {"reason": "x"}), TOOLS, ToolCallContext())
    assert failed.is_error and failed.content == {"error": "tool 'explode' failed: boom: x", "type": "RuntimeError"}
    timed_out = await asyncio.wait_for(executor.execute(ToolCall("hang", {}), TOOLS, ToolCallContext()), 5)
    assert timed_out.is_error and timed_out.content["type"] == "timeout"
