"""What the PostgreSQL stores share: a connection pool that opens on first use and creates its
tables once, group commit for rows written by many tasks, and pgvector's text form of a vector.

The pool is shared by PostgreSQL stores (the gateway's budgets, batches and semantic cache, the eval
datasets): they open lazily, so they can be built outside an event loop, and they create their
schema under an advisory lock, because concurrent `CREATE ... IF NOT EXISTS` still collide (a
unique violation in pg_type) when several processes start at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from bastion.errors import MissingExtraError

T = TypeVar("T")


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form (`'[0.1,0.2,...]'::vector`). Nine significant digits round-trip a
    float32, so the database holds the embedder's exact vector."""
    return "[" + ",".join(f"{x:.9g}" for x in vector) + "]"


class LazyPool:
    def __init__(self, url: str, *, schema: str, schema_lock: int, max_connections: int, owner: str) -> None:
        try:
            from psycopg_pool import AsyncConnectionPool
        except ImportError as e:
            raise MissingExtraError("postgres", "psycopg-pool", owner) from e
        self._pool: Any = AsyncConnectionPool(url, min_size=1, max_size=max_connections, open=False)
        self._schema = schema
        self._schema_lock = schema_lock
        self._ready = False
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        """The open pool (opened, and the schema created, by the first caller)."""
        if not self._ready:
            async with self._lock:
                if not self._ready:
                    await self._pool.open()
                    async with self._pool.connection() as conn, conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._schema_lock,))
                        await conn.execute(self._schema)
                    self._ready = True
        return self._pool

    async def close(self) -> None:
        if self._ready:
            await self._pool.close()
            self._ready = False


class LoopPool:
    """An async connection pool (autocommit) for a store whose core is sync: it opens on first use
    by the event loop that uses it first, and `get()` returns it to that loop only (a pool belongs
    to one loop); any other loop gets None and uses the store's threads instead."""

    def __init__(self, url: str, *, max_size: int) -> None:
        self._url = url
        self._max_size = max_size
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Task[Any] | None = None

    async def get(self) -> Any:
        """The pool of the running loop (opened by the first caller), or None for another loop."""
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._loop is None:
            self._loop = loop
            self._opening = loop.create_task(self._open())
        elif self._loop is not loop:
            return None
        assert self._opening is not None
        # shielded: a cancelled caller must not cancel the opening the others wait for
        return await asyncio.shield(self._opening)

    async def execute(
        self, sql: str, params: Sequence[Any], *, fetch: str, otherwise: Callable[[], Any], prepare: bool | None = None
    ) -> Any:
        """One statement on this loop's pool: its row (`fetch="one"`), rows (`"all"`) or None.
        From another loop, `otherwise()` (the store's sync path) runs in a thread instead."""
        pool = await self.get()
        if pool is None:
            return await asyncio.to_thread(otherwise)
        async with pool.connection() as conn:
            cur = await conn.execute(sql, params, prepare=prepare)
            return await cur.fetchone() if fetch == "one" else await cur.fetchall() if fetch == "all" else None

    async def _open(self) -> Any:
        from psycopg_pool import AsyncConnectionPool

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._url, min_size=1, max_size=self._max_size, open=False, kwargs={"autocommit": True}
        )
        try:
            await pool.open(wait=True)
        except BaseException:
            self._loop = None  # the next caller tries again
            await pool.close()
            raise
        self._pool = pool
        return pool

    async def close(self) -> None:
        pool, loop, self._pool, self._loop = self._pool, self._loop, None, None
        if pool is not None and loop is asyncio.get_running_loop():
            await pool.close()  # (a pool of a loop gone by cannot be closed from this one)


class GroupWriter(Generic[T]):
    """Group commit: rows submitted by many tasks at once go to the database in one statement.

    `submit(rows)` returns once a write carrying its rows has committed (or raises its error).
    While a write is in flight, new rows gather for the next, so under load one statement carries
    the rows of many runs; alone, a submitter pays one write as before. A failed batch is retried
    per submitter, so one bad row fails its own submitter only. Belongs to one event loop.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], *, max_rows: int = 2_000) -> None:
        self._write = write
        self._max_rows = max_rows
        self._pending: list[tuple[Sequence[T], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, rows: Sequence[T]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a submitter that stopped waiting leaves no warning
        self._pending.append((rows, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        # shielded: a cancelled submitter stops waiting; its rows are written with the others
        await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch: list[tuple[Sequence[T], asyncio.Future[None]]] = []
            count = 0
            while self._pending and (not batch or count + len(self._pending[0][0]) <= self._max_rows):
                rows, future = self._pending.pop(0)
                batch.append((rows, future))
                count += len(rows)
            try:
                await self._write([row for rows, _ in batch for row in rows])
            except Exception as e:
                if len(batch) == 1:
                    _settle(batch[0][1], e)
                    continue
                for rows, future in batch:  # find whose rows failed: one write each
                    try:
                        await self._write(list(rows))
                    except Exception as each:
                        _settle(future, each)
                    else:
                        _settle(future, None)
                continue
            for _, future in batch:
                _settle(future, None)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
