"""The gateway over real HTTP against `FakeOpenAIServer` on 127.0.0.1: Retry-After on a 429,
503 -> fallback to another server, a hung upstream cut by the attempt timeout, streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bastion.errors import ProviderUnavailableError
from bastion.gateway import Gateway, RetryPolicy
from bastion.gateway._http import aclose_http_sessions
from bastion.testing import FakeOpenAIServer, Fault
from bastion.types import Message, ModelRequest, ModelSettings, ResponseDone, TextDelta


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    async with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        yield a, b
        await aclose_http_sessions()


def name(srv: FakeOpenAIServer) -> str:
    return f"openai-compat:{srv.base_url}#fake-model"


def req(text: str = "ping", **settings: object) -> ModelRequest:
    return ModelRequest([Message.user(text)], settings=ModelSettings(**settings))  # type: ignore[arg-type]


async def test_429_with_retry_after_then_success(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    srv, _ = servers
    srv.fail(Fault.rate_limit(retry_after=1.5))
    srv.reply("hello after waiting")
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    gw = Gateway(cache=False, sleep=sleep, retry=RetryPolicy(max_attempts=3), pricing={"openai-compat:*": 0})
    resp = await asyncio.wait_for(gw.request(req(), name(srv)), 10)
    assert resp.text == "hello after waiting" and resp.cost_usd == 0.0
    assert sleeps == [1.5]  # the server's Retry-After, not the back-off
    assert srv.count == 2
    await gw.aclose()


async def test_503_falls_back_to_the_next_server(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    a, b = servers
    a.always(Fault.error(503))
    b.reply("from b")
    gw = Gateway(cache=False, tiers={"strong": [name(a), name(b)]}, retry=RetryPolicy(max_attempts=2, base_delay=0))
    resp = await asyncio.wait_for(gw.request(req(), "strong"), 10)
    assert resp.text == "from b" and resp.model == name(b)
    assert a.count == 2 and b.count == 1  # a retried once, then the chain moved on
    await gw.aclose()


async def test_load_balanced_deployments_over_http(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    a, b = servers
    gw = Gateway(cache=False, deployments={"fake": [name(a), name(b)]})
    for i in range(4):
        assert (await asyncio.wait_for(gw.request(req(f"q{i}"), "fake"), 10)).text == f"q{i}"  # echo
    assert a.count == 2 and b.count == 2
    await gw.aclose()


async def test_hung_upstream_is_cut_by_the_attempt_timeout(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    srv, _ = servers
    srv.fail(Fault.hang(bound=20))
    gw = Gateway(cache=False, retry=RetryPolicy(max_attempts=2, base_delay=0, attempt_timeout=0.3))
    resp = await asyncio.wait_for(gw.request(req("still there?"), name(srv)), 10)
    assert resp.text == "still there?" and srv.count == 2
    await gw.aclose()


async def test_stream_retries_before_first_token_over_http(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    srv, _ = servers
    srv.fail(Fault.error(502))
    srv.reply("streamed words arrive")
    gw = Gateway(cache=False, retry=RetryPolicy(max_attempts=2, base_delay=0))
    events = [e async for e in gw.stream(req(), name(srv))]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "streamed words arrive"
    assert isinstance(events[-1], ResponseDone) and events[-1].response.text == text
    await gw.aclose()


async def test_stream_cut_after_first_token_is_not_retried(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    srv, _ = servers
    srv.fail(Fault.disconnect(after_chunks=3))  # role chunk + two words, then the socket drops
    srv.reply("this answer will be cut mid way")
    gw = Gateway(cache=False, retry=RetryPolicy(max_attempts=3, base_delay=0))
    got: list[str] = []
    with pytest.raises(ProviderUnavailableError):
        async for e in gw.stream(req(), name(srv)):
            if isinstance(e, TextDelta):
                got.append(e.text)
    assert got == ["this", " answer"] and srv.count == 1
    await gw.aclose()


async def test_stream_cut_before_first_token_is_retried(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    srv, _ = servers
    srv.fail(Fault.disconnect(after_chunks=1))  # only the role chunk: no event reached the caller
    srv.reply("lost with the cut", "complete answer")
    gw = Gateway(cache=False, retry=RetryPolicy(max_attempts=2, base_delay=0))
    events = [e async for e in gw.stream(req(), name(srv))]
    assert isinstance(events[-1], ResponseDone) and events[-1].response.text == "complete answer"
    assert srv.count == 2
    await gw.aclose()
