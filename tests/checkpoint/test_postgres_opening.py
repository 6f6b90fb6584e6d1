"""The PostgreSQL checkpointer opens one pool, however many runs store their first checkpoints at
once. Two pools meant two group writers: a run's checkpoints could commit out of order, a child
before its parent, and a worker killed in between left a thread that had lost its ancestor (the
chaos test caught it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bastion.checkpoint import CheckpointRecord, PostgresCheckpointer

pytestmark = pytest.mark.postgres


async def test_concurrent_first_writers_share_one_pool_and_keep_each_runs_order(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg_pool

    opened: list[Any] = []
    real_open = psycopg_pool.AsyncConnectionPool.open

    async def counting_open(self: Any, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        await asyncio.sleep(0)  # (one loop turn: every first writer is waiting by now)
        await real_open(self, *args, **kwargs)

    monkeypatch.setattr(psycopg_pool.AsyncConnectionPool, "open", counting_open)
    cp = PostgresCheckpointer(pg_url)
    try:

        async def run(i: int) -> None:  # a run storing its chain of checkpoints, parent first
            parent = None
            for step in range(3):
                cid = f"{i:04d}-{step}"
                await cp.put(CheckpointRecord(f"opening-{i}", "", cid, parent, f"{i:04d}-0", step, 0.0, "{}"))
                parent = cid

        await asyncio.gather(*(run(i) for i in range(20)))
        assert len(opened) == 1, f"{len(opened)} pools opened"
        for i in range(20):
            latest = await cp.get(f"opening-{i}")
            assert latest is not None and latest.checkpoint_id == f"{i:04d}-2"
            chain = await cp.get_chain(f"opening-{i}")  # (raises if an ancestor is missing)
            assert {r.checkpoint_id for r in chain} == {f"{i:04d}-{step}" for step in range(3)}
    finally:
        await cp.aclose()


async def test_a_failed_opening_fails_its_waiters_and_is_tried_again(pg_url: str) -> None:
    from bastion.errors import CheckpointError

    cp = PostgresCheckpointer(pg_url)
    real_open = cp._open  # pyright: ignore[reportPrivateUsage]
    attempts = 0

    async def flaky_open() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.sleep(0)
            raise CheckpointError("cannot open PostgreSQL checkpoint store: the database is starting up")
        await real_open()

    cp._open = flaky_open  # type: ignore[method-assign]  # pyright: ignore[reportPrivateUsage]
    record = CheckpointRecord("t", "", "c0", None, "c0", 0, 0.0, "{}")
    try:
        results = await asyncio.gather(*(cp.put(record) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, CheckpointError) for r in results) and attempts == 1, results
        await cp.put(record)  # the next caller opens it
        assert attempts == 2 and (await cp.get("t")) is not None
    finally:
        await cp.aclose()
