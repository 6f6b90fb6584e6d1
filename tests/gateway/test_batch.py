"""Batch APIs: `Gateway.batch()` through OpenAI's Batch API (files + batches) and Anthropic's
Message Batches on the fake server; results mapped back by custom id and priced at the batch
rates of genai-prices; budgets reserve every request's worst case up front and settle per
result; expired batches and failed requests come back per item; the batch id is durable (a
new gateway on the same SQLite file, or a process killed mid-poll, resumes polling and never
submits twice); `Agent.run(deferred=True)` makes its model calls as batches."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import BudgetExceededError, ModelHTTPError, ModelTimeoutError, UserError
from bastion.gateway import (
    BatchStore,
    Budget,
    BudgetLimits,
    Gateway,
    MemoryBatchStore,
    Model,
    Pricing,
    SQLiteBatchStore,
    SQLiteBudgetStore,
)
from bastion.gateway._batch_store import BatchRecord, BatchStatus
from bastion.testing import BatchFaults, FakeOpenAIServer, ScriptedModel
from bastion.types import Message, ModelRequest, ModelSettings, RunContext, Usage


@pytest.fixture
async def srv() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


def openai_model(srv: FakeOpenAIServer) -> Model:
    from bastion.gateway import resolve_model

    return resolve_model("openai:gpt-4o-mini", base_url=srv.base_url, api_key="test-key")


def anthropic_model(srv: FakeOpenAIServer) -> Model:
    return srv.anthropic_model("claude-haiku-4-5")


MODELS = {"openai": openai_model, "anthropic": anthropic_model}


def ask(text: str, tenant: str = "default", max_tokens: int = 64) -> ModelRequest:
    return ModelRequest(
        messages=[Message.user(text)],
        settings=ModelSettings(max_tokens=max_tokens),
        context=RunContext(tenant=tenant),
    )


def gateway(store: BatchStore | None = None, **kw: Any) -> Gateway:
    return Gateway(cache=False, batch_store=store or MemoryBatchStore(), batch_poll_interval=0, **kw)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_results_are_mapped_back_and_priced_at_batch_rates(srv: FakeOpenAIServer, provider: str) -> None:
    model = MODELS[provider](srv)
    srv.batches.configure(BatchFaults(polls=2, reverse=True))  # results come back out of order
    async with gateway() as gw:
        result = await gw.batch({"a": ask("alpha"), "b": ask("beta"), "c": ask("gamma")}, model)
    assert [i.custom_id for i in result.items] == ["a", "b", "c"]
    assert [r.text if r else None for r in result.responses] == ["alpha", "beta", "gamma"]
    assert result["b"].response is not None and result["b"].response.text == "beta"
    assert result.status in ("completed", "ended") and not result.failed and not result.resumed
    # Only one batch, polled until it ended (2 "in progress" answers first); no synchronous call.
    assert srv.batches.submitted == 1 and srv.batches.counts["poll"] == 3
    assert srv.counts["chat"] == 0 and srv.counts["anthropic"] == 0
    pricing = Pricing()
    for item in result.items:
        assert item.response is not None
        usage = item.response.usage
        assert usage.input_tokens > 0 and usage.output_tokens > 0
        batch_cost = pricing.cost(model.name, usage, batch=True)
        sync_cost = pricing.cost(model.name, usage)
        assert batch_cost is not None and sync_cost is not None
        assert item.response.cost_usd == pytest.approx(batch_cost)
        assert batch_cost == pytest.approx(sync_cost / 2)  # both providers publish a 50% batch rate
    assert result.cost_usd == pytest.approx(sum(i.response.cost_usd or 0 for i in result.items if i.response))


async def test_openai_batch_goes_through_a_jsonl_file_and_the_batches_endpoint(srv: FakeOpenAIServer) -> None:
    async with gateway() as gw:
        result = await gw.batch([ask("one"), ask("two")], openai_model(srv))
    assert srv.batches.counts["upload"] == 1
    batch = srv.batches.batches[result.batch_id]
    assert [cid for cid, _ in batch.requests] == ["r0", "r1"]
    body = batch.requests[0][1]
    assert body["model"] == "gpt-4o-mini" and body["messages"] == [{"role": "user", "content": "one"}]
    assert body["max_completion_tokens"] == 64  # the same body a synchronous call sends
    tag = hashlib.sha256(f"default\0{result.key}".encode()).hexdigest()[:40]
    assert batch.metadata == {"bastion_batch_key": tag}  # the key, never the tenant's name


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_partial_failures_come_back_per_request(srv: FakeOpenAIServer, provider: str) -> None:
    srv.batches.configure(BatchFaults(fail={"r1"}))
    async with gateway() as gw:
        result = await gw.batch([ask("ok-0"), ask("bad"), ask("ok-2")], MODELS[provider](srv))
    assert [i.ok for i in result.items] == [True, False, True]
    error = result.items[1].error
    assert isinstance(error, ModelHTTPError) and error.status == 400 and "injected failure of r1" in str(error)
    assert result.items[2].response is not None and result.items[2].response.text == "ok-2"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_an_expired_batch_returns_what_ran_and_marks_the_rest_expired(
    srv: FakeOpenAIServer, provider: str
) -> None:
    srv.batches.configure(BatchFaults(expire=True, complete=1))
    async with gateway() as gw:
        result = await gw.batch([ask("first"), ask("second"), ask("third")], MODELS[provider](srv))
    assert result.status in ("expired", "ended")
    assert result.items[0].response is not None and result.items[0].response.text == "first"
    for item in result.items[1:]:
        assert isinstance(item.error, ModelTimeoutError) and "expired" in str(item.error)
    assert result.cost_usd == pytest.approx(result.items[0].response.cost_usd or 0)


async def test_a_new_gateway_on_the_same_store_resumes_polling_and_never_resubmits(
    srv: FakeOpenAIServer, tmp_path: Path
) -> None:
    srv.batches.configure(BatchFaults(hold=True))
    requests = [ask("durable-0"), ask("durable-1")]
    store = SQLiteBatchStore(tmp_path / "batches.db")
    async with gateway(store) as gw:
        with pytest.raises(ModelTimeoutError, match=r"call Gateway\.batch\(\) again"):
            await gw.batch(requests, openai_model(srv), timeout=0)
    store.close()
    assert srv.batches.submitted == 1
    srv.batches.release()
    store = SQLiteBatchStore(tmp_path / "batches.db")  # "after the restart"
    async with gateway(store) as gw:
        result = await gw.batch(requests, openai_model(srv))
        assert result.resumed and [r.text if r else None for r in result.responses] == ["durable-0", "durable-1"]
        again = await gw.batch(requests, openai_model(srv))  # a finished batch is not sent again either
    store.close()
    assert again.resumed and again.batch_id == result.batch_id
    assert srv.batches.submitted == 1 and srv.batches.counts["upload"] == 1


class _CrashAfterSubmit(MemoryBatchStore):
    """Dies (once) between the provider accepting the batch and the id being recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    async def update(self, tenant: str, key: str, *, status: BatchStatus, remote_id: str | None = None) -> None:
        if remote_id is not None and not self.crashed:
            self.crashed = True
            raise KeyboardInterrupt("process killed")
        await super().update(tenant, key, status=status, remote_id=remote_id)


