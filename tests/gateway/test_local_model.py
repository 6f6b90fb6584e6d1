"""The bundled local model (llama.cpp + Gemma 3 270M): real inference, grammar-constrained."""

from __future__ import annotations

import asyncio
import json

import pytest

from bastion.errors import MissingExtraError, UnknownModelError
from bastion.gateway._model import collect
from bastion.gateway._resolve import resolve_model
from bastion.gateway.formats.llamacpp import build_prompt, forced_prefix, output_schema, parse_output
from bastion.types import Message, ModelRequest, ModelSettings, OutputSchema, ToolCall, ToolResult, ToolSpec

WEATHER = ToolSpec(
    "get_weather",
    "Get the current weather for a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
)
CLOCK = ToolSpec("get_time", "Get the current time.", {"type": "object", "properties": {}})


def test_prompt_uses_gemma_template() -> None:
    call = ToolCall("get_weather", {"city": "Oslo", "unit": "celsius"})
    request = ModelRequest(
        [
            Message.system("You are terse."),
            Message.user("Weather in Oslo?"),
            Message.assistant("", [call]),
            Message.tool(ToolResult(call.id, "get_weather", {"temp": 3})),
        ],
        tools=[WEATHER],
    )
    prompt = build_prompt(request)
    assert prompt.startswith("<start_of_turn>user\nYou are terse.\n\nYou can call these tools:")
    assert (
        '<start_of_turn>model\n{"tool": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}<end_of_turn>'
        in prompt
    )
    assert 'Tool get_weather result: {"temp": 3}' in prompt
    assert prompt.endswith("<start_of_turn>model\n")


def test_constraint_schema_by_tool_choice() -> None:
    base = ModelRequest([Message.user("x")], tools=[WEATHER, CLOCK])
    auto = output_schema(base)
    assert auto is not None and len(auto["anyOf"]) == 3  # two tools or an answer
    base.tool_choice = "required"
    assert len(output_schema(base)["anyOf"]) == 2  # type: ignore[index]
    base.tool_choice = "get_time"
    assert output_schema(base)["properties"]["tool"] == {"const": "get_time"}  # type: ignore[index]
    base.tool_choice = "none"
    assert output_schema(base) is None


def test_single_required_tool_is_prefixed_in_the_prompt() -> None:
    request = ModelRequest([Message.user("x")], tools=[WEATHER, CLOCK], tool_choice="get_time")
    forced = forced_prefix(request)
    assert forced == ('{"tool": "get_time", "arguments": ', CLOCK.parameters)
    request.tool_choice = "auto"
    assert forced_prefix(request) is None


def test_parse_output_answer_and_call() -> None:
    request = ModelRequest([Message.user("x")], tools=[WEATHER])
    parts, finish = parse_output(request, '{"answer": "hi"}', False)
    assert finish == "stop" and parts[0].text == "hi"  # type: ignore[union-attr]
    parts, finish = parse_output(
        request, '{"tool": "get_weather", "arguments": {"city": "A", "unit": "celsius"}}', False
    )
    assert finish == "tool_calls" and isinstance(parts[0], ToolCall) and parts[0].arguments["city"] == "A"
    parts, finish = parse_output(request, '{"tool": "get_wea', True)  # cut by max_tokens: kept as text
    assert finish == "length"


def test_unknown_local_model() -> None:
    with pytest.raises(UnknownModelError, match="local:gemma-3-270m"):
        resolve_model("local:llama-70b")
    with pytest.raises(UnknownModelError, match="does not exist"):
        asyncio.run(resolve_model("local:/nowhere/model.gguf").request(ModelRequest([Message.user("x")])))


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'bastion\[local\]'"):
        resolve_model("local:gemma-3-270m")


@pytest.mark.local_model
async def test_real_model_makes_a_schema_valid_tool_call() -> None:
    model = resolve_model("local:gemma-3-270m")
    response = await model.request(
        ModelRequest(
            [Message.user("What's the weather in Paris?")],
            tools=[WEATHER],
            tool_choice="required",
            settings=ModelSettings(max_tokens=48, timeout=120),
        )
    )
    assert response.finish_reason == "tool_calls"
    call = response.tool_calls[0]
    assert call.name == "get_weather"
    assert isinstance(call.arguments["city"], str) and call.arguments["unit"] in ("celsius", "fahrenheit")
    assert response.usage.input_tokens > 20 and response.usage.output_tokens > 0
    assert response.cost_usd == 0.0 and response.model == "local:gemma-3-270m"


@pytest.mark.local_model
async def test_real_model_streams_structured_output() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = await collect(
        resolve_model("local:gemma-3-270m").stream(
            ModelRequest(
                [Message.user("Name the capital of France.")],
                output=OutputSchema("capital", schema),
                settings=ModelSettings(max_tokens=24, timeout=120),
            )
        )
    )
    assert isinstance(json.loads(response.text)["city"], str)
    assert response.usage.output_tokens > 0


@pytest.mark.local_model
async def test_real_model_with_tools_on_auto_answers_or_calls_validly() -> None:
    response = await collect(
        resolve_model("local:gemma-3-270m").stream(
            ModelRequest(
                [Message.user("What time is it?")],
                tools=[WEATHER, CLOCK],
                settings=ModelSettings(max_tokens=40, timeout=120),
            )
        )
    )
    # The grammar leaves exactly two shapes: one schema-valid tool call, or a text answer.
    if response.tool_calls:
        call = response.tool_calls[0]
        assert response.finish_reason == "tool_calls" and call.name in ("get_weather", "get_time")
        if call.name == "get_weather":
            assert set(call.arguments) == {"city", "unit"}
    else:
        assert response.finish_reason in ("stop", "length") and response.text


def test_transcript_prompt_for_the_base_model() -> None:
    call = ToolCall("get_weather", {"city": "Oslo", "unit": "celsius"})
    request = ModelRequest(
        [
            Message.system("You are terse."),
            Message.user("Weather in Oslo?"),
            Message.assistant("", [call]),
            Message.tool(ToolResult(call.id, "get_weather", {"temp": 3})),
        ],
        tools=[WEATHER],
        tool_choice="none",
    )
    prompt = build_prompt(request, "transcript")
    assert prompt.startswith("You are terse.\n")
    assert "User: Weather in Oslo?\n" in prompt
    assert 'Assistant: (calls get_weather(city="Oslo", unit="celsius"))\n' in prompt
    assert "Tool get_weather result: temp: 3\nAssistant:" in prompt  # tool output as prose
    assert "<start_of_turn>" not in prompt and prompt.endswith("Assistant:")
