"""The PostgreSQL store's RAM search indexes: one `TenantIndex` per tenant (the SQLite store's
index, so BM25 scores, vector scores and tie-breaking are the same on both backends), loaded
off the event loop and kept current across processes by a change log and LISTEN/NOTIFY.

PostgreSQL stays the store of record; an index is derived from a tenant's item partition and
can be dropped and reloaded at any time.

- **Change log.** Every write appends one row per changed item to `bastion_memory_changes`
  (tenant, seq, item id, op) inside the write's own transaction and NOTIFYs `bastion_memory`
  with the tenant's table suffix. `seq` comes from the tenant's counter
  (`bastion_memory_tenants.seq`), incremented as the transaction's last statements: the row
  lock is held until commit, so a tenant's sequence numbers commit in order and a reader that
  sees change n has seen every change before it (a global bigserial would commit out of order
  and a reader could skip a change that commits late).
- **Freshness.** Each process keeps one listening connection; a notification marks that
  tenant's index stale, and the tenant's next search first applies the changes after the
  index's last seq (one round trip, reading each changed item's current state, so applying a
  change twice is harmless). The process's own writes mark the index stale too
  (read-your-writes, no notification needed). While the listening connection is down (and
  after it reconnects, for what was missed) every search compares the tenant's counter, one
  primary-key read.
- **Loading.** A tenant's first search, or `warm()`, loads the partition in a worker thread on
  its own connection, in one REPEATABLE READ snapshot (so the rows and the counter agree);
  concurrent searches of the same tenant wait for that load, every other request keeps being
  served. An index further behind than `RELOAD_AFTER` changes, or behind a pruned log,
  reloads the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.errors import BastionError
from bastion.memory._index import Fts5Tokens, RowState, TenantIndex
from bastion.memory._store import tenant_suffix

log = logging.getLogger("bastion.memory")

CHANNEL = "bastion_memory"
"""The NOTIFY channel; the payload is the changed tenant's table suffix."""

LOG_KEEP = 100_000
"""Change-log rows kept per tenant; an index further behind reloads in full."""

PRUNE_EVERY = 4096
RELOAD_AFTER = 20_000
"""An index this many changes behind reloads (in a thread) instead of catching up."""

LOAD_BATCH = 2048
"""Rows read and indexed per step of a load: a step holds the GIL (psycopg parsing rows,
NumPy sorting postings), so small steps keep the event loop's stalls short."""

TOKENIZE_ON_LOOP = 200
"""A catch-up with more new rows than this tokenizes them in a worker thread."""

LISTEN_WAIT = 5.0
"""How long a first load waits for the listening connection (it then loads anyway and checks
the counter on every search until the listener is up)."""

ROW_COLUMNS = "rid, id, ns, kind, trust, valid_from, valid_to, text, vector_send(embedding)"
_Row = tuple[int, str, str, str, str, float, float | None, str, bytes | None]


@dataclass(slots=True)
class Loaded:
    """A tenant's index, the last change applied, and the item id of every row."""

    index: TenantIndex
    seq: int
    ids: dict[int, str] = field(default_factory=dict[int, str])  # rid -> item id
    rids: dict[str, int] = field(default_factory=dict[str, int])  # item id -> rid


@dataclass(slots=True)
class _Entry:
    tenant: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: Loaded | None = None
    stale: bool = False


def _decode_vectors(rows: list[tuple[int, bytes]], dim: int) -> list[tuple[int, Any]]:
    """pgvector's binary form (`vector_send`: int16 dim, int16 unused, big-endian float4s) of
    many rows at once; the 4-byte header is one float4 column to drop."""
    if not rows:
        return []
    matrix = np.frombuffer(b"".join(b for _, b in rows), ">f4").reshape(len(rows), dim + 1)[:, 1:]
    floats = matrix.astype(np.float32)
    return [(rid, floats[i]) for i, (rid, _) in enumerate(rows)]


def apply_rows(loaded: Loaded, tokenize: Callable[[str], list[str]], rows: Iterable[_Row], dim: int) -> None:
    """Index rows in their current state: new rows are added, known rows get their new validity,
    trust and (once embedded) vector. A row re-created under an old id replaces the old row.
    `tokenize(text)` gives a new row's FTS5 document tokens."""
    index = loaded.index
    added: list[tuple[int, RowState, list[str]]] = []
    vectors: list[tuple[int, bytes]] = []
    for rid, item_id, ns, kind, trust, valid_from, valid_to, text, vector in rows:
        state = RowState(ns, kind, trust == "trusted", valid_from, valid_to)
        old = loaded.rids.get(item_id)
        if old is not None and old != rid:
            remove_item(loaded, item_id)
        if rid in index:
            index.update(rid, state)
            if vector is not None and not index.has_vector(rid):
                vectors.append((rid, vector))
            continue
        added.append((rid, state, tokenize(text)))
        loaded.ids[rid] = item_id
        loaded.rids[item_id] = rid
        if vector is not None:
            vectors.append((rid, vector))
    index.add_many(added)
    index.set_vectors(_decode_vectors(vectors, dim))


