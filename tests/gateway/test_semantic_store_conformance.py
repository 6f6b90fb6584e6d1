"""One conformance suite for every `SemanticStore` (in memory and PostgreSQL + pgvector), plus
the semantic cache end to end through a Gateway on each backend: paraphrase hits, tenant
isolation (tenant B's near-identical prompt never reaches tenant A's entry), and on PostgreSQL
two processes' stores sharing entries."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import pytest

from bastion.errors import UserError
from bastion.gateway import Gateway, MemorySemanticStore, PostgresSemanticStore, SemanticCache, SemanticStore
from bastion.testing import FunctionModel, HashingEmbedder
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, RunContext, Usage

MAX = 3  # entries per scope in the fixtures' stores

StoreFactory = Callable[[], SemanticStore]


@pytest.fixture(params=["memory", "postgres"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Makes stores on one backend: in memory the one store of this process; on PostgreSQL a new
    store (as another process would open) on one fresh database each time."""
    made: list[SemanticStore] = []
    url: str | None = request.getfixturevalue("pg_url") if request.param == "postgres" else None

    def factory() -> SemanticStore:
        if url is None:
            if not made:
                made.append(MemorySemanticStore(max_entries_per_scope=MAX))
            return made[0]
        made.append(PostgresSemanticStore(url, max_entries_per_scope=MAX, max_connections=2))
        return made[-1]

    yield factory
    for store in made:
        await store.aclose()


@pytest.fixture
def store(make_store: StoreFactory) -> SemanticStore:
    return make_store()


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


NOW = 1_000_000.0


async def add(
    store: SemanticStore, tenant: str, scope: str, vector: list[float], payload: str, ttl: float = 60
) -> None:
    await store.add(tenant, scope, vector, payload, now=NOW, expires=NOW + ttl)


async def test_empty_then_exact_match(store: SemanticStore) -> None:
    assert await store.nearest("acme", "s", unit(1, 0, 0), NOW) is None
    await add(store, "acme", "s", unit(1, 0, 0), "x")
    found = await store.nearest("acme", "s", unit(1, 0, 0), NOW)
    assert found is not None and found[0] == "x" and found[1] == pytest.approx(1.0, abs=1e-5)


async def test_nearest_is_the_most_similar(store: SemanticStore) -> None:
    await add(store, "acme", "s", unit(1, 0, 0), "east")
    await add(store, "acme", "s", unit(0, 1, 0), "north")
    await add(store, "acme", "s", unit(0, 0, 1), "up")
    found = await store.nearest("acme", "s", unit(0.2, 1, 0.1), NOW)
    assert found is not None and found[0] == "north"
    assert found[1] == pytest.approx(
        sum(a * b for a, b in zip(unit(0.2, 1, 0.1), unit(0, 1, 0), strict=True)), abs=1e-5
    )


async def test_tenants_are_partitioned(store: SemanticStore) -> None:
    # The same scope string under two tenants: each sees only its own entry.
    await add(store, "acme", "s", unit(1, 0, 0), "acme answer")
    assert await store.nearest("globex", "s", unit(1, 0, 0.001), NOW) is None
    await add(store, "globex", "s", unit(0, 1, 0), "globex answer")
    mine = await store.nearest("acme", "s", unit(0, 1, 0), NOW)  # globex's vector, asked as acme
    assert mine is not None and mine[0] == "acme answer" and mine[1] == pytest.approx(0.0, abs=1e-5)


async def test_scopes_are_separate(store: SemanticStore) -> None:
    await add(store, "acme", "shoes", unit(1, 0), "shoe refunds")
    assert await store.nearest("acme", "cars", unit(1, 0), NOW) is None


async def test_expired_entries_are_never_returned(store: SemanticStore) -> None:
    await add(store, "acme", "s", unit(1, 0, 0), "short-lived", ttl=10)
    await add(store, "acme", "s", unit(1, 1, 0), "long-lived", ttl=100)
    best = await store.nearest("acme", "s", unit(1, 0, 0), NOW + 5)
    assert best is not None and best[0] == "short-lived"
    later = await store.nearest("acme", "s", unit(1, 0, 0), NOW + 10)  # the best one expired: the best live one
    assert later is not None and later[0] == "long-lived" and later[1] == pytest.approx(math.sqrt(0.5), abs=1e-5)
    assert await store.nearest("acme", "s", unit(1, 0, 0), NOW + 100) is None


