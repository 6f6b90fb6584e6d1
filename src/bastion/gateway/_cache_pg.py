"""`PostgresSemanticStore`: the semantic cache's entries in PostgreSQL + pgvector (extra
`postgres`), shared by every process and host.

Same protocol as `MemorySemanticStore`. Every query names the tenant and the scope, and the
search is exact over that partition (a B-tree on `(tenant, scope)`, then cosine distance over
its live rows): there is no approximate index over all tenants whose results would be filtered
afterwards, so another tenant's entry can neither be returned nor crowd out one's own. The
vector column has no fixed dimension; a lookup with another dimension than the stored entries
is a `UserError`, as in memory. Expiry uses the caller's clock (`now`, `expires` in epoch
seconds), so a `SemanticCache(clock=...)` behaves the same on both backends.
"""

from __future__ import annotations

from bastion._pg import LazyPool, vector_literal
from bastion.errors import UserError

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS bastion_semantic_cache (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    embedding vector NOT NULL,
    payload TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS bastion_semantic_cache_scope ON bastion_semantic_cache (tenant, scope, id);
"""

_SCHEMA_LOCK = 0x62617374_73656D63  # "bastsemc": serialises schema creation across processes
_SWEEP_EVERY = 500  # adds between sweeps of every scope's expired rows


class PostgresSemanticStore:
    """Semantic-cache entries in PostgreSQL. `url` is a `postgresql://` URI; the pool opens on
    first use. At most `max_entries_per_scope` entries are kept per (tenant, scope)."""

    def __init__(self, url: str, *, max_entries_per_scope: int = 5_000, max_connections: int = 10) -> None:
        self._pool = LazyPool(
            url,
            schema=_SCHEMA,
            schema_lock=_SCHEMA_LOCK,
            max_connections=max_connections,
            owner="PostgresSemanticStore",
        )
        self._max = max_entries_per_scope
        self._adds = 0

    async def nearest(self, tenant: str, scope: str, vector: list[float], now: float) -> tuple[str, float] | None:
        import psycopg

        pool = await self._pool.get()
        q = vector_literal(vector)
        try:
            async with pool.connection() as conn:
                row = await (
                    await conn.execute(
                        "SELECT payload, 1 - (embedding <=> %s::vector) FROM bastion_semantic_cache "
                        "WHERE tenant = %s AND scope = %s AND expires > %s "
                        "ORDER BY embedding <=> %s::vector LIMIT 1",
                        (q, tenant, scope, now, q),
                    )
                ).fetchone()
        except psycopg.errors.DataException as e:
            if "different vector dimensions" not in str(e):
                raise
            raise UserError(
                f"embedder returned vectors of different sizes ({len(vector)} vs the stored entries: {e}); "
                "use one embedder per SemanticCache"
            ) from None
        return None if row is None else (str(row[0]), float(row[1]))

    async def add(
        self, tenant: str, scope: str, vector: list[float], payload: str, *, now: float, expires: float
    ) -> None:
        pool = await self._pool.get()
        self._adds += 1
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO bastion_semantic_cache (tenant, scope, embedding, payload, expires) "
                "VALUES (%s, %s, %s::vector, %s, %s)",
                (tenant, scope, vector_literal(vector), payload, expires),
            )
            # The partition's expired rows and those beyond the newest `max` go (its index is ordered by id).
            await conn.execute(
                "DELETE FROM bastion_semantic_cache WHERE tenant = %s AND scope = %s AND (expires <= %s OR id <= "
                "(SELECT id FROM bastion_semantic_cache WHERE tenant = %s AND scope = %s "
                "ORDER BY id DESC OFFSET %s LIMIT 1))",
                (tenant, scope, now, tenant, scope, self._max),
            )
            if self._adds % _SWEEP_EVERY == 0:
                await conn.execute("DELETE FROM bastion_semantic_cache WHERE expires <= %s", (now,))

    async def clear_tenant(self, tenant: str) -> None:
        pool = await self._pool.get()
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM bastion_semantic_cache WHERE tenant = %s", (tenant,))

    async def aclose(self) -> None:
        await self._pool.close()


__all__ = ["PostgresSemanticStore"]
