"""Where submitted batches are remembered, so a restarted process resumes instead of resubmitting.

A batch is recorded under (tenant, client-side key) *before* it is submitted, with one row per
request: its custom id, the hash of what was sent, the budget reservation it holds and whether
that reservation was settled. The provider's batch id is added as soon as the provider answers.
A process that restarts and asks for the same key finds the record and polls the recorded id;
if it died between submitting and recording, the OpenAI batch is found again by the key carried
in its metadata (Anthropic's batches carry none: that window of a few milliseconds is the one
case that can submit twice).

`BatchStore` is the small backend protocol; `SQLiteBatchStore` keeps it in one file (WAL, safe
for several processes on one host) and `MemoryBatchStore` in the process (tests, one-shot use).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

BatchStatus = Literal["submitting", "submitted", "ended"]
# Format version of a stored record (STYLE 5: every persisted payload carries `v`).
RECORD_VERSION = 1


@dataclass(slots=True)
class BatchItem:
    """One request of a batch: what was sent and the budget hold it carries until settled."""

    custom_id: str
    request_hash: str
    output: int | None = None  # the max_tokens granted by the budget (None: unclamped)
    reservation: str | None = None  # budget reservation id
    charges: tuple[str, ...] = ()  # budget scope keys the reservation holds
    tokens: int = 0  # held tokens / USD, settled as the result arrives
    usd: float = 0.0
    settled: bool = False


@dataclass(slots=True)
class BatchRecord:
    """One client-side batch: its key, target model, provider batch id and requests."""

    tenant: str
    key: str
    model: str  # the `provider:model` address the batch was sent to
    status: BatchStatus = "submitting"
    remote_id: str | None = None
    items: list[BatchItem] = field(default_factory=list[BatchItem])
    created: float = field(default_factory=time.time)
    v: int = RECORD_VERSION


class BatchStore(Protocol):
    """Durable batch records, keyed by (tenant, key)."""

    async def create(self, record: BatchRecord) -> BatchRecord:
        """Store `record` unless its key exists; return the stored record (the existing one wins)."""
        ...

    async def get(self, tenant: str, key: str) -> BatchRecord | None: ...

    async def update(self, tenant: str, key: str, *, status: BatchStatus, remote_id: str | None = None) -> None: ...

    async def settled(self, tenant: str, key: str, custom_ids: list[str]) -> None:
        """Mark these requests' budget reservations as settled."""
        ...

    async def pending(self) -> list[BatchRecord]:
        """Every batch not yet ended (to resume them after a restart)."""
        ...


class MemoryBatchStore:
    """Batch records in this process only (lost with it)."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], BatchRecord] = {}

    async def create(self, record: BatchRecord) -> BatchRecord:
        return self._records.setdefault((record.tenant, record.key), record)

    async def get(self, tenant: str, key: str) -> BatchRecord | None:
        return self._records.get((tenant, key))

    async def update(self, tenant: str, key: str, *, status: BatchStatus, remote_id: str | None = None) -> None:
        record = self._records[(tenant, key)]
        record.status = status
        if remote_id is not None:
            record.remote_id = remote_id

    async def settled(self, tenant: str, key: str, custom_ids: list[str]) -> None:
        done = set(custom_ids)
        for item in self._records[(tenant, key)].items:
            if item.custom_id in done:
                item.settled = True

    async def pending(self) -> list[BatchRecord]:
        return [r for r in self._records.values() if r.status != "ended"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    tenant TEXT NOT NULL, key TEXT NOT NULL, v INTEGER NOT NULL, model TEXT NOT NULL,
    status TEXT NOT NULL, remote_id TEXT, created REAL NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE TABLE IF NOT EXISTS batch_item (
    tenant TEXT NOT NULL, key TEXT NOT NULL, custom_id TEXT NOT NULL, request_hash TEXT NOT NULL,
    output INTEGER, reservation TEXT, charges TEXT NOT NULL, tokens INTEGER NOT NULL,
    usd REAL NOT NULL, settled INTEGER NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (tenant, key, custom_id)
);
"""


