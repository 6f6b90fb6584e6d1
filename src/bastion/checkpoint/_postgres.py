"""PostgreSQL checkpointer (psycopg 3 + psycopg_pool): shared durable state for many workers.

Needs `pip install 'bastion[postgres]'`. The pool opens lazily on first use inside the running
event loop; use the async graph API with it (a pool belongs to one loop), and `await aclose()`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bastion._pg import GroupWriter
from bastion.checkpoint._base import CheckpointRecord, JournalEntry, WriteRecord, follow_parents
from bastion.errors import CheckpointError, MissingExtraError

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bastion_checkpoints (
    thread_id TEXT NOT NULL, ns TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
    parent_id TEXT, keyframe_id TEXT NOT NULL, step INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (thread_id, ns, checkpoint_id));
CREATE TABLE IF NOT EXISTS bastion_writes (
    seq BIGSERIAL PRIMARY KEY, thread_id TEXT NOT NULL, ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL, task_id TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bastion_writes_by_checkpoint ON bastion_writes (thread_id, ns, checkpoint_id);
CREATE TABLE IF NOT EXISTS bastion_journal (
    thread_id TEXT NOT NULL, ns TEXT NOT NULL, task_id TEXT NOT NULL, key TEXT NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (thread_id, ns, task_id, key));
"""

_COLS = "thread_id, ns, checkpoint_id, parent_id, keyframe_id, step, created_at, payload"


def _rec(row: Sequence[Any]) -> CheckpointRecord:
    return CheckpointRecord(row[0], row[1], row[2], row[3], row[4], int(row[5]), float(row[6]), row[7])


