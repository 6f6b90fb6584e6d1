"""Gemini generateContent / streamGenerateContent over real HTTP against the fake server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bastion.gateway._http import aclose_http_sessions
from bastion.gateway._model import collect
from bastion.gateway.formats.gemini import clean_schema
from bastion.testing import FakeOpenAIServer, Fault
from bastion.testing._fake_server import FakeReply
from bastion.types import (
    ImagePart,
    Message,
    ModelRequest,
    ModelSettings,
    OutputSchema,
    ResponseDone,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    ToolSpec,
    Usage,
)

WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city.",
    {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "title": "Args",
        "properties": {"city": {"type": "string", "title": "City"}, "title": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server
        await aclose_http_sessions()


async def test_request_mapping(srv: FakeOpenAIServer) -> None:
    call = ToolCall("get_weather", {"city": "Paris"})
    request = ModelRequest(
        [
            Message.system("be terse"),
            Message(
                "user",
                [TextPart("pic:"), ImagePart("data:image/jpeg;base64,QQ=="), ImagePart("gs://b/x.png", "image/png")],
            ),
            Message.assistant("", [call]),
            Message.tool(ToolResult(call.id, "get_weather", {"temp": 20})),
            Message.tool(ToolResult("c2", "get_weather", "plain text")),
        ],
        tools=[WEATHER],
        tool_choice="get_weather",
        settings=ModelSettings(temperature=0.1, max_tokens=64, top_p=0.5, stop=["X"], seed=3),
    )
    await srv.gemini_model("gemini-x").request(request)
    recorded = srv.requests[-1]
    assert recorded.path == "/v1beta/models/gemini-x:generateContent"
    assert recorded.headers["x-goog-api-key"] == "test-key"
    body = recorded.body
    assert body["systemInstruction"] == {"parts": [{"text": "be terse"}]}
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "pic:"},
                {"inlineData": {"mimeType": "image/jpeg", "data": "QQ=="}},
                {"fileData": {"mimeType": "image/png", "fileUri": "gs://b/x.png"}},
            ],
        },
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 20}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "plain text"}}},
            ],
        },
    ]
    declaration = body["tools"][0]["functionDeclarations"][0]
    # unsupported keywords dropped, but a property that happens to be called "title" is kept
    assert declaration["parameters"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "title": {"type": "string"}},
        "required": ["city"],
    }
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["generationConfig"] == {
        "temperature": 0.1,
        "maxOutputTokens": 64,
        "topP": 0.5,
        "stopSequences": ["X"],
        "seed": 3,
    }


async def test_usage_includes_cached_and_thoughts(srv: FakeOpenAIServer) -> None:
    srv.reply(FakeReply("fine", usage=Usage(500, 80, cache_read_tokens=200, reasoning_tokens=30)))
    response = await srv.gemini_model().request(ModelRequest([Message.user("x")]))
    assert response.text == "fine"
    # the fake reports candidatesTokenCount=50 + thoughtsTokenCount=30: both are output
    assert response.usage == Usage(500, 80, cache_read_tokens=200, reasoning_tokens=30, requests=1)


async def test_function_calls_and_finish(srv: FakeOpenAIServer) -> None:
    srv.reply(ToolCall("get_weather", {"city": "Bern"}))
    response = await srv.gemini_model().request(ModelRequest([Message.user("x")], tools=[WEATHER]))
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls[0].name == "get_weather" and response.tool_calls[0].arguments == {"city": "Bern"}
    assert srv.requests[-1].body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


async def test_safety_and_blocked_prompt_are_content_filter(srv: FakeOpenAIServer) -> None:
    srv.reply(FakeReply("", finish_reason="content_filter"))
    assert (await srv.gemini_model().request(ModelRequest([Message.user("x")]))).finish_reason == "content_filter"
    srv.fail(Fault.raw({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}))
    response = await srv.gemini_model().request(ModelRequest([Message.user("x")]))
    assert response.finish_reason == "content_filter" and response.text == "" and response.usage.input_tokens == 4


async def test_thought_parts_are_not_text(srv: FakeOpenAIServer) -> None:
    srv.fail(
        Fault.raw(
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "hmm", "thought": True}, {"text": "42"}]},
                        "finishReason": "STOP",
                    }
                ]
            }
        )
    )
    assert (await srv.gemini_model().request(ModelRequest([Message.user("x")]))).text == "42"


async def test_structured_output(srv: FakeOpenAIServer) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False}
    response = await srv.gemini_model().request(ModelRequest([Message.user("x")], output=OutputSchema("o", schema)))
    config = srv.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert json.loads(response.text) == {"n": 1}  # the fake fills the schema when nothing is scripted


async def test_stream(srv: FakeOpenAIServer) -> None:
    srv.reply(FakeReply("a b", [ToolCall("get_weather", {"city": "Riga"})], usage=Usage(10, 5, reasoning_tokens=2)))
    events = [e async for e in srv.gemini_model().stream(ModelRequest([Message.user("x")], tools=[WEATHER]))]
    assert srv.requests[-1].path == "/v1beta/models/gemini-fake:streamGenerateContent?alt=sse"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", " b"]
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments_delta) == {"city": "Riga"}
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert done.response.text == "a b"
    assert done.response.finish_reason == "tool_calls"
    assert done.response.usage == Usage(10, 5, reasoning_tokens=2, requests=1)


async def test_stream_structured_output(srv: FakeOpenAIServer) -> None:
    srv.reply({"n": 7})
    response = await collect(
        srv.gemini_model().stream(ModelRequest([Message.user("x")], output=OutputSchema("o", {"type": "object"})))
    )
    assert json.loads(response.text) == {"n": 7}


def test_clean_schema_is_recursive() -> None:
    schema = {"type": "array", "items": {"type": "object", "additionalProperties": True, "properties": {}}}
    assert clean_schema(schema) == {"type": "array", "items": {"type": "object", "properties": {}}}
