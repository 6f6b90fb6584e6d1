"""Third-party clients against a real `bastion serve` subprocess's proxy (`/openai/v1`):

- the `openai-agents` SDK with its *default* model (Responses API): a function-tool call and the
  final answer round-trip SDK -> proxy (Responses) -> gateway -> FakeOpenAIServer (Chat
  Completions), plain and streamed;
- the official `openai` client's Responses and Embeddings calls on the same deployment, and
  the OpenAI-style 404 for a path the proxy does not serve.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models import get_default_model
from agents.models.openai_provider import OpenAIProvider

from bastion.gateway._http import aclose_http_sessions
from bastion.gateway.proxy import mint_key, open_key_store
from bastion.testing import FakeOpenAIServer, FakeReply
from bastion.types import ToolCall

APP = f"{Path(__file__).with_name('proxy_sdk_app.py')}:build"
START_TIMEOUT_S = 60.0


@dataclass
class Deployment:
    url: str  # the proxy's base URL, ending in /openai/v1
    key: str
    upstream: FakeOpenAIServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], root: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bastion serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{root}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)  # polling a real process's port, bounded by the deadline
    raise RuntimeError(f"bastion serve did not become healthy in {START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)


@pytest.fixture(autouse=True)
def _no_sdk_tracing() -> Iterator[None]:
    # The SDK would export its traces to the network.
    set_tracing_disabled(True)
    yield


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    home = tmp_path / "home"
    with open_key_store(home) as keys:  # the deployment's key store, as `bastion serve` opens it
        key, _ = await mint_key(keys, tenant="acme")
    port = _free_port()
    async with FakeOpenAIServer() as upstream:
        env = {
            **os.environ,
            "SDK_UPSTREAM": upstream.base_url,
            "SDK_MODEL": get_default_model(),
            "BASTION_CACHE_ENABLED": "false",
        }
        argv = [sys.executable, "-m", "bastion.cli", "--home", str(home), "serve", "--app", APP, "--port", str(port)]
        log = tmp_path / "serve.log"
        proc = _spawn(argv, env, log)
        try:
            root = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(_wait_healthy, proc, root, log)
            yield Deployment(f"{root}/openai/v1", key, upstream)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(20)
    await aclose_http_sessions()


def _client(d: Deployment) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=d.url, api_key=d.key, max_retries=0, timeout=20)


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny, 24C in {city}"


async def test_agents_sdk_default_model_tool_call_round_trip(deployment: Deployment) -> None:
    upstream = deployment.upstream
    upstream.reply(
        FakeReply(tool_calls=[ToolCall("get_weather", {"city": "Paris"}, id="call_p")]),
        "It is sunny in Paris.",
        FakeReply(tool_calls=[ToolCall("get_weather", {"city": "Rome"}, id="call_r")]),
        "Rome is sunny too.",
    )
    agent = Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather])
    assert agent.model is None  # the SDK's default model, over its default API (Responses)
    async with _client(deployment) as client:
        config = RunConfig(model_provider=OpenAIProvider(openai_client=client))
        result = await Runner.run(agent, "Weather in Paris?", run_config=config)
        assert result.final_output == "It is sunny in Paris."
        # The SDK spoke the Responses API: its last response is stored on the proxy for this key.
        assert result.last_response_id is not None
        stored = await client.responses.retrieve(result.last_response_id)
        assert stored.output_text == "It is sunny in Paris."

        streamed = Runner.run_streamed(agent, "And in Rome?", run_config=config)
        kinds = [event.type async for event in streamed.stream_events()]
        assert streamed.final_output == "Rome is sunny too."
        assert "raw_response_event" in kinds

    chats = [r.body for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 4
    first, second = chats[0], chats[1]
    assert first["messages"][0] == {"role": "system", "content": "Answer with the weather tool."}
    assert first["tools"][0]["function"]["name"] == "get_weather"
    # The tool ran in the SDK and its result came back through the proxy as a tool message.
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_p"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_p", "content": "sunny, 24C in Paris"}
    assert chats[3]["messages"][-1]["content"] == "sunny, 24C in Rome"


async def test_official_client_responses_and_embeddings_on_bastion_serve(deployment: Deployment) -> None:
    async with _client(deployment) as client:
        raw = await client.responses.with_raw_response.create(model=get_default_model(), input="hello there")
        response = raw.parse()
        assert response.output_text == "hello there"  # the fake echoes
        assert response.usage is not None and float(raw.headers["x-bastion-cost-usd"]) > 0
        follow = await client.responses.create(
            model=get_default_model(), input="again", previous_response_id=response.id, stream=True
        )
        events = [e async for e in follow]
        assert events[-1].type == "response.completed"
        embedded = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert [len(d.embedding) for d in embedded.data] == [16, 16]
        assert embedded.usage.prompt_tokens > 0
        with pytest.raises(openai.NotFoundError) as info:
            await client.files.list()
        assert info.value.code == "unknown_url" and "/v1/embeddings" in info.value.message
    chats = [r.body for r in deployment.upstream.requests if r.path == "/v1/chat/completions"]
    assert [m["content"] for m in chats[1]["messages"]] == ["hello there", "hello there", "again"]
