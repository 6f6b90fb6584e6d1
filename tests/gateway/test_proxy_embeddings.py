"""The Embeddings API on the proxy (`/v1/embeddings`), driven by the official `openai` client:
through the gateway's route to an OpenAI-compatible upstream (FakeOpenAIServer) and through an
in-process embedder, with usage, cost and budgets charged like chat calls."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import math
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from bastion.gateway import Budget, BudgetLimits, Gateway, RetryPolicy
from bastion.gateway._http import aclose_http_sessions
from bastion.gateway.proxy import InMemoryKeyStore, create_proxy_app, key_scope, mint_key
from bastion.memory import HashingEmbedder
from bastion.testing import FakeOpenAIServer, Fault, FunctionModel
from bastion.testing._fake_server import fake_embedding


def _load_sibling(name: str) -> Any:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_proxy_tests_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


serve = _load_sibling("test_proxy").serve
PRICE = 0.5  # USD per million input tokens


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv
    await aclose_http_sessions()


def make_gateway(upstream: FakeOpenAIServer, **kwargs: Any) -> Gateway:
    return Gateway(
        models={
            "fake": upstream.model("fake-embed"),
            "chat-only": FunctionModel(lambda request: "hi", name="chat-only"),
        },
        tiers={"text-embedding-3-small": "fake"},
        pricing={"openai-compat:*": {"input": PRICE, "output": 0.0}},
        retry=RetryPolicy(max_attempts=1),
        cache=False,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def proxy(gateway: Any, keys: InMemoryKeyStore, **kwargs: Any) -> AsyncIterator[str]:
    async with serve(create_proxy_app(gateway, keys=keys, **kwargs)) as url:
        yield url


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=10)


async def test_embeddings_through_the_gateway_route_with_usage_and_cost(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    async with make_gateway(upstream) as gateway, proxy(gateway, keys) as url, client(url, key) as c:
        # The client asks for base64 by default and decodes it: this checks the packing too.
        raw = await c.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["the cat sat", "on the mat"]
        )
        single = await c.embeddings.create(model="text-embedding-3-small", input="one text", encoding_format="float")
    result = raw.parse()
    assert result.model == "text-embedding-3-small"
    assert [d.index for d in result.data] == [0, 1]
    for d, text in zip(result.data, ["the cat sat", "on the mat"], strict=True):
        assert d.embedding == pytest.approx(fake_embedding(text, 16), abs=1e-6)
    assert len(single.data) == 1 and single.data[0].embedding == pytest.approx(fake_embedding("one text", 16))
    tokens = result.usage.prompt_tokens
    assert tokens > 0 and result.usage.total_tokens == tokens
    assert float(raw.headers["x-bastion-cost-usd"]) == pytest.approx(tokens * PRICE / 1e6)
    sent = [r.body for r in upstream.requests if r.path == "/v1/embeddings"]
    assert sent[0] == {"model": "fake-embed", "input": ["the cat sat", "on the mat"], "encoding_format": "float"}


async def test_float_and_base64_encodings_and_dimensions_on_the_wire(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    async with make_gateway(upstream) as gateway, proxy(gateway, keys) as url, aiohttp.ClientSession() as http:
        headers = {"authorization": f"Bearer {key}"}
        body = {"model": "text-embedding-3-small", "input": "abc", "dimensions": 8, "encoding_format": "base64"}
        async with http.post(f"{url}/embeddings", json=body, headers=headers) as r:
            packed = (await r.json())["data"][0]["embedding"]
        async with http.post(f"{url}/embeddings", json={**body, "encoding_format": "float"}, headers=headers) as r:
            floats = (await r.json())["data"][0]["embedding"]
    assert isinstance(packed, str) and isinstance(floats, list)
    assert list(struct.unpack("<8f", base64.b64decode(packed))) == pytest.approx(floats, abs=1e-6)
    assert floats == pytest.approx(fake_embedding("abc", 8), abs=1e-6)
    assert upstream.requests[-1].body["dimensions"] == 8


async def test_in_process_embedder_and_its_dimension_check() -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    embedder = HashingEmbedder(dim=32)
    gateway = Gateway(models={}, pricing={"hashing-32": {"input": 1.0, "output": 0.0}}, cache=False)
    async with proxy(gateway, keys, embedders={"local-embed": embedder}) as url, client(url, key) as c:
        raw = await c.embeddings.with_raw_response.create(model="local-embed", input=["alpha beta"])
        with pytest.raises(openai.BadRequestError) as info:
            await c.embeddings.create(model="local-embed", input="x", dimensions=8)
    result = raw.parse()
    (vector,) = [d.embedding for d in result.data]
    assert vector == pytest.approx(embedder.embed_one("alpha beta"), abs=1e-6)
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
    assert result.usage.prompt_tokens == len(b"alpha beta") // 4
    assert float(raw.headers["x-bastion-cost-usd"]) == pytest.approx(result.usage.prompt_tokens / 1e6)
    assert "32-dimensional" in info.value.message


async def test_embeddings_are_charged_to_the_key_budget(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    limited, record = await mint_key(keys, tenant="acme", max_tokens=40)
    gateway = make_gateway(upstream)
    async with gateway, proxy(gateway, keys) as url, client(url, limited) as c:
        refused: openai.RateLimitError | None = None
        charged = 0
        for _ in range(20):
            try:
                done = await c.embeddings.create(model="text-embedding-3-small", input="x" * 40)
                charged += done.usage.prompt_tokens
            except openai.RateLimitError as e:
                refused = e
                break
        assert refused is not None and refused.code == "budget_exceeded"
        assert gateway.budgets is not None
        spent = await gateway.budgets.spent(key_scope(record))
    assert spent.tokens == charged and 0 < charged <= 40


async def test_usd_budget_refuses_unpriced_and_exhausted_embeddings(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="globex")
    budgets = Budget(overrides={"tenant:globex": BudgetLimits(usd=0.0)})
    async with make_gateway(upstream, budgets=budgets) as gateway, proxy(gateway, keys) as url, client(url, key) as c:
        with pytest.raises(openai.RateLimitError) as info:
            await c.embeddings.create(model="text-embedding-3-small", input="hello")
        assert info.value.code == "budget_exceeded"
    unpriced = Gateway(
        models={"fake": upstream.model()},
        budgets=Budget(overrides={"tenant:globex": BudgetLimits(usd=1.0)}),
        cache=False,
    )
    async with unpriced, proxy(unpriced, keys) as url, client(url, key) as c:
        with pytest.raises(openai.BadRequestError) as bad:
            await c.embeddings.create(model="fake", input="hello")
        assert "no known price" in bad.value.message
    assert not [r for r in upstream.requests if r.path == "/v1/embeddings"]


async def test_caller_mistakes_and_upstream_failures_are_openai_style(upstream: FakeOpenAIServer) -> None:
    keys = InMemoryKeyStore()
    key, _ = await mint_key(keys, tenant="acme")
    narrow, _ = await mint_key(keys, tenant="acme", models=["other"])
    async with make_gateway(upstream) as gateway, proxy(gateway, keys) as url:
        async with client(url, key) as c:
            with pytest.raises(openai.BadRequestError) as info:
                await c.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]])
            assert "token-array" in info.value.message
            with pytest.raises(openai.BadRequestError) as info:
                await c.embeddings.create(model="text-embedding-3-small", input=["ok", ""])
            assert (info.value.body or {}).get("param") == "input[1]"  # type: ignore[union-attr]
            with pytest.raises(openai.NotFoundError) as nf:
                await c.embeddings.create(model="no-such-model", input="x")
            assert nf.value.code == "model_not_found"
            with pytest.raises(openai.NotFoundError) as nf:
                await c.embeddings.create(model="chat-only", input="x")
            assert "no embeddings endpoint" in nf.value.message
            upstream.always(Fault.error(503))
            with pytest.raises(openai.APIStatusError) as failed:
                await c.embeddings.create(model="text-embedding-3-small", input="x")
            assert failed.value.status_code == 502
        async with client(url, narrow) as c:
            with pytest.raises(openai.PermissionDeniedError):
                await c.embeddings.create(model="text-embedding-3-small", input="x")
