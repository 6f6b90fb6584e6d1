"""The runtime's fast paths keep its guarantees: burst claims (one run per thread at a time,
oldest first), events written behind (in order, before the run's end), run ends pushed to API
servers over LISTEN/NOTIFY instead of polled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.runtime import PostgresWakeup, RunOutcome, Runtime, SqlRunStore, Worker
from bastion.runtime._store import new_run
from bastion.runtime._types import EventSink


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlRunStore]:
    if request.param == "sqlite":
        s = SqlRunStore.sqlite(tmp_path / "runs.db")
    else:
        s = SqlRunStore.postgres(request.getfixturevalue("pg_url"))
    yield s
    await s.close()


class Chatty:
    """Emits `n` numbered events as fast as it can, then completes."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def invoke(self, input: Any, *, emit: EventSink | None = None, **_: Any) -> RunOutcome:
        assert emit is not None
        for i in range(self.n):
            await emit("step", {"i": i})
            if i % 7 == 0:
                await asyncio.sleep(0)  # let the flusher interleave with more events
        return RunOutcome("completed", output={"steps": self.n})


async def test_a_burst_claim_takes_the_oldest_runs_and_one_per_thread(store: SqlRunStore) -> None:
    runs = [new_run(tenant="a", thread_id=None, agent="x", input=i) for i in range(5)]
    same = [new_run(tenant="a", thread_id="t1", agent="x", input=f"t{i}") for i in range(3)]
    for run in [*runs[:2], *same, *runs[2:]]:
        await store.create(run)
    claimed = await store.claim_many("w", 30, limit=16)
    ids = [r.id for r in claimed]
    # Every independent run, and of the thread's three runs only the first: the others wait.
    assert sorted(ids) == sorted([*(r.id for r in runs), same[0].id])
    assert [r.created_at for r in claimed] == sorted(r.created_at for r in claimed)
    assert all(r.status == "running" and r.worker == "w" for r in claimed)
    assert await store.claim_many("w2", 30, limit=16) == []  # t1's next run waits for its first
    assert await store.finish(same[0].id, "w", RunOutcome("completed", output=1), None)
    nxt = await store.claim_many("w2", 30, limit=16)
    assert [r.id for r in nxt] == [same[1].id]


async def test_a_burst_claim_respects_its_limit(store: SqlRunStore) -> None:
    for i in range(6):
        await store.create(new_run(tenant="a", thread_id=None, agent="x", input=i))
    first = await store.claim_many("w", 30, limit=4)
    rest = await store.claim_many("w", 30, limit=4)
    assert (len(first), len(rest)) == (4, 2)
    assert {r.id for r in first}.isdisjoint({r.id for r in rest})


async def test_events_written_behind_keep_their_order_and_come_before_the_end(store: SqlRunStore) -> None:
    rt = Runtime(store, {"chatty": Chatty(60)})
    async with rt:
        run = await rt.run(tenant="a", agent="chatty", input="go", timeout=30)
        assert run.status == "completed"
        events = await store.events(run.id)
    kinds = [k for _, k, _ in events]
    assert kinds[:2] == ["run_queued", "run_started"]
    assert kinds[-1] == "run_completed"
    assert [d["i"] for _, k, d in events if k == "step"] == list(range(60))
    seqs = [s for s, _, _ in events]
    assert seqs == sorted(seqs)


async def test_a_failed_event_write_fails_the_run_instead_of_vanishing(tmp_path: Path) -> None:
    store = SqlRunStore.sqlite(tmp_path / "runs.db")

    async def broken(run_id: str, events: Any) -> None:
        raise OSError("disk full")

    store.add_events = broken  # type: ignore[method-assign]
    rt = Runtime(store, {"chatty": Chatty(20)})
    async with rt:
        run = await rt.run(tenant="a", agent="chatty", input="go", timeout=30)
    assert run.status == "failed"
    assert run.error is not None and "disk full" in run.error


@pytest.mark.postgres
async def test_api_servers_learn_of_run_ends_over_notify(pg_url: str) -> None:
    gate = asyncio.Event()

    class Gated:
        async def invoke(self, input: Any, **_: Any) -> RunOutcome:
            await asyncio.wait_for(gate.wait(), 10)
            return RunOutcome("completed", output=input)

    api = Runtime.postgres(pg_url, {"gated": Gated()}, workers=0)  # an API server: no workers
    ended: list[str] = []
    heard = asyncio.Event()
    wakeup = api.wakeup
    assert isinstance(wakeup, PostgresWakeup)

    def on_done(run_id: str) -> None:
        if run_id:  # "" is the wake-everyone sent on (re)connecting
            ended.append(run_id)
            heard.set()

    wakeup.on_done.append(on_done)
    worker_store = SqlRunStore.postgres(pg_url)
    worker_wakeup = PostgresWakeup(pg_url)
    worker = Worker(worker_store, {"gated": Gated()}, poll_interval=60, wakeup=worker_wakeup)
    async with api:
        await asyncio.wait_for(wakeup.listening.wait(), 10)
        task = asyncio.create_task(worker.run())
        try:
            run = await api.create_run(tenant="a", agent="gated", input="hi")
            waiting = asyncio.create_task(api.wait(run.id, tenant="a", timeout=20))
            gate.set()
            await asyncio.wait_for(heard.wait(), 10)
            assert run.id in ended  # pushed by the worker's commit, not discovered by polling
            done = await asyncio.wait_for(waiting, 20)
            assert done.status == "completed" and done.output == "hi"
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
            await worker_wakeup.close()
            await worker_store.close()
