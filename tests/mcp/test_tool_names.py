"""Tool names providers accept: `server.tool` and other illegal names are mapped reversibly on
the wire, and policy, audit and results keep the canonical name. Real MCP server over stdio,
real HTTP to FakeOpenAIServer, which answers 400 to an illegal name as OpenAI and Anthropic do."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bastion import Agent
from bastion.gateway import ToolNames, is_provider_legal, provider_tool_name
from bastion.gateway._http import aclose_http_sessions
from bastion.graph.agent import RunDone, ToolCallEvent
from bastion.policy import AuditLog, Policy, ToolGateway
from bastion.testing import FakeOpenAIServer, ScriptedModel
from bastion.tools import Tool, ToolRegistry, tool
from bastion.tools.mcp import MCPServerConfig, MCPToolset
from bastion.types import ToolCall, ToolResult

SERVER = str(Path(__file__).with_name("server_demo.py"))
LEGAL = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv
    await aclose_http_sessions()


def demo_toolset(tmp_path: Path) -> MCPToolset:
    # Entered in the test itself: an MCP client must be closed by the task that opened it.
    config = MCPServerConfig("demo", command=[sys.executable, SERVER])
    return MCPToolset([config], lock=tmp_path / "mcp.lock", trust_on_first_use=True)


def test_mapping_is_legal_deterministic_and_reversible() -> None:
    long = "files." + "x" * 80
    names = ToolNames(["files.read", "search", "files__write", "files.write", long, "a b!"])
    assert names.provider("search") == "search"  # legal names are never renamed
    assert names.provider("files.read") == "files__read"
    # `files.write` would become `files__write`, which a legal tool already holds: hashed instead.
    assert names.provider("files__write") == "files__write"
    assert names.provider("files.write") != "files__write"
    assert names.provider("files.write").startswith("files__write_")
    assert len(names.provider(long)) == 64
    mapped = [names.provider(n) for n in ["files.read", "search", "files__write", "files.write", long, "a b!"]]
    assert all(LEGAL.match(m) for m in mapped) and len(set(mapped)) == len(mapped)
    for canonical in ["files.read", "files.write", long, "a b!", "search"]:
        assert names.canonical(names.provider(canonical)) == canonical
    assert names.canonical("unknown_tool") == "unknown_tool"
    again = ToolNames(["a b!", long, "files.write", "files__write", "search", "files.read"])
    assert all(again.provider(n) == names.provider(n) for n in ["files.read", "files.write", long, "a b!"])
    assert provider_tool_name("files.read") == "files__read" and is_provider_legal("files__read")
    assert not is_provider_legal("files.read") and not is_provider_legal("x" * 65)


async def test_fake_provider_rejects_illegal_names_like_real_providers(upstream: FakeOpenAIServer) -> None:
    async with aiohttp.ClientSession() as http:
        tools = [{"type": "function", "function": {"name": "demo.add", "parameters": {"type": "object"}}}]
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools}
        async with http.post(f"{upstream.base_url}/chat/completions", json=body) as resp:
            assert resp.status == 400
            assert "tools[0].function.name" in (await resp.json())["error"]["message"]
        tools = [{"name": "demo.add", "input_schema": {"type": "object"}}]
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": tools}
        async with http.post(f"{upstream.base_url}/messages", json=body) as resp:
            assert resp.status == 400


@pytest.mark.parametrize("shape", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True])
async def test_agent_calls_mcp_tools_through_a_strict_provider(
    upstream: FakeOpenAIServer, tmp_path: Path, shape: str, stream: bool
) -> None:
    async with demo_toolset(tmp_path) as ts:
        await _agent_round_trip(upstream, ts.tools, shape, stream)


async def _agent_round_trip(upstream: FakeOpenAIServer, demo_tools: list[Tool], shape: str, stream: bool) -> None:
    models = {"openai": upstream.model, "anthropic": upstream.anthropic_model, "gemini": upstream.gemini_model}
    model = models[shape]()
    upstream.reply(ToolCall("demo__add", {"a": 2, "b": 3}), "the sum is 5")
    audit = AuditLog()
    # Grants (and Cedar policies) use the canonical MCP name.
    gateway = ToolGateway(Policy({"calc": ["demo.add"]}), audit=audit)
    agent = Agent(model, tools=demo_tools, name="calc", tool_executor=gateway)
    if stream:
        events = [e async for e in agent.stream("add 2 and 3")]
        streamed = [e.call.name for e in events if isinstance(e, ToolCallEvent)]
        assert streamed == ["demo.add"]
        done = events[-1]
        assert isinstance(done, RunDone)
        result = done.result
    else:
        result = await agent.run("add 2 and 3")
    assert result is not None
    first, second = (r.body for r in upstream.requests[:2])
    # The tools are offered, and the call the model made is sent back in the history, under the
    # same legal names.
    if shape == "gemini":
        offered = [f["name"] for f in first["tools"][0]["functionDeclarations"]]
        parts = [p for c in second["contents"] for p in c["parts"]]
        assert [p["functionCall"]["name"] for p in parts if "functionCall" in p] == ["demo__add"]
        assert [p["functionResponse"]["name"] for p in parts if "functionResponse" in p] == ["demo__add"]
    else:
        offered = [t["function"]["name"] if shape == "openai" else t["name"] for t in first["tools"]]
    assert sorted(offered) == ["demo__add", "demo__echo", "demo__probe"]
    history = second.get("messages") or []
    if shape == "openai":
        assert [c["function"]["name"] for m in history for c in m.get("tool_calls") or []] == ["demo__add"]
    elif shape == "anthropic":
        uses = [
            b["name"]
            for m in history
            if isinstance(m["content"], list)
            for b in m["content"]
            if b["type"] == "tool_use"
        ]
        assert uses == ["demo__add"]
    calls = [p for m in result.messages for p in m.parts if isinstance(p, ToolCall)]
    results = [p for m in result.messages for p in m.parts if isinstance(p, ToolResult)]
    assert [c.name for c in calls] == ["demo.add"]
    assert results[0].name == "demo.add" and not results[0].is_error and "5" in results[0].content_text()
    assert {e.tool for e in audit.entries()} == {"demo.add"}
    assert result.output == "the sum is 5"


async def test_any_illegal_tool_name_is_mapped_not_only_mcp(upstream: FakeOpenAIServer) -> None:
    refunds: list[str] = []

    @tool(name="billing.refund v2", side_effect="read")
    def refund(order: str) -> str:
        """Refund an order."""
        refunds.append(order)
        return f"refunded {order}"

    @tool(name="billing__refund_v2", side_effect="read")
    def decoy(order: str) -> str:
        """A legal name the mapped one would collide with."""
        raise AssertionError("the legal tool must not be called")

    names = ToolNames([refund.name, decoy.name])
    wire = names.provider(refund.name)
    assert wire != decoy.name and LEGAL.match(wire)
    upstream.reply(ToolCall(wire, {"order": "A1"}), "done")
    grants = ToolGateway(Policy({"shop": ["billing.refund v2", "billing__refund_v2"]}))
    agent = Agent(upstream.model(), tools=[refund, decoy], name="shop", tool_executor=grants)
    result = await agent.run("refund A1")
    assert result.output == "done" and refunds == ["A1"]
    offered = {t["function"]["name"] for t in upstream.requests[0].body["tools"]}
    assert offered == {wire, "billing__refund_v2"}
    assert [p.name for m in result.messages for p in m.parts if isinstance(p, ToolCall)] == ["billing.refund v2"]


async def test_provider_names_from_a_model_outside_the_wire_formats_map_back() -> None:
    seen: list[str] = []

    @tool(name="files.read", side_effect="read")
    def read(path: str) -> str:
        """Read a file."""
        seen.append(path)
        return "contents"

    model = ScriptedModel([ToolCall("files__read", {"path": "a.txt"}), "ok"])
    grants = ToolGateway(Policy({"reader": ["files.read"]}))
    result = await Agent(model, tools=[read], name="reader", tool_executor=grants).run("read a.txt")
    assert result.output == "ok" and seen == ["a.txt"]
    assert [p.name for m in result.messages for p in m.parts if isinstance(p, ToolCall)] == ["files.read"]
    registry = ToolRegistry([read])
    assert registry.resolve("files__read") is read and registry.resolve("files.read") is read
    assert read.provider_name == "files__read"
    with pytest.raises(KeyError, match="registered"):
        registry.resolve("files__write")