async def test_a_batch_submitted_but_never_recorded_is_found_by_its_key(srv: FakeOpenAIServer) -> None:
    store = _CrashAfterSubmit()
    requests = [ask("lost-0"), ask("lost-1")]
    async with gateway(store) as gw:
        with pytest.raises(KeyboardInterrupt):
            await gw.batch(requests, openai_model(srv))
        record = next(iter(await store.pending()), None)
        assert record is not None and record.remote_id is None and record.status == "submitting"
        record.created -= 120  # restarted later: no caller is still submitting it
        result = await gw.batch(requests, openai_model(srv))
    assert result.resumed and srv.batches.submitted == 1
    assert result.batch_id in srv.batches.batches


_KILLED_CHILD = """
import asyncio, sys
from bastion.gateway import Gateway, SQLiteBatchStore, resolve_model
from bastion.types import Message, ModelRequest, ModelSettings

async def main():
    model = resolve_model("openai:gpt-4o-mini", base_url=sys.argv[1], api_key="k")
    settings = ModelSettings(max_tokens=64)
    requests = [ModelRequest(messages=[Message.user(f"proc-{i}")], settings=settings) for i in range(3)]
    gw = Gateway(cache=False, batch_store=SQLiteBatchStore(sys.argv[2]), batch_poll_interval=0.01)
    await gw.batch(requests, model)  # the fake holds the batch: this polls until killed

asyncio.run(main())
"""


