"""`PostgresDatasetStore`: eval datasets in the deployment's PostgreSQL (extra `postgres`), so
every server sharing the database lists, reads and appends to the same datasets.

Same protocol and conformance suite as `JsonlDatasetStore`. Each case is one row keyed by
(tenant, dataset, case id), so two servers appending different cases at once both succeed and
the same id twice is refused by the primary key; `seq` keeps the order cases were added in.
Case bodies are `Case.to_dict()` JSON with a format version `v`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from bastion._pg import LazyPool
from bastion.errors import UserError
from bastion.evals._dataset import Dataset
from bastion.evals._dataset_store import DatasetInfo, case_json, check_dataset_name, check_new_cases
from bastion.evals._types import Case

_FORMAT = 1  # version of a stored case body

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bastion_eval_dataset (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS bastion_eval_case (
    tenant TEXT NOT NULL,
    dataset TEXT NOT NULL,
    case_id TEXT NOT NULL,
    seq BIGSERIAL NOT NULL,
    v INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant, dataset, case_id),
    FOREIGN KEY (tenant, dataset) REFERENCES bastion_eval_dataset (tenant, name) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS bastion_eval_case_order ON bastion_eval_case (tenant, dataset, seq);
"""

_SCHEMA_LOCK = 0x62617374_6576616C  # "basteval": serialises schema creation across processes


class PostgresDatasetStore:
    """Eval datasets in PostgreSQL. `url` is a `postgresql://` URI; the pool opens on first use."""

    def __init__(self, url: str, *, max_connections: int = 5) -> None:
        self._pool = LazyPool(
            url, schema=_SCHEMA, schema_lock=_SCHEMA_LOCK, max_connections=max_connections, owner="PostgresDatasetStore"
        )

    async def append(self, tenant: str, name: str, cases: Sequence[Case] = ()) -> None:
        import psycopg

        check_dataset_name(name)
        pool = await self._pool.get()
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO bastion_eval_dataset (tenant, name, created) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (tenant, name, time.time()),
                )
                if not cases:
                    return
                taken = await (
                    await conn.execute(
                        "SELECT case_id FROM bastion_eval_case WHERE tenant = %s AND dataset = %s "
                        "AND case_id = ANY(%s)",
                        (tenant, name, [c.id for c in cases]),
                    )
                ).fetchall()
                check_new_cases((str(r[0]) for r in taken), cases, name)
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO bastion_eval_case (tenant, dataset, case_id, v, body) VALUES (%s, %s, %s, %s, %s)",
                        [(tenant, name, c.id, _FORMAT, case_json(c)) for c in cases],
                    )
        except psycopg.errors.UniqueViolation:  # another server added one of these ids meanwhile
            raise UserError(
                f"dataset {name!r} already has a case with one of the ids {[c.id for c in cases][:5]}; "
                "give the cases other ids"
            ) from None

    async def load(self, tenant: str, name: str) -> Dataset | None:
        check_dataset_name(name)
        pool = await self._pool.get()
        async with pool.connection() as conn:
            exists = await (
                await conn.execute("SELECT 1 FROM bastion_eval_dataset WHERE tenant = %s AND name = %s", (tenant, name))
            ).fetchone()
            if exists is None:
                return None
            rows = await (
                await conn.execute(
                    "SELECT v, body FROM bastion_eval_case WHERE tenant = %s AND dataset = %s ORDER BY seq",
                    (tenant, name),
                )
            ).fetchall()
        return Dataset(name, [_load_case(int(v), str(body), name) for v, body in rows])

    async def list(self, tenant: str) -> list[DatasetInfo]:
        pool = await self._pool.get()
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT d.name, COUNT(c.case_id) FROM bastion_eval_dataset d LEFT JOIN bastion_eval_case c "
                    "ON c.tenant = d.tenant AND c.dataset = d.name WHERE d.tenant = %s GROUP BY d.name ORDER BY d.name",
                    (tenant,),
                )
            ).fetchall()
        return [DatasetInfo(str(n), int(k)) for n, k in rows]

    async def delete(self, tenant: str, name: str) -> bool:
        check_dataset_name(name)
        pool = await self._pool.get()
        async with pool.connection() as conn:
            cur: Any = await conn.execute(
                "DELETE FROM bastion_eval_dataset WHERE tenant = %s AND name = %s", (tenant, name)
            )
            return bool(cur.rowcount)

    async def aclose(self) -> None:
        await self._pool.close()


def _load_case(v: int, body: str, name: str) -> Case:
    if v != _FORMAT:
        raise UserError(
            f"dataset {name!r} holds a case in format v{v}, this version of bastion reads v{_FORMAT}; upgrade bastion"
        )
    return Case.from_dict(json.loads(body))


__all__ = ["PostgresDatasetStore"]
