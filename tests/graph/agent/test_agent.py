"""The single-agent loop: answers, parallel tools, structured output, guards, sync, streaming."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from bastion.errors import MaxTurnsExceededError, OutputValidationError, UserError
from bastion.graph.agent import (
    Agent,
    MessageEvent,
    RunDone,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from bastion.testing import DirectToolExecutor, FunctionModel, ScriptedModel
from bastion.tools import tool
from bastion.types import ModelRequest, RunContext, ToolCall


class Weather(BaseModel):
    city: str
    celsius: float


@tool
def get_temperature(city: str) -> float:
    """Current temperature in a city."""
    return {"Paris": 18.5, "Oslo": 4.0}[city]


async def test_plain_answer_with_instructions_and_usage(executor: DirectToolExecutor) -> None:
    model = ScriptedModel(["Bonjour!"])
    agent = Agent(model, instructions="Answer in French.", name="greeter", tool_executor=executor)
    result = await agent.run("Say hello", context=RunContext(tenant="acme", user="u1"))
    assert result.output == "Bonjour!"
    assert [m.role for m in result.messages] == ["user", "assistant"]
    assert result.agent == "greeter" and result.turns == 1 and not result.interrupted
    assert result.usage.requests == 1 and result.usage.output_tokens > 0
    request = model.requests[0]
    assert request.messages[0].role == "system" and request.messages[0].text == "Answer in French."
    assert request.context.tenant == "acme" and request.context.agent == "greeter"


async def test_tool_calls_run_in_parallel_and_results_reach_the_model(
    executor: DirectToolExecutor, rendezvous: Any
) -> None:
    meeting = rendezvous(2)

    @tool
    async def slow_lookup(key: str) -> str:
        await meeting.meet()  # completes only if both calls are in flight together
        return f"value-of-{key}"

    model = ScriptedModel(
        [[ToolCall("slow_lookup", {"key": "a"}, id="c1"), ToolCall("slow_lookup", {"key": "b"}, id="c2")], "done"]
    )
    agent = Agent(model, tools=[slow_lookup], tool_executor=executor)
    result = await asyncio.wait_for(agent.run("look up a and b"), 10)
    assert result.output == "done"
    second = model.requests[1].messages
    results = {r.tool_call_id: r.content for m in second for r in m.tool_results}
    assert results == {"c1": "value-of-a", "c2": "value-of-b"}
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert model.requests[0].tools[0].name == "slow_lookup"


async def test_tool_errors_go_back_to_the_model_and_the_run_continues(executor: DirectToolExecutor) -> None:
    model = ScriptedModel(
        [
            ToolCall("get_temperature", {"town": "Paris"}, id="bad"),
            ToolCall("get_temperature", {"city": "Paris"}, id="good"),
            "18.5 degrees",
        ]
    )
    agent = Agent(model, tools=[get_temperature], tool_executor=executor)
    result = await agent.run("Temperature in Paris?")
    assert result.output == "18.5 degrees"
    error = model.requests[1].messages[-1].tool_results[0]
    assert error.is_error and error.content["type"] == "invalid_arguments"
    assert [c.id for c in executor.calls] == ["good"]


async def test_structured_output_is_validated_and_retried_with_feedback(executor: DirectToolExecutor) -> None:
    model = ScriptedModel(['{"city": "Paris"}', '```json\n{"city": "Paris", "celsius": 18.5}\n```'])
    agent = Agent(model, output_type=Weather, tool_executor=executor)
    result = await agent.run("Weather in Paris as JSON")
    assert result.output == Weather(city="Paris", celsius=18.5)
    first = model.requests[0]
    assert first.output is not None and first.output.name == "Weather"
    assert "celsius" in first.output.schema["properties"]
    feedback = model.requests[1].messages[-1]
    assert feedback.role == "user" and "celsius" in feedback.text and "Field required" in feedback.text


async def test_structured_output_gives_up_with_a_clear_error(executor: DirectToolExecutor) -> None:
    model = ScriptedModel(["not json", "still not", "nope"])
    agent = Agent(model, output_type=Weather, output_retries=2, tool_executor=executor)
    with pytest.raises(OutputValidationError, match=r"did not match Weather after 3 attempts.*output_retries="):
        await agent.run("Weather?", thread_id="w")
    assert model.remaining == 0
    with pytest.raises(UserError, match="ran out of replies"):  # the thread took the new input
        await agent.run("Try again", thread_id="w")


async def test_runaway_loop_is_stopped_by_max_turns(executor: DirectToolExecutor) -> None:
    model = FunctionModel(lambda r: ToolCall("get_temperature", {"city": "Oslo"}))
    agent = Agent(model, tools=[get_temperature], max_turns=3, tool_executor=executor)
    with pytest.raises(MaxTurnsExceededError, match=r"made 3 model calls.*max_turns=3"):
        await agent.run("loop forever")
    assert len(model.requests) == 3 and len(executor.calls) == 3


async def test_a_thread_stays_usable_after_a_run_fails_on_a_limit(executor: DirectToolExecutor) -> None:
    replies: list[Any] = [ToolCall("get_temperature", {"city": "Oslo"})] * 2 + ["not json", "4 degrees"]
    model = ScriptedModel(replies)
    agent = Agent(model, tools=[get_temperature], max_turns=2, tool_executor=executor)
    with pytest.raises(MaxTurnsExceededError):
        await agent.run("loop", thread_id="limits")
    # the failed run ended cleanly: new input is accepted and the history is well formed
    result = await agent.run("just answer", thread_id="limits")
    assert result.output == "not json" and result.turns == 1
    roles = [m.role for m in result.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "user", "assistant"]


def test_run_sync_and_its_guard_inside_a_loop(executor: DirectToolExecutor) -> None:
    agent = Agent(ScriptedModel(["sync answer"]), tool_executor=executor)
    assert agent.run_sync("hi").output == "sync answer"

    async def inside() -> None:
        with pytest.raises(UserError, match="await the async variant"):
            agent.run_sync("hi")

    asyncio.run(inside())


async def test_stream_yields_tokens_tool_calls_results_and_the_result(executor: DirectToolExecutor) -> None:
    model = ScriptedModel([ToolCall("get_temperature", {"city": "Oslo"}, id="t1"), "It is 4 degrees in Oslo"])
    agent = Agent(model, tools=[get_temperature], tool_executor=executor, name="weather")
    events = [e async for e in agent.stream("Oslo?")]
    assert isinstance(events[-1], RunDone) and events[-1].result.output == "It is 4 degrees in Oslo"
    tokens = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert tokens == "It is 4 degrees in Oslo"
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert [c.call.id for c in calls] == ["t1"] and results[0].result.content == 4.0
    kinds = [e.kind for e in events]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("token")
    assert sum(isinstance(e, MessageEvent) for e in events) == 2
    assert all(getattr(e, "agent", "weather") == "weather" for e in events)


async def test_a_thread_keeps_the_conversation(executor: DirectToolExecutor) -> None:
    def reply(request: ModelRequest) -> str:
        return f"seen {sum(m.role == 'user' for m in request.messages)} user turns"

    agent = Agent(FunctionModel(reply), tool_executor=executor)
    first = await agent.run("one", thread_id="t")
    second = await agent.run("two", thread_id="t")
    assert (first.output, second.output) == ("seen 1 user turns", "seen 2 user turns")
    assert len(second.messages) == 4 and second.turns == 1 and second.usage.requests == 1


def test_bad_configuration_is_refused_with_a_fix() -> None:
    model = ScriptedModel([])
    with pytest.raises(UserError, match="max_turns must be at least 1"):
        Agent(model, max_turns=0)
    with pytest.raises(UserError, match="tool names must be unique"):
        Agent(model, tools=[get_temperature, get_temperature])
    with pytest.raises(UserError, match="must be letters"):
        Agent(model, name="has space")


def test_public_surface_is_pinned() -> None:
    import bastion.graph.agent as pkg

    assert pkg.__all__ == sorted(pkg.__all__, key=str)
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
    assert "DirectToolExecutor" in __import__("bastion.testing").testing.__all__


async def test_one_agent_serves_many_concurrent_runs_without_cross_talk(executor: DirectToolExecutor) -> None:
    def reply(request: ModelRequest) -> Any:
        user = request.messages[-1].text if request.messages[-1].role == "user" else None
        if user is not None:  # first turn: look the city up
            return ToolCall("get_temperature", {"city": user})
        return f"{request.messages[-1].tool_results[0].content} in {request.messages[-3].text}"

    agent = Agent(FunctionModel(reply), tools=[get_temperature], tool_executor=executor)
    cities = ["Paris", "Oslo"] * 25
    results = await asyncio.wait_for(
        asyncio.gather(*(agent.run(c, thread_id=f"c{i}") for i, c in enumerate(cities))), 30
    )
    temperatures = {"Paris": 18.5, "Oslo": 4.0}
    assert [r.output for r in results] == [f"{temperatures[c]} in {c}" for c in cities]
