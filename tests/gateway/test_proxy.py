"""The OpenAI-compatible proxy, driven by the official `openai` client over real HTTP.

The proxy runs under uvicorn on 127.0.0.1 (random port) inside the test's event loop; the
gateway behind it answers from in-process test doubles, so each test controls the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from bastion.errors import (
    AllModelsFailedError,
    BudgetExceededError,
    CircuitOpenError,
    ContextWindowExceededError,
    InvalidResponseError,
    ModelHTTPError,
    ModelTimeoutError,
    PolicyDeniedError,
    ProviderUnavailableError,
    RateLimitError,
    UnknownModelError,
)
from bastion.gateway import Model
from bastion.gateway.proxy import InMemoryKeyStore, create_proxy_app, mint_key
from bastion.gateway.proxy._errors import error_reply
from bastion.testing import FunctionModel, ScriptedModel, serve_app
from bastion.types import (
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)


class ModelsGateway:
    """The smallest gateway: model names -> in-process models, nothing else."""

    def __init__(self, models: Mapping[str, Model]) -> None:
        self.models = dict(models)

    def _model(self, name: str | None) -> Model:
        if name not in self.models:
            raise UnknownModelError(f"unknown model {name!r}")
        return self.models[name]

    async def request(self, request: ModelRequest, *, model: str | None = None) -> ModelResponse:
        return await self._model(model).request(request)

    def stream(self, request: ModelRequest, *, model: str | None = None) -> AsyncIterator[StreamEvent]:
        return self._model(model).stream(request)

    def model_names(self) -> list[str]:
        return list(self.models)


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run `app` under uvicorn on a random 127.0.0.1 port; yield the `/v1` base URL."""
    async with serve_app(app, lifespan="off") as base:
        yield f"{base}/v1"


class Proxy:
    def __init__(self, base_url: str, keys: InMemoryKeyStore, key: str) -> None:
        self.base_url = base_url
        self.keys = keys
        self.key = key

    def client(self, key: str | None = None) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.base_url, api_key=key or self.key, max_retries=0, timeout=10)


@contextlib.asynccontextmanager
async def running_proxy(upstream: Mapping[str, Model], **key_args: Any) -> AsyncIterator[Proxy]:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant=key_args.pop("tenant", "acme"), **key_args)
    app = create_proxy_app(ModelsGateway(upstream), keys=keys)
    async with serve(app) as url:
        yield Proxy(url, keys, key)


async def test_chat_completion_round_trip() -> None:
    model = ScriptedModel(["Hello from Bastion"])
    async with running_proxy({"m": model}, user="u1", team="t1") as proxy:
        async with proxy.client() as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m",
                messages=[
                    {"role": "developer", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                ],
                temperature=0.2,
                max_tokens=50,
                stop="END",
                seed=7,
                presence_penalty=0.5,
            )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from Bastion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.id.startswith("chatcmpl-")
    assert raw.headers["x-bastion-cost-usd"] == "0.00000000"
    assert raw.headers["x-bastion-output-tokens"] == str(completion.usage.completion_tokens)
    (request,) = model.requests
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[1].text == "hi"
    assert request.settings.temperature == 0.2
    assert request.settings.max_tokens == 50
    assert request.settings.stop == ["END"]
    assert request.settings.seed == 7
    assert request.settings.extra == {"presence_penalty": 0.5}
    assert (request.context.tenant, request.context.user, request.context.team) == ("acme", "u1", "t1")
    assert "virtual_key" in request.context.tags


async def test_tool_calls_and_tool_results_map_both_ways() -> None:
    model = ScriptedModel([ToolCall("get_weather", {"city": "Paris"}, id="call_1"), "It is sunny."])
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with running_proxy({"m": model}) as proxy, proxy.client() as client:
        first = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.id == "call_1"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        second = await client.chat.completions.create(
            model="m",
            messages=[
                {"role": "user", "content": "weather in Paris?"},
                choice.message.model_dump(exclude_none=True),  # type: ignore[misc]
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"},
            ],
            tools=tools,
        )
    assert second.choices[0].message.content == "It is sunny."
    req1, req2 = model.requests
    assert req1.tool_choice == "get_weather"
    assert req1.tools[0].name == "get_weather"
    assert req1.tools[0].parameters["properties"] == {"city": {"type": "string"}}
    assert req2.messages[1].tool_calls == [ToolCall("get_weather", {"city": "Paris"}, id="call_1")]
    assert req2.messages[2].role == "tool"
    assert req2.messages[2].tool_results[0].tool_call_id == "call_1"
    assert req2.messages[2].text == "sunny, 24C"


