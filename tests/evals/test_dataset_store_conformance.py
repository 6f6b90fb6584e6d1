"""One conformance suite for every `DatasetStore` (JSONL files and PostgreSQL): create, append,
list, read, delete, duplicate ids, tenant isolation, two stores (two servers) on one backend,
and promoting stored traces into a tenant's dataset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.evals import (
    Case,
    Dataset,
    DatasetInfo,
    DatasetStore,
    Expected,
    JsonlDatasetStore,
    PostgresDatasetStore,
    promote_traces,
)
from bastion.tracing import TraceStore, configure_tracing, spans
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, ToolCall, ToolResult, Usage

StoreFactory = Callable[[], DatasetStore]


@pytest.fixture(params=["jsonl", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Each call opens another store on the same backend (one folder, or one fresh database),
    as a second server would."""
    made: list[DatasetStore] = []
    url: str | None = request.getfixturevalue("pg_url") if request.param == "postgres" else None

    def factory() -> DatasetStore:
        made.append(JsonlDatasetStore(tmp_path / "evals") if url is None else PostgresDatasetStore(url))
        return made[-1]

    yield factory
    for store in made:
        await store.aclose()


@pytest.fixture
def store(make_store: StoreFactory) -> DatasetStore:
    return make_store()


def rich_case(case_id: str) -> Case:
    return Case(
        {"question": "refund order 42", "lang": "en"},
        Expected(tool_calls=[ToolCall("refund", {"order": 42})], output_contains=["refunded"], state={"done": True}),
        id=case_id,
        metadata={"run_id": "r-1", "tier": "gold"},
    )


async def test_append_creates_and_load_keeps_order_and_content(store: DatasetStore) -> None:
    assert await store.list("acme") == [] and await store.load("acme", "regress") is None
    await store.append("acme", "regress", [rich_case("b"), Case("second", id="a")])
    await store.append("acme", "regress", [Case("third", id="c")])
    loaded = await store.load("acme", "regress")
    assert loaded is not None and loaded.name == "regress" and [c.id for c in loaded] == ["b", "a", "c"]
    first = loaded.cases[0]
    assert first.to_dict() == rich_case("b").to_dict()
    assert first.expected.tool_calls is not None and first.expected.tool_calls[0].arguments == {"order": 42}
    assert await store.list("acme") == [DatasetInfo("regress", 3)]


async def test_an_empty_dataset_can_be_created(store: DatasetStore) -> None:
    await store.append("acme", "later")
    await store.append("acme", "earlier", [Case("x", id="1")])
    assert await store.list("acme") == [DatasetInfo("earlier", 1), DatasetInfo("later", 0)]
    empty = await store.load("acme", "later")
    assert empty is not None and len(empty) == 0


async def test_duplicate_case_ids_add_nothing(store: DatasetStore) -> None:
    await store.append("acme", "d", [Case("x", id="1")])
    with pytest.raises(UserError, match="already has a case with id '1'"):
        await store.append("acme", "d", [Case("y", id="2"), Case("x again", id="1")])
    with pytest.raises(UserError, match="already has a case with id '3'"):
        await store.append("acme", "d", [Case("y", id="3"), Case("y", id="3")])
    loaded = await store.load("acme", "d")
    assert loaded is not None and [c.id for c in loaded] == ["1"]


async def test_tenants_are_isolated(store: DatasetStore) -> None:
    await store.append("acme", "shared-name", [Case("acme's secret", id="1")])
    await store.append("globex", "shared-name", [Case("globex's", id="1")])  # same name and id, other tenant
    assert await store.list("initech") == [] and await store.load("initech", "shared-name") is None
    acme, globex = await store.load("acme", "shared-name"), await store.load("globex", "shared-name")
    assert acme is not None and [c.input for c in acme] == ["acme's secret"]
    assert globex is not None and [c.input for c in globex] == ["globex's"]
    assert await store.delete("globex", "shared-name") is True
    assert await store.load("acme", "shared-name") is not None


