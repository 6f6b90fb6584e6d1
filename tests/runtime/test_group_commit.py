"""Group commit (`bastion._pg.GroupWriter`): the rows of concurrent writers share statements, each
writer's rows keep their order, and one bad row fails only its own writer. On a real PostgreSQL:
the events and checkpoints of concurrent runs."""

from __future__ import annotations

import asyncio
import json

import pytest

from bastion._pg import GroupWriter
from bastion.checkpoint._base import CheckpointRecord
from bastion.runtime import SqlRunStore, new_run


async def test_concurrent_writers_share_statements_in_order() -> None:
    writes: list[list[tuple[int, int]]] = []
    started, gate = asyncio.Event(), asyncio.Event()

    async def write(rows: list[tuple[int, int]]) -> None:
        writes.append(rows)
        started.set()
        await asyncio.wait_for(gate.wait(), 5)  # the first write is in flight while the rest gather

    writer: GroupWriter[tuple[int, int]] = GroupWriter(write)
    tasks = [asyncio.create_task(writer.submit([(0, 0), (0, 1)]))]
    await asyncio.wait_for(started.wait(), 5)
    tasks += [asyncio.create_task(writer.submit([(w, 0), (w, 1)])) for w in range(1, 20)]
    await asyncio.sleep(0)  # (they submit)
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(writes) == 2  # one for the first writer, one for the 19 that came meanwhile
    assert writes[0] == [(0, 0), (0, 1)]
    assert writes[1] == [(w, i) for w in range(1, 20) for i in (0, 1)]


async def test_a_bad_row_fails_its_own_writer_only() -> None:
    stored: list[str] = []
    gate = asyncio.Event()

    async def write(rows: list[str]) -> None:
        await asyncio.wait_for(gate.wait(), 5)
        if "bad" in rows:
            raise ValueError("constraint violated")
        stored.extend(rows)

    writer: GroupWriter[str] = GroupWriter(write)
    first = asyncio.create_task(writer.submit(["a"]))
    await asyncio.sleep(0)  # "a" is in flight, the others gather behind it
    good = asyncio.create_task(writer.submit(["b", "c"]))
    bad = asyncio.create_task(writer.submit(["bad"]))
    later = asyncio.create_task(writer.submit(["d"]))
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, good, later), 5)
    with pytest.raises(ValueError, match="constraint"):
        await bad
    assert stored == ["a", "b", "c", "d"]


async def test_a_cancelled_writer_still_has_its_rows_written() -> None:
    stored: list[int] = []
    gate = asyncio.Event()

    async def write(rows: list[int]) -> None:
        await asyncio.wait_for(gate.wait(), 5)
        stored.extend(rows)

    writer: GroupWriter[int] = GroupWriter(write)
    task = asyncio.create_task(writer.submit([1, 2]))
    await asyncio.sleep(0)
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(writer.submit([3]), 5)  # written after the cancelled one's rows
    assert stored == [1, 2, 3]


async def test_events_of_concurrent_runs_on_postgres(pg_url: str) -> None:
    store = SqlRunStore.postgres(pg_url)
    try:
        runs = [new_run(tenant="t", thread_id=None, agent="a", input=i) for i in range(40)]
        for run in runs:
            await store.create(run)

        async def emit(run_id: str) -> None:
            for i in range(5):
                await store.add_events(run_id, [("step", json.dumps({"i": i, "j": j}), float(i)) for j in range(2)])

        await asyncio.wait_for(asyncio.gather(*(emit(r.id) for r in runs)), 60)
        for run in runs:
            events = await store.events(run.id)
            assert [k for _, k, _ in events] == ["run_queued"] + ["step"] * 10
            assert [(d["i"], d["j"]) for _, _, d in events[1:]] == [(i, j) for i in range(5) for j in range(2)]
            seqs = [s for s, _, _ in events]
            assert seqs == sorted(seqs)
    finally:
        await store.close()


async def test_checkpoints_of_concurrent_threads_on_postgres(pg_url: str) -> None:
    from bastion.checkpoint import PostgresCheckpointer

    saver = PostgresCheckpointer(pg_url, async_commit=True)
    try:

        def record(thread: int, step: int, payload: str = "") -> CheckpointRecord:
            cid = f"{step:04d}"
            parent = f"{step - 1:04d}" if step else None
            return CheckpointRecord(
                f"th{thread}", "", cid, parent, "0000", step, float(step), payload or f"{thread}/{step}"
            )

        async def thread(t: int) -> None:
            for step in range(4):
                await saver.put(record(t, step))
            await saver.put(record(t, 3, "rewritten"))  # the same checkpoint again: its payload is replaced

        await asyncio.wait_for(asyncio.gather(*(thread(t) for t in range(30))), 60)
        for t in range(30):
            latest = await saver.get(f"th{t}")
            assert latest is not None and latest.checkpoint_id == "0003" and latest.payload == "rewritten"
            assert [r.payload for r in await saver.list(f"th{t}")][1:] == [f"{t}/{s}" for s in (2, 1, 0)]
    finally:
        await saver.aclose()
