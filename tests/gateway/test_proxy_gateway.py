"""The proxy in front of the real `Gateway` (tiers, budgets, pricing, retries) with
FakeOpenAIServer upstream: openai client -> proxy -> Gateway -> OpenAI wire format -> fake."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from bastion.gateway import Budget, BudgetLimits, Gateway, RetryPolicy
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway.proxy import InMemoryKeyStore, create_proxy_app, key_scope, mint_key
from bastion.testing import FakeOpenAIServer, Fault


def _load_sibling(name: str) -> Any:
    # --import-mode=importlib: test modules are not importable by name, so load the helpers by path.
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_proxy_tests_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


serve = _load_sibling("test_proxy").serve
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv
    await aclose_http_sessions()


def make_gateway(upstream: FakeOpenAIServer, **kwargs: Any) -> Gateway:
    return Gateway(
        models={"fake": upstream.model()},
        tiers={"cheap": "fake"},
        pricing={"openai-compat:*": {"input": 1.0, "output": 2.0}},
        retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0),
        cache=False,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def proxy_for(gateway: Gateway, keys: InMemoryKeyStore) -> AsyncIterator[str]:
    async with gateway, serve(create_proxy_app(gateway, keys=keys)) as url:
        yield url


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=10)


async def test_tier_routing_models_list_and_cost_headers(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    async with proxy_for(make_gateway(upstream), keys) as url, client(url, key) as c:
        listed = await c.models.list()
        assert {m.id for m in listed.data} >= {"cheap", "fake"}
        raw = await c.chat.completions.with_raw_response.create(model="cheap", messages=USER)  # type: ignore[arg-type]
        completion = raw.parse()
        assert completion.model == "cheap"
        assert completion.choices[0].message.content == "hello there"  # the fake echoes
        assert completion.usage is not None
        expected = (completion.usage.prompt_tokens * 1.0 + completion.usage.completion_tokens * 2.0) / 1e6
        assert float(raw.headers["x-bastion-cost-usd"]) == pytest.approx(expected)
        # The upstream's internal URL never reaches the client.
        assert raw.headers["x-bastion-model"] == "openai-compat:fake-model"
        assert "127.0.0.1" not in raw.text


async def test_streaming_through_the_gateway(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    async with proxy_for(make_gateway(upstream), keys) as url, client(url, key) as c:
        stream = await c.chat.completions.create(
            model="cheap",
            messages=USER,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_exhausted_tenant_budget_is_429_for_that_tenant_only(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    acme, _ = await mint_key(keys, tenant="acme")
    globex, _ = await mint_key(keys, tenant="globex")
    budgets = Budget(overrides={"tenant:globex": BudgetLimits(usd=0.0)})
    async with proxy_for(make_gateway(upstream, budgets=budgets), keys) as url:
        async with client(url, globex) as c:
            with pytest.raises(openai.RateLimitError) as info:
                await c.chat.completions.create(model="cheap", messages=USER)  # type: ignore[arg-type]
            assert info.value.code == "budget_exceeded"
            assert "tenant:globex" in info.value.message
            with pytest.raises(openai.RateLimitError):
                stream = await c.chat.completions.create(model="cheap", messages=USER, stream=True)  # type: ignore[arg-type]
                async for _ in stream:
                    pass
        async with client(url, acme) as c:
            ok = await c.chat.completions.create(model="cheap", messages=USER)  # type: ignore[arg-type]
            assert ok.choices[0].message.content == "hello there"
    assert upstream.count == 1  # globex never reached the upstream


async def test_key_token_limit_is_enforced_by_the_gateway_budget(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    limited, record = await mint_key(keys, tenant="acme", max_tokens=60)
    other, _ = await mint_key(keys, tenant="acme")
    gateway = make_gateway(upstream)
    async with proxy_for(gateway, keys) as url:
        async with client(url, limited) as c:
            refused: openai.RateLimitError | None = None
            for _ in range(30):
                try:
                    await c.chat.completions.create(model="cheap", messages=USER, max_tokens=20)  # type: ignore[arg-type]
                except openai.RateLimitError as e:
                    refused = e
                    break
            assert refused is not None and refused.code == "budget_exceeded"
        assert gateway.budgets is not None
        spent = await gateway.budgets.spent(key_scope(record))
        assert 0 < spent.tokens <= 60
        async with client(url, other) as c:  # same tenant, its own key: unaffected
            ok = await c.chat.completions.create(model="cheap", messages=USER, max_tokens=20)  # type: ignore[arg-type]
            assert ok.choices[0].message.content


async def test_upstream_failure_after_retries_is_502(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    upstream.always(Fault.error(503))
    async with proxy_for(make_gateway(upstream), keys) as url, client(url, key) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="cheap", messages=USER)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert upstream.count == 2  # the gateway retried once, then the proxy answered cleanly
