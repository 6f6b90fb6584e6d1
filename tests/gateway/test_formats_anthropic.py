"""Anthropic Messages wire format over real HTTP against the fake server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bastion.errors import ProviderUnavailableError, RateLimitError
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway._model import collect
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
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
PLACE = OutputSchema("place", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server
        await aclose_http_sessions()


async def test_request_mapping(srv: FakeOpenAIServer) -> None:
    call = ToolCall("get_weather", {"city": "Paris"}, id="toolu_1")
    request = ModelRequest(
        [
            Message.system("rule one"),
            Message.system("rule two"),
            Message("user", [TextPart("see"), ImagePart("data:image/png;base64,AAAA"), ImagePart("https://x/y.jpg")]),
            Message.assistant("let me check", [call]),
            Message.tool(ToolResult("toolu_1", "get_weather", "sunny")),
            Message.tool(ToolResult("toolu_2", "get_weather", "boom", is_error=True)),
            Message.user("and now?"),
        ],
        tools=[WEATHER],
        tool_choice="required",
        # Two images make the prompt long enough to cache; breakpoints are tested in test_prompt_cache.py.
        settings=ModelSettings(temperature=0.5, max_tokens=99, stop=["STOP"], prompt_cache=False),
    )
    await srv.anthropic_model("claude-x").request(request)
    recorded = srv.requests[-1]
    assert recorded.path == "/v1/messages"
    assert recorded.headers["x-api-key"] == "test-key"
    assert recorded.headers["anthropic-version"] == "2023-06-01"
    body = recorded.body
    assert body["system"] == "rule one\n\nrule two"
    assert body["max_tokens"] == 99 and body["temperature"] == 0.5 and body["stop_sequences"] == ["STOP"]
    assert body["tool_choice"] == {"type": "any"}
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city.", "input_schema": WEATHER.parameters}
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "let me check"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            # consecutive tool results and the next user turn merge into one user turn
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                {"type": "text", "text": "and now?"},
            ],
        },
    ]


async def test_default_max_tokens_and_named_tool_choice(srv: FakeOpenAIServer) -> None:
    srv.reply(ToolCall("get_weather", {"city": "Oslo"}))
    response = await srv.anthropic_model().request(
        ModelRequest([Message.user("x")], tools=[WEATHER], tool_choice="get_weather")
    )
    body = srv.requests[-1].body
    assert body["max_tokens"] == 4096
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls[0].arguments == {"city": "Oslo"}


async def test_usage_adds_cache_tokens_back(srv: FakeOpenAIServer) -> None:
    usage = Usage(input_tokens=1000, output_tokens=50, cache_read_tokens=600, cache_write_tokens=300)
    srv.reply(FakeReply("ok", usage=usage))
    response = await srv.anthropic_model().request(ModelRequest([Message.user("x")]))
    # the fake sends input_tokens=100 (uncached) + cache fields, as Anthropic does
    assert response.usage == Usage(1000, 50, 600, 300, requests=1)


async def test_max_tokens_finish_reason(srv: FakeOpenAIServer) -> None:
    srv.reply(FakeReply("cut", finish_reason="length"))
    assert (await srv.anthropic_model().request(ModelRequest([Message.user("x")]))).finish_reason == "length"


async def test_structured_output_via_forced_tool(srv: FakeOpenAIServer) -> None:
    srv.reply({"city": "Lima"})
    response = await srv.anthropic_model().request(ModelRequest([Message.user("x")], output=PLACE))
    body = srv.requests[-1].body
    assert body["tool_choice"] == {"type": "tool", "name": "place"}
    assert body["tools"][-1]["input_schema"] == PLACE.schema
    assert json.loads(response.text) == {"city": "Lima"}
    assert response.tool_calls == [] and response.finish_reason == "stop"


async def test_structured_output_with_tools_lets_the_model_call_them(srv: FakeOpenAIServer) -> None:
    srv.reply(ToolCall("get_weather", {"city": "Rome"}))
    response = await srv.anthropic_model().request(ModelRequest([Message.user("x")], tools=[WEATHER], output=PLACE))
    assert srv.requests[-1].body["tool_choice"] == {"type": "any"}
    assert response.tool_calls[0].name == "get_weather" and response.finish_reason == "tool_calls"


async def test_stream_text_and_tool_calls(srv: FakeOpenAIServer) -> None:
    srv.reply(
        FakeReply(
            "sure thing",
            [ToolCall("get_weather", {"city": "Paris"}, id="t1"), ToolCall("get_weather", {"city": "Nice"}, id="t2")],
            usage=Usage(200, 30, cache_read_tokens=50),
        )
    )
    events = [e async for e in srv.anthropic_model().stream(ModelRequest([Message.user("x")], tools=[WEATHER]))]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["sure", " thing"]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert {d.index for d in deltas} == {0, 1}
    assert deltas[0].id == "t1" and deltas[0].name == "get_weather"
    assert "".join(d.arguments_delta for d in deltas if d.index == 1) == '{"city": "Nice"}'
    done = events[-1]
    assert isinstance(done, ResponseDone)
    response = done.response
    assert response.text == "sure thing"
    assert [(c.id, c.arguments) for c in response.tool_calls] == [("t1", {"city": "Paris"}), ("t2", {"city": "Nice"})]
    assert response.usage == Usage(200, 30, cache_read_tokens=50, requests=1)
    assert response.finish_reason == "tool_calls"
    assert srv.requests[-1].body["stream"] is True


async def test_stream_structured_output(srv: FakeOpenAIServer) -> None:
    srv.reply({"city": "Kyoto"})
    response = await collect(srv.anthropic_model().stream(ModelRequest([Message.user("x")], output=PLACE)))
    assert json.loads(response.text) == {"city": "Kyoto"} and response.tool_calls == []


async def test_error_event_mid_stream(srv: FakeOpenAIServer) -> None:
    frames = (
        "event: message_start\n"
        'data: {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1}}}\n\n'
        'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )
    from aiohttp import web

    # A tiny one-off upstream: the fake server's faults do not speak Anthropic's error event.
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(frames.encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        from bastion.gateway._resolve import resolve_model

        model = resolve_model("anthropic:c", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        with pytest.raises(ProviderUnavailableError, match="overloaded_error"):
            await collect(model.stream(ModelRequest([Message.user("x")])))
    finally:
        await aclose_http_sessions()
        await runner.cleanup()


async def test_overloaded_529_is_unavailable_and_429_rate_limited(srv: FakeOpenAIServer) -> None:
    srv.fail(Fault.error(529))
    with pytest.raises(ProviderUnavailableError):
        await srv.anthropic_model().request(ModelRequest([Message.user("x")]))
    srv.fail(Fault.rate_limit(None))
    with pytest.raises(RateLimitError) as info:
        await srv.anthropic_model().request(ModelRequest([Message.user("x")]))
    assert info.value.retry_after is None


async def test_streamed_invalid_tool_json_is_kept_raw(srv: FakeOpenAIServer) -> None:
    start = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}
    block = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}
    frames = [
        ("message_start", start),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in frames)
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body.encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        from bastion.gateway._resolve import resolve_model

        model = resolve_model("anthropic:c", base_url=f"http://127.0.0.1:{runner.addresses[0][1]}/v1", api_key="k")
        response = await collect(model.stream(ModelRequest([Message.user("x")])))
        assert response.tool_calls[0].arguments == {"_raw": '{"city": '}
        assert response.usage == Usage(3, 4, requests=1)
    finally:
        await aclose_http_sessions()
        await runner.cleanup()