async def test_a_process_killed_while_polling_is_resumed_by_another(srv: FakeOpenAIServer, tmp_path: Path) -> None:
    srv.batches.configure(BatchFaults(hold=True))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_KILLED_CHILD))
    db = tmp_path / "batches.db"
    env = {**os.environ, "BASTION_HOME": str(tmp_path / "home")}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), srv.base_url, str(db), env=env)
    try:
        await srv.batches.wait_for_polls(2, timeout=60)  # submitted, recorded, and polling
        assert proc.returncode is None
    finally:
        proc.kill()
        await proc.wait()
    srv.batches.release()
    requests = [
        ModelRequest(messages=[Message.user(f"proc-{i}")], settings=ModelSettings(max_tokens=64)) for i in range(3)
    ]
    store = SQLiteBatchStore(db)
    async with gateway(store) as gw:
        result = await gw.batch(requests, openai_model(srv))
    store.close()
    assert result.resumed and srv.batches.submitted == 1
    assert [r.text if r else None for r in result.responses] == ["proc-0", "proc-1", "proc-2"]


async def test_budgets_reserve_the_worst_case_up_front_and_settle_per_result(
    srv: FakeOpenAIServer, tmp_path: Path
) -> None:
    srv.batches.configure(BatchFaults(hold=True, fail={"r2"}))
    budget = Budget(tenant=BudgetLimits(usd=1.0), store=SQLiteBudgetStore(tmp_path / "budget.db"))
    requests = [ask("spend-0", "acme"), ask("spend-1", "acme"), ask("spend-2", "acme")]
    async with gateway(budgets=budget) as gw:
        task = asyncio.create_task(gw.batch(requests, openai_model(srv)))
        await srv.batches.wait_for_polls(1)
        held = await budget.spent("tenant:acme")
        # Three requests' worst case (prompt bound + 64 output tokens each) at batch rates.
        per_output = Pricing().bound("openai:gpt-4o-mini", 1, 64, batch=True)
        assert per_output is not None
        assert held.reserved_usd >= 3 * 64 * per_output[1] and held.usd == 0
        assert held.reserved_usd < 3 * 64 * per_output[1] * 2 + 0.001
        srv.batches.release()
        result = await asyncio.wait_for(task, 10)
        after = await budget.spent("tenant:acme")
    assert after.reserved_usd == 0 and after.reserved_tokens == 0
    assert after.usd == pytest.approx(result.cost_usd) and after.usd > 0  # the failed request cost nothing
    assert after.tokens == sum(r.usage.total_tokens for r in result.responses if r is not None)


async def test_a_batch_the_budget_cannot_pay_for_is_refused_before_it_is_sent(srv: FakeOpenAIServer) -> None:
    budget = Budget(tenant=BudgetLimits(tokens=200))
    requests = [ask("x" * 100, "acme", max_tokens=16) for _ in range(5)]
    async with gateway(budgets=budget) as gw:
        with pytest.raises(BudgetExceededError):
            await gw.batch(requests, openai_model(srv))
        spend = await budget.spent("tenant:acme")
    assert srv.batches.submitted == 0 and srv.batches.counts["upload"] == 0
    assert spend.reserved_tokens == 0 and spend.tokens == 0  # the holds taken before the refusal were released