async def test_structured_output_maps_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    model = ScriptedModel(['{"name": "Ada", "age": 36}'])
    async with running_proxy({"m": model}) as proxy, proxy.client() as client:
        completion = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "who?"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": True},
            },
        )
    assert json.loads(completion.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    output = model.requests[0].output
    assert output is not None
    assert (output.name, output.schema, output.strict) == ("person", schema, True)


async def _stream_text(client: AsyncOpenAI, **extra: Any) -> tuple[list[Any], str]:
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **extra
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


async def test_streaming_text_with_final_usage_chunk() -> None:
    model = ScriptedModel(["one two three"])
    async with running_proxy({"m": model}) as proxy, proxy.client() as client:
        chunks, text = await _stream_text(client, stream_options={"include_usage": True})
    assert text == "one two three"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    *body, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens > 0
    assert all(c.usage is None for c in body)


async def test_streaming_without_usage_option_sends_no_usage() -> None:
    async with running_proxy({"m": ScriptedModel(["a b"])}) as proxy, proxy.client() as client:
        chunks, text = await _stream_text(client)
    assert text == "a b"
    assert all(c.choices for c in chunks)


async def test_streaming_wire_format_is_exact_sse() -> None:
    async with running_proxy({"m": ScriptedModel(["x"])}) as proxy:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                headers={"Authorization": f"Bearer {proxy.key}"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                assert resp.status == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    payloads = [json.loads(e[6:]) for e in events[:-2]]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


async def _tool_call_stream(request: ModelRequest) -> AsyncIterator[StreamEvent]:
    yield TextDelta("Let me check.")
    yield ToolCallDelta(index=0, id="call_a", name="lookup", arguments_delta='{"q": ')
    yield ToolCallDelta(index=0, arguments_delta='"x"}')
    yield ToolCallDelta(index=1, id="call_b", name="lookup", arguments_delta='{"q": "y"}')
    calls = [ToolCall("lookup", {"q": "x"}, id="call_a"), ToolCall("lookup", {"q": "y"}, id="call_b")]
    response = ModelResponse(Message.assistant("Let me check.", calls), Usage(3, 4), "m", "tool_calls")
    yield ResponseDone(response)


class StreamingToolModel:
    name = "test:tools"

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("the proxy should stream")

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        return _tool_call_stream(request)


async def test_streaming_tool_call_deltas() -> None:
    async with running_proxy({"m": StreamingToolModel()}) as proxy, proxy.client() as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [c async for c in stream]
    fragments = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(f.index, f.id, f.function and f.function.name) for f in fragments] == [
        (0, "call_a", "lookup"),
        (0, None, None),
        (1, "call_b", "lookup"),
    ]
    args: dict[int, str] = {}
    for f in fragments:
        args[f.index] = args.get(f.index, "") + (f.function.arguments or "" if f.function else "")
    assert {i: json.loads(a) for i, a in args.items()} == {0: {"q": "x"}, 1: {"q": "y"}}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_models_list_and_retrieve_respect_key_scope() -> None:
    models = {"cheap": ScriptedModel([]), "smart": ScriptedModel([]), "openai:gpt-4o-mini": ScriptedModel([])}
    async with running_proxy(models, models=["cheap", "openai:gpt-4o-mini"]) as proxy:
        async with proxy.client() as client:
            listed = await client.models.list()
            assert sorted(m.id for m in listed.data) == ["cheap", "openai:gpt-4o-mini"]
            assert (await client.models.retrieve("cheap")).id == "cheap"
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("smart")
            with pytest.raises(openai.PermissionDeniedError) as info:
                await client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}])
            assert "may not use model 'smart'" in str(info.value)


@pytest.mark.parametrize("key", [None, "bst-not-a-real-key"])
async def test_missing_or_bad_key_is_401_and_never_echoed(key: str | None) -> None:
    model = ScriptedModel(["never"])
    async with running_proxy({"m": model}) as proxy:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with http.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                assert resp.status == 401
                body = await resp.json()
    assert body["error"]["code"] == "invalid_api_key"
    assert key is None or key not in json.dumps(body)
    assert model.requests == []


