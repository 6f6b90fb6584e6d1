"""Property: whatever model calls and tool calls fail (once) along a run, resuming the thread
until it finishes completes every model turn and every tool call exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.checkpoint import MemoryCheckpointer
from bastion.graph.agent import Agent
from bastion.testing import DirectToolExecutor, FunctionModel
from bastion.tools import Tool, ToolCallContext, tool
from bastion.types import ModelRequest, ToolCall, ToolResult


class Crash(Exception):
    """Stands in for a process dying mid-call."""


turns_strategy = st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=4)


@settings(max_examples=30, deadline=None)
@given(turns=turns_strategy, data=st.data())
def test_every_call_completes_exactly_once_across_crashes(turns: list[int], data: st.DataObject) -> None:
    # turns[i] = number of parallel tool calls in turn i; then a final answer.
    call_ids = [f"t{i}c{j}" for i, n in enumerate(turns) for j in range(n)]
    crash_models = data.draw(st.sets(st.integers(0, len(turns))), label="model turns that crash once")
    crash_tools = data.draw(st.sets(st.sampled_from(call_ids)) if call_ids else st.just(set[str]()), label="tools")
    model_done: dict[int, int] = {}
    tool_done: dict[str, int] = {}

    def reply(request: ModelRequest) -> Any:
        turn = sum(m.role == "assistant" for m in request.messages)
        if turn in crash_models:
            crash_models.discard(turn)
            raise Crash(f"model turn {turn}")
        model_done[turn] = model_done.get(turn, 0) + 1
        if turn < len(turns):
            return [ToolCall("work", {"key": f"t{turn}c{j}"}, id=f"t{turn}c{j}") for j in range(turns[turn])] or "x"
        return "final"

    @tool
    def work(key: str) -> str:
        tool_done[key] = tool_done.get(key, 0) + 1
        return f"done {key}"

    class Crashing(DirectToolExecutor):
        async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolCallContext) -> ToolResult:
            if call.id in crash_tools:
                crash_tools.discard(call.id)
                raise Crash(f"tool {call.id}")
            return await super().execute(call, tools, context)

    # a turn with zero calls is a text answer: the run ends there
    effective = turns[: turns.index(0)] if 0 in turns else turns
    agent = Agent(
        FunctionModel(reply),
        tools=[work],
        tool_executor=Crashing(),
        checkpointer=MemoryCheckpointer(),
        max_turns=len(turns) + 2,
    )

    async def drive() -> Any:
        attempts = 0
        while True:
            attempts += 1
            assert attempts <= 2 + len(turns) + len(call_ids), "the run never finished"
            try:
                if attempts == 1:
                    return await agent.run("go", thread_id="t")
                return await agent.resume(thread_id="t")
            except* Crash:  # several parallel tool tasks may crash together: an ExceptionGroup
                pass  # crashed: resume on the next attempt

    result = asyncio.run(drive())
    expected_turns = len(effective) + 1
    assert result.output == ("final" if len(effective) == len(turns) else "x")
    assert model_done == dict.fromkeys(range(expected_turns), 1)
    expected_calls = [f"t{i}c{j}" for i, n in enumerate(effective) for j in range(n)]
    assert tool_done == dict.fromkeys(expected_calls, 1)
