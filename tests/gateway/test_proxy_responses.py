"""The Responses API on the proxy (`/v1/responses`), driven by the official `openai` client
over real HTTP: create, stream, tools, structured output, `previous_response_id` stored per
tenant (SQLite and PostgreSQL), budgets and cost through the gateway, and OpenAI-style errors
for every path the proxy does not serve."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from pydantic import BaseModel

from bastion.gateway import Budget, BudgetLimits, Gateway, RetryPolicy
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway.proxy import InMemoryKeyStore, PostgresKeyStore, SQLiteKeyStore, create_proxy_app, mint_key
from bastion.gateway.proxy._keys import KeyStore
from bastion.testing import FakeOpenAIServer, FakeReply, Fault, ScriptedModel
from bastion.types import ToolCall, Usage


def _load_sibling(name: str) -> Any:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_proxy_tests_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_base = _load_sibling("test_proxy")
serve, ModelsGateway = _base.serve, _base.ModelsGateway
WEATHER: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=10)


@contextlib.asynccontextmanager
async def scripted(model: ScriptedModel, keys: KeyStore | None = None) -> AsyncIterator[tuple[str, str]]:
    keys = keys or InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    app = create_proxy_app(ModelsGateway({"m": model}), keys=keys)
    try:
        async with serve(app) as url:
            yield url, key
    finally:
        app.close()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv
    await aclose_http_sessions()


def priced_gateway(upstream: FakeOpenAIServer, **kwargs: Any) -> Gateway:
    return Gateway(
        models={"fake": upstream.model()},
        tiers={"cheap": "fake"},
        pricing={"openai-compat:*": {"input": 1.0, "output": 2.0}},
        retry=RetryPolicy(max_attempts=1),
        cache=False,
        **kwargs,
    )


async def test_create_maps_input_instructions_and_settings() -> None:
    model = ScriptedModel(["Hello from Bastion"])
    async with scripted(model) as (url, key), client(url, key) as c:
        raw = await c.responses.with_raw_response.create(
            model="m",
            input="hi",
            instructions="be brief",
            temperature=0.3,
            top_p=0.9,
            max_output_tokens=40,
            user="u7",
            metadata={"k": "v"},
        )
    response = raw.parse()
    assert response.output_text == "Hello from Bastion"
    assert response.status == "completed"
    assert response.id.startswith("resp_") and response.model == "m"
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert raw.headers["x-bastion-output-tokens"] == str(response.usage.output_tokens)
    (request,) = model.requests
    assert [(m.role, m.text) for m in request.messages] == [("system", "be brief"), ("user", "hi")]
    assert (request.settings.temperature, request.settings.top_p, request.settings.max_tokens) == (0.3, 0.9, 40)
    assert request.settings.extra == {"metadata": {"k": "v"}}
    assert (request.context.tenant, request.context.user) == ("acme", "u7")


async def test_function_tools_round_trip_with_call_and_output_items() -> None:
    model = ScriptedModel([ToolCall("get_weather", {"city": "Paris"}, id="call_1"), "It is sunny."])
    async with scripted(model) as (url, key), client(url, key) as c:
        first = await c.responses.create(
            model="m", input="weather in Paris?", tools=WEATHER, tool_choice={"type": "function", "name": "get_weather"}
        )
        (call,) = first.output
        assert call.type == "function_call"
        assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_1", "get_weather", {"city": "Paris"})
        second = await c.responses.create(
            model="m",
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
                call.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 24C"},
            ],
            tools=WEATHER,
        )
    assert second.output_text == "It is sunny."
    req1, req2 = model.requests
    assert req1.tool_choice == "get_weather"
    assert req1.tools[0].name == "get_weather" and req1.tools[0].parameters["required"] == ["city"]
    assert [m.role for m in req2.messages] == ["user", "assistant", "tool"]
    assert req2.messages[1].tool_calls == [ToolCall("get_weather", {"city": "Paris"}, id="call_1")]
    result = req2.messages[2].tool_results[0]
    assert (result.tool_call_id, result.name, result.content) == ("call_1", "get_weather", "sunny, 24C")


async def test_hosted_tools_and_unsupported_features_get_a_clear_400() -> None:
    model = ScriptedModel(["unused"])
    async with scripted(model) as (url, key), client(url, key) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model="m", input="news?", tools=[{"type": "web_search"}])
        assert info.value.code == "unsupported_tool"
        assert "only 'function' tools" in info.value.message
        assert (info.value.body or {}).get("param") == "tools[0].type"  # type: ignore[union-attr]
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model="m", input="x", background=True)
        assert "background" in info.value.message
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model="m", input="x", extra_body={"bogus": 1})
        assert "bogus" in info.value.message
    assert model.requests == []


class Person(BaseModel):
    name: str
    age: int


async def test_structured_output_via_text_format() -> None:
    model = ScriptedModel(['{"name": "Ada", "age": 36}'])
    async with scripted(model) as (url, key), client(url, key) as c:
        parsed = await c.responses.parse(model="m", input="who?", text_format=Person)
    assert parsed.output_parsed == Person(name="Ada", age=36)
    output = model.requests[0].output
    assert output is not None and output.name == "Person" and output.strict
    assert output.schema["properties"]["age"]["type"] == "integer"


async def test_stream_emits_the_responses_event_sequence(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    upstream.reply("one two three", FakeReply(tool_calls=[ToolCall("get_weather", {"city": "Rome"}, id="call_r")]))
    async with priced_gateway(upstream) as gateway, serve(create_proxy_app(gateway, keys=keys)) as url:
        async with client(url, key) as c:
            text_events = [e async for e in await c.responses.create(model="cheap", input="one two three", stream=True)]
            tool_events = [
                e async for e in await c.responses.create(model="cheap", input="x", tools=WEATHER, stream=True)
            ]
    types = [e.type for e in text_events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in text_events] == list(range(len(text_events)))
    deltas = "".join(e.delta for e in text_events if e.type == "response.output_text.delta")
    assert deltas == "one two three"
    done = text_events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "one two three"
    usage = done.response.usage
    assert usage is not None and usage.output_tokens > 0
    assert {e.item_id for e in text_events if e.type == "response.output_text.delta"} == {done.response.output[0].id}

    tool_types = [e.type for e in tool_events]
    assert "response.function_call_arguments.delta" in tool_types
    args_done = next(e for e in tool_events if e.type == "response.function_call_arguments.done")
    assert json.loads(args_done.arguments) == {"city": "Rome"}
    final = tool_events[-1]
    assert final.type == "response.completed"
    (call,) = final.response.output
    assert call.type == "function_call" and call.call_id == "call_r" and call.id == args_done.item_id


async def test_previous_response_id_is_stored_per_tenant_in_sqlite(tmp_path: Path) -> None:
    model = ScriptedModel(["Nice to meet you, Ada.", "Your name is Ada.", "unused"])
    with SQLiteKeyStore(tmp_path / "keys.db") as keys:
        acme, _ = await mint_key(keys, tenant="acme")
        globex, _ = await mint_key(keys, tenant="globex")
        app = create_proxy_app(ModelsGateway({"m": model}), keys=keys)
        async with serve(app) as url:
            async with client(url, acme) as c:
                first = await c.responses.create(model="m", input="I am Ada.", instructions="be kind")
                second = await c.responses.create(model="m", input="What is my name?", previous_response_id=first.id)
                assert second.output_text == "Your name is Ada."
                assert second.previous_response_id == first.id
                fetched = await c.responses.retrieve(second.id)
                assert fetched.output_text == "Your name is Ada."
            async with client(url, globex) as c:  # another tenant: the ids do not exist for it
                with pytest.raises(openai.NotFoundError) as info:
                    await c.responses.create(model="m", input="and mine?", previous_response_id=first.id)
                assert info.value.code == "previous_response_not_found"
                with pytest.raises(openai.NotFoundError):
                    await c.responses.retrieve(first.id)
                with pytest.raises(openai.NotFoundError):
                    await c.responses.delete(first.id)
        app.close()
    assert (tmp_path / "responses.db").exists()
    follow_up = model.requests[1]
    # Instructions do not carry over; the earlier input and output do.
    assert [(m.role, m.text) for m in follow_up.messages] == [
        ("user", "I am Ada."),
        ("assistant", "Nice to meet you, Ada."),
        ("user", "What is my name?"),
    ]
    assert len(model.requests) == 2  # globex's attempt never reached the model

    # A new process on the same files continues the conversation; delete removes it.
    model2 = ScriptedModel(["Still Ada."])
    with SQLiteKeyStore(tmp_path / "keys.db") as keys:
        app = create_proxy_app(ModelsGateway({"m": model2}), keys=keys)
        async with serve(app) as url, client(url, acme) as c:
            third = await c.responses.create(model="m", input="Again?", previous_response_id=second.id)
            assert third.output_text == "Still Ada."
            await c.responses.delete(third.id)
            with pytest.raises(openai.NotFoundError):
                await c.responses.retrieve(third.id)
        app.close()
    assert len(model2.requests[0].messages) == 5


async def test_store_false_stores_nothing() -> None:
    model = ScriptedModel(["ephemeral", "unused"])
    async with scripted(model) as (url, key), client(url, key) as c:
        response = await c.responses.create(model="m", input="hi", store=False)
        assert response.output_text == "ephemeral"
        with pytest.raises(openai.NotFoundError):
            await c.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            await c.responses.create(model="m", input="more", previous_response_id=response.id)
    assert len(model.requests) == 1


@pytest.mark.postgres
async def test_previous_response_id_on_postgres_is_per_tenant(pg_url: str) -> None:
    model = ScriptedModel(["first answer", "second answer"])
    with PostgresKeyStore(pg_url) as keys:
        acme, _ = await mint_key(keys, tenant="acme")
        globex, _ = await mint_key(keys, tenant="globex")
        app = create_proxy_app(ModelsGateway({"m": model}), keys=keys)
        async with serve(app) as url:
            async with client(url, acme) as c:
                first = await c.responses.create(model="m", input="remember 42")
                second = await c.responses.create(model="m", input="what number?", previous_response_id=first.id)
                assert second.output_text == "second answer"
            async with client(url, globex) as c:
                with pytest.raises(openai.NotFoundError):
                    await c.responses.create(model="m", input="x", previous_response_id=first.id)
        app.close()
    assert [m.text for m in model.requests[1].messages] == ["remember 42", "first answer", "what number?"]


async def test_usage_cost_and_key_budget_go_through_the_gateway(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    limited, _ = await mint_key(keys, tenant="acme", max_tokens=60)
    broke, _ = await mint_key(keys, tenant="globex")
    gateway = priced_gateway(upstream, budgets=Budget(overrides={"tenant:globex": BudgetLimits(usd=0.0)}))
    async with gateway, serve(create_proxy_app(gateway, keys=keys)) as url:
        async with client(url, limited) as c:
            raw = await c.responses.with_raw_response.create(model="cheap", input="hello there", max_output_tokens=20)
            response = raw.parse()
            assert response.output_text == "hello there"  # the fake echoes
            assert response.usage is not None
            expected = (response.usage.input_tokens * 1.0 + response.usage.output_tokens * 2.0) / 1e6
            assert float(raw.headers["x-bastion-cost-usd"]) == pytest.approx(expected)
            refused: openai.RateLimitError | None = None
            for _ in range(30):
                try:
                    await c.responses.create(model="cheap", input="hello there", max_output_tokens=20)
                except openai.RateLimitError as e:
                    refused = e
                    break
            assert refused is not None and refused.code == "budget_exceeded"
        calls = upstream.count
        async with client(url, broke) as c:
            with pytest.raises(openai.RateLimitError):
                await c.responses.create(model="cheap", input="hi")
            with pytest.raises(openai.RateLimitError):  # a stream refused before it starts keeps its 429
                async for _ in await c.responses.create(model="cheap", input="hi", stream=True):
                    pass
        assert upstream.count == calls


async def test_max_output_tokens_cut_is_an_incomplete_response(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    upstream.reply(FakeReply("a long answer cut short", usage=Usage(5, 3), finish_reason="length"))
    async with priced_gateway(upstream) as gateway, serve(create_proxy_app(gateway, keys=keys)) as url:
        async with client(url, key) as c:
            response = await c.responses.create(model="cheap", input="talk", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/files", 404, "unknown_url"),
        ("POST", "/v1/audio/speech", 404, "unknown_url"),
        ("POST", "/v1/foo", 404, "unknown_url"),
        ("GET", "/v1/responses", 405, "method_not_allowed"),
        ("GET", "/v1/embeddings", 405, "method_not_allowed"),
        ("PUT", "/v1/responses/resp_1", 405, "method_not_allowed"),
    ],
)
async def test_other_paths_get_openai_style_errors_naming_what_is_supported(
    method: str, path: str, status: int, code: str
) -> None:
    async with scripted(ScriptedModel([])) as (url, key), aiohttp.ClientSession() as http:
        root = url.removesuffix("/v1")
        async with http.request(method, root + path, headers={"authorization": f"Bearer {key}"}) as r:
            body = await r.json()
            allow = r.headers.get("allow")
    assert r.status == status
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code
    for supported in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/models"):
        assert supported in error["message"]
    if status == 405:
        assert allow


async def test_official_client_sees_unknown_paths_as_not_found() -> None:
    async with scripted(ScriptedModel([])) as (url, key), client(url, key) as c:
        with pytest.raises(openai.NotFoundError) as info:
            await c.files.list()
    assert info.value.code == "unknown_url"
    assert "/v1/responses" in info.value.message


async def test_stream_cut_mid_way_ends_with_an_error_event_and_stores_nothing(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    upstream.reply(Fault.disconnect(after_chunks=2))
    async with priced_gateway(upstream) as gateway, serve(create_proxy_app(gateway, keys=keys)) as url:
        async with client(url, key) as c:
            events = [e async for e in await c.responses.create(model="cheap", input="a b c d e f", stream=True)]
            assert events[0].type == "response.created"
            assert events[-1].type == "error"
            assert events[-1].code == "bad_gateway"
            assert "response.completed" not in [e.type for e in events]
            with pytest.raises(openai.NotFoundError):
                await c.responses.retrieve(events[0].response.id)