async def test_revoked_key_is_rejected_by_the_openai_client() -> None:
    async with running_proxy({"m": ScriptedModel(["a", "b"])}) as proxy:
        (record,) = await proxy.keys.list_keys()
        async with proxy.client() as client:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            assert await proxy.keys.revoke(record.key_id)
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


async def _post_raw(proxy: Proxy, data: bytes) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy.base_url}/chat/completions",
            data=data,
            headers={"Authorization": f"Bearer {proxy.key}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"model": "m", "messages": [', "not valid JSON"),
        (b"", "body is empty"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model' is required"),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temprature": 1}', "'temprature'"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
        (b'{"model": "m", "messages": [{"role": "tool", "content": "x"}]}', "tool_call_id"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}', "'n'"),
    ],
)
async def test_malformed_bodies_are_400_naming_the_field(data: bytes, expected: str) -> None:
    model = ScriptedModel(["ok"])
    async with running_proxy({"m": model}) as proxy:
        status, body = await _post_raw(proxy, data)
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error"
        assert expected in body["error"]["message"]
        assert model.requests == []
        # Nothing is lost: the same client's next good request still works.
        status, body = await _post_raw(proxy, b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}')
        assert status == 200 and body["choices"][0]["message"]["content"] == "ok"


async def test_unknown_model_is_404() -> None:
    async with running_proxy({"m": ScriptedModel([])}) as proxy, proxy.client() as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failures_map_to_clean_statuses(stream: bool) -> None:
    model = ScriptedModel(
        [
            ProviderUnavailableError(503, "upstream overloaded"),
            RateLimitError(429, "slow down", retry_after=2.5),
            BudgetExceededError("tenant 'acme' spent $1.00 of $1.00", scope="tenant:acme", limit=1, used=1),
        ]
    )
    async with running_proxy({"m": model}) as proxy, proxy.client() as client:
        kwargs: Any = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(**kwargs)
        assert info.value.status_code == 502
        assert info.value.code == "bad_gateway"
        with pytest.raises(openai.RateLimitError) as rate:
            await client.chat.completions.create(**kwargs)
        assert rate.value.response.headers["retry-after"] == "3"
        assert rate.value.code == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError) as budget:
            await client.chat.completions.create(**kwargs)
        assert budget.value.code == "budget_exceeded"
        assert "spent $1.00" in budget.value.message


async def test_failure_mid_stream_is_reported_in_band() -> None:
    async def broken(request: ModelRequest) -> AsyncIterator[StreamEvent]:
        yield TextDelta("partial ")
        raise ProviderUnavailableError(502, "connection reset")

    class Broken:
        name = "test:broken"

        async def request(self, request: ModelRequest) -> ModelResponse:
            raise AssertionError

        def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            return broken(request)

    async with running_proxy({"m": Broken(), "ok": ScriptedModel(["fine"])}) as proxy:
        async with proxy.client() as client:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
            with pytest.raises(openai.APIError) as info:
                async for _ in stream:
                    pass
            assert "upstream provider failed" in str(info.value)
            again = await client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "x"}])
            assert again.choices[0].message.content == "fine"


async def test_client_disconnect_mid_stream_closes_upstream_and_server_survives() -> None:
    closed = asyncio.Event()
    release = asyncio.Event()

    async def endless(request: ModelRequest) -> AsyncIterator[StreamEvent]:
        try:
            yield TextDelta("first")
            await release.wait()  # the client hangs up while the model is still "thinking"
            yield TextDelta("never seen")
        finally:
            closed.set()

    class Endless:
        name = "test:endless"

        async def request(self, request: ModelRequest) -> ModelResponse:
            raise AssertionError

        def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            return endless(request)

    async with running_proxy({"m": Endless(), "ok": ScriptedModel(["still up"])}) as proxy:
        async with proxy.client() as client:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content == "first":
                    break
            await stream.close()
            await asyncio.wait_for(closed.wait(), timeout=10)
            again = await client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "x"}])
    assert again.choices[0].message.content == "still up"


