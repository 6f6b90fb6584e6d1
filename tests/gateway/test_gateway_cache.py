"""Caches: the exact cache on a real SQLite file (hit/miss, what is cacheable, tenant isolation,
TTL, saved cost, budgets untouched by hits) and the opt-in semantic cache (threshold, tenant
scope, opt-in only) with a deterministic hashing embedder."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import sqlite3
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.gateway import (
    Budget,
    BudgetLimits,
    Gateway,
    MemoryCacheStore,
    ResponseCache,
    SemanticCache,
    SQLiteCacheStore,
)
from bastion.testing import FunctionModel
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, RunContext, ToolSpec, Usage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class HashingEmbedder:
    """Bag of words hashed into 256 buckets: paraphrases sharing words are close, others far."""

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        out: list[list[float]] = []
        for text in texts:
            v = [0.0] * 256
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                v[int(hashlib.md5(word.encode()).hexdigest(), 16) % 256] += 1.0
            out.append(v)
        return out


def counting_model(name: str = "acme:m") -> FunctionModel:
    def answer(r: ModelRequest) -> ModelResponse:
        n = len(model.requests)
        return ModelResponse(Message.assistant(f"answer {n}"), usage=Usage(1000, 1000, requests=1))

    model = FunctionModel(answer, name=name)
    return model


PRICES = {"acme:*": {"input": 1.0, "output": 1.0}}  # $0.002 per call


def req(text: str = "hello", temperature: float | None = 0, tenant: str = "t1", **kw: object) -> ModelRequest:
    return ModelRequest(
        [Message.system("be brief"), Message.user(text)],
        settings=ModelSettings(temperature=temperature),
        context=RunContext(tenant=tenant),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def sqlite_cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(path=tmp_path / "cache.db", clock=Clock())


async def test_exact_hit_and_miss_on_sqlite(sqlite_cache: ResponseCache, tmp_path: Path) -> None:
    model = counting_model()
    gw = Gateway(models=[model], cache=sqlite_cache, pricing=PRICES)
    first = await gw.request(req(), "acme:m")
    second = await gw.request(req(), "acme:m")  # new Message ids, same content: a hit
    assert first.cached is False and first.cost_usd == pytest.approx(0.002)
    assert second.cached is True and second.cost_usd == 0.0 and second.text == first.text
    assert second.usage == first.usage and second.model == "acme:m"
    assert len(model.requests) == 1
    assert gw.stats.cache_hits == 1 and gw.stats.saved_usd == pytest.approx(0.002)
    third = await gw.request(req("something else"), "acme:m")
    assert third.cached is False and len(model.requests) == 2
    await gw.aclose()
    with sqlite3.connect(tmp_path / "cache.db") as db:  # really on disk
        assert db.execute("SELECT COUNT(*) FROM response_cache").fetchone()[0] == 2
    db.close()


async def test_survives_a_new_gateway_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    gw1 = Gateway(models=[counting_model()], cache=ResponseCache(path=path))
    await gw1.request(req(), "acme:m")
    await gw1.aclose()
    model = counting_model()
    gw2 = Gateway(models=[model], cache=ResponseCache(path=path))
    assert (await gw2.request(req(), "acme:m")).cached is True and model.requests == []
    await gw2.aclose()


async def test_what_is_cacheable(sqlite_cache: ResponseCache) -> None:
    model = counting_model()
    gw = Gateway(models=[model], cache=sqlite_cache)
    for _ in range(2):
        await gw.request(req(temperature=None), "acme:m")  # unset temperature: sampled, not cached
        await gw.request(req(temperature=0.7), "acme:m")
    assert len(model.requests) == 4
    await gw.request(req(temperature=0.7, cacheable=True), "acme:m")  # explicit opt-in
    assert (await gw.request(req(temperature=0.7, cacheable=True), "acme:m")).cached
    # streams are never served from the cache
    events = [e async for e in gw.stream(req(), "acme:m")]
    assert events[-1].kind == "done" and len(model.requests) == 6
    await gw.aclose()


async def test_key_covers_settings_tools_and_target(sqlite_cache: ResponseCache) -> None:
    a, b = counting_model("acme:a"), counting_model("acme:b")
    gw = Gateway(models=[a, b], cache=sqlite_cache)
    await gw.request(req(), "acme:a")
    await gw.request(req(), "acme:b")  # another model: a miss
    tool = ToolSpec("lookup", "find things", {"type": "object", "properties": {}})
    await gw.request(req(tools=[tool]), "acme:a")
    r = req()
    r.settings.max_tokens = 5
    await gw.request(r, "acme:a")
    assert len(a.requests) == 3 and len(b.requests) == 1
    r2 = req()
    r2.settings.timeout = 30  # the timeout does not change the answer: still a hit
    assert (await gw.request(r2, "acme:a")).cached
    await gw.aclose()


async def test_tenants_are_isolated(sqlite_cache: ResponseCache) -> None:
    model = counting_model()
    gw = Gateway(models=[model], cache=sqlite_cache)
    await gw.request(req(tenant="acme"), "acme:m")
    other = await gw.request(req(tenant="globex"), "acme:m")
    assert other.cached is False and len(model.requests) == 2
    assert (await gw.request(req(tenant="acme"), "acme:m")).cached
    await gw.aclose()


async def test_ttl_expiry(tmp_path: Path) -> None:
    clock = Clock()
    cache = ResponseCache(SQLiteCacheStore(tmp_path / "c.db"), ttl=60, clock=clock)
    model = counting_model()
    gw = Gateway(models=[model], cache=cache)
    await gw.request(req(), "acme:m")
    clock.now += 59
    assert (await gw.request(req(), "acme:m")).cached
    clock.now += 2
    assert (await gw.request(req(), "acme:m")).cached is False
    assert len(model.requests) == 2
    await gw.aclose()


async def test_cache_hits_do_not_touch_budgets() -> None:
    budget = Budget(tenant=BudgetLimits(tokens=2500))
    model = counting_model()
    gw = Gateway(models=[model], cache=ResponseCache.in_memory(), budgets=budget)
    for _ in range(5):
        await gw.request(req(), "acme:m")
    assert (await budget.spent("tenant:t1")).tokens == 2000 and len(model.requests) == 1


async def test_in_memory_store_evicts_oldest() -> None:
    cache = ResponseCache.in_memory(max_entries=2)
    model = counting_model()
    gw = Gateway(models=[model], cache=cache)
    for text in ("a", "b", "c", "a"):
        await gw.request(req(text), "acme:m")
    assert len(model.requests) == 4  # "a" was evicted by "c"


async def test_default_cache_skips_test_doubles_and_can_be_turned_off() -> None:
    model = FunctionModel(lambda r: "fresh", name="test:double")
    gw = Gateway(models=[model])  # default cache: never caches test:* doubles
    await gw.request(req(), "test:double")
    await gw.request(req(), "test:double")
    assert len(model.requests) == 2
    gw_off = Gateway(models=[counting_model()], cache=False)
    await gw_off.request(req(), "acme:m")
    assert (await gw_off.request(req(), "acme:m")).cached is False


# --- semantic cache ----------------------------------------------------------------------------


def semantic_gateway(threshold: float = 0.8) -> tuple[Gateway, FunctionModel, HashingEmbedder]:
    emb = HashingEmbedder()
    model = counting_model()
    gw = Gateway(models=[model], cache=False, semantic_cache=SemanticCache(emb, threshold=threshold))
    return gw, model, emb


async def test_semantic_hit_for_a_paraphrase_above_threshold() -> None:
    gw, model, _ = semantic_gateway(threshold=0.8)
    q1 = "what is your refund policy for damaged items"
    q2 = "what is your refund policy for damaged items please"
    first = await gw.request(req(q1, temperature=0.7, cacheable=True), "acme:m")
    second = await gw.request(req(q2, temperature=0.7, cacheable=True), "acme:m")
    assert second.cached and second.text == first.text and len(model.requests) == 1
    assert gw.stats.semantic_hits == 1
    far = await gw.request(req("tell me a joke about cats", temperature=0.7, cacheable=True), "acme:m")
    assert far.cached is False and len(model.requests) == 2


async def test_semantic_threshold_is_respected() -> None:
    q1 = "what is your refund policy for damaged items"
    q2 = "what is your refund policy for damaged items please"
    [va, vb] = await HashingEmbedder().embed([q1, q2])
    sim = sum(x * y for x, y in zip(va, vb, strict=True)) / math.sqrt(sum(x * x for x in va) * sum(y * y for y in vb))
    assert 0.8 < sim < 0.99  # a hit at 0.8, a miss at 0.99
    strict_gw, model, _ = semantic_gateway(threshold=0.99)
    await strict_gw.request(req(q1, cacheable=True, temperature=0.7), "acme:m")
    assert (await strict_gw.request(req(q2, cacheable=True, temperature=0.7), "acme:m")).cached is False
    assert len(model.requests) == 2


async def test_semantic_cache_is_opt_in_and_tenant_scoped() -> None:
    gw, model, emb = semantic_gateway()
    q = "what is your refund policy"
    await gw.request(req(q, temperature=0.7), "acme:m")
    await gw.request(req(q, temperature=0.7), "acme:m")
    assert len(model.requests) == 2 and emb.calls == 0  # not cacheable: never embedded
    await gw.request(req(q, temperature=0.7, cacheable=True, tenant="acme"), "acme:m")
    other = await gw.request(req(q, temperature=0.7, cacheable=True, tenant="globex"), "acme:m")
    assert other.cached is False and len(model.requests) == 4
    assert (await gw.request(req(q, temperature=0.7, cacheable=True, tenant="acme"), "acme:m")).cached


async def test_semantic_scope_includes_the_conversation_so_far() -> None:
    gw, model, _ = semantic_gateway()
    q = "what is your refund policy"
    r1 = ModelRequest([Message.system("you sell shoes"), Message.user(q)], cacheable=True)
    r2 = ModelRequest([Message.system("you sell cars"), Message.user(q)], cacheable=True)
    await gw.request(r1, "acme:m")
    assert (await gw.request(r2, "acme:m")).cached is False and len(model.requests) == 2


def test_semantic_threshold_validation() -> None:
    with pytest.raises(UserError, match="threshold"):
        SemanticCache(HashingEmbedder(), threshold=0)


async def test_a_broken_cache_never_fails_the_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class FailingEmbedder:
        async def embed(self, texts: list[str]) -> list[list[float]]:
            raise ConnectionError("embedding service down")

    cache = ResponseCache(path=tmp_path / "c.db")
    model = counting_model()
    gw = Gateway(models=[model], cache=cache, semantic_cache=SemanticCache(FailingEmbedder()))
    cache.close()  # every SQLite call now fails
    resp = await gw.request(req(cacheable=True), "acme:m")
    assert resp.text == "answer 1" and not resp.cached
    messages = [r.getMessage() for r in caplog.records]
    assert any("response cache lookup failed" in m for m in messages)
    assert any("semantic cache lookup failed" in m for m in messages)
    assert any("could not store the response" in m for m in messages)


@pytest.mark.parametrize("numpy_available", [True, False])
async def test_semantic_ttl_and_both_search_paths(numpy_available: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    if not numpy_available:
        monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy -> ImportError
    clock = Clock()
    model = counting_model()
    gw = Gateway(
        models=[model], cache=False, semantic_cache=SemanticCache(HashingEmbedder(), threshold=0.8, ttl=60, clock=clock)
    )
    q = "what is your refund policy for damaged items"
    await gw.request(req(q, temperature=0.7, cacheable=True), "acme:m")
    clock.now += 30
    await gw.request(req("something unrelated entirely", temperature=0.7, cacheable=True), "acme:m")
    hit = await gw.request(req(q + " please", temperature=0.7, cacheable=True), "acme:m")
    assert hit.cached and hit.text == "answer 1"
    clock.now += 31  # the first entry expired, the unrelated one is still live
    miss = await gw.request(req(q + " please", temperature=0.7, cacheable=True), "acme:m")
    assert miss.cached is False and len(model.requests) == 3


async def test_semantic_embedder_dimension_change_is_a_clear_error() -> None:
    class Shifty:
        def __init__(self) -> None:
            self.dim = 3

        async def embed(self, texts: list[str]) -> list[list[float]]:
            self.dim += 1
            return [[1.0] * self.dim for _ in texts]

    cache = SemanticCache(Shifty())
    r = req("q", cacheable=True)
    probe = await cache.lookup(r, "acme:m")
    assert not isinstance(probe, tuple)
    await cache.put(probe, ModelResponse(Message.assistant("a")))
    with pytest.raises(UserError, match="different sizes"):
        await cache.lookup(r, "acme:m")


async def test_default_exact_cache_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15.7: a temperature-0 call through a default Gateway used to create
    `.bastion/cache.db` in the working directory. The default cache is in memory now."""
    from bastion.config import get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_HOME", raising=False)
    monkeypatch.setenv("BASTION_CACHE_ENABLED", "true")  # the test suite turns it off by default
    get_settings.cache_clear()
    try:
        model = counting_model()
        gw = Gateway(models=[model])  # the default cache
        await gw.request(req(temperature=0), "acme:m")
        assert (await gw.request(req(temperature=0), "acme:m")).cached and len(model.requests) == 1
        await gw.aclose()
        assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []  # no .bastion/, no cache.db
    finally:
        get_settings.cache_clear()


async def test_a_path_puts_the_exact_cache_in_a_file(tmp_path: Path) -> None:
    assert isinstance(ResponseCache().store, MemoryCacheStore)
    cache = ResponseCache(path=tmp_path / "cache.db")
    assert isinstance(cache.store, SQLiteCacheStore) and (tmp_path / "cache.db").exists()
    cache.close()
