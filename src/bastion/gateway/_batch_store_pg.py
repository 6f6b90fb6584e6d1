"""`PostgresBatchStore`: batch records shared by every process and host (extra `postgres`).

Same protocol as the memory and SQLite stores (`_batch_store.py`): a worker on another host
that resumes a run finds the batch the first worker submitted. `create` is one
`INSERT ... ON CONFLICT DO NOTHING` transaction, so of two callers recording the same
(tenant, key) at once exactly one record wins and both read it back.
"""

from __future__ import annotations

import json
from typing import Any

from bastion._pg import LazyPool
from bastion.gateway._batch_store import BatchItem, BatchRecord, BatchStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bastion_batch (
    tenant TEXT NOT NULL, key TEXT NOT NULL, v INTEGER NOT NULL, model TEXT NOT NULL,
    status TEXT NOT NULL, remote_id TEXT, created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE TABLE IF NOT EXISTS bastion_batch_item (
    tenant TEXT NOT NULL, key TEXT NOT NULL, custom_id TEXT NOT NULL, request_hash TEXT NOT NULL,
    output INTEGER, reservation TEXT, charges TEXT NOT NULL, tokens BIGINT NOT NULL,
    usd DOUBLE PRECISION NOT NULL, settled BOOLEAN NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (tenant, key, custom_id)
);
"""
_SCHEMA_LOCK = 0x62617374_62617463  # "bastbatc": serialises schema creation across processes


class PostgresBatchStore:
    """Batch records in PostgreSQL. `url` is a `postgresql://` URI; the pool opens on first use."""

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        self._pool = LazyPool(
            url, schema=_SCHEMA, schema_lock=_SCHEMA_LOCK, max_connections=max_connections, owner="PostgresBatchStore"
        )

    async def _open(self) -> Any:
        return await self._pool.get()

    async def create(self, record: BatchRecord) -> BatchRecord:
        pool = await self._open()
        r = record
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO bastion_batch (tenant, key, v, model, status, remote_id, created) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (r.tenant, r.key, r.v, r.model, r.status, r.remote_id, r.created),
            )
            if cur.rowcount == 1:
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO bastion_batch_item (tenant, key, custom_id, request_hash, output, reservation, "
                        "charges, tokens, usd, settled, position) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        [
                            (
                                r.tenant,
                                r.key,
                                i.custom_id,
                                i.request_hash,
                                i.output,
                                i.reservation,
                                json.dumps(list(i.charges)),
                                i.tokens,
                                i.usd,
                                i.settled,
                                n,
                            )
                            for n, i in enumerate(r.items)
                        ],
                    )
                return record
        stored = await self.get(record.tenant, record.key)
        assert stored is not None
        return stored

    async def get(self, tenant: str, key: str) -> BatchRecord | None:
        pool = await self._open()
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT v, model, status, remote_id, created FROM bastion_batch WHERE tenant = %s AND key = %s",
                (tenant, key),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            cur = await conn.execute(
                "SELECT custom_id, request_hash, output, reservation, charges, tokens, usd, settled "
                "FROM bastion_batch_item WHERE tenant = %s AND key = %s ORDER BY position",
                (tenant, key),
            )
            items = [
                BatchItem(cid, h, out, res, tuple(json.loads(ch)), int(tok), float(usd), bool(done))
                for cid, h, out, res, ch, tok, usd, done in await cur.fetchall()
            ]
        return BatchRecord(tenant, key, row[1], row[2], row[3], items, float(row[4]), int(row[0]))

    async def update(self, tenant: str, key: str, *, status: BatchStatus, remote_id: str | None = None) -> None:
        pool = await self._open()
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE bastion_batch SET status = %s, remote_id = COALESCE(%s, remote_id) "
                "WHERE tenant = %s AND key = %s",
                (status, remote_id, tenant, key),
            )

    async def settled(self, tenant: str, key: str, custom_ids: list[str]) -> None:
        pool = await self._open()
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE bastion_batch_item SET settled = TRUE WHERE tenant = %s AND key = %s AND custom_id = ANY(%s)",
                (tenant, key, custom_ids),
            )

    async def pending(self) -> list[BatchRecord]:
        pool = await self._open()
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT tenant, key FROM bastion_batch WHERE status <> 'ended' ORDER BY created")
            keys = await cur.fetchall()
        records = [await self.get(t, k) for t, k in keys]
        return [r for r in records if r is not None]

    async def aclose(self) -> None:
        await self._pool.close()


__all__ = ["PostgresBatchStore"]
