"""The scale-out long-term memory backend: PostgreSQL + pgvector (HNSW) + tsvector, over a
psycopg 3 async connection pool.

Isolation is structural: items, episodes and skills are LIST-partitioned by tenant. Every
search reads the tenant's item partition by name (episode and skill queries are pruned to the
tenant's partition).

Two ways to search (`search_index=`):
- `"ram"` (default): a per-tenant in-memory index, the SQLite store's `TenantIndex` (BM25 with
  FTS5's tokenizer and formula, 1-bit + int8 vector codes), loaded from the tenant's partition
  in a worker thread and kept current across processes by a change log and LISTEN/NOTIFY
  (`_pg_index`). Results and tie-breaking (score, then insertion order) equal the SQLite
  store's on the same data. One round trip per search (the hits' rows), plus one to catch up
  after a change.
- `"postgres"`: `ts_rank_cd` over the GIN index and pgvector's HNSW in one SQL statement;
  no RAM beyond PostgreSQL's, but `ts_rank_cd` reads every matching row (p95 ~40 ms at 100k
  items in one tenant). Filters run during the HNSW scan with `hnsw.iterative_scan`, which
  keeps scanning until enough rows pass them instead of returning fewer than `k`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

from bastion._pg import vector_literal
from bastion.errors import MissingExtraError, UserError
from bastion.memory._batcher import EmbeddingBatcher
from bastion.memory._codec import (
    EPISODE_COLUMNS,
    ITEM_COLUMNS,
    SKILL_COLUMNS,
    cols,
    episode_from_row,
    episode_values,
    item_from_row,
    item_values,
    norm_key,
    skill_from_row,
)
from bastion.memory._embedders import Embedder
from bastion.memory._pg_index import RamIndexes, log_changes
from bastion.memory._store import (
    FORMAT_VERSION,
    QueryEmbeddings,
    SearchScope,
    WhereValue,
    check_episode,
    check_item,
    check_search_args,
    check_skill,
    query_terms,
    rrf,
    search_scope,
    tenant_suffix,
)
from bastion.memory._types import (
    Episode,
    MemoryItem,
    Namespace,
    SearchHit,
    SearchMode,
    Skill,
    Timestamp,
    now,
    to_ts,
)

SearchIndex = Literal["ram", "postgres"]


def _row_filters(scope: SearchScope, params: dict[str, Any]) -> str:
    """The search's metadata (`where=`) and `source=` filters as SQL to AND in; their values are
    added to `params`."""
    sql = ""
    for n, (key, values) in enumerate(scope.where):
        sql += f" AND (metadata::jsonb ->> %(wk{n})s) = ANY(%(wv{n})s)"
        params[f"wk{n}"], params[f"wv{n}"] = key, list(values)
    if scope.source is not None:
        sql += " AND (provenance::jsonb ->> 'source') = ANY(%(src)s)"
        params["src"] = list(scope.source)
    return sql


def _skey(item: MemoryItem) -> str | None:
    if item.subject is None or item.predicate is None:
        return None
    return f"{norm_key(item.subject)}\x1f{norm_key(item.predicate)}"


class PostgresMemoryStore:
    """`MemoryStore` on PostgreSQL with pgvector. Connects lazily on first use; `close()` it."""

    def __init__(
        self,
        url: str,
        embedder: Embedder | None = None,
        *,
        min_size: int = 1,
        max_size: int = 4,
        ef_search: int = 64,
        search_index: SearchIndex = "ram",
        ram_index_items: int = 2_000_000,
        candidates: int = 400,
        batch_size: int = 64,
        max_delay: float = 0.05,
    ) -> None:
        if search_index not in ("ram", "postgres"):
            raise UserError(f"unknown search index {search_index!r}; use 'ram' or 'postgres'")
        if embedder is None:
            from bastion.memory._embedders import MiniLMEmbedder

            embedder = MiniLMEmbedder()
        self.embedder = embedder
        self._queries = QueryEmbeddings(embedder)
        self.url = url
        self.ef_search = ef_search
        self._pool_args = (min_size, max_size)
        self._pool: Any = None
        self._open_lock = asyncio.Lock()
        self._ready: set[str] = set()
        self._closed = False
        self._batcher = EmbeddingBatcher(embedder, self._write_vectors, batch_size=batch_size, max_delay=max_delay)
        self.search_index: SearchIndex = search_index
        self._ram = RamIndexes(url, embedder.dim, candidates=max(1, candidates), budget=ram_index_items)

    # --- setup ---------------------------------------------------------------------------

    async def _conn_pool(self) -> Any:
        if self._closed:
            raise UserError("this memory store is closed; open a new one")
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._pool is None:
                try:
                    from psycopg_pool import AsyncConnectionPool
                except ImportError as e:
                    raise MissingExtraError("postgres", "psycopg-pool", "The PostgreSQL memory store") from e
                pool = AsyncConnectionPool(
                    self.url,
                    min_size=self._pool_args[0],
                    max_size=self._pool_args[1],
                    open=False,
                    configure=self._configure,
                )
                await pool.open(wait=True, timeout=30)
                try:
                    await self._init_schema(pool)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    async def _configure(self, conn: Any) -> None:
        # Autocommit: reads are single statements; writes open explicit transactions.
        await conn.set_autocommit(True)
        await conn.execute("SET hnsw.iterative_scan = relaxed_order")
        await conn.execute(f"SET hnsw.ef_search = {int(self.ef_search)}")

    async def _init_schema(self, pool: Any) -> None:
        dim = self.embedder.dim
        item_cols = ", ".join(
            f"{c} {'double precision' if c in ('valid_from', 'valid_to', 'recorded_at') else 'integer' if c == 'chunk_index' else 'text'}"  # noqa: E501
            for c in ITEM_COLUMNS
        )
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bastion_memory_schema'))")
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bastion_memory_meta(key text PRIMARY KEY, value text NOT NULL)"
            )
            # seq: the tenant's change counter (see _pg_index); log_floor: changes up to it pruned.
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bastion_memory_tenants(tenant text PRIMARY KEY, "
                "suffix text NOT NULL UNIQUE, created_at double precision NOT NULL, "
                "seq bigint NOT NULL DEFAULT 0, log_floor bigint NOT NULL DEFAULT 0)"
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bastion_memory_changes(tenant text NOT NULL, seq bigint NOT NULL, "
                "item_id text NOT NULL, op text NOT NULL, PRIMARY KEY (tenant, seq))"
            )
            # rid: insertion order, the RAM index's row key and its tie-breaker (as SQLite's rowid).
            await conn.execute("CREATE SEQUENCE IF NOT EXISTS bastion_memory_rid")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS bastion_memory_items(
                    tenant text NOT NULL, {item_cols}, ns text NOT NULL, skey text,
                    embedding vector({dim}),
                    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
                    rid bigint NOT NULL DEFAULT nextval('bastion_memory_rid'),
                    PRIMARY KEY (tenant, id)) PARTITION BY LIST (tenant)"""
            )
            await self._add_columns(conn)
            if self.search_index == "postgres":
                # Only the SQL search path reads these; stores searching through the RAM index do
                # not build them (HNSW insertion was most of the ingestion time: 626 items/s at
                # 100k). The first store opened with search_index="postgres" builds them.
                await conn.execute(
                    "CREATE INDEX IF NOT EXISTS bastion_memory_items_hnsw ON bastion_memory_items "
                    "USING hnsw (embedding vector_cosine_ops)"
                )
                await conn.execute(
                    # fastupdate=off: GIN's pending list is scanned linearly by every query until a
                    # vacuum merges it (measured: 6.6 ms per query after a 3k-item load).
                    "CREATE INDEX IF NOT EXISTS bastion_memory_items_tsv ON bastion_memory_items "
                    "USING gin (tsv) WITH (fastupdate = off)"
                )
            await conn.execute(
                "CREATE INDEX IF NOT EXISTS bastion_memory_items_skey ON bastion_memory_items (ns, skey)"
            )
            await conn.execute(
                "CREATE INDEX IF NOT EXISTS bastion_memory_items_doc ON bastion_memory_items (ns, doc_id)"
            )
            episode_cols = ", ".join(
                f"{c} {'double precision' if c == 'occurred_at' else 'text'}" for c in EPISODE_COLUMNS
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS bastion_memory_episodes(tenant text NOT NULL, {episode_cols}, "
                "ns text NOT NULL, PRIMARY KEY (tenant, id)) PARTITION BY LIST (tenant)"
            )
            await conn.execute(
                "CREATE INDEX IF NOT EXISTS bastion_memory_episodes_time ON bastion_memory_episodes "
                "(tenant, ns, session, occurred_at)"
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bastion_memory_skills(tenant text NOT NULL, ns text NOT NULL, "
                "name text NOT NULL, version integer NOT NULL, instructions text NOT NULL, tools text, "
                "description text, created_at double precision, trust text, "
                "PRIMARY KEY (tenant, ns, name, version)) PARTITION BY LIST (tenant)"
            )
            cur = await conn.execute("SELECT key, value FROM bastion_memory_meta")
            found = dict(await cur.fetchall())
            want = {"v": str(FORMAT_VERSION), "embedder": self.embedder.name, "dim": str(dim)}
            if not found:
                for key, value in want.items():
                    await conn.execute("INSERT INTO bastion_memory_meta VALUES (%s, %s)", (key, value))
                return
        for key in ("v", "embedder", "dim"):
            if found.get(key) != want[key]:
                raise UserError(
                    f"this memory database was created with {key}={found.get(key)!r} but the store was "
                    f"opened with {key}={want[key]!r}; use the same embedder or a new database"
                )

    @staticmethod
    async def _add_columns(conn: Any) -> None:
        """Columns added after a database was created (checked first: ALTER TABLE would lock
        the items table at every start)."""
        added = {
            ("bastion_memory_tenants", "seq"): "bigint NOT NULL DEFAULT 0",
            ("bastion_memory_tenants", "log_floor"): "bigint NOT NULL DEFAULT 0",
            ("bastion_memory_items", "rid"): "bigint NOT NULL DEFAULT nextval('bastion_memory_rid')",
        }
        cur = await conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name IN ('bastion_memory_tenants', 'bastion_memory_items')"
        )
        found = {(t, c) for t, c in await cur.fetchall()}
        for (table, column), decl in added.items():
            if (table, column) not in found:
                await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    async def _partition(self, conn: Any, tenant: str, *, create: bool) -> str | None:
        s = tenant_suffix(tenant)
        if s in self._ready:
            return f"bastion_memory_items_{s}"
        cur = await conn.execute("SELECT 1 FROM bastion_memory_tenants WHERE tenant = %s", (tenant,))
        if await cur.fetchone() is None:
            if not create:
                return None
            from psycopg import sql

            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"bastion_memory_{s}",))
            for table in ("items", "episodes", "skills"):
                await conn.execute(
                    sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES IN ({})").format(
                        sql.Identifier(f"bastion_memory_{table}_{s}"),
                        sql.Identifier(f"bastion_memory_{table}"),
                        sql.Literal(tenant),
                    )
                )
            await conn.execute(
                "INSERT INTO bastion_memory_tenants(tenant, suffix, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (tenant, s, now()),
            )
        else:
            # Cached only once committed: a partition created in a rolled-back transaction is gone.
            self._ready.add(s)
        return f"bastion_memory_items_{s}"

    # --- writes --------------------------------------------------------------------------

    async def put(self, ns: Namespace, item: MemoryItem) -> MemoryItem:
        return (await self.put_many(ns, [item]))[0]

    async def put_many(self, ns: Namespace, items: Sequence[MemoryItem]) -> list[MemoryItem]:
        for item in items:
            check_item(item)
        pool = await self._conn_pool()
        queued: list[tuple[Hashable, str]] = []
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise UserError(f"memory id {dup!r} appears twice in one put_many; give each item its own id")
        async with pool.connection() as conn, conn.transaction():
            part = await self._partition(conn, ns.tenant, create=True)
            assert part is not None
            cur = await conn.execute(f"SELECT id FROM {part} WHERE id = ANY(%s) LIMIT 1", (ids,))
            if (row := await cur.fetchone()) is not None:
                raise UserError(f"a memory with id {row[0]!r} already exists; use a new id or forget the old one")
            plain: list[MemoryItem] = []
            changed: list[str] = []  # ids of invalidated items, then the new ones
            for item in items:
                if item.supersedes is None and _skey(item) is None:
                    plain.append(item)  # touches no other row: inserted in bulk below
                else:
                    # Facts may invalidate earlier items (possibly from this batch): in order.
                    await self._insert_plain(conn, part, ns, plain)
                    plain = []
                    changed += await self._insert(conn, part, ns, item)
                queued.append(((part, ns.tenant, item.id), item.text))
            await self._insert_plain(conn, part, ns, plain)
            await log_changes(conn, ns.tenant, [*dict.fromkeys(changed), *ids], "put")
        self._ram.touched(ns.tenant)
        for key, text in queued:
            self._batcher.submit(key, text)
        return list(items)

    async def _insert_plain(self, conn: Any, part: str, ns: Namespace, items: list[MemoryItem]) -> None:
        """Insert items without subject/predicate or `supersedes` in one pipelined statement
        (per-item round trips capped ingestion at ~500 items/s)."""
        if not items:
            return
        t = now()
        for item in items:
            item.recorded_at = t
            if item.valid_from is None:
                item.valid_from = t
        marks = ", ".join(["%s"] * (len(ITEM_COLUMNS) + 3))
        async with conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO {part}(tenant, {cols(ITEM_COLUMNS)}, ns, skey) VALUES ({marks})",
                [(ns.tenant, *item_values(item), ns.key, None) for item in items],
            )

    async def _insert(self, conn: Any, part: str, ns: Namespace, item: MemoryItem) -> list[str]:
        """Insert a fact; returns the ids of the items it invalidated."""
        invalidated: list[str] = []
        t = now()
        item.recorded_at = t
        if item.valid_from is None:
            item.valid_from = t
        start = item.valid_from
        cur = await conn.execute(f"SELECT 1 FROM {part} WHERE id = %s", (item.id,))
        if await cur.fetchone():
            raise UserError(f"a memory with id {item.id!r} already exists; use a new id or forget the old one")
        if item.supersedes is not None:
            cur = await conn.execute(
                f"SELECT id FROM {part} WHERE id = %s AND ns = %s FOR UPDATE", (item.supersedes, ns.key)
            )
            if await cur.fetchone() is None:
                raise UserError(f"memory {item.supersedes!r} named in `supersedes` does not exist here")
            await self._invalidate(conn, part, item.supersedes, start, item.id)
            invalidated.append(item.supersedes)
        skey = _skey(item)
        if skey is not None:
            cur = await conn.execute(
                f"SELECT id, valid_from FROM {part} WHERE ns = %s AND skey = %s "
                "AND (valid_to IS NULL OR valid_to > %s) FOR UPDATE",
                (ns.key, skey, start),
            )
            for old_id, valid_from in await cur.fetchall():
                if valid_from <= start:
                    await self._invalidate(conn, part, old_id, start, item.id)
                    invalidated.append(old_id)
                elif item.valid_to is None or item.valid_to > valid_from:
                    item.valid_to = valid_from
        marks = ", ".join(["%s"] * (len(ITEM_COLUMNS) + 3))
        await conn.execute(
            f"INSERT INTO {part}(tenant, {cols(ITEM_COLUMNS)}, ns, skey) VALUES ({marks})",
            (ns.tenant, *item_values(item), ns.key, skey),
        )
        return invalidated

    @staticmethod
    async def _invalidate(conn: Any, part: str, item_id: str, at: float, by: str | None) -> None:
        await conn.execute(
            f"UPDATE {part} SET valid_to = %s, superseded_by = coalesce(%s, superseded_by) WHERE id = %s",
            (at, by, item_id),
        )

    async def _write_vectors(self, batch: list[tuple[Hashable, str]], vectors: list[list[float]]) -> None:
        if self._pool is None:
            return
        by_part: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for (key, _), vector in zip(batch, vectors, strict=True):
            part, tenant, item_id = key  # type: ignore[misc]
            by_part.setdefault((part, tenant), []).append((vector_literal(vector), item_id))
        async with self._pool.connection() as conn, conn.transaction():
            # Tenants in one order: each holds its change counter's row lock to commit.
            for (part, tenant), rows in sorted(by_part.items()):
                # One statement per batch: per-row round trips dominated ingestion.
                # The tenant too: the primary key is (tenant, id), so each row is an index lookup.
                cur = await conn.execute(
                    f"UPDATE {part} AS t SET embedding = v.e::vector FROM unnest(%s::text[], %s::text[]) AS v(e, id) "
                    "WHERE t.tenant = %s AND t.id = v.id RETURNING t.id",
                    ([e for e, _ in rows], [i for _, i in rows], tenant),
                )
                await log_changes(conn, tenant, [r[0] for r in await cur.fetchall()], "vector")
        for _, tenant in by_part:
            self._ram.touched(tenant)

    async def forget(self, ns: Namespace, item_id: str, *, hard: bool = False) -> bool:
        pool = await self._conn_pool()
        async with pool.connection() as conn, conn.transaction():
            part = await self._partition(conn, ns.tenant, create=False)
            if part is None:
                return False
            cur = await conn.execute(
                f"SELECT valid_to FROM {part} WHERE id = %s AND ns = %s FOR UPDATE", (item_id, ns.key)
            )
            row = await cur.fetchone()
            if row is None:
                return False
            if hard:
                await conn.execute(f"DELETE FROM {part} WHERE id = %s", (item_id,))
            elif row[0] is None or row[0] > now():
                await self._invalidate(conn, part, item_id, now(), None)
            else:
                return True  # already invalid: nothing changed
            await log_changes(conn, ns.tenant, [item_id], "delete" if hard else "invalidate")
        self._ram.touched(ns.tenant)
        return True

    async def document_hash(self, ns: Namespace, doc_id: str) -> str | None:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            part = await self._partition(conn, ns.tenant, create=False)
            if part is None:
                return None
            cur = await conn.execute(
                f"SELECT content_hash FROM {part} WHERE ns = %s AND doc_id = %s LIMIT 1", (ns.key, doc_id)
            )
            row = await cur.fetchone()
        return row[0] if row else None

    async def delete_document(self, ns: Namespace, doc_id: str) -> int:
        pool = await self._conn_pool()
        async with pool.connection() as conn, conn.transaction():
            part = await self._partition(conn, ns.tenant, create=False)
            if part is None:
                return 0
            cur = await conn.execute(f"DELETE FROM {part} WHERE ns = %s AND doc_id = %s RETURNING id", (ns.key, doc_id))
            erased = [r[0] for r in await cur.fetchall()]
            await log_changes(conn, ns.tenant, erased, "delete")
        self._ram.touched(ns.tenant)
        return len(erased)

    # --- reads ---------------------------------------------------------------------------

    async def get(self, ns: Namespace, item_id: str) -> MemoryItem | None:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            part = await self._partition(conn, ns.tenant, create=False)
            if part is None:
                return None
            cur = await conn.execute(
                f"SELECT {cols(ITEM_COLUMNS)} FROM {part} WHERE id = %s AND ns = %s", (item_id, ns.key)
            )
            row = await cur.fetchone()
        return item_from_row(row) if row else None

    async def history(self, ns: Namespace, subject: str, predicate: str | None = None) -> list[MemoryItem]:
        pool = await self._conn_pool()
        prefix = f"{norm_key(subject)}\x1f"
        async with pool.connection() as conn:
            part = await self._partition(conn, ns.tenant, create=False)
            if part is None:
                return []
            if predicate is not None:
                cur = await conn.execute(
                    f"SELECT {cols(ITEM_COLUMNS)} FROM {part} WHERE ns = %s AND skey = %s "
                    "ORDER BY valid_from, recorded_at",
                    (ns.key, prefix + (norm_key(predicate) or "")),
                )
            else:
                cur = await conn.execute(
                    f"SELECT {cols(ITEM_COLUMNS)} FROM {part} WHERE ns = %s AND left(skey, %s) = %s "
                    "ORDER BY valid_from, recorded_at",
                    (ns.key, len(prefix), prefix),
                )
            rows = await cur.fetchall()
        return [item_from_row(r) for r in rows]

    async def search(
        self,
        ns: Namespace | Sequence[Namespace],
        query: str,
        *,
        k: int = 10,
        mode: SearchMode = "hybrid",
        as_of: Timestamp | None = None,
        include_untrusted: bool = False,
        kind: str | None = None,
        where: Mapping[str, WhereValue] | None = None,
        source: str | Sequence[str] | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        inherit: bool = True,
    ) -> list[SearchHit]:
        """See `MemoryStore.search`. With the RAM index (default) BM25's statistics are those of
        the namespaces searched, as on SQLite; with `search_index="postgres"` full-text ranking
        is `ts_rank_cd`, which uses no corpus statistics. Either way one namespace's ranking
        never depends on another's data."""
        check_search_args(query, k, mode)
        t = to_ts(as_of) if as_of is not None else now()
        assert t is not None
        scope = search_scope(ns, k=k, at=t, include_untrusted=include_untrusted, kind=kind, where=where,
                             source=source, since=since, until=until, inherit=inherit)  # fmt: skip
        pool = await self._conn_pool()
        vector = await self._queries.embed(query) if mode in ("vector", "hybrid") else None
        if self.search_index == "ram":
            return await self._search_ram(pool, scope, query, k, mode, vector)
        where_sql = "ns = ANY(%(ns)s) AND valid_from <= %(t)s AND (valid_to IS NULL OR valid_to > %(t)s)"
        params: dict[str, Any] = {"ns": list(scope.keys), "t": t, "k": scope.depth, "kind": kind,
                                  "since": scope.since, "until": scope.until}  # fmt: skip
        if not include_untrusted:
            where_sql += " AND trust = 'trusted'"
        if kind is not None:
            where_sql += " AND kind = %(kind)s"
        if scope.since is not None:
            where_sql += " AND valid_from >= %(since)s"
        if scope.until is not None:
            where_sql += " AND valid_from < %(until)s"
        where_sql += _row_filters(scope, params)
        async with pool.connection() as conn:
            part = await self._partition(conn, scope.tenant, create=False)
            if part is None:
                return []
            ctes: dict[str, str] = {}
            terms = query_terms(query)
            if mode in ("bm25", "hybrid") and terms:
                params["tsq"] = " | ".join(terms)
                ctes["bm25"] = (
                    f"SELECT id, row_number() OVER (ORDER BY ts_rank_cd(tsv, q) DESC, id) AS r "
                    f"FROM {part}, to_tsquery('english', %(tsq)s) q WHERE tsv @@ q AND {where_sql} "
                    "ORDER BY ts_rank_cd(tsv, q) DESC, id LIMIT %(k)s"
                )
            if vector is not None:
                params["q"] = vector_literal(vector)
                # hnsw.iterative_scan (set per connection) keeps walking the graph until `k`
                # rows pass the filters; its relaxed order is re-ranked by row_number here.
                ctes["vector"] = (
                    "SELECT id, row_number() OVER (ORDER BY d, id) AS r FROM ("
                    f"SELECT id, embedding <=> %(q)s::vector AS d FROM {part} "
                    f"WHERE embedding IS NOT NULL AND {where_sql} ORDER BY d LIMIT %(k)s) x"
                )
            if not ctes:
                return []
            names = list(ctes)
            # MATERIALIZED: plan each list on its own (inlined into the join, the planner
            # stopped using the vector index).
            with_sql = "WITH " + ", ".join(f"{n} AS MATERIALIZED ({sql})" for n, sql in ctes.items())
            if len(names) == 2:
                source_sql = "bm25 FULL JOIN vector ON bm25.id = vector.id"
                key = "coalesce(bm25.id, vector.id)"
            else:
                source_sql, key = names[0], f"{names[0]}.id"
            ranks_sql = ", ".join(f"{n}.r" for n in names)
            # One round trip: both candidate lists and their items.
            cur = await conn.execute(
                f"{with_sql} SELECT {ranks_sql}, {cols(ITEM_COLUMNS, 'p.')} FROM {source_sql} "
                f"JOIN {part} p ON p.id = {key}",
                params,
            )
            rows = await cur.fetchall()
        items: dict[str, MemoryItem] = {}
        lists: dict[str, list[tuple[int, str]]] = {n: [] for n in names}
        for row in rows:
            item = item_from_row(row[len(names) :])
            items[item.id] = item
            for n, rank in zip(names, row[: len(names)], strict=True):
                if rank is not None:
                    lists[n].append((int(rank), item.id))
        ordered = {n: [i for _, i in sorted(pairs)] for n, pairs in lists.items()}
        if mode == "hybrid":
            ranked = rrf(ordered, k)
        else:
            ranked = [(i, 1.0 / (n + 1), {mode: n + 1}) for n, i in enumerate(ordered.get(mode, [])[:k])]
        return [SearchHit(items[i], score, ranks) for i, score, ranks in ranked]

    async def _search_ram(
        self, pool: Any, scope: SearchScope, query: str, k: int, mode: SearchMode, vector: list[float] | None
    ) -> list[SearchHit]:
        """Search the tenant's RAM index (caught up with the change log first), then read the
        hits' rows: the ranking is the SQLite store's, ties broken by insertion order."""
        from bastion.memory._index import Filter

        part = await self._part_name(pool, scope.tenant)
        if part is None:
            return []
        allowed = await self._allowed_rows(pool, part, scope) if scope.needs_rows else None
        loaded = await self._ram.fresh(pool, scope.tenant, part)
        # No await from here until the ids are read: the index may change at the next one.
        flt = Filter(scope.at, scope.include_untrusted, scope.kind, scope.since, scope.until, allowed)
        lists: dict[str, list[tuple[int, float]]] = {}
        if mode != "vector":
            tokens = self._ram.query_tokens(query_terms(query))
            lists["bm25"] = loaded.index.bm25(scope.keys, tokens, scope.depth, flt)
        if vector is not None:
            lists["vector"] = loaded.index.knn(scope.keys, vector, scope.depth, flt)
        if mode != "hybrid":
            ranked = [(rid, score, {mode: i + 1}) for i, (rid, score) in enumerate(lists[mode][:k])]
        else:
            # rids as fixed-width strings: RRF breaks score ties by id, here in insertion order.
            fused = rrf({name: [f"{r:020d}" for r, _ in hits] for name, hits in lists.items()}, k)
            ranked = [(int(r), score, ranks) for r, score, ranks in fused]
        ids = [loaded.ids[rid] for rid, _, _ in ranked]
        if not ids:
            return []
        async with pool.connection() as conn:
            cur = await conn.execute(  # the tenant too: the primary key is (tenant, id)
                f"SELECT {cols(ITEM_COLUMNS)} FROM {part} WHERE tenant = %s AND id = ANY(%s)", (scope.tenant, ids)
            )
            rows = await cur.fetchall()
        by_id = {item.id: item for item in map(item_from_row, rows)}
        # An item erased since the index was read is left out rather than returned stale.
        return [SearchHit(by_id[i], score, ranks) for i, (_, score, ranks) in zip(ids, ranked, strict=True)
                if i in by_id]  # fmt: skip

    async def _part_name(self, pool: Any, tenant: str) -> str | None:
        s = tenant_suffix(tenant)
        if s in self._ready:
            return f"bastion_memory_items_{s}"
        async with pool.connection() as conn:
            return await self._partition(conn, tenant, create=False)

    @staticmethod
    async def _allowed_rows(pool: Any, part: str, scope: SearchScope) -> Any:
        """Sorted rids of the searched namespaces' items that pass the metadata and source
        filters (which the RAM index does not hold)."""
        import numpy as np

        params: dict[str, Any] = {"ns": list(scope.keys)}
        sql = "SELECT rid FROM " + part + " WHERE ns = ANY(%(ns)s)" + _row_filters(scope, params)
        async with pool.connection() as conn:
            cur = await conn.execute(sql + " ORDER BY rid", params)
            rows = await cur.fetchall()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    # --- episodes and skills -------------------------------------------------------------

    async def add_episode(self, ns: Namespace, episode: Episode) -> Episode:
        check_episode(episode)
        pool = await self._conn_pool()
        if episode.occurred_at is None:
            episode.occurred_at = now()
        async with pool.connection() as conn, conn.transaction():
            await self._partition(conn, ns.tenant, create=True)
            await conn.execute(
                f"INSERT INTO bastion_memory_episodes(tenant, {cols(EPISODE_COLUMNS)}, ns) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (ns.tenant, *episode_values(episode), ns.key),
            )
        return episode

    async def episodes(
        self,
        ns: Namespace,
        *,
        session: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        limit: int = 100,
    ) -> list[Episode]:
        pool = await self._conn_pool()
        q = f"SELECT {cols(EPISODE_COLUMNS)} FROM bastion_memory_episodes WHERE tenant = %(tenant)s AND ns = %(ns)s"
        if session is not None:
            q += " AND session = %(session)s"
        if since is not None:
            q += " AND occurred_at >= %(since)s"
        if until is not None:
            q += " AND occurred_at < %(until)s"
        params = {"tenant": ns.tenant, "ns": ns.key, "session": session, "since": to_ts(since),
                  "until": to_ts(until), "n": limit}  # fmt: skip
        async with pool.connection() as conn:
            cur = await conn.execute(q + " ORDER BY occurred_at, id LIMIT %(n)s", params)
            rows = await cur.fetchall()
        return [episode_from_row(r) for r in rows]

    async def put_skill(self, ns: Namespace, skill: Skill) -> Skill:
        check_skill(skill)
        pool = await self._conn_pool()
        async with pool.connection() as conn, conn.transaction():
            await self._partition(conn, ns.tenant, create=True)
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{ns.tenant}\x1f{ns.key}\x1f{skill.name}",)
            )
            cur = await conn.execute(
                "SELECT coalesce(max(version), 0) FROM bastion_memory_skills WHERE tenant = %s AND ns = %s "
                "AND name = %s",
                (ns.tenant, ns.key, skill.name),
            )
            row = await cur.fetchone()
            skill.version = int(row[0]) + 1
            skill.created_at = now()
            await conn.execute(
                f"INSERT INTO bastion_memory_skills(tenant, ns, {cols(SKILL_COLUMNS)}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    ns.tenant,
                    ns.key,
                    skill.name,
                    skill.version,
                    skill.instructions,
                    json.dumps(skill.tools),
                    skill.description,
                    skill.created_at,
                    skill.trust,
                ),
            )
        return skill

    async def get_skill(self, ns: Namespace, name: str, version: int | None = None) -> Skill | None:
        pool = await self._conn_pool()
        q = f"SELECT {cols(SKILL_COLUMNS)} FROM bastion_memory_skills WHERE tenant = %s AND ns = %s AND name = %s"
        params: tuple[Any, ...] = (ns.tenant, ns.key, name)
        if version is not None:
            q += " AND version = %s"
            params += (version,)
        async with pool.connection() as conn:
            cur = await conn.execute(q + " ORDER BY version DESC LIMIT 1", params)
            row = await cur.fetchone()
        return skill_from_row(row) if row else None

    async def list_skills(self, ns: Namespace) -> list[Skill]:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT DISTINCT ON (name) {cols(SKILL_COLUMNS)} FROM bastion_memory_skills "
                "WHERE tenant = %s AND ns = %s ORDER BY name, version DESC",
                (ns.tenant, ns.key),
            )
            rows = await cur.fetchall()
        return [skill_from_row(r) for r in rows]

    # --- lifecycle -----------------------------------------------------------------------

    async def warm(self, tenants: Sequence[str] | None = None) -> dict[str, int]:
        """Load the RAM search indexes of `tenants` (default: every tenant, oldest first, until
        `ram_index_items` are held) in a worker thread, so their first searches do not wait;
        returns the items indexed per tenant. The event loop keeps serving meanwhile. A no-op
        with `search_index="postgres"`."""
        if self.search_index != "ram":
            return {}
        pool = await self._conn_pool()
        if tenants is None:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT tenant FROM bastion_memory_tenants ORDER BY created_at, tenant")
                tenants = [r[0] for r in await cur.fetchall()]
        warmed: dict[str, int] = {}
        for tenant in tenants:
            if self._ram.items >= self._ram.budget:
                break
            part = await self._part_name(pool, tenant)
            if part is not None:
                warmed[tenant] = len((await self._ram.fresh(pool, tenant, part)).index)
        return warmed

    @property
    def ram_index_loads(self) -> int:
        """How many tenant indexes this store has loaded in full (warm-ups and first searches)."""
        return self._ram.loads

    async def analyze(self) -> None:
        """Refresh planner statistics (after a bulk load, before autovacuum gets to it): without
        them the planner misjudges namespace sizes and skips the HNSW/GIN indexes."""
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            await conn.execute("ANALYZE bastion_memory_items")

    @property
    def pending_embeddings(self) -> int:
        return self._batcher.backlog

    async def flush(self) -> None:
        await self._batcher.flush()

    async def reembed(self) -> int:
        """Queue every item that has no vector yet (its batch failed, or the process stopped
        before the batch ran) and return how many; `flush()` then waits for them."""
        pool = await self._conn_pool()
        queued = 0
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT tenant, suffix FROM bastion_memory_tenants")
            for tenant, s in await cur.fetchall():
                part = f"bastion_memory_items_{s}"
                rows = await (await conn.execute(f"SELECT id, text FROM {part} WHERE embedding IS NULL")).fetchall()
                for item_id, text in rows:
                    self._batcher.submit((part, tenant, item_id), text)
                    queued += 1
        return queued

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._batcher.close()
        finally:
            self._closed = True
            await self._ram.close()
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    async def __aenter__(self) -> PostgresMemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["PostgresMemoryStore"]