async def test_mistakes_are_refused_with_how_to_fix_them(srv: FakeOpenAIServer) -> None:
    async with gateway() as gw:
        with pytest.raises(UserError, match="no batch API"):
            await gw.batch([ask("hi")], ScriptedModel(["hi"]))
        with pytest.raises(UserError, match="one tenant"):
            await gw.batch([ask("a", "t1"), ask("b", "t2")], openai_model(srv))
        with pytest.raises(UserError, match="custom id"):
            await gw.batch({"has space": ask("a")}, openai_model(srv))
        with pytest.raises(UserError, match="no requests"):
            await gw.batch([], openai_model(srv))
        await gw.batch([ask("first")], openai_model(srv), key="nightly")
        with pytest.raises(UserError, match="was used for other requests"):
            await gw.batch([ask("second")], openai_model(srv), key="nightly")
    assert srv.batches.submitted == 1


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BatchStore]:
    if request.param == "memory":
        yield MemoryBatchStore()
    elif request.param == "sqlite":
        sqlite = SQLiteBatchStore(tmp_path / "b.db")
        yield sqlite
        sqlite.close()
    else:
        from bastion.gateway import PostgresBatchStore

        pg = PostgresBatchStore(request.getfixturevalue("pg_url"))
        yield pg
        await pg.aclose()


async def test_batch_stores_keep_records_per_tenant_and_the_first_record_wins(any_store: BatchStore) -> None:
    from bastion.gateway._batch_store import BatchItem

    items = [BatchItem("r0", "h0", 64, "res-0", ("tenant:a", "user:a/u"), 80, 0.01), BatchItem("r1", "h1")]
    await any_store.create(BatchRecord("a", "k", "openai:x", items=items))
    stored = await any_store.create(BatchRecord("b", "k", "openai:x", remote_id="batch_b"))
    assert stored.remote_id == "batch_b" and stored.tenant == "b"
    again = await any_store.create(BatchRecord("a", "k", "openai:y"))  # the existing record wins
    assert again.model == "openai:x" and [i.custom_id for i in again.items] == ["r0", "r1"]
    await any_store.update("a", "k", status="submitted", remote_id="batch_a")
    await any_store.settled("a", "k", ["r0"])
    first = await any_store.get("a", "k")
    assert first is not None and first.remote_id == "batch_a" and first.status == "submitted" and first.v == 1
    assert first.items[0].charges == ("tenant:a", "user:a/u") and first.items[0].output == 64
    assert [i.settled for i in first.items] == [True, False] and first.items[0].usd == pytest.approx(0.01)
    assert await any_store.get("c", "k") is None
    assert {(r.tenant, r.status) for r in await any_store.pending()} == {("a", "submitted"), ("b", "submitting")}
    await any_store.update("a", "k", status="ended")
    assert [r.tenant for r in await any_store.pending()] == ["b"]


def test_batch_prices_come_from_the_table_and_overrides() -> None:
    pricing = Pricing({"acme:m": {"input": 2.0, "output": 4.0}, "acme:half": {"input": 2, "output": 4, "batch": 0.25}})
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert pricing.cost("openai:gpt-4o-mini", usage, batch=True) == pytest.approx(0.375)
    assert pricing.cost("anthropic:claude-haiku-4-5", usage, batch=True) == pytest.approx(3.0)
    assert pricing.cost("acme:m", usage, batch=True) == pytest.approx(3.0)  # the documented 50% default
    assert pricing.cost("acme:half", usage, batch=True) == pytest.approx(1.5)
    bound = pricing.bound("openai:gpt-4o-mini", 1_000_000, 10, batch=True)
    assert bound is not None and bound[0] == pytest.approx(0.075)


# --- Agent.run(deferred=True) ----------------------------------------------------------------------


def _agent(srv: FakeOpenAIServer, gw: Gateway, checkpointer: Any = None) -> Any:
    from bastion.graph.agent import Agent
    from bastion.testing import DirectToolExecutor
    from bastion.tools import tool

    @tool(side_effect="read")
    def lookup(q: str) -> str:
        """Look something up."""
        return f"found {q}"

    return Agent(
        openai_model(srv),
        tools=[lookup],
        gateway=gw,
        tool_executor=DirectToolExecutor(),
        checkpointer=checkpointer,
        model_settings=ModelSettings(max_tokens=64),
    )


