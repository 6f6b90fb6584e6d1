"""The fake model server itself: other clients, embeddings, scripting, recording, process mode."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from bastion.errors import ModelHTTPError, ProviderUnavailableError
from bastion.gateway._http import aclose_http_sessions
from bastion.testing import FakeOpenAIServer, Fault
from bastion.testing._fake_server import fake_embedding
from bastion.types import Message, ModelRequest, ToolCall


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server
        await aclose_http_sessions()


async def test_base_url_and_official_openai_client(srv: FakeOpenAIServer) -> None:
    assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/v1")
    srv.reply("scripted", ToolCall("lookup", {"q": "x"}, id="call_7"))
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as client:
        first = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert first.choices[0].message.content == "scripted"
        assert first.usage is not None and first.usage.prompt_tokens > 0
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
        )
        args = ""
        async for chunk in stream:
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or ():
                    args += tc.function.arguments or "" if tc.function else ""
        assert args == '{"q": "x"}'
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake-model", "fake-embedding"]
        emb = await client.embeddings.create(model="e", input=["a", "b"], dimensions=8)
        assert [len(d.embedding) for d in emb.data] == [8, 8]
        assert emb.data[0].embedding == fake_embedding("a", 8)
    assert srv.counts["chat"] == 2 and srv.counts["embeddings"] == 1 and srv.counts["models"] == 1


def test_fake_embeddings_are_deterministic_unit_vectors() -> None:
    a, b = fake_embedding("hello", 32), fake_embedding("world", 32)
    assert a == fake_embedding("hello", 32) and a != b
    assert math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-9)


async def test_fault_in_script_order(srv: FakeOpenAIServer) -> None:
    srv.reply("one", Fault.error(502), "two")
    model = srv.model()
    request = ModelRequest([Message.user("x")])
    assert (await model.request(request)).text == "one"
    with pytest.raises(ProviderUnavailableError):
        await model.request(request)
    assert (await model.request(request)).text == "two"
    assert (await model.request(request)).text == "x"  # script exhausted: back to echo
    assert srv.pending_replies == 0


async def test_standing_fault_and_reset(srv: FakeOpenAIServer) -> None:
    srv.always(Fault.error(503))
    model = srv.model()
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            await model.request(ModelRequest([Message.user("x")]))
    srv.reset()
    assert srv.count == 0 and srv.requests == []
    assert (await model.request(ModelRequest([Message.user("x")]))).text == "x"


async def test_hang_is_bounded_without_client_timeout(srv: FakeOpenAIServer) -> None:
    srv.fail(Fault.hang(bound=0.1))
    with pytest.raises(ProviderUnavailableError, match="HTTP 504"):
        await srv.model().request(ModelRequest([Message.user("x")]))


async def test_bad_bodies_get_clear_400s(srv: FakeOpenAIServer) -> None:
    async with aiohttp.ClientSession() as session:
        for path, needed in [
            ("/chat/completions", "'messages'"),
            ("/messages", "'max_tokens'"),
            ("/embeddings", "'input'"),
        ]:
            async with session.post(srv.base_url + path, data=b"{not json") as resp:
                assert resp.status == 400
                assert needed in (await resp.json())["error"]["message"]
        async with session.post(srv.gemini_base_url + "/models/g:explode", json={"contents": []}) as resp:
            assert resp.status == 404
        async with session.post(
            srv.base_url + "/chat/completions", json={"messages": []}, headers={"X-Fake-Fault": "bogus"}
        ) as resp:
            assert resp.status == 400
            assert "unknown fault spec 'bogus'" in (await resp.json())["error"]["message"]
    # the bad requests did not consume scripted replies
    srv.reply("kept")
    assert (await srv.model().request(ModelRequest([Message.user("x")]))).text == "kept"


async def test_bad_request_surfaces_as_model_http_error(srv: FakeOpenAIServer) -> None:
    srv.fail(Fault.error(404, '{"error": {"message": "model not found"}}'))
    with pytest.raises(ModelHTTPError, match="model not found") as info:
        await srv.model().request(ModelRequest([Message.user("x")]))
    assert info.value.status == 404


async def test_recording_can_be_disabled() -> None:
    async with FakeOpenAIServer(record=False) as srv:
        try:
            await srv.model().request(ModelRequest([Message.user("x")]))
            assert srv.requests == [] and srv.count == 1
        finally:
            await aclose_http_sessions()


async def test_runs_as_a_separate_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bastion.testing._fake_server",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        async with aiohttp.ClientSession() as session:
            payload = {"model": "m", "messages": [{"role": "user", "content": "from afar"}]}
            async with session.post(url + "/chat/completions", json=payload) as resp:
                body = await resp.json()
        assert body["choices"][0]["message"]["content"] == "from afar"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0
