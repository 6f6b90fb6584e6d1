"""What the PostgreSQL stores share: a connection pool that opens on first use and creates its
tables once, and pgvector's text form of a vector.

The pool is shared by PostgreSQL stores (the gateway's budgets, batches and semantic cache, the eval
datasets): they open lazily, so they can be built outside an event loop, and they create their
schema under an advisory lock, because concurrent `CREATE ... IF NOT EXISTS` still collide (a
unique violation in pg_type) when several processes start at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bastion.errors import MissingExtraError


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