async def test_a_deferred_run_makes_each_model_call_as_a_batch(srv: FakeOpenAIServer) -> None:
    from bastion.types import ToolCall

    srv.reply(ToolCall("lookup", {"q": "x"}), "the answer is x")
    async with gateway() as gw:
        result = await _agent(srv, gw).run("find x", deferred=True)
    assert result.output == "the answer is x" and result.turns == 2
    assert srv.batches.submitted == 2 and srv.counts["chat"] == 0  # one batch per turn, nothing synchronous
    tool_results = [m for m in result.messages if m.role == "tool"]
    assert tool_results and "found x" in tool_results[0].text
    usage = result.usage
    expected = Pricing().cost("openai:gpt-4o-mini", usage, batch=True)
    assert expected is not None and result.cost == pytest.approx(expected) and result.cost > 0


async def test_a_deferred_run_killed_while_waiting_resumes_the_same_batch(
    srv: FakeOpenAIServer, tmp_path: Path
) -> None:
    from bastion.checkpoint import SqliteCheckpointer

    srv.batches.configure(BatchFaults(hold=True))
    saver = SqliteCheckpointer(str(tmp_path / "runs.db"))
    store = SQLiteBatchStore(tmp_path / "batches.db")
    gw = gateway(store)
    run = asyncio.create_task(_agent(srv, gw, saver).run("wait for me", thread_id="t1", deferred=True))
    await srv.batches.wait_for_polls(1)
    run.cancel()  # the process dies while the run waits on its batch
    with pytest.raises(asyncio.CancelledError):
        await run
    await gw.aclose()
    store.close()
    await saver.aclose()
    srv.batches.release()
    saver = SqliteCheckpointer(str(tmp_path / "runs.db"))
    store = SQLiteBatchStore(tmp_path / "batches.db")
    async with gateway(store) as gw:
        result = await _agent(srv, gw, saver).resume(thread_id="t1")
    store.close()
    await saver.aclose()
    assert result.output == "wait for me"
    assert srv.batches.submitted == 1 and srv.counts["chat"] == 0


async def test_each_batch_result_is_one_chat_span_with_its_batch_cost(srv: FakeOpenAIServer) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from bastion.tracing import configure_tracing, semconv

    exporter = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", exporters=[exporter], capture_content="off")
    srv.batches.configure(BatchFaults(fail={"r1"}))
    try:
        async with gateway() as gw:
            result = await gw.batch([ask("traced-0"), ask("traced-1")], openai_model(srv))
            await gw.batch([ask("traced-0"), ask("traced-1")], openai_model(srv))  # asked again: not traced twice
        assert handle.force_flush(5)
        spans = [s for s in exporter.get_finished_spans() if s.name == "chat gpt-4o-mini"]
    finally:
        handle.shutdown()
    assert len(spans) == 2
    attrs = [dict(s.attributes or {}) for s in spans]
    assert all(a["bastion.batch.id"] == result.batch_id for a in attrs)
    ok = next(a for a in attrs if semconv.GEN_AI_USAGE_INPUT_TOKENS in a)
    assert ok[semconv.BASTION_COST_USD] == pytest.approx(result.items[0].response.cost_usd)  # type: ignore[union-attr]
    failed = next(a for a in attrs if semconv.GEN_AI_USAGE_INPUT_TOKENS not in a)
    assert failed["error.type"] == "ModelHTTPError"


async def test_one_tenant_cannot_reach_another_tenants_batch_by_its_key(srv: FakeOpenAIServer, tmp_path: Path) -> None:
    store = SQLiteBatchStore(tmp_path / "batches.db")
    async with gateway(store) as gw:
        mine = await gw.batch([ask("tenant a secret", "a")], openai_model(srv), key="shared-name")
        theirs = await gw.batch([ask("tenant b question", "b")], openai_model(srv), key="shared-name")
    store.close()
    assert theirs.batch_id != mine.batch_id and not theirs.resumed and srv.batches.submitted == 2
    assert theirs.responses[0] is not None and theirs.responses[0].text == "tenant b question"


