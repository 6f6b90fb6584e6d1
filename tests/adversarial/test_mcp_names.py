"""MCP tools through a running `bastion serve` (proxy at /openai/v1) with the official `openai`
client, against a provider that answers 400 to any tool name outside ^[a-zA-Z0-9_-]{1,64}$ as
OpenAI does. A client sending `server.tool` names as they are is served; the provider never
sees one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import openai

from bastion.gateway._http import aclose_http_sessions
from bastion.gateway.proxy import SQLiteKeyStore, mint_key
from bastion.testing import FakeOpenAIServer
from bastion.tools.mcp import MCPServerConfig, MCPToolset
from bastion.types import ToolCall

HERE = Path(__file__).parent
APP = f"{HERE / 'mcp_app.py'}:build"
SERVER = str(HERE.parent / "mcp" / "server_demo.py")


async def test_mcp_tools_round_trip_through_bastion_serve(bastion_server: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = SQLiteKeyStore.for_home(home)
    key, _ = await mint_key(store, tenant="a")
    store.close()
    config = MCPServerConfig("demo", command=[sys.executable, SERVER])
    async with FakeOpenAIServer() as upstream:
        served = bastion_server(APP, home=home, env={"FAKE_UPSTREAM": upstream.base_url})
        async with (
            MCPToolset([config], lock=tmp_path / "mcp.lock", trust_on_first_use=True) as ts,
            openai.AsyncOpenAI(base_url=f"{served.url}/openai/v1", api_key=key, max_retries=0, timeout=20) as client,
        ):
            tools: Any = [
                {"type": "function", "function": {"name": t.name, "parameters": t.parameters}} for t in ts.tools
            ]
            upstream.reply(ToolCall("demo__add", {"a": 40, "b": 2}, id="call_1"), "it is 42")
            messages: list[Any] = [{"role": "user", "content": "40 + 2?"}]
            first = await client.chat.completions.create(model="fake", messages=messages, tools=tools)
            (call,) = first.choices[0].message.tool_calls or []
            assert call.type == "function" and call.function.name == "demo.add"
            by_name = {t.name: t for t in ts.tools}
            output = await by_name[call.function.name].invoke(json.loads(call.function.arguments))
            messages += [
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(output)},
            ]
            final = await client.chat.completions.create(model="fake", messages=messages, tools=tools)
            assert final.choices[0].message.content == "it is 42"
        first_sent, second_sent = (r.body for r in upstream.requests)
        for sent in (first_sent, second_sent):
            assert {t["function"]["name"] for t in sent["tools"]} == {"demo__add", "demo__echo", "demo__probe"}
        assert second_sent["messages"][1]["tool_calls"][0]["function"]["name"] == "demo__add"
        assert second_sent["messages"][2]["content"] == '{"result": 42}'
    await aclose_http_sessions()