async def test_delete(store: DatasetStore) -> None:
    assert await store.delete("acme", "nope") is False
    await store.append("acme", "d", [Case("x", id="1")])
    assert await store.delete("acme", "d") is True
    assert await store.load("acme", "d") is None and await store.list("acme") == []
    await store.append("acme", "d", [Case("x", id="1")])  # the name and ids are free again
    assert await store.list("acme") == [DatasetInfo("d", 1)]


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "x" * 65, "with space"])
async def test_bad_names_are_refused(store: DatasetStore, name: str) -> None:
    with pytest.raises(UserError, match="dataset name"):
        await store.append("acme", name, [Case("x")])
    with pytest.raises(UserError, match="dataset name"):
        await store.load("acme", name)


async def test_two_stores_on_one_backend_see_the_same_datasets(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    await one.append("acme", "d", [Case("from one", id="1")])
    seen = await two.load("acme", "d")
    assert seen is not None and [c.input for c in seen] == ["from one"]
    await two.append("acme", "d", [Case("from two", id="2")])
    assert await one.list("acme") == [DatasetInfo("d", 2)]
    with pytest.raises(UserError, match="already has a case with id '1'"):
        await two.append("acme", "d", [Case("clash", id="1")])


async def test_concurrent_appends_all_land(make_store: StoreFactory) -> None:
    stores = [make_store(), make_store()]
    await asyncio.gather(*(stores[i % 2].append("acme", "d", [Case(f"case {i}", id=str(i))]) for i in range(10)))
    loaded = await stores[0].load("acme", "d")
    assert loaded is not None and sorted(int(c.id) for c in loaded) == list(range(10))


# --- promotion from traces -----------------------------------------------------------------------


def _failed_run(tenant: str, run_id: str, question: str) -> str:
    ctx = RunContext(tenant=tenant, run_id=run_id, agent="booker")
    call = ToolCall("search_flights", {"to": "CDG"})
    try:
        with spans.agent("booker", ctx, input=question) as a:
            req = ModelRequest([Message.user(question)], context=ctx)
            with spans.chat("openai:gpt-4o", req) as c:
                c.record_response(ModelResponse(Message.assistant(tool_calls=[call]), Usage(1, 1)))
            with spans.tool(call.name, call.id, arguments=call.arguments) as t:
                t.record_result(ToolResult(call.id, call.name, "ok"))
            raise RuntimeError("could not book the flight")
    except RuntimeError:
        pass
    assert a.trace_id
    return a.trace_id


async def test_promote_traces_into_a_tenants_dataset(store: DatasetStore, tmp_path: Path) -> None:
    traces = TraceStore(tmp_path / "traces.db")
    handle = configure_tracing(otlp_endpoint="", store=traces, capture_content="span_attributes", metrics=False)
    try:
        acme_trace = _failed_run("acme", "r-acme", "book LHR to CDG")
        globex_trace = _failed_run("globex", "r-globex", "globex's private question")
        handle.force_flush()
    finally:
        handle.shutdown()
    try:
        promoted = await promote_traces(store, "acme", "regress", traces, golden=True)
        assert [c.input for c in promoted] == ["book LHR to CDG"]  # only acme's failed run
        loaded = await store.load("acme", "regress")
        assert loaded is not None and [c.metadata["trace_id"] for c in loaded] == [acme_trace]
        assert loaded.cases[0].expected.tool_calls is not None
        assert [c.name for c in loaded.cases[0].expected.tool_calls] == ["search_flights"]
        # Naming another tenant's trace is refused and adds nothing.
        with pytest.raises(UserError, match="not a trace of tenant 'acme'"):
            await promote_traces(store, "acme", "stolen", traces, trace_ids=[globex_trace])
        assert await store.load("acme", "stolen") is None
        assert await store.list("globex") == []
    finally:
        traces.close()


async def test_jsonl_datasets_are_the_files_bastion_eval_runs(tmp_path: Path) -> None:
    store = JsonlDatasetStore(tmp_path / "evals")
    await store.append("acme", "regress", [rich_case("1")])
    loaded = Dataset.load(store.path("acme", "regress"))  # what `bastion eval --dataset` reads
    assert [c.to_dict() for c in loaded] == [rich_case("1").to_dict()]