def remove_item(loaded: Loaded, item_id: str) -> None:
    rid = loaded.rids.pop(item_id, None)
    if rid is not None:
        loaded.ids.pop(rid, None)
        loaded.index.remove(rid)


def load_tenant(url: str, tenant: str, part: str, dim: int, candidates: int) -> Loaded:
    """Read a tenant's partition into a new index (blocking: run it in a worker thread)."""
    import psycopg

    tokens = Fts5Tokens()
    with psycopg.connect(url) as conn:  # one transaction, committed (read-only) on exit
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = conn.execute("SELECT seq FROM bastion_memory_tenants WHERE tenant = %s", (tenant,)).fetchone()
        loaded = Loaded(TenantIndex(dim, candidates=candidates), int(row[0]) if row else 0)
        cur: Any  # a named (server-side) cursor: rows arrive in batches, not all at once
        with conn.cursor(name="bastion_memory_load") as cur:
            cur.execute(f"SELECT {ROW_COLUMNS} FROM {part}")  # any order: ties go by rid, not slot
            while batch := cur.fetchmany(LOAD_BATCH):
                apply_rows(loaded, tokens.document, batch, dim)
    return loaded


def _tokenize_documents(texts: Sequence[str]) -> dict[str, list[str]]:
    tokens = Fts5Tokens()
    return {text: tokens.document(text) for text in texts}


async def log_changes(conn: Any, tenant: str, item_ids: Sequence[str], op: str) -> None:
    """Record changed items for every process's RAM index and notify the listeners; call as the
    last statements of the change's transaction (the counter's row lock is held to commit)."""
    if not item_ids:
        return
    cur = await conn.execute(
        "UPDATE bastion_memory_tenants SET seq = seq + %s WHERE tenant = %s RETURNING seq", (len(item_ids), tenant)
    )
    row = await cur.fetchone()
    if row is None:  # pragma: no cover - writers create the tenant row first
        raise BastionError(
            f"memory tenant {tenant!r} has no row in bastion_memory_tenants; the store creates it on the "
            "tenant's first write: write through PostgresMemoryStore, not into the tables directly"
        )
    end = int(row[0])
    start = end - len(item_ids) + 1
    await conn.execute(
        "INSERT INTO bastion_memory_changes(tenant, seq, item_id, op) "
        "SELECT %s, %s + n - 1, i, %s FROM unnest(%s::text[]) WITH ORDINALITY AS u(i, n)",
        (tenant, start, op, list(item_ids)),
    )
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, tenant_suffix(tenant)))
    if end > LOG_KEEP and (start - 1) // PRUNE_EVERY != end // PRUNE_EVERY:
        floor = end - LOG_KEEP
        await conn.execute("DELETE FROM bastion_memory_changes WHERE tenant = %s AND seq <= %s", (tenant, floor))
        await conn.execute("UPDATE bastion_memory_tenants SET log_floor = %s WHERE tenant = %s", (floor, tenant))