async def test_unexpected_exception_is_a_json_500_without_traceback() -> None:
    def boom(request: ModelRequest) -> str:
        raise KeyError("secret internals")

    async with running_proxy({"m": FunctionModel(boom)}) as proxy:
        status, body = await _post_raw(proxy, b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}')
    assert status == 500
    assert body["error"]["type"] == "server_error"
    assert "secret internals" not in json.dumps(body) and "Traceback" not in json.dumps(body)


async def test_unknown_route_and_method_get_openai_error_bodies() -> None:
    async with running_proxy({"m": ScriptedModel([])}) as proxy:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{proxy.base_url}/nope", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 404
                assert "error" in await resp.json()
            async with http.get(f"{proxy.base_url}/chat/completions", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 405
                assert "error" in await resp.json()


async def test_images_json_object_and_user_map_into_the_request() -> None:
    model = ScriptedModel(['{"ok": true}'])
    async with running_proxy({"m": model}) as proxy, proxy.client() as client:
        await client.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    ],
                }
            ],
            response_format={"type": "json_object"},
            user="end-user-7",
        )
    (request,) = model.requests
    parts = request.messages[0].parts
    assert [p.kind for p in parts] == ["text", "image"]
    assert parts[1].url == "https://example.com/cat.png"
    assert request.settings.extra["response_format"] == {"type": "json_object"}
    assert request.output is None
    assert request.context.user == "end-user-7"  # the key has no user: the body's `user` names one


def test_openapi_schema_publishes_the_request_body() -> None:
    app = create_proxy_app(ModelsGateway({}), keys=InMemoryKeyStore())
    schema = app.fastapi.openapi()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages"} <= set(body["required"])
    assert "/v1/models" in schema["paths"]


async def test_oversized_body_is_413_and_not_read_in_full() -> None:
    model = ScriptedModel(["ok"])
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    app = create_proxy_app(ModelsGateway({"m": model}), keys=keys, max_body_bytes=1000)
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse early
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    async with serve(app) as url, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for data in (big, chunks()):
            async with http.post(
                f"{url}/chat/completions", data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                assert resp.status == 413
                assert (await resp.json())["error"]["code"] == "request_too_large"
    assert model.requests == []


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ModelTimeoutError("attempt took 30 s"), 504, "gateway_timeout"),
        (CircuitOpenError("breaker open for openai:gpt-4o-mini"), 503, "service_unavailable"),
        (ContextWindowExceededError("prompt too long"), 400, "context_length_exceeded"),
        (PolicyDeniedError("no", reason="rule 7"), 403, "policy_denied"),
        (InvalidResponseError("not JSON"), 502, "bad_gateway"),
        (ModelHTTPError(401, "bad provider key"), 502, "bad_gateway"),
        (ModelHTTPError(400, "unsupported parameter"), 400, None),
        (
            AllModelsFailedError([ProviderUnavailableError(500, "a"), RateLimitError(429, "b", retry_after=4)]),
            429,
            "rate_limit_exceeded",
        ),
    ],
)
def test_error_mapping(exc: Exception, status: int, code: str | None) -> None:
    reply = error_reply(exc)
    assert (reply.status, reply.code) == (status, code)
    assert reply.body()["error"]["message"]


def test_day_budget_refusal_says_when_it_resets() -> None:
    reply = error_reply(BudgetExceededError("spent", scope="day:acme/2026-01-01"))
    assert reply.status == 429
    assert 1 <= int(reply.headers["retry-after"]) <= 86400
    assert "retry-after" not in error_reply(BudgetExceededError("spent", scope="tenant:acme")).headers


async def test_health_needs_no_key() -> None:
    async with running_proxy({"m": ScriptedModel([])}) as proxy, aiohttp.ClientSession() as http:
        root = proxy.base_url.removesuffix("/v1")
        async with http.get(f"{root}/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}


async def test_a_client_prompt_cache_key_is_accepted_and_never_forwarded() -> None:
    # the gateway derives its own key per (tenant, agent, thread); a client-chosen one could aim
    # at another tenant's cache shard
    model = ScriptedModel(["ok"])
    async with running_proxy({"m": model}) as proxy:
        async with proxy.client() as client:
            completion = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], prompt_cache_key="other-tenant-shard"
            )
    assert completion.choices[0].message.content == "ok"
    (request,) = model.requests
    assert "prompt_cache_key" not in request.settings.extra
