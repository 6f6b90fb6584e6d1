"""The proxy end to end over real HTTP on both sides: openai client -> proxy (uvicorn) ->
OpenAI wire format -> FakeOpenAIServer."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from bastion.gateway._http import aclose_http_sessions
from bastion.gateway.proxy import InMemoryKeyStore, create_proxy_app, mint_key
from bastion.testing import FakeOpenAIServer, Fault
from bastion.types import ToolCall


def _load_sibling(name: str) -> Any:
    # --import-mode=importlib: test modules are not importable by name, so load the helpers by path.
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_proxy_tests_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_helpers = _load_sibling("test_proxy")
serve = _helpers.serve
ModelsGateway = _helpers.ModelsGateway


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv
    await aclose_http_sessions()


@pytest.fixture
async def client(upstream: FakeOpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    app = create_proxy_app(ModelsGateway({"fake": upstream.model()}), keys=keys)
    async with serve(app) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=10) as c:
            yield c


async def test_chat_through_real_upstream(upstream: FakeOpenAIServer, client: openai.AsyncOpenAI) -> None:
    upstream.reply("from the fake upstream")
    completion = await client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hello"}], max_tokens=20
    )
    assert completion.choices[0].message.content == "from the fake upstream"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    sent = upstream.requests[-1].body
    assert sent["messages"][-1]["content"] == "hello"


async def test_streamed_tool_call_through_real_upstream(upstream: FakeOpenAIServer, client: openai.AsyncOpenAI) -> None:
    upstream.reply(ToolCall("search", {"q": "bastion"}, id="call_x"))
    tools: Any = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    stream = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "find it"}],
        tools=tools,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert fragments[0].function is not None and fragments[0].function.name == "search"
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert json.loads(arguments) == {"q": "bastion"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_503_becomes_clean_502(
    upstream: FakeOpenAIServer, client: openai.AsyncOpenAI, stream: bool
) -> None:
    upstream.always(Fault.error(503))
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}], stream=stream)
    assert info.value.status_code == 502
    body: Any = info.value.body
    assert body["code"] == "bad_gateway" and "503" in body["message"]
    upstream.always(None)
    upstream.reply("recovered")
    ok = await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    assert ok.choices[0].message.content == "recovered"


async def test_upstream_rate_limit_passes_retry_after(upstream: FakeOpenAIServer, client: openai.AsyncOpenAI) -> None:
    upstream.always(Fault.rate_limit(7))
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "7"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(url: str, proc: Any) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(300):  # bounded: ~30 s at most
            assert proc.returncode is None, "the proxy process exited early"
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


async def test_cli_mint_and_serve(upstream: FakeOpenAIServer, tmp_path: Path) -> None:
    import os

    env = {
        **os.environ,
        "BASTION_HOME": str(tmp_path),
        "BASTION_TIERS": json.dumps({"cheap": f"openai-compat:{upstream.base_url}#fake-model"}),
    }
    cli = [sys.executable, "-m", "bastion.gateway.proxy"]
    mint = await asyncio.create_subprocess_exec(
        *cli,
        "mint",
        "--tenant",
        "acme",
        "--model",
        "cheap",
        "--max-tokens",
        "10000",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(mint.communicate(), timeout=30)
    assert mint.returncode == 0, err
    key = out.decode().strip()
    assert key.startswith("bst-") and b"cannot be shown again" in err
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_ready(f"http://127.0.0.1:{port}/v1/models", proc)
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=10
        ) as c:
            assert [m.id for m in (await c.models.list()).data] == ["cheap"]
            upstream.reply("served by the CLI")
            done = await c.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}])
            assert done.choices[0].message.content == "served by the CLI"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
    assert (tmp_path / "proxy-budgets.db").exists()  # the key's spend was recorded durably
