"""The runtime's fast paths keep its guarantees: burst claims (one run per thread at a time,
oldest first), events written behind (in order, before the run's end), run ends pushed to API
servers over LISTEN/NOTIFY instead of polled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.runtime import PostgresWakeup, RunOutcome, Runtime, SqlRunStore, Worker
from bastion.runtime._store import DONE_CHANNEL, NOTIFY_CHANNEL, new_run
from bastion.runtime._types import EventSink


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlRunStore]:
    if request.param == "sqlite":
        s = SqlRunStore.sqlite(tmp_path / "runs.db")
    else:
        s = SqlRunStore.postgres(request.getfixturevalue("pg_url"))
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def _worker_process(pg_url: str, agents: dict[str, Any]) -> AsyncIterator[Worker]:
    """A worker with its own store and LISTEN connection, as a `bastion worker` process has."""
    store = SqlRunStore.postgres(pg_url)
    wakeup = PostgresWakeup(pg_url)
    worker = Worker(store, agents, poll_interval=60, wakeup=wakeup)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await wakeup.close()
        await store.close()


class Chatty:
    """Emits `n` numbered events as fast as it can (pausing `pause` s every 7th), then completes."""

    def __init__(self, n: int, pause: float = 0.0) -> None:
        self.n = n
        self.pause = pause

    async def invoke(self, input: Any, *, emit: EventSink | None = None, **_: Any) -> RunOutcome:
        assert emit is not None
        for i in range(self.n):
            await emit("step", {"i": i})
            if i % 7 == 0:
                await asyncio.sleep(self.pause)  # let the flusher interleave with more events
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


@pytest.mark.parametrize("pause", [0.0, 0.01])
async def test_events_written_behind_keep_their_order_and_come_before_the_end(store: SqlRunStore, pause: float) -> None:
    # Written behind while the run goes on (with and without pauses), the rest with its end.
    rt = Runtime(store, {"chatty": Chatty(60, pause)})
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
    async with api:
        await asyncio.wait_for(wakeup.listening.wait(), 10)
        async with _worker_process(pg_url, {"gated": Gated()}):
            run = await api.create_run(tenant="a", agent="gated", input="hi")
            waiting = asyncio.create_task(api.wait(run.id, tenant="a", timeout=20))
            gate.set()
            await asyncio.wait_for(heard.wait(), 10)
            assert run.id in ended  # pushed by the worker's commit, not discovered by polling
            done = await asyncio.wait_for(waiting, 20)
            assert done.status == "completed" and done.output == "hi"


async def test_a_worker_waits_for_a_wake_up_after_a_claim_that_left_slots_free(tmp_path: Path) -> None:
    store = SqlRunStore.sqlite(tmp_path / "runs.db")
    claims: list[int] = []
    claim_many = store.claim_many

    async def counted(worker: str, lease_seconds: float, limit: int) -> list[Any]:
        runs = await claim_many(worker, lease_seconds, limit)
        claims.append(len(runs))
        return runs

    store.claim_many = counted  # type: ignore[method-assign]
    run = await store.create(new_run(tenant="a", thread_id=None, agent="chatty", input="go"))
    worker = Worker(store, {"chatty": Chatty(3)}, poll_interval=60)  # nothing but stop() wakes it
    ended = asyncio.Event()
    worker.done_callbacks.append(lambda _: ended.set())
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(ended.wait(), 10)
    worker.stop()
    await asyncio.wait_for(task, 10)
    # One claim took the only run; the queue was empty then, so no second (empty) claim.
    assert claims == [1]
    done = await store.get(run.id)
    assert done is not None and done.status == "completed"
    await store.close()


@pytest.mark.postgres
async def test_each_process_listens_only_to_the_channels_it_hears(pg_url: str) -> None:
    api = PostgresWakeup(pg_url)  # an API server: run ends wake its waiting clients
    api.on_done.append(lambda _: None)
    worker_wakeup = PostgresWakeup(pg_url)  # a `bastion worker`: queued runs wake it
    store = SqlRunStore.postgres(pg_url)
    worker = Worker(store, {"chatty": Chatty(1)}, poll_interval=60, wakeup=worker_wakeup)
    both = PostgresWakeup(pg_url)  # nobody said: both
    try:
        for w in (api, worker_wakeup, both):
            w.start()
            await asyncio.wait_for(w.listening.wait(), 10)
        assert api.channels == {DONE_CHANNEL}
        assert worker_wakeup.channels == {NOTIFY_CHANNEL}
        assert both.channels == {NOTIFY_CHANNEL, DONE_CHANNEL}
        # A server whose runtime starts a worker later listens for runs from then on.
        api.want_runs()
        await asyncio.wait_for(api.listening.wait(), 10)
        assert api.channels == {NOTIFY_CHANNEL, DONE_CHANNEL}
        await api.wait(0)  # the reconnect woke everyone once; consumed
        # ... and a queued run wakes it (well before the 30 s the wait allows).
        task = asyncio.create_task(worker.run())
        woke = asyncio.create_task(api.wait(30))
        await store.create(new_run(tenant="a", thread_id=None, agent="chatty", input="go"))
        await asyncio.wait_for(woke, 10)
        worker.stop()
        await asyncio.wait_for(task, 10)
    finally:
        for w in (api, worker_wakeup, both):
            await w.close()
        await store.close()


async def test_the_last_events_are_kept_when_the_outcome_cannot_be_stored(store: SqlRunStore) -> None:
    # A run's unwritten events go with its end; when the outcome does not serialise and the end
    # falls back to `failed`, they go with that end instead of being dropped.
    worker = Worker(store, {})
    run = new_run(tenant="a", thread_id=None, agent="x", input="go")
    await store.create(run)
    [claimed] = await store.claim_many(worker.id, 30, limit=1)
    circular: list[Any] = []
    circular.append(circular)
    last = [("step", '{"n": 1}', claimed.created_at), ("step", '{"n": 2}', claimed.created_at)]
    assert await worker._finish(claimed, RunOutcome("completed", output=circular), None, None, last)  # pyright: ignore[reportPrivateUsage]
    ended = await store.get(run.id)
    assert ended is not None and ended.status == "failed"
    assert ended.error is not None and "could not be recorded" in ended.error
    events = await store.events(run.id)
    assert [k for _, k, _ in events][-3:] == ["step", "step", "run_failed"]
    assert [d["n"] for _, k, d in events if k == "step"] == [1, 2]


@pytest.mark.postgres
async def test_a_waiting_client_gets_the_run_its_end_notification_carried(pg_url: str) -> None:
    """The run-done NOTIFY carries the ended run (up to NOTIFY's 8,000 bytes): an API server
    answers its waiting client without reading the run back; a bigger run is read from the
    store; another tenant's wait on the id is refused; a resumed run is not answered with the
    notification of its earlier pause."""
    from bastion.runtime import RunNotFoundError

    class Echo:
        async def invoke(self, input: Any, *, resume: Any = None, **_: Any) -> RunOutcome:
            if input == "ask" and resume is None:
                return RunOutcome("interrupted", interrupts=[{"id": "i1", "value": "ok?"}])
            return RunOutcome("completed", output={"echo": input, "resume": resume})

    api = Runtime.postgres(pg_url, {"echo": Echo()}, workers=0)
    reads: list[str] = []
    get = api.store.get

    async def counted(run_id: str, tenant: str | None = None) -> Any:
        reads.append(run_id)
        return await get(run_id, tenant)

    api.store.get = counted  # type: ignore[method-assign]
    async with api:
        assert isinstance(api.wakeup, PostgresWakeup)
        await asyncio.wait_for(api.wakeup.listening.wait(), 10)
        async with _worker_process(pg_url, {"echo": Echo()}):
            small = await api.create_run(tenant="a", agent="echo", input="hi")
            done = await api.wait(small.id, tenant="a", timeout=20)
            assert done.status == "completed" and done.output == {"echo": "hi", "resume": None}
            assert done.tenant == "a" and done.id == small.id and small.id not in reads  # from the notification

            big_input = "x" * 9_000  # the run no longer fits a notification: its id does
            big = await api.create_run(tenant="a", agent="echo", input=big_input)
            done = await api.wait(big.id, tenant="a", timeout=20)
            assert done.status == "completed" and done.output["echo"] == big_input and big.id in reads

            other = await api.create_run(tenant="a", agent="echo", input="mine")
            with pytest.raises(RunNotFoundError):
                await api.wait(other.id, tenant="b", timeout=20)  # not b's run, however it is learnt

            paused = await api.create_run(tenant="a", agent="echo", input="ask")
            assert (await api.wait(paused.id, tenant="a", timeout=20)).status == "interrupted"
            await api.resume(paused.id, tenant="a", decision={"action": "approve"})
            done = await api.wait(paused.id, tenant="a", timeout=20)
            assert done.status == "completed" and done.output["resume"] == {"action": "approve"}


async def test_a_thread_opened_for_a_run_is_not_read_but_a_named_one_is(tmp_path: Path) -> None:
    class Remembering:
        """Reports where each thread stands, and records the `checkpoint_before` it is run with."""

        def __init__(self) -> None:
            self.reads: list[str] = []
            self.before: list[str | None] = []

        async def latest_checkpoint(self, thread_id: str) -> str | None:
            self.reads.append(thread_id)
            return "cp-1"

        async def invoke(self, input: Any, *, checkpoint_before: str | None = None, **_: Any) -> RunOutcome:
            self.before.append(checkpoint_before)
            return RunOutcome("completed", output=input)

    agent = Remembering()
    async with Runtime.embedded(tmp_path / "runs.db", {"a": agent}) as rt:  # type: ignore[dict-item]
        opened = await rt.run(tenant="t", agent="a", input=1)
        assert opened.thread_id == "thread_" + opened.id.removeprefix("run_") and opened.status == "completed"
        assert agent.reads == [] and agent.before == [None]  # a brand-new thread: nothing to read
        # the client goes on in that thread: now it has a past, and it is read
        again = await rt.run(tenant="t", agent="a", input=2, thread_id=opened.thread_id)
        named = await rt.run(tenant="t", agent="a", input=3, thread_id="mine")
    assert again.status == named.status == "completed"
    assert agent.reads == ["t/" + opened.thread_id, "t/mine"] and agent.before == [None, "cp-1", "cp-1"]
