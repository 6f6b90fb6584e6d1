"""OpenAI Chat Completions wire format over real HTTP against the fake server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bastion.gateway._http import aclose_http_sessions, open_session_count
from bastion.gateway._model import collect
from bastion.gateway._providers import openai_compat_provider
from bastion.gateway.formats.openai_chat import OpenAIChatModel
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


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server
        await aclose_http_sessions()


async def test_request_mapping_covers_every_part_kind(srv: FakeOpenAIServer) -> None:
    call = ToolCall("get_weather", {"city": "Paris"}, id="call_1")
    request = ModelRequest(
        [
            Message.system("be brief"),
            Message("user", [TextPart("look: "), ImagePart("https://x.test/cat.png")], name="ann"),
            Message.assistant("checking", [call]),
            Message.tool(ToolResult("call_1", "get_weather", {"temp": 21})),
            Message.user("thanks"),
        ],
        tools=[WEATHER],
        tool_choice="get_weather",
        settings=ModelSettings(temperature=0.2, max_tokens=50, top_p=0.9, stop=["END"], seed=7, extra={"user": "u1"}),
    )
    await srv.model("m1").request(request)
    body = srv.requests[-1].body
    assert body["model"] == "m1"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look: "},
                {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
            ],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": "checking",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "user", "content": "thanks"},
    ]
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["stop"], body["seed"], body["user"]) == (
        0.2,
        50,
        0.9,
        ["END"],
        7,
        "u1",
    )
    assert "stream" not in body


async def test_openai_provider_sends_max_completion_tokens_and_bearer_key(srv: FakeOpenAIServer) -> None:
    from bastion.gateway._resolve import resolve_model

    model = resolve_model("openai:gpt-x", base_url=srv.base_url, api_key="sk-test")
    await model.request(ModelRequest([Message.user("hi")], settings=ModelSettings(max_tokens=9)))
    recorded = srv.requests[-1]
    assert recorded.body["max_completion_tokens"] == 9 and "max_tokens" not in recorded.body
    assert recorded.headers["Authorization"] == "Bearer sk-test"
    assert "sk-test" not in repr(model) and "sk-test" not in repr(model.provider)  # type: ignore[attr-defined]


async def test_text_response_and_usage(srv: FakeOpenAIServer) -> None:
    srv.reply(FakeReply("hello world", usage=Usage(100, 20, cache_read_tokens=60, reasoning_tokens=5)))
    response = await srv.model().request(ModelRequest([Message.user("hi")]))
    assert response.text == "hello world"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(100, 20, cache_read_tokens=60, reasoning_tokens=5, requests=1)
    assert response.model.startswith("openai-compat:http://127.0.0.1") and response.model.endswith("#fake-model")
    assert response.response_id and response.response_id.startswith("chatcmpl-fake")


async def test_default_reply_echoes_last_user_message(srv: FakeOpenAIServer) -> None:
    response = await srv.model().request(ModelRequest([Message.user("first"), Message.user("ping")]))
    assert response.text == "ping"


async def test_tool_calls_parsed(srv: FakeOpenAIServer) -> None:
    srv.reply([ToolCall("get_weather", {"city": "Oslo"}, id="c1"), ToolCall("get_weather", {"city": "Rome"}, id="c2")])
    response = await srv.model().request(ModelRequest([Message.user("weather?")], tools=[WEATHER]))
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("c1", "get_weather", {"city": "Oslo"}),
        ("c2", "get_weather", {"city": "Rome"}),
    ]
    assert srv.requests[-1].body["tool_choice"] == "auto"


async def test_structured_output_uses_json_schema(srv: FakeOpenAIServer) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}}
    schema["required"] = ["city", "n"]
    srv.reply({"city": "Lima", "n": 3})
    response = await srv.model().request(ModelRequest([Message.user("x")], output=OutputSchema("place", schema)))
    assert json.loads(response.text) == {"city": "Lima", "n": 3}
    assert srv.requests[-1].body["response_format"] == {  # closed for strict mode, see test_openai_strict_schema.py
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": {**schema, "additionalProperties": False}, "strict": True},
    }


async def test_stream_text_then_done_with_usage(srv: FakeOpenAIServer) -> None:
    srv.reply(FakeReply("one two three", usage=Usage(10, 3, cache_read_tokens=4)))
    events = [e async for e in srv.model().stream(ModelRequest([Message.user("count")]))]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["one", " two", " three"]
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert done.response.text == "one two three"
    assert done.response.usage == Usage(10, 3, cache_read_tokens=4, requests=1)
    body = srv.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_stream_assembles_tool_call_deltas(srv: FakeOpenAIServer) -> None:
    srv.reply([ToolCall("get_weather", {"city": "Paris", "days": [1, 2]}, id="c9"), ToolCall("noop", {}, id="c10")])
    events = [e async for e in srv.model().stream(ModelRequest([Message.user("x")], tools=[WEATHER]))]
    fragments = [e for e in events if isinstance(e, ToolCallDelta)]
    assert fragments[0].id == "c9" and fragments[0].name == "get_weather"
    assert len([f for f in fragments if f.index == 0]) >= 3  # header + the arguments in pieces
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert done.response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in done.response.tool_calls] == [
        ("c9", "get_weather", {"city": "Paris", "days": [1, 2]}),
        ("c10", "noop", {}),
    ]


async def test_invalid_tool_arguments_are_kept_raw(srv: FakeOpenAIServer) -> None:
    bad = '{"city": "Par'
    body = {
        "id": "x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": bad}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    srv.fail(Fault.raw(body))
    response = await srv.model().request(ModelRequest([Message.user("x")]))
    assert response.tool_calls[0].arguments == {"_raw": bad}


async def test_sessions_are_pooled_and_closed(srv: FakeOpenAIServer) -> None:
    model = srv.model()
    for _ in range(3):
        await model.request(ModelRequest([Message.user("x")]))
    assert open_session_count() == 1  # one pooled session for the provider, reused
    await aclose_http_sessions()
    assert open_session_count() == 0
    # A closed pool is recreated on the next call.
    await model.request(ModelRequest([Message.user("again")]))
    assert open_session_count() == 1


def test_sync_use_on_fresh_loops_does_not_leak_sessions() -> None:
    import asyncio

    async def once(srv_url: str) -> str:
        model = OpenAIChatModel("m", openai_compat_provider(srv_url))
        response = await collect(model.stream(ModelRequest([Message.user("hey")])))
        await aclose_http_sessions()
        return response.text

    async def run() -> list[str]:
        async with FakeOpenAIServer() as server:
            # Each call on its own thread-with-loop, like run_sync inside a worker.
            return [await asyncio.to_thread(asyncio.run, once(server.base_url)) for _ in range(2)]

    assert asyncio.run(run()) == ["hey", "hey"]
    assert open_session_count() == 0


async def test_error_object_mid_stream_is_unavailable() -> None:
    from aiohttp import web

    from bastion.errors import ProviderUnavailableError
    from bastion.gateway._resolve import resolve_model

    # Some compatible servers (vLLM, LiteLLM) send an error object after the 200 has gone out.
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "par"}}]}\n\n')
        await resp.write(b'data: {"error": {"message": "engine died", "code": 500}}\n\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        model = resolve_model(f"openai-compat:http://127.0.0.1:{port}/v1#m")
        with pytest.raises(ProviderUnavailableError, match="engine died"):
            await collect(model.stream(ModelRequest([Message.user("x")])))
    finally:
        await aclose_http_sessions()
        await runner.cleanup()


async def test_abandoning_a_stream_releases_the_connection(srv: FakeOpenAIServer) -> None:
    model = srv.model()
    stream = model.stream(ModelRequest([Message.user("a b c d e f")]))
    async for event in stream:
        assert isinstance(event, TextDelta)
        break
    await stream.aclose()  # type: ignore[attr-defined]
    # the pooled connection is usable again at once
    assert (await model.request(ModelRequest([Message.user("next")]))).text == "next"


def test_session_left_on_a_finished_loop_is_detached_quietly() -> None:
    import asyncio
    import gc

    async def call(url: str, close: bool) -> str:
        model = OpenAIChatModel("m", openai_compat_provider(url))
        text = (await model.request(ModelRequest([Message.user("hey")]))).text
        if close:
            await aclose_http_sessions()
        return text

    async def run() -> list[str]:
        async with FakeOpenAIServer() as server:
            first = await asyncio.to_thread(asyncio.run, call(server.base_url, False))  # forgets to close
            second = await asyncio.to_thread(asyncio.run, call(server.base_url, True))
            return [first, second]

    assert asyncio.run(run()) == ["hey", "hey"]
    gc.collect()  # an undetached session would warn "Unclosed client session" here
    assert open_session_count() == 0