class SQLiteBatchStore:
    """Batch records in a SQLite file (default `<home>/batches.db`)."""

    def __init__(self, path: str | Path | None = None) -> None:
        import sqlite3

        if path is None:
            from bastion.config import get_settings

            path = get_settings().path("batches.db")
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    async def create(self, record: BatchRecord) -> BatchRecord:
        return await asyncio.to_thread(self._create, record)

    async def get(self, tenant: str, key: str) -> BatchRecord | None:
        return await asyncio.to_thread(self._get, tenant, key)

    async def update(self, tenant: str, key: str, *, status: BatchStatus, remote_id: str | None = None) -> None:
        await asyncio.to_thread(self._update, tenant, key, status, remote_id)

    async def settled(self, tenant: str, key: str, custom_ids: list[str]) -> None:
        await asyncio.to_thread(self._settled, tenant, key, custom_ids)

    async def pending(self) -> list[BatchRecord]:
        return await asyncio.to_thread(self._pending)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def aclose(self) -> None:
        self.close()

    def _create(self, r: BatchRecord) -> BatchRecord:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM batch WHERE tenant = ? AND key = ?", (r.tenant, r.key)
                ).fetchone()
                if exists is None:
                    self._db.execute(
                        "INSERT INTO batch (tenant, key, v, model, status, remote_id, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (r.tenant, r.key, r.v, r.model, r.status, r.remote_id, r.created),
                    )
                    self._db.executemany(
                        "INSERT INTO batch_item (tenant, key, custom_id, request_hash, output, reservation, "
                        "charges, tokens, usd, settled, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                                int(i.settled),
                                n,
                            )
                            for n, i in enumerate(r.items)
                        ],
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if exists is None:
                return r
            stored = self._get_locked(r.tenant, r.key)
        assert stored is not None
        return stored

    def _get(self, tenant: str, key: str) -> BatchRecord | None:
        with self._lock:
            return self._get_locked(tenant, key)

    def _get_locked(self, tenant: str, key: str) -> BatchRecord | None:
        row = self._db.execute(
            "SELECT v, model, status, remote_id, created FROM batch WHERE tenant = ? AND key = ?", (tenant, key)
        ).fetchone()
        if row is None:
            return None
        items = [
            BatchItem(cid, h, out, res, tuple(json.loads(ch)), int(tok), float(usd), bool(done))
            for cid, h, out, res, ch, tok, usd, done in self._db.execute(
                "SELECT custom_id, request_hash, output, reservation, charges, tokens, usd, settled "
                "FROM batch_item WHERE tenant = ? AND key = ? ORDER BY position",
                (tenant, key),
            )
        ]
        return BatchRecord(tenant, key, row[1], row[2], row[3], items, float(row[4]), int(row[0]))

    def _update(self, tenant: str, key: str, status: BatchStatus, remote_id: str | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE batch SET status = ?, remote_id = COALESCE(?, remote_id) WHERE tenant = ? AND key = ?",
                (status, remote_id, tenant, key),
            )

    def _settled(self, tenant: str, key: str, custom_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE batch_item SET settled = 1 WHERE tenant = ? AND key = ? AND custom_id = ?",
                [(tenant, key, c) for c in custom_ids],
            )

    def _pending(self) -> list[BatchRecord]:
        with self._lock:
            keys = self._db.execute("SELECT tenant, key FROM batch WHERE status != 'ended' ORDER BY created").fetchall()
            records = [self._get_locked(t, k) for t, k in keys]
        return [r for r in records if r is not None]


def default_batch_store() -> BatchStore:
    """The store matching the deployment: the database when `BASTION_DATABASE_URL` is set (every
    worker on every host sees the batches), else `<home>/batches.db`."""
    from bastion.config import get_settings

    url = get_settings().database_url
    if url:
        from bastion.gateway._batch_store_pg import PostgresBatchStore

        return PostgresBatchStore(url)
    return SQLiteBatchStore()


__all__ = [
    "BatchItem",
    "BatchRecord",
    "BatchStatus",
    "BatchStore",
    "MemoryBatchStore",
    "SQLiteBatchStore",
    "default_batch_store",
]