class _Rendezvous(MemoryBatchStore):
    """Holds the first caller right after it recorded the batch (before it submits) until the
    second caller has read the record: the second caller then surely sees it unsubmitted."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded = asyncio.Event()
        self.seen = asyncio.Event()

    async def create(self, record: BatchRecord) -> BatchRecord:
        stored = await super().create(record)
        self.recorded.set()
        await asyncio.wait_for(self.seen.wait(), 10)
        return stored

    async def get(self, tenant: str, key: str) -> BatchRecord | None:
        found = await super().get(tenant, key)
        if self.recorded.is_set():
            self.seen.set()
        return found


async def test_a_caller_finding_a_batch_another_is_submitting_waits_for_it(srv: FakeOpenAIServer) -> None:
    requests = [ask("together-0"), ask("together-1")]
    store = _Rendezvous()
    async with gateway(store) as one, gateway(store) as two:
        first = asyncio.create_task(one.batch(requests, openai_model(srv)))
        await asyncio.wait_for(store.recorded.wait(), 10)
        second = await two.batch(requests, openai_model(srv))
        assert second.resumed
        assert (await first).batch_id == second.batch_id
    assert srv.batches.submitted == 1
    assert [r.text if r else None for r in second.responses] == ["together-0", "together-1"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_the_default_store_follows_the_deployment(
    srv: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str
) -> None:
    from bastion.config import get_settings
    from bastion.gateway import PostgresBatchStore

    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    if backend == "postgres":
        monkeypatch.setenv("BASTION_DATABASE_URL", request.getfixturevalue("pg_url"))
    get_settings.cache_clear()
    try:
        async with Gateway(cache=False, batch_poll_interval=0) as gw:
            await gw.batch([ask("where am I kept")], openai_model(srv))
            kept = gw.batch_store
        async with Gateway(cache=False, batch_poll_interval=0) as gw:  # another process, same deployment
            again = await gw.batch([ask("where am I kept")], openai_model(srv))
    finally:
        get_settings.cache_clear()
    assert again.resumed and srv.batches.submitted == 1
    if backend == "postgres":
        assert isinstance(kept, PostgresBatchStore)
    else:
        assert isinstance(kept, SQLiteBatchStore) and kept.path == tmp_path / "home" / "batches.db"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_asking_again_for_an_expired_batch_resends_only_what_did_not_run(
    srv: FakeOpenAIServer, provider: str
) -> None:
    srv.batches.configure(BatchFaults(expire=True, complete=2, fail={"r1"}))
    requests = [ask("ran"), ask("invalid"), ask("expired")]
    async with gateway() as gw:
        first = await gw.batch(requests, MODELS[provider](srv))
        assert [i.ok for i in first.items] == [True, False, False]
        srv.batches.configure(BatchFaults())
        again = await gw.batch(requests, MODELS[provider](srv))
        third = await gw.batch(requests, MODELS[provider](srv))
    assert srv.batches.submitted == 2  # the retry is itself durable: asked a third time, nothing is sent
    retry = srv.batches.batches[next(reversed(srv.batches.batches))]
    assert [cid for cid, _ in retry.requests] == ["r2"]  # neither what ran nor what the provider refused
    assert again.items[0].response is not None and again.items[0].response.text == "ran"
    assert isinstance(again.items[1].error, ModelHTTPError) and again.items[1].error.status == 400
    assert again.items[2].response is not None and again.items[2].response.text == "expired"
    assert [i.ok for i in third.items] == [True, False, True]


async def test_a_deferred_run_whose_batch_expired_is_resumed_with_a_new_batch(
    srv: FakeOpenAIServer, tmp_path: Path
) -> None:
    from bastion.checkpoint import SqliteCheckpointer

    srv.batches.configure(BatchFaults(expire=True, complete=0))
    saver = SqliteCheckpointer(str(tmp_path / "runs.db"))
    async with gateway(SQLiteBatchStore(tmp_path / "batches.db")) as gw:
        agent = _agent(srv, gw, saver)
        with pytest.raises(ModelTimeoutError, match="expired"):
            await agent.run("patience", thread_id="t2", deferred=True)
        srv.batches.configure(BatchFaults())
        result = await agent.resume(thread_id="t2")
    await saver.aclose()
    assert result.output == "patience" and srv.batches.submitted == 2 and srv.counts["chat"] == 0
