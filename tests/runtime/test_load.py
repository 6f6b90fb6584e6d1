"""Load: 1,000 concurrent runs of a real `Agent` in one process, against a slow model server.

The model is `FakeOpenAIServer` (real HTTP on 127.0.0.1) answering every request after a
delay; the runs go through `Runtime.embedded(...)` (SQLite store, in-process worker with
concurrency >= 1,000). A barrier inside the runnable holds each run until all 1,000 are in
flight at once, so "1,000 concurrent" is a fact the test checks, not a timing hope.
"""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path
from typing import Any

import pytest

from bastion.graph.agent import Agent
from bastion.runtime import AgentRunnable, RunOutcome, Runtime
from bastion.runtime._types import EventSink
from bastion.testing import FakeOpenAIServer, Fault
from bastion.types import RunContext

N = 1_000
MODEL_DELAY = 1.0  # seconds the fake model takes per answer
BARRIER_TIMEOUT = 40.0
KB_PER_RUN_LIMIT = 200


def _rss_kb() -> int:
    """Current resident set size of this process (not the peak), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


class Gauge:
    """Wraps a runnable: counts runs in flight, remembers the peak, and (optionally) holds
    every run until `hold` of them are in flight together."""

    def __init__(self, inner: Any, hold: int) -> None:
        self.inner = inner
        self.hold = hold
        self.in_flight = 0
        self.peak = 0
        self.started = 0
        self.all_in = asyncio.Event()
        self.rss_at_peak_kb = 0

    async def invoke(
        self, input: Any, *, thread_id: str, context: RunContext, resume: Any = None, recover: bool = False,
        emit: EventSink | None = None, checkpoint_before: str | None = None,
    ) -> RunOutcome:  # fmt: skip
        self.in_flight += 1
        self.started += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.in_flight >= self.hold and not self.all_in.is_set():
                self.rss_at_peak_kb = _rss_kb()
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), BARRIER_TIMEOUT)
            outcome = await self.inner.invoke(
                input, thread_id=thread_id, context=context, resume=resume, recover=recover, emit=emit,
                checkpoint_before=checkpoint_before,
            )  # fmt: skip
            if self.in_flight == self.hold:
                # The first answer back: the other runs still wait on their model calls, so
                # this is when their sockets, requests and agent state are all alive.
                self.rss_at_peak_kb = max(self.rss_at_peak_kb, _rss_kb())
            return outcome
        finally:
            self.in_flight -= 1


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_thousand_concurrent_agent_runs(tmp_path: Path) -> None:
    from bastion.gateway import aclose_http_sessions

    async with FakeOpenAIServer(record=False) as server:
        server.always(Fault.slow(MODEL_DELAY))
        # The default pool (100 connections) would queue requests client-side; allow them all.
        model = server.model(connection_limit=N + 100)
        agent = Agent(model, name="loady", instructions="answer briefly")
        gauge = Gauge(AgentRunnable(agent), hold=N)
        runtime = Runtime.embedded(tmp_path / "runs.db", {"loady": gauge}, worker_concurrency=N + 24)
        try:
            async with runtime:
                # Warm up (imports, HTTP session, SQLite pages) so the RSS baseline is honest.
                gauge.hold = 1
                warm = await runtime.run(tenant="t", agent="loady", input="warm-up", timeout=30)
                assert warm.status == "completed", warm.error
                gauge.hold = N
                gauge.all_in = asyncio.Event()
                gauge.peak = 0
                gc.collect()
                rss_before = _rss_kb()

                created = [await runtime.create_run(tenant="t", agent="loady", input=f"question {i}") for i in range(N)]
                runs = await asyncio.wait_for(
                    asyncio.gather(*(runtime.wait(r.id, tenant="t", timeout=90) for r in created)), timeout=100
                )
                server_requests = server.count
        finally:
            await aclose_http_sessions()

    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run.status] = statuses.get(run.status, 0) + 1
    assert statuses == {"completed": N}, [r.error for r in runs if r.status != "completed"][:3]
    assert len({r.id for r in runs}) == N  # none lost, none duplicated
    assert all(isinstance(r.output, str) and r.output for r in runs)
    assert gauge.started == N + 1  # every run invoked exactly once (plus the warm-up)
    assert gauge.peak >= N, f"only {gauge.peak} runs were ever in flight together"
    assert server_requests >= N + 1  # each run really called the slow model
    growth_kb = gauge.rss_at_peak_kb - rss_before
    print(f"\npeak in flight {gauge.peak}; RSS growth at peak {growth_kb} KB = {growth_kb / N:.1f} KB/run")
    assert growth_kb / N < KB_PER_RUN_LIMIT, f"{growth_kb / N:.0f} KB per in-flight run"


async def _claim_cost(store: Any, n_running: int, n_queued: int) -> int:
    """SQLite VM instructions (in hundreds) one claim needs with this many runs in flight."""
    from bastion.runtime import new_run

    for _ in range(n_running + n_queued + 1):
        await store.create(new_run(tenant="t", thread_id=None, agent="a", input=None))
    for _ in range(n_running):
        assert await store.claim("w", 300) is not None
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn = store._conn()
    conn.set_progress_handler(count, 100)
    try:  # SQLite statements run inline on the loop: the handler counts this claim only
        assert await store.claim("w", 300) is not None
    finally:
        conn.set_progress_handler(None, 0)
    return steps


async def test_claim_work_does_not_grow_with_the_runs_in_flight(tmp_path: Path) -> None:
    """A claim must find the next run through an index, not by scanning every running and queued
    run: with thousands in flight a scan per claim made claiming quadratic (10,000 claims took
    minutes). Measured in SQLite VM instructions, a deterministic count, not time."""
    from bastion.runtime import SqlRunStore

    small, large = SqlRunStore.sqlite(tmp_path / "small.db"), SqlRunStore.sqlite(tmp_path / "large.db")
    try:
        few = await _claim_cost(small, 100, 100)
        many = await _claim_cost(large, 2_000, 2_000)
    finally:
        await small.close()
        await large.close()
    assert many <= 3 * max(few, 1), f"one claim cost {few} with 200 runs in flight, {many} with 4,000"


@pytest.mark.postgres
async def test_postgres_lookups_do_not_keep_a_plan_made_for_an_empty_table(pg_url: str) -> None:
    """A statement prepared while the runs table is nearly empty gets a generic plan for that: a
    scan of the tenant's runs through another index, which then grows with every run until
    ANALYZE replans it (a lookup went from 0.18 to 0.69 ms within 10,000 runs). What the store
    executes must find a run by its primary key."""
    from bastion.runtime import SqlRunStore, new_run

    store = SqlRunStore.postgres(pg_url)
    try:
        ids = []
        for _ in range(20):  # more executions than psycopg's prepare threshold, on a small table
            run = await store.create(new_run(tenant="t", thread_id=None, agent="a", input=None))
            claimed = await store.claim("w", 300)
            assert claimed is not None and claimed.id == run.id
            assert (await store.get(run.id, tenant="t")) is not None
            ids.append(run.id)
        async with (await store._apool.get()).connection() as conn:  # (sequential calls: the pool's one connection)
            cur = await conn.execute(
                "SELECT name, statement FROM pg_prepared_statements WHERE statement LIKE '%FROM bastion_runs%'"
            )
            prepared = await cur.fetchall()
            for name, statement in prepared:
                if "WHERE id = $1 AND tenant = $2" in statement:
                    plan = await (await conn.execute(f"EXPLAIN EXECUTE {name}('{ids[0]}', 't')")).fetchall()
                    assert "bastion_runs_pkey" in str(plan), f"the lookup runs a plan cached for an empty table: {plan}"
        assert await store.get(ids[-1], tenant="t") is not None
    finally:
        await store.close()
