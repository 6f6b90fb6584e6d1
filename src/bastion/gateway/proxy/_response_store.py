"""Stored Responses-API conversations, for `previous_response_id` and `GET /v1/responses/{id}`.

Every row is keyed by `(tenant, response_id)`: a lookup names its tenant, so another tenant's
id is simply not found (structural isolation, not a filter after the fact). The store lives
where the deployment's virtual keys live (`store_for(keys)`): a SQLite file beside `keys.db`,
or the same PostgreSQL database, or memory for an in-memory key store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bastion.types import Message

RESPONSES_FILE = "responses.db"
_V = 1


@dataclass(slots=True)
class StoredResponse:
    """One response: the conversation it continues from (`messages`: input and output, without
    `instructions`, which do not carry over to a follow-up) and its JSON for `GET`."""

    response_id: str
    tenant: str
    messages: list[Message]
    response: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    v: int = _V

    def encode(self) -> str:
        return json.dumps(
            {"v": self.v, "messages": [m.to_dict() for m in self.messages], "response": self.response},
            ensure_ascii=False,
            default=str,
        )

    @classmethod
    def decode(cls, response_id: str, tenant: str, record: str, created_at: float) -> StoredResponse:
        d = json.loads(record)
        messages = [Message.from_dict(m) for m in d.get("messages", [])]
        return cls(response_id, tenant, messages, d.get("response", {}), created_at, int(d.get("v", _V)))


class ResponseStore(Protocol):
    """Where stored responses live. Every method names the tenant."""

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None: ...

    async def put(self, record: StoredResponse) -> None: ...

    async def delete(self, tenant: str, response_id: str) -> bool: ...

    def close(self) -> None: ...


class InMemoryResponseStore:
    """Responses in a dict (tests, single process without persistence)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], StoredResponse] = {}

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        return self._rows.get((tenant, response_id))

    async def put(self, record: StoredResponse) -> None:
        self._rows[(record.tenant, record.response_id)] = record

    async def delete(self, tenant: str, response_id: str) -> bool:
        return self._rows.pop((tenant, response_id), None) is not None

    def close(self) -> None:
        self._rows.clear()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS proxy_responses (
    tenant TEXT NOT NULL,
    response_id TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant, response_id)
);
"""


class SQLiteResponseStore:
    """Responses in one SQLite file (WAL); reads and writes are single-row, so they run inline."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SQLITE_SCHEMA)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT record, created_at FROM proxy_responses WHERE tenant = ? AND response_id = ?",
                (tenant, response_id),
            ).fetchone()
        return None if row is None else StoredResponse.decode(response_id, tenant, row[0], row[1])

    async def put(self, record: StoredResponse) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO proxy_responses (tenant, response_id, record, created_at) VALUES (?, ?, ?, ?)",
                (record.tenant, record.response_id, record.encode(), record.created_at),
            )

    async def delete(self, tenant: str, response_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM proxy_responses WHERE tenant = ? AND response_id = ?", (tenant, response_id)
            )
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bastion_proxy_responses (tenant TEXT NOT NULL, response_id TEXT NOT NULL, "
    "record TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, response_id))"
)


class PostgresResponseStore:
    """Responses in PostgreSQL (`bastion_proxy_responses`), shared by every API server of a
    scaled-out deployment. Queries run on a small pool, off the event loop."""

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        try:
            import psycopg_pool
        except ImportError as e:  # pragma: no cover - the extra is installed in CI
            from bastion.errors import MissingExtraError

            raise MissingExtraError("postgres", "psycopg-pool", "PostgresResponseStore") from e
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=max_connections, kwargs={"autocommit": True}, open=True
        )
        with self._pool.connection() as c, c.transaction():
            conn: Any = c  # our SQL is built from constants, not user input
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('bastion_proxy_responses_schema'))")
            conn.execute(_PG_SCHEMA)

    def _run(self, sql: str, params: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        with self._pool.connection() as c:
            conn: Any = c
            cur = conn.execute(sql, params)
            return (cur.fetchall() if cur.description is not None else []), cur.rowcount

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        rows, _ = await asyncio.to_thread(
            self._run,
            "SELECT record, created_at FROM bastion_proxy_responses WHERE tenant = %s AND response_id = %s",
            (tenant, response_id),
        )
        return StoredResponse.decode(response_id, tenant, rows[0][0], rows[0][1]) if rows else None

    async def put(self, record: StoredResponse) -> None:
        await asyncio.to_thread(
            self._run,
            "INSERT INTO bastion_proxy_responses (tenant, response_id, record, created_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tenant, response_id) DO UPDATE SET record = EXCLUDED.record",
            (record.tenant, record.response_id, record.encode(), record.created_at),
        )

    async def delete(self, tenant: str, response_id: str) -> bool:
        _, n = await asyncio.to_thread(
            self._run,
            "DELETE FROM bastion_proxy_responses WHERE tenant = %s AND response_id = %s",
            (tenant, response_id),
        )
        return n > 0

    def close(self) -> None:
        self._pool.close()


def store_for(keys: object) -> ResponseStore:
    """The response store beside a key store: the same PostgreSQL database, a SQLite file next
    to the key file, or memory."""
    from bastion.gateway.proxy._keys import PostgresKeyStore, SQLiteKeyStore

    if isinstance(keys, PostgresKeyStore):
        return PostgresResponseStore(keys.path)
    if isinstance(keys, SQLiteKeyStore):
        return SQLiteResponseStore(keys.path.with_name(RESPONSES_FILE))
    return InMemoryResponseStore()


__all__ = [
    "RESPONSES_FILE",
    "InMemoryResponseStore",
    "PostgresResponseStore",
    "ResponseStore",
    "SQLiteResponseStore",
    "StoredResponse",
    "store_for",
]
