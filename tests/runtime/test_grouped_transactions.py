"""SQLite group commit (`bastion._grouped`): the writes of concurrent tasks share one
transaction, each keeps its own outcome, and the run store and the checkpointer use it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from bastion._grouped import Execute, GroupedTransactions, run_grouped
from bastion.checkpoint import CheckpointRecord, SqliteCheckpointer
from bastion.runtime import SqlRunStore, new_run


def _db(path: Path, timeout: float = 5.0) -> tuple[sqlite3.Connection, list[str]]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    return conn, statements


def _insert(k: str, v: Any) -> Any:
    def work(execute: Execute) -> str:
        execute("INSERT INTO t VALUES (?, ?)", (k, v))
        return k

    return work


async def test_concurrent_writes_share_one_commit_and_keep_their_own_outcome(tmp_path: Path) -> None:
    conn, statements = _db(tmp_path / "g.db")
    group = GroupedTransactions(lambda works: run_grouped(conn, works))
    # "b" violates NOT NULL: it fails alone; the others commit with it in the same transaction
    outcomes = await asyncio.gather(
        *(group.submit(_insert(k, None if k == "b" else 1)) for k in "abcde"), return_exceptions=True
    )
    assert outcomes[0] == "a" and outcomes[2:] == ["c", "d", "e"]
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert statements.count("COMMIT") == 1 and statements.count("BEGIN IMMEDIATE") == 1
    assert [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")] == ["a", "c", "d", "e"]
    # one write alone: no savepoint, and its error rolls it back
    statements.clear()
    with pytest.raises(sqlite3.IntegrityError):
        await group.submit(_insert("a", 2))  # duplicate key
    assert "SAVEPOINT w" not in statements and statements[-1] == "ROLLBACK"
    assert conn.execute("SELECT v FROM t WHERE k = 'a'").fetchone() == (1,)


async def test_a_transaction_that_cannot_begin_fails_every_writer_and_writes_nothing(tmp_path: Path) -> None:
    conn, _ = _db(tmp_path / "g.db", timeout=0.05)
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None, timeout=5)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    group = GroupedTransactions(lambda works: run_grouped(conn, works))
    try:
        outcomes = await asyncio.gather(*(group.submit(_insert(k, 1)) for k in "xyz"), return_exceptions=True)
    finally:
        other.execute("ROLLBACK")
    assert all(isinstance(o, sqlite3.OperationalError) and "locked" in str(o) for o in outcomes)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert await group.submit(_insert("x", 1)) == "x"  # and the next write goes through


async def test_a_cancelled_writer_still_has_its_write_committed(tmp_path: Path) -> None:
    conn, _ = _db(tmp_path / "g.db")
    group = GroupedTransactions(lambda works: run_grouped(conn, works))
    task = asyncio.ensure_future(group.submit(_insert("late", 1)))
    await asyncio.sleep(0)  # (one loop turn: the task has submitted; the write runs at the next)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await group.submit(_insert("next", 1))  # the group has flushed since
    assert [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")] == ["late", "next"]


async def test_a_writer_on_another_loop_gets_a_transaction_of_its_own(tmp_path: Path) -> None:
    conn, statements = _db(tmp_path / "g.db")
    group = GroupedTransactions(lambda works: run_grouped(conn, works))
    assert await group.submit(_insert("here", 1)) == "here"  # binds the group to this loop
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(group.submit(_insert("there", 1)))))
    thread.start()
    thread.join(timeout=30)
    assert result == ["there"]
    assert statements.count("COMMIT") == 2


async def test_the_run_store_and_the_checkpointer_group_their_commits(tmp_path: Path) -> None:
    store = SqlRunStore.sqlite(tmp_path / "runs.db")
    cp = SqliteCheckpointer(tmp_path / "cp.db")
    commits = {"runs": 0, "checkpoints": 0}

    def count(name: str) -> Any:
        def on(sql: str) -> None:
            if sql == "COMMIT":
                commits[name] += 1

        return on

    try:
        store._conn().set_trace_callback(count("runs"))  # pyright: ignore[reportPrivateUsage]
        cp._db.set_trace_callback(count("checkpoints"))  # pyright: ignore[reportPrivateUsage]
        runs = [new_run(tenant="t", thread_id=None, agent="a", input=i) for i in range(20)]
        await asyncio.gather(*(store.create(r) for r in runs))
        records = [
            CheckpointRecord(r.thread_id, "", f"c{i:04d}", None, f"c{i:04d}", 0, 0.0, "{}") for i, r in enumerate(runs)
        ]
        await asyncio.gather(*(cp.put(rec) for rec in records))
        assert commits == {"runs": 1, "checkpoints": 1}
        assert len(await store.list("t", limit=100)) == 20
        assert all([await cp.get(rec.thread_id) for rec in records])
    finally:
        cp.close()
        await store.close()