class PostgresCheckpointer:
    """Checkpoints in PostgreSQL tables `bastion_checkpoints`, `bastion_writes`, `bastion_journal`.

    The graph engine writes its checkpoints behind the steps here (`write_behind`): the next step
    starts while one is stored, and a run (or an interrupt) ends only once all of them are; a
    worker killed in between loses the steps still in flight, which recovery runs again. The
    checkpoints of concurrent runs share one INSERT (group commit)."""

    write_behind = True

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, async_commit: bool = False) -> None:
        """`async_commit=True`: checkpoints and pending writes commit without waiting for the WAL
        flush; they become durable with the next durable commit on the database (WAL is flushed in
        order). Right where something durable always follows — the runtime records every run's end
        (and an interrupt) durably, so `ProjectEnv.checkpointer()` turns it on; a PostgreSQL crash
        in between loses only steps that recovery re-runs. Journal entries stay durable."""
        import importlib.util

        for module in ("psycopg", "psycopg_pool"):
            if importlib.util.find_spec(module) is None:
                raise MissingExtraError("postgres", module.replace("_", "-"), "PostgresCheckpointer")
        self.url = url
        self._min = min_size
        self._max = max_size
        self._pool: AsyncConnectionPool[Any] | None = None
        self._async_commit = async_commit
        # Checkpoints of concurrent runs share one INSERT (group commit); bound to the pool's loop.
        self._puts: GroupWriter[CheckpointRecord] | None = None
        self._opening: asyncio.Future[None] | None = None

    def _connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if self._async_commit:
            kwargs["options"] = "-c synchronous_commit=off"
        return kwargs

    async def _get_pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            # One opening for all first callers: a pool (and a group writer) each would let a
            # run's checkpoints commit out of order, a child before its parent, and a worker
            # killed in between left a thread whose latest checkpoint had lost its ancestor.
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open())
            opening = self._opening
            try:
                await asyncio.shield(opening)  # a cancelled caller must not cancel the others' opening
            except Exception:
                if self._opening is opening:
                    self._opening = None  # the next caller tries again
                raise
        assert self._pool is not None
        return self._pool

    async def _open(self) -> None:
        if self._pool is None:
            from psycopg_pool import AsyncConnectionPool

            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.url, min_size=self._min, max_size=self._max, open=False, kwargs=self._connection_kwargs()
            )
            try:
                await pool.open(wait=True)
                async with pool.connection() as conn, conn.transaction():
                    # Several processes may start at once; CREATE ... IF NOT EXISTS races on the
                    # catalog without this lock ("duplicate key value violates unique constraint").
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bastion_checkpoint_schema'))")
                    await conn.execute(_SCHEMA)  # type: ignore[arg-type]
            except Exception as e:
                await pool.close()
                raise CheckpointError(f"cannot open PostgreSQL checkpoint store: {e}") from e
            self._puts = GroupWriter(self._put_many)
            self._pool = pool

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        pool = await self._get_pool()
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(sql, args)  # type: ignore[arg-type]
                return await cur.fetchall()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"PostgreSQL checkpoint store failed: {e}") from e

    async def _tx(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]], *, durable: bool = True) -> None:
        """One transaction; `durable=False` commits without waiting for the WAL flush. One row of
        one statement, at the connection's own durability, is one round trip (autocommit)."""
        pool = await self._get_pool()
        try:
            if len(statements) == 1 and len(statements[0][1]) == 1 and durable != self._async_commit:
                async with pool.connection() as conn:
                    await conn.execute(statements[0][0], statements[0][1][0])  # type: ignore[arg-type]
                return
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if durable == self._async_commit:
                    await cur.execute(f"SET LOCAL synchronous_commit = {'on' if durable else 'off'}")
                for sql, rows in statements:
                    if len(rows) == 1:
                        await cur.execute(sql, rows[0])  # type: ignore[arg-type]
                    elif rows:
                        await cur.executemany(sql, rows)  # type: ignore[arg-type]
        except Exception as e:
            raise CheckpointError(f"PostgreSQL checkpoint store failed: {e}") from e

    async def put(self, record: CheckpointRecord) -> None:
        await self._get_pool()
        assert self._puts is not None
        await self._puts.submit((record,))

    async def _put_many(self, records: list[CheckpointRecord]) -> None:
        """One statement for any number of checkpoints (at the connection's durability)."""
        latest = {(r.thread_id, r.ns, r.checkpoint_id): r for r in records}  # one row per key per statement
        rows = [
            (r.thread_id, r.ns, r.checkpoint_id, r.parent_id, r.keyframe_id, r.step, r.created_at, r.payload)
            for r in latest.values()
        ]
        await self._tx(
            [
                (
                    # rows as one JSON array: json.dumps is far cheaper than psycopg's list dumper
                    f"INSERT INTO bastion_checkpoints ({_COLS}) SELECT e->>0, e->>1, e->>2, e->>3, e->>4, "
                    "(e->>5)::int, (e->>6)::float8, e->>7 FROM json_array_elements(%s::json) AS e "
                    "ON CONFLICT (thread_id, ns, checkpoint_id) DO UPDATE SET payload=EXCLUDED.payload",
                    [(json.dumps(rows),)],
                )
            ],
            durable=not self._async_commit,
        )

    async def put_writes(self, writes: Sequence[WriteRecord]) -> None:
        if not writes:
            return
        await self._tx(
            [
                (
                    "INSERT INTO bastion_writes (thread_id, ns, checkpoint_id, task_id, kind, payload) "
                    "VALUES (%s,%s,%s,%s,%s,%s)",
                    [(w.thread_id, w.ns, w.checkpoint_id, w.task_id, w.kind, w.payload) for w in writes],
                )
            ],
            durable=not self._async_commit,
        )

    async def get(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> CheckpointRecord | None:
        if checkpoint_id is None:
            rows = await self._fetch(
                f"SELECT {_COLS} FROM bastion_checkpoints WHERE thread_id=%s AND ns=%s "
                "ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_id, ns),
            )
        else:
            rows = await self._fetch(
                f"SELECT {_COLS} FROM bastion_checkpoints WHERE thread_id=%s AND ns=%s AND checkpoint_id=%s",
                (thread_id, ns, checkpoint_id),
            )
        return _rec(rows[0]) if rows else None

    async def get_chain(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> list[CheckpointRecord]:
        target = await self.get(thread_id, ns, checkpoint_id)
        if target is None:
            return []
        if target.is_keyframe:
            return [target]
        candidates = await self._fetch(
            f"SELECT {_COLS} FROM bastion_checkpoints WHERE thread_id=%s AND ns=%s "
            "AND checkpoint_id>=%s AND checkpoint_id<%s",
            (thread_id, ns, target.keyframe_id, target.checkpoint_id),
        )
        return follow_parents([_rec(c) for c in candidates], target)

    async def list(
        self, thread_id: str, ns: str = "", *, before: str | None = None, limit: int | None = None
    ) -> list[CheckpointRecord]:
        sql = f"SELECT {_COLS} FROM bastion_checkpoints WHERE thread_id=%s AND ns=%s"
        args: list[Any] = [thread_id, ns]
        if before is not None:
            sql += " AND checkpoint_id<%s"
            args.append(before)
        sql += " ORDER BY checkpoint_id DESC"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        return [_rec(r) for r in await self._fetch(sql, args)]

    async def get_writes(self, thread_id: str, ns: str, checkpoint_id: str) -> list[WriteRecord]:
        rows = await self._fetch(
            "SELECT task_id, kind, payload FROM bastion_writes WHERE thread_id=%s AND ns=%s AND checkpoint_id=%s "
            "ORDER BY seq",
            (thread_id, ns, checkpoint_id),
        )
        return [WriteRecord(thread_id, ns, checkpoint_id, t, k, p) for t, k, p in rows]

    async def put_journal(self, entry: JournalEntry) -> None:
        e = entry
        await self._tx(
            [
                (
                    "INSERT INTO bastion_journal VALUES (%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                    [(e.thread_id, e.ns, e.task_id, e.key, e.payload)],
                )
            ]
        )

    async def get_journal(self, thread_id: str, ns: str, task_id: str) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT key, payload FROM bastion_journal WHERE thread_id=%s AND ns=%s AND task_id=%s",
            (thread_id, ns, task_id),
        )
        return {k: p for k, p in rows}

    async def fork(self, thread_id: str, ns: str, checkpoint_id: str, new_thread_id: str) -> None:
        chain = await self.get_chain(thread_id, ns, checkpoint_id)
        if not chain:
            raise CheckpointError(f"no checkpoint {checkpoint_id!r} in thread {thread_id!r} to fork")
        await self._tx(
            [
                (
                    f"INSERT INTO bastion_checkpoints ({_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT DO NOTHING",
                    [
                        (
                            new_thread_id,
                            r.ns,
                            r.checkpoint_id,
                            r.parent_id,
                            r.keyframe_id,
                            r.step,
                            r.created_at,
                            r.payload,
                        )
                        for r in chain
                    ],
                )
            ]
        )

    async def delete_thread(self, thread_id: str) -> None:
        await self._tx(
            [
                (f"DELETE FROM {table} WHERE thread_id=%s", [(thread_id,)])
                for table in ("bastion_checkpoints", "bastion_writes", "bastion_journal")
            ]
        )

    async def prune(self, *, older_than: float, keep_interrupted: bool = True) -> list[str]:
        protect = (
            """AND NOT EXISTS (SELECT 1 FROM bastion_writes w WHERE w.thread_id=c.thread_id AND w.ns=''
                 AND w.kind='interrupt' AND w.checkpoint_id=(SELECT max(checkpoint_id) FROM bastion_checkpoints
                 WHERE thread_id=c.thread_id AND ns=''))"""
            if keep_interrupted
            else ""
        )
        rows = await self._fetch(
            f"SELECT c.thread_id FROM bastion_checkpoints c GROUP BY c.thread_id "
            f"HAVING max(c.created_at) < %s {protect} ORDER BY c.thread_id",
            (older_than,),
        )
        doomed = [r[0] for r in rows]
        if doomed:
            await self._tx(
                [
                    (f"DELETE FROM {table} WHERE thread_id = ANY(%s)", [(doomed,)])
                    for table in ("bastion_checkpoints", "bastion_writes", "bastion_journal")
                ]
            )
        return doomed

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
            self._puts = None
            self._opening = None


__all__ = ["PostgresCheckpointer"]