class RamIndexes:
    """Every loaded tenant index of one store (one process), its listener and its RAM budget.
    Used from the store's event loop only; loads run in worker threads on their own
    connections and hand over a complete index."""

    def __init__(self, url: str, dim: int, *, candidates: int, budget: int) -> None:
        self.url = url
        self.dim = dim
        self.candidates = candidates
        self.budget = budget
        self.loads = 0  # full loads so far (a warmed tenant's first search adds none)
        self.listening = asyncio.Event()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # by tenant suffix, least recent first
        self._tokens: Fts5Tokens | None = None
        self._listener: asyncio.Task[None] | None = None

    def __contains__(self, tenant: str) -> bool:
        entry = self._entries.get(tenant_suffix(tenant))
        return entry is not None and entry.loaded is not None

    def touched(self, tenant: str) -> None:
        """This process changed the tenant: its next search catches up first."""
        entry = self._entries.get(tenant_suffix(tenant))
        if entry is not None:
            entry.stale = True

    def _loop_tokens(self) -> Fts5Tokens:
        """The tokenizer used on the event loop (an instance serves one thread)."""
        if self._tokens is None:
            self._tokens = Fts5Tokens()
        return self._tokens

    def query_tokens(self, terms: Iterable[str]) -> list[str]:
        return self._loop_tokens().query(terms)

    async def fresh(self, pool: Any, tenant: str, part: str) -> Loaded:
        """The tenant's index with every committed change applied (loading it if needed)."""
        await self._start_listener()
        s = tenant_suffix(tenant)
        entry = self._entries.get(s)
        if entry is None:
            entry = self._entries[s] = _Entry(tenant)
        async with entry.lock:
            if entry.loaded is not None and (entry.stale or not self.listening.is_set()):
                entry.stale = False  # before reading: a notification arriving meanwhile marks it again
                if not await self._catch_up(pool, tenant, part, entry.loaded):
                    entry.loaded = None
            if entry.loaded is None:
                entry.stale = False
                entry.loaded = await asyncio.to_thread(load_tenant, self.url, tenant, part, self.dim, self.candidates)
                self.loads += 1
            loaded = entry.loaded
        if self._entries.get(s) is entry:
            self._entries.move_to_end(s)
        self._evict(keep=s)
        return loaded

    def _evict(self, keep: str) -> None:
        total = self.items
        for s in list(self._entries):
            if total <= self.budget:
                break
            entry = self._entries[s]
            if s == keep or entry.lock.locked():
                continue
            del self._entries[s]
            if entry.loaded is not None:
                total -= len(entry.loaded.index)

    @property
    def items(self) -> int:
        return sum(len(e.loaded.index) for e in self._entries.values() if e.loaded is not None)

    async def _catch_up(self, pool: Any, tenant: str, part: str, loaded: Loaded) -> bool:
        """Apply the tenant's changes after `loaded.seq`; False if a reload is due instead."""
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT seq, log_floor FROM bastion_memory_tenants WHERE tenant = %s", (tenant,))
            row = await cur.fetchone()
            if row is None:
                return False
            seq, floor = int(row[0]), int(row[1])
            if seq == loaded.seq:
                return True
            index = loaded.index
            if floor > loaded.seq or seq - loaded.seq > RELOAD_AFTER or index.removed > max(1_000, len(index)):
                return False
            cur = await conn.execute(
                f"SELECT c.seq, c.item_id, {', '.join('i.' + c for c in ROW_COLUMNS.split(', ')[:-1])}, "
                f"vector_send(i.embedding) FROM bastion_memory_changes c LEFT JOIN {part} i "
                "ON i.tenant = c.tenant AND i.id = c.item_id "
                "WHERE c.tenant = %s AND c.seq > %s ORDER BY c.seq",
                (tenant, loaded.seq),
            )
            changes = await cur.fetchall()
        latest: dict[str, Any] = {}
        for change in changes:  # each item once, in its current state (the join read it)
            latest.pop(change[1], None)
            latest[change[1]] = change[2:]
        present: list[_Row] = [state for state in latest.values() if state[0] is not None]
        texts = [row[7] for row in present if row[0] not in loaded.index]
        if len(texts) > TOKENIZE_ON_LOOP:
            # Many new rows (a bulk write elsewhere): tokenize them in a thread, then index them here.
            tokenized = await asyncio.to_thread(_tokenize_documents, texts)
        else:
            tokens = self._loop_tokens()
            tokenized = {text: tokens.document(text) for text in texts}
        # Nothing awaited from here on: the index changes in one step.
        for item_id, state in latest.items():
            if state[0] is None:
                remove_item(loaded, item_id)
        apply_rows(loaded, tokenized.__getitem__, present, self.dim)
        if changes:
            loaded.seq = max(loaded.seq, int(changes[-1][0]))
        return True

    async def _start_listener(self) -> None:
        if self._listener is None or self._listener.done():
            # Listen before the first snapshot is read, so no change can fall in between; if the
            # listener cannot connect, searches check the counter instead (not waited for again).
            self._listener = asyncio.create_task(self._listen())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listening.wait(), LISTEN_WAIT)

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._mark_all_stale()  # whatever changed while nobody listened
                    self.listening.set()
                    async for note in conn.notifies():
                        entry = self._entries.get(note.payload)
                        if entry is not None:
                            entry.stale = True
            except Exception as e:
                log.warning("memory LISTEN connection lost (%s); searches check the change log until it is back", e)
            self.listening.clear()
            self._mark_all_stale()
            await asyncio.sleep(1.0)

    def _mark_all_stale(self) -> None:
        for entry in self._entries.values():
            entry.stale = True

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        self.listening.clear()
        self._entries.clear()


__all__ = ["CHANNEL", "LOG_KEEP", "RELOAD_AFTER", "Loaded", "RamIndexes", "load_tenant", "log_changes"]