async def test_at_most_max_entries_per_scope_oldest_dropped(store: SemanticStore) -> None:
    vectors = [unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0), unit(0, 0, 0, 1)]
    for i, v in enumerate(vectors):
        await add(store, "acme", "s", v, f"e{i}")
    assert MAX == len(vectors) - 1
    oldest = await store.nearest("acme", "s", vectors[0], NOW)
    assert oldest is not None and oldest[0] != "e0" and oldest[1] == pytest.approx(0.0, abs=1e-5)
    for i in range(1, 4):
        found = await store.nearest("acme", "s", vectors[i], NOW)
        assert found is not None and found[0] == f"e{i}"
    await add(store, "acme", "other", vectors[0], "o")  # other scopes keep their own quota
    found = await store.nearest("acme", "s", vectors[3], NOW)
    assert found is not None and found[0] == "e3"


async def test_another_dimension_is_a_user_error(store: SemanticStore) -> None:
    await add(store, "acme", "s", unit(1, 0, 0), "x")
    with pytest.raises(UserError, match="different sizes"):
        await store.nearest("acme", "s", unit(1, 0, 0, 0), NOW)


async def test_clear_tenant_removes_only_that_tenant(store: SemanticStore) -> None:
    await add(store, "acme", "s", unit(1, 0), "a")
    await add(store, "globex", "s", unit(1, 0), "g")
    await store.clear_tenant("acme")
    assert await store.nearest("acme", "s", unit(1, 0), NOW) is None
    kept = await store.nearest("globex", "s", unit(1, 0), NOW)
    assert kept is not None and kept[0] == "g"


async def test_a_second_store_on_the_backend_sees_the_entries(make_store: StoreFactory) -> None:
    # In memory "the backend" is one process's store; on PostgreSQL two stores (two processes)
    # share one database.
    first, second = make_store(), make_store()
    await add(first, "acme", "s", unit(3, 4), "shared")
    found = await second.nearest("acme", "s", unit(3, 4), NOW)
    assert found is not None and found[0] == "shared"


# --- the semantic cache through a Gateway, on each backend ---------------------------------------


def counting_model() -> FunctionModel:
    def answer(r: ModelRequest) -> ModelResponse:
        return ModelResponse(Message.assistant(f"answer {len(model.requests)}"), usage=Usage(10, 10, requests=1))

    model = FunctionModel(answer, name="acme:m")
    return model


def ask(text: str, tenant: str) -> ModelRequest:
    return ModelRequest(
        [Message.system("you sell shoes"), Message.user(text)],
        settings=ModelSettings(temperature=0.7),
        context=RunContext(tenant=tenant),
        cacheable=True,
    )


Q = "what is your refund policy for damaged items"


async def test_gateway_semantic_hits_stay_within_a_tenant(make_store: StoreFactory) -> None:
    model = counting_model()
    cache = SemanticCache(HashingEmbedder(), store=make_store(), threshold=0.8)
    gw = Gateway(models=[model], cache=False, semantic_cache=cache)
    first = await gw.request(ask(Q, "tenant-a"), "acme:m")
    paraphrase = await gw.request(ask(Q + " please", "tenant-a"), "acme:m")
    assert paraphrase.cached and paraphrase.text == first.text and len(model.requests) == 1
    # Tenant B's near-identical prompt never reaches A's entry; B's own answer is B's to reuse.
    other = await gw.request(ask(Q + " please", "tenant-b"), "acme:m")
    assert other.cached is False and other.text == "answer 2" and len(model.requests) == 2
    again = await gw.request(ask(Q, "tenant-b"), "acme:m")
    assert again.cached and again.text == "answer 2"
    assert len(model.requests) == 2
    far = await gw.request(ask("tell me a joke about cats", "tenant-a"), "acme:m")
    assert far.cached is False and len(model.requests) == 3
    await gw.aclose()


async def test_gateways_sharing_a_store_share_answers(make_store: StoreFactory) -> None:
    # Two gateways (two servers) on one backend: the second answers from the first's entry.
    a, b = counting_model(), counting_model()
    gw_a = Gateway(models=[a], cache=False, semantic_cache=SemanticCache(HashingEmbedder(), store=make_store()))
    gw_b = Gateway(models=[b], cache=False, semantic_cache=SemanticCache(HashingEmbedder(), store=make_store()))
    await gw_a.request(ask(Q, "tenant-a"), "acme:m")
    hit = await gw_b.request(ask(Q, "tenant-a"), "acme:m")
    assert hit.cached and hit.text == "answer 1" and b.requests == []
    await gw_a.aclose()
    await gw_b.aclose()


def test_store_and_max_entries_are_not_both_given() -> None:
    with pytest.raises(UserError, match="max_entries_per_scope"):
        SemanticCache(HashingEmbedder(), store=MemorySemanticStore(), max_entries_per_scope=10)
