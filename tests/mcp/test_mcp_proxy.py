"""MCP tools through Bastion's OpenAI-compatible proxy with the official `openai` client:
openai client -> proxy (uvicorn) -> Gateway -> OpenAI wire format -> FakeOpenAIServer, which
answers 400 to an illegal tool name as OpenAI does. The tools come from a real MCP server over
stdio and the tool call is executed on it."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from bastion.gateway import Gateway, ToolNames
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway.proxy import InMemoryKeyStore, create_proxy_app, mint_key
from bastion.testing import FakeOpenAIServer, serve_app
from bastion.tools import Tool
from bastion.tools.mcp import MCPServerConfig, MCPToolset
from bastion.types import ToolCall

SERVER = str(Path(__file__).with_name("server_demo.py"))


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv
    await aclose_http_sessions()


@pytest.fixture
async def client(upstream: FakeOpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    gateway = Gateway(models={"fake": upstream.model()}, cache=False)
    async with gateway, serve_app(create_proxy_app(gateway, keys=keys), lifespan="off") as base:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=10) as c:
            yield c


def toolset(tmp_path: Path) -> MCPToolset:
    config = MCPServerConfig("demo", command=[sys.executable, SERVER])
    return MCPToolset([config], lock=tmp_path / "mcp.lock", trust_on_first_use=True)


def openai_tools(tools: list[Tool], names: ToolNames) -> Any:
    return [
        {
            "type": "function",
            "function": {"name": names.provider(t.name), "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]


async def test_mcp_round_trip_with_the_official_openai_client(
    upstream: FakeOpenAIServer, client: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    async with toolset(tmp_path) as ts:
        names = ToolNames([t.name for t in ts.tools])
        upstream.reply(ToolCall("demo__add", {"a": 20, "b": 22}, id="call_1"), "20 + 22 = 42")
        messages: list[Any] = [{"role": "user", "content": "what is 20 + 22?"}]
        first = await client.chat.completions.create(
            model="fake", messages=messages, tools=openai_tools(ts.tools, names)
        )
        (call,) = first.choices[0].message.tool_calls or []
        assert call.type == "function" and call.function.name == "demo__add"  # legal for any provider
        by_name = {t.name: t for t in ts.tools}
        mcp_tool = by_name[names.canonical(call.function.name)]
        assert mcp_tool.name == "demo.add"
        output = await mcp_tool.invoke(mcp_tool.validate(json.loads(call.function.arguments)))
        assert output == {"result": 42}
        messages += [
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps(output)},
        ]
        final = await client.chat.completions.create(
            model="fake", messages=messages, tools=openai_tools(ts.tools, names)
        )
        assert final.choices[0].message.content == "20 + 22 = 42"
    sent = upstream.requests[-1].body
    assert {t["function"]["name"] for t in sent["tools"]} == {"demo__add", "demo__echo", "demo__probe"}
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": '{"result": 42}'}


@pytest.mark.parametrize("stream", [False, True])
async def test_canonical_mcp_names_are_accepted_and_mapped_upstream(
    upstream: FakeOpenAIServer, client: openai.AsyncOpenAI, tmp_path: Path, stream: bool
) -> None:
    """A client that sends `demo.add` as is (an OpenAI 400) is served: the provider sees
    `demo__add`, the client gets its own name back."""
    async with toolset(tmp_path) as ts:
        tools: Any = [{"type": "function", "function": {"name": t.name, "parameters": t.parameters}} for t in ts.tools]
        upstream.reply(ToolCall("demo__echo", {"message": "hi"}, id="call_2"))
        messages: Any = [{"role": "user", "content": "echo hi"}]
        if stream:
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    model="fake", messages=messages, tools=tools, stream=True
                )
            ]
            fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
            assert fragments[0].function is not None and fragments[0].function.name == "demo.echo"
        else:
            done = await client.chat.completions.create(model="fake", messages=messages, tools=tools)
            (call,) = done.choices[0].message.tool_calls or []
            assert call.type == "function" and call.function.name == "demo.echo"
    assert {t["function"]["name"] for t in upstream.requests[-1].body["tools"]} == {
        "demo__add",
        "demo__echo",
        "demo__probe",
    }
