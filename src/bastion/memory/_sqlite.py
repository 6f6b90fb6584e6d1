"""The embedded long-term memory backend: one SQLite file (WAL) via `apsw`, FTS5 for BM25 and
`sqlite-vec` for vectors.

Isolation is structural: every tenant gets its own tables (`items_<h>`, `fts_<h>`, `vec_<h>`,
`episodes_<h>`, `skills_<h>`, `log_<h>`; `<h>` a hash of the tenant name), so a search only
ever reads one tenant's rows. Inside a tenant the vector table is partitioned by namespace and
carries validity and trust as metadata columns, so filters apply *during* the k-nearest-neighbour
scan, not after it.

Two ways to search (`search_index=`):
- `"ram"` (default): a per-tenant in-memory index (`_index.TenantIndex`) built from the tables
  on the tenant's first search and kept current from the tenant's change log (`log_<h>`, one
  row per changed item, written in the same transaction as the change), so writes by other
  processes on the same file are seen by the next search. BM25 scores equal FTS5's; vectors are
  ranked by 1-bit codes then int8 codes. ~0.45 KB of RAM per item; `ram_index_items` caps the
  total and the least recently searched tenants are dropped first.
- `"sqlite"`: FTS5 `bm25()` and sqlite-vec's scan, with no RAM beyond SQLite's cache. Simple
  and exact, but ~10 ms per hybrid query at 100k items in one namespace (the RAM index: ~2 ms).

sqlite-vec index modes (`index=`): `"binary"` (default) stores 1-bit quantised vectors (48 bytes
for 384 dimensions) plus the float vector, scans the bits for `candidates` nearest by Hamming
distance and re-ranks them by exact cosine; `"exact"` scans the float vectors. sqlite-vec's scan
slows down sharply for k above ~40 (measured: 25k rows, k=40 ~1.4 ms, k=80 ~10 ms), hence its
modest default.

SQLite calls run on the event loop thread: they take micro- to milliseconds, less than a
thread hop would cost; embedding (the slow part) runs in the background batcher.
"""

from __future__ import annotations

import json
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

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

if TYPE_CHECKING:
    from bastion.memory._index import TenantIndex

VectorIndex = Literal["binary", "exact"]
SearchIndex = Literal["ram", "sqlite"]
_FOREVER = 1e300  # vec0 metadata columns cannot hold NULL: "valid forever"
BM25_CANDIDATES = 10
"""BM25 (without the RAM index) ranks the top `depth * BM25_CANDIDATES` full-text matches before applying the namespace,
validity and trust filters (falling back to ranking every match if fewer than `k` pass)."""


LOG_KEEP = 100_000
"""Change-log rows kept per tenant; a RAM index further behind than this reloads in full."""


@dataclass(slots=True)
class _Loaded:
    index: TenantIndex
    seq: int  # the last change-log row applied


def _blob(vector: Sequence[float]) -> bytes:
    return array("f", vector).tobytes()


def _skey(item: MemoryItem) -> str | None:
    if item.subject is None or item.predicate is None:
        return None
    return f"{norm_key(item.subject)}\x1f{norm_key(item.predicate)}"


class SQLiteMemoryStore:
    """`MemoryStore` on one SQLite file (or `":memory:"`). See the module docstring."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        embedder: Embedder | None = None,
        *,
        index: VectorIndex = "binary",
        candidates: int = 40,
        search_index: SearchIndex = "ram",
        ram_index_items: int = 2_000_000,
        cache_mb: int = 64,
        mmap_mb: int = 256,
        batch_size: int = 64,
        max_delay: float = 0.05,
    ) -> None:
        try:
            import apsw
            import sqlite_vec
        except ImportError as e:  # pragma: no cover - both are core dependencies
            raise MissingExtraError("embed", e.name or "apsw", "The SQLite memory store") from e
        if index not in ("binary", "exact"):
            raise UserError(f"unknown vector index {index!r}; use 'binary' or 'exact'")
        if search_index not in ("ram", "sqlite"):
            raise UserError(f"unknown search index {search_index!r}; use 'ram' or 'sqlite'")
        if embedder is None:
            from bastion.memory._embedders import MiniLMEmbedder

            embedder = MiniLMEmbedder()
        self.embedder = embedder
        self._queries = QueryEmbeddings(embedder)
        self.index: VectorIndex = index
        self.candidates = max(1, candidates)
        self.search_index: SearchIndex = search_index
        self.ram_index_items = ram_index_items
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._db = apsw.Connection(str(path))
        try:
            self._db.enable_load_extension(True)
            self._db.load_extension(sqlite_vec.loadable_path())
            self._db.enable_load_extension(False)
            self._db.setbusytimeout(5000)
            if str(path) != ":memory:":
                self._q("PRAGMA journal_mode=WAL")
            self._q("PRAGMA synchronous=NORMAL")
            # The default 2 MB page cache thrashes once a few tenants' indexes are in use.
            self._q(f"PRAGMA cache_size = -{int(cache_mb) * 1024}")
            self._q(f"PRAGMA mmap_size = {int(mmap_mb) * 1024 * 1024}")
            self._init_meta()
        except BaseException:
            self._db.close()
            raise
        self._ready: set[str] = set()
        self._tokenizer = self._db.fts5_tokenizer("porter", ["unicode61"])  # as the FTS5 tables use
        self._tokenize_document = apsw.FTS5_TOKENIZE_DOCUMENT
        self._tokenize_query = apsw.FTS5_TOKENIZE_QUERY
        self._closed = False
        self._batcher = EmbeddingBatcher(embedder, self._write_vectors, batch_size=batch_size, max_delay=max_delay)

    # --- setup ---------------------------------------------------------------------------

    def _init_meta(self) -> None:
        want = {"v": str(FORMAT_VERSION), "embedder": self.embedder.name, "dim": str(self.embedder.dim),
                "index": self.index}  # fmt: skip
        found: dict[str, str] = {}
        with self._db:
            self._q("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._q(
                "CREATE TABLE IF NOT EXISTS tenants(tenant TEXT PRIMARY KEY, suffix TEXT NOT NULL UNIQUE, "
                "created_at REAL NOT NULL)"
            )
            found.update(self._q("SELECT key, value FROM meta").fetchall())
            if not found:
                self._db.executemany("INSERT INTO meta VALUES(?, ?)", list(want.items()))
        if not found:
            return
        if found.get("v") != str(FORMAT_VERSION):
            raise UserError(f"memory file has format v{found.get('v')}, this Bastion reads v{FORMAT_VERSION}")
        for key in ("embedder", "dim", "index"):
            if found.get(key) != want[key]:
                raise UserError(
                    f"this memory file was created with {key}={found.get(key)!r} but the store was opened "
                    f"with {key}={want[key]!r}; open it with the same embedder and index, or re-ingest "
                    "into a new file"
                )

    def _suffix(self, tenant: str, *, create: bool) -> str | None:
        s = tenant_suffix(tenant)
        if s in self._ready:
            return s
        row = self._q("SELECT suffix FROM tenants WHERE tenant = ?", (tenant,)).fetchone()
        if row is None and not create:
            return None
        if row is None:
            self._create_partition(tenant, s)
        else:  # a file written before change logs existed
            self._q(f"CREATE TABLE IF NOT EXISTS log_{s}(seq INTEGER PRIMARY KEY AUTOINCREMENT, row INTEGER NOT NULL)")
        self._ready.add(s)
        return s

    def _create_partition(self, tenant: str, s: str) -> None:
        dim = self.embedder.dim
        if self.index == "binary":
            vector_cols = f"embedding bit[{dim}], +emb blob"
        else:
            vector_cols = f"embedding float[{dim}] distance_metric=cosine"
        with self._db:
            self._q(
                f"""
                CREATE TABLE IF NOT EXISTS items_{s}(
                    rowid INTEGER PRIMARY KEY AUTOINCREMENT, {cols(ITEM_COLUMNS)}, ns TEXT NOT NULL, skey TEXT,
                    embedded INTEGER NOT NULL DEFAULT 0, UNIQUE(id));
                CREATE INDEX IF NOT EXISTS items_{s}_skey ON items_{s}(ns, skey) WHERE skey IS NOT NULL;
                CREATE INDEX IF NOT EXISTS items_{s}_doc ON items_{s}(ns, doc_id) WHERE doc_id IS NOT NULL;
                CREATE VIRTUAL TABLE IF NOT EXISTS fts_{s} USING fts5(text, tokenize='porter unicode61');
                CREATE VIRTUAL TABLE IF NOT EXISTS vec_{s} USING vec0(
                    ns TEXT PARTITION KEY, {vector_cols}, kind TEXT, trusted INTEGER,
                    valid_from FLOAT, valid_to FLOAT);
                CREATE TABLE IF NOT EXISTS episodes_{s}(
                    {cols(EPISODE_COLUMNS)}, ns TEXT NOT NULL, PRIMARY KEY(id));
                CREATE INDEX IF NOT EXISTS episodes_{s}_time ON episodes_{s}(ns, session, occurred_at);
                CREATE TABLE IF NOT EXISTS skills_{s}(
                    {cols(SKILL_COLUMNS)}, ns TEXT NOT NULL, PRIMARY KEY(ns, name, version));
                CREATE TABLE IF NOT EXISTS log_{s}(seq INTEGER PRIMARY KEY AUTOINCREMENT, row INTEGER NOT NULL);
                """
            )
            self._q("INSERT OR IGNORE INTO tenants VALUES(?, ?, ?)", (tenant, s, now()))

    # --- writes --------------------------------------------------------------------------

    async def put(self, ns: Namespace, item: MemoryItem) -> MemoryItem:
        return (await self.put_many(ns, [item]))[0]

    async def put_many(self, ns: Namespace, items: Sequence[MemoryItem]) -> list[MemoryItem]:
        self._check_open()
        for item in items:
            check_item(item)
        s = self._suffix(ns.tenant, create=True)
        assert s is not None
        stored: list[MemoryItem] = []
        queued: list[tuple[Hashable, str]] = []
        with self._db:  # one transaction: a bad item in the batch writes nothing
            for item in items:
                rowid = self._insert(s, ns, item)
                stored.append(item)
                queued.append(((s, rowid), item.text))
        for key, text in queued:
            self._batcher.submit(key, text)
        return stored

    def _insert(self, s: str, ns: Namespace, item: MemoryItem) -> int:
        db = self._db
        t = now()
        item.recorded_at = t
        if item.valid_from is None:
            item.valid_from = t
        start = item.valid_from
        if self._q(f"SELECT 1 FROM items_{s} WHERE id = ?", (item.id,)).fetchone():
            raise UserError(f"a memory with id {item.id!r} already exists; use a new id or forget the old one")
        if item.supersedes is not None:
            old = self._q(f"SELECT rowid FROM items_{s} WHERE id = ? AND ns = ?", (item.supersedes, ns.key)).fetchone()
            if old is None:
                raise UserError(f"memory {item.supersedes!r} named in `supersedes` does not exist here")
            self._invalidate(s, old[0], start, item.id)
        skey = _skey(item)
        if skey is not None:
            rows = self._q(
                f"SELECT rowid, valid_from FROM items_{s} WHERE ns = ? AND skey = ? "
                "AND (valid_to IS NULL OR valid_to > ?)",
                (ns.key, skey, start),
            ).fetchall()
            for rowid, valid_from in rows:
                if valid_from <= start:
                    self._invalidate(s, rowid, start, item.id)
                elif item.valid_to is None or item.valid_to > valid_from:
                    item.valid_to = valid_from  # a backfilled older fact ends where the newer begins
        self._q(
            f"INSERT INTO items_{s}({cols(ITEM_COLUMNS)}, ns, skey) VALUES({', '.join('?' * (len(ITEM_COLUMNS) + 2))})",
            (*item_values(item), ns.key, skey),
        )
        rowid = db.last_insert_rowid()
        self._q(f"INSERT INTO fts_{s}(rowid, text) VALUES(?, ?)", (rowid, item.text))
        self._log(s, rowid)
        return rowid

    def _invalidate(self, s: str, rowid: int, at: float, by: str | None) -> None:
        self._q(
            f"UPDATE items_{s} SET valid_to = ?, superseded_by = coalesce(?, superseded_by) WHERE rowid = ?",
            (at, by, rowid),
        )
        self._q(f"UPDATE vec_{s} SET valid_to = ? WHERE rowid = ?", (float(at), rowid))
        self._log(s, rowid)

    async def _write_vectors(self, batch: list[tuple[Hashable, str]], vectors: list[list[float]]) -> None:
        if self._closed:
            return
        with self._db:
            for (key, _), vector in zip(batch, vectors, strict=True):
                s, rowid = key  # type: ignore[misc]
                row = self._q(
                    f"SELECT ns, kind, trust, valid_from, valid_to FROM items_{s} WHERE rowid = ?", (rowid,)
                ).fetchone()
                if row is None:
                    continue  # erased before its embedding arrived
                ns, kind, trust, valid_from, valid_to = row
                blob = _blob(vector)
                meta = (kind, int(trust == "trusted"), float(valid_from), float(valid_to or _FOREVER))
                # vec0 ignores OR REPLACE; rowids are never reused (AUTOINCREMENT), so this only
                # matters when the same row is embedded twice.
                self._q(f"DELETE FROM vec_{s} WHERE rowid = ?", (rowid,))
                if self.index == "binary":
                    self._q(
                        f"INSERT INTO vec_{s}(rowid, ns, embedding, emb, kind, trusted, valid_from, "
                        "valid_to) VALUES(?, ?, vec_quantize_binary(?), ?, ?, ?, ?, ?)",
                        (rowid, ns, blob, blob, *meta),
                    )
                else:
                    self._q(
                        f"INSERT INTO vec_{s}(rowid, ns, embedding, kind, trusted, valid_from, "
                        "valid_to) VALUES(?, ?, ?, ?, ?, ?, ?)",
                        (rowid, ns, blob, *meta),
                    )
                self._q(f"UPDATE items_{s} SET embedded = 1 WHERE rowid = ?", (rowid,))
                self._log(s, rowid)

    async def forget(self, ns: Namespace, item_id: str, *, hard: bool = False) -> bool:
        self._check_open()
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return False
        row = self._q(f"SELECT rowid, valid_to FROM items_{s} WHERE id = ? AND ns = ?", (item_id, ns.key)).fetchone()
        if row is None:
            return False
        with self._db:
            if hard:
                self._erase(s, [row[0]])
            elif row[1] is None or row[1] > now():
                self._invalidate(s, row[0], now(), None)
        return True

    def _erase(self, s: str, rowids: list[int]) -> None:
        for rowid in rowids:
            self._q(f"DELETE FROM items_{s} WHERE rowid = ?", (rowid,))
            self._q(f"DELETE FROM fts_{s} WHERE rowid = ?", (rowid,))
            self._q(f"DELETE FROM vec_{s} WHERE rowid = ?", (rowid,))
            self._log(s, rowid)

    def _log(self, s: str, rowid: int) -> None:
        """Record a changed item for RAM indexes (this process's and others'); call inside the
        change's transaction."""
        self._q(f"INSERT INTO log_{s}(row) VALUES(?)", (rowid,))
        seq = self._db.last_insert_rowid()
        if seq % 4096 == 0:
            self._q(f"DELETE FROM log_{s} WHERE seq <= ?", (seq - LOG_KEEP,))

    async def document_hash(self, ns: Namespace, doc_id: str) -> str | None:
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return None
        row = self._q(
            f"SELECT content_hash FROM items_{s} WHERE ns = ? AND doc_id = ? LIMIT 1", (ns.key, doc_id)
        ).fetchone()
        return row[0] if row else None

    async def delete_document(self, ns: Namespace, doc_id: str) -> int:
        self._check_open()
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return 0
        rowids = [
            r[0]
            for r in self._q(f"SELECT rowid FROM items_{s} WHERE ns = ? AND doc_id = ?", (ns.key, doc_id)).fetchall()
        ]
        with self._db:
            self._erase(s, rowids)
        return len(rowids)

    # --- reads ---------------------------------------------------------------------------

    async def get(self, ns: Namespace, item_id: str) -> MemoryItem | None:
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return None
        row = self._q(
            f"SELECT {cols(ITEM_COLUMNS)} FROM items_{s} WHERE id = ? AND ns = ?", (item_id, ns.key)
        ).fetchone()
        return item_from_row(row) if row else None

    async def history(self, ns: Namespace, subject: str, predicate: str | None = None) -> list[MemoryItem]:
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return []
        prefix = f"{norm_key(subject)}\x1f"
        if predicate is not None:
            where, arg = "skey = ?", prefix + (norm_key(predicate) or "")
        else:
            where, arg = "substr(skey, 1, ?) = ?", None
        params: tuple[Any, ...] = (ns.key, arg) if arg is not None else (ns.key, len(prefix), prefix)
        rows = self._q(
            f"SELECT {cols(ITEM_COLUMNS)} FROM items_{s} WHERE ns = ? AND {where} ORDER BY valid_from, recorded_at",
            params,
        ).fetchall()
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
        self._check_open()
        check_search_args(query, k, mode)
        t = to_ts(as_of) if as_of is not None else now()
        assert t is not None
        scope = search_scope(ns, k=k, at=t, include_untrusted=include_untrusted, kind=kind, where=where,
                             source=source, since=since, until=until, inherit=inherit)  # fmt: skip
        s = self._suffix(scope.tenant, create=False)
        if s is None:
            return []
        vector = await self._queries.embed(query) if mode != "bm25" else None
        # No await from here on: the RAM index is caught up and searched in one step.
        lists: dict[str, list[tuple[int, float]]] = {}
        if self.search_index == "ram":
            from bastion.memory._index import Filter

            index = self._ram_index(s)
            allowed = self._allowed_rows(s, scope) if scope.needs_rows else None
            flt = Filter(t, include_untrusted, kind, scope.since, scope.until, allowed)
            if mode != "vector":
                lists["bm25"] = index.bm25(scope.keys, self._query_tokens(query), scope.depth, flt)
            if vector is not None:
                lists["vector"] = index.knn(scope.keys, vector, scope.depth, flt)
        else:
            if mode != "vector":
                lists["bm25"] = self._bm25(s, scope, query)
            if vector is not None:
                lists["vector"] = self._knn(s, scope, vector)
        if mode != "hybrid":
            ranked = [(rowid, score, {mode: i + 1}) for i, (rowid, score) in enumerate(lists[mode][:k])]
        else:
            # Rowids as fixed-width strings: RRF breaks score ties by id, here in insertion order.
            fused = rrf({name: [f"{r:020d}" for r, _ in hits] for name, hits in lists.items()}, k)
            ranked = [(int(r), score, ranks) for r, score, ranks in fused]
        return self._hits(s, ranked)

    def _allowed_rows(self, s: str, scope: SearchScope) -> Any:
        """Sorted rowids of the searched namespaces' items that pass the metadata and source
        filters (which the RAM index does not hold), read from the items table."""
        import numpy as np

        sql, params = self._row_filters("", scope)
        marks = ", ".join("?" * len(scope.keys))
        rows = self._q(
            f"SELECT rowid FROM items_{s} WHERE ns IN ({marks}){sql} ORDER BY rowid", [*scope.keys, *params]
        ).fetchall()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    @staticmethod
    def _row_filters(prefix: str, scope: SearchScope) -> tuple[str, list[Any]]:
        """SQL (and its parameters) for the `where=` and `source=` filters."""
        sql, params = "", []
        for key, values in scope.where:
            sql += f" AND CAST(json_extract({prefix}metadata, ?) AS TEXT) IN ({', '.join('?' * len(values))})"
            params += [f'$."{key}"', *values]
        if scope.source is not None:
            sql += (
                f" AND CAST(json_extract({prefix}provenance, '$.source') AS TEXT) "
                f"IN ({', '.join('?' * len(scope.source))})"
            )
            params += list(scope.source)
        return sql, params

    # --- the RAM index -------------------------------------------------------------------

    def _ram_index(self, s: str) -> TenantIndex:
        """The tenant's RAM index, loaded or caught up with the change log."""
        loaded = self._loaded.get(s)
        if loaded is None or not self._catch_up(s, loaded):
            loaded = self._loaded[s] = self._load(s)
        self._loaded.move_to_end(s)
        total = sum(len(x.index) for x in self._loaded.values())
        while total > self.ram_index_items and len(self._loaded) > 1:
            _, dropped = self._loaded.popitem(last=False)
            total -= len(dropped.index)
        return loaded.index

    def _load(self, s: str) -> _Loaded:
        from bastion.memory._index import RowState, TenantIndex

        index = TenantIndex(self.embedder.dim, candidates=max(self.candidates, 400))
        seq = 0
        with self._db:  # one read transaction: the rows and the log position agree
            (seq,) = self._q(f"SELECT coalesce(max(seq), 0) FROM log_{s}").fetchone()
            rows = self._q(f"SELECT rowid, ns, kind, trust, valid_from, valid_to, text FROM items_{s}")
            index.add_many(
                (rowid, RowState(ns, kind, trust == "trusted", valid_from, valid_to), self._doc_tokens(text))
                for rowid, ns, kind, trust, valid_from, valid_to, text in rows
            )
            index.set_vectors(self._q(f"SELECT rowid, {self._vector_column} FROM vec_{s}"))
        return _Loaded(index, seq)

    def _catch_up(self, s: str, loaded: _Loaded) -> bool:
        """Apply the tenant's changes since `loaded.seq`; False if a full reload is cheaper (or
        the log no longer reaches back that far). Applying a change re-reads the item's current
        state, so applying one twice, or after a later change, is harmless."""
        from bastion.memory._index import RowState

        changes = self._q(f"SELECT seq, row FROM log_{s} WHERE seq > ? ORDER BY seq", (loaded.seq,)).fetchall()
        if not changes:
            return True
        index = loaded.index
        if changes[0][0] != loaded.seq + 1 or len(changes) > max(10_000, len(index)) or index.removed > len(index):
            return False
        added: list[tuple[int, RowState, list[str]]] = []
        embedded_rows: list[int] = []
        for rowid in dict.fromkeys(row for _, row in changes):
            row = self._q(
                f"SELECT ns, kind, trust, valid_from, valid_to, text, embedded FROM items_{s} WHERE rowid = ?", (rowid,)
            ).fetchone()
            if row is None:
                index.remove(rowid)
                continue
            ns, kind, trust, valid_from, valid_to, text, embedded = row
            state = RowState(ns, kind, trust == "trusted", valid_from, valid_to)
            if rowid in index:
                index.update(rowid, state)
                if embedded and not index.has_vector(rowid):
                    embedded_rows.append(rowid)
            else:
                added.append((rowid, state, self._doc_tokens(text)))
                if embedded:
                    embedded_rows.append(rowid)
        # New rows and vectors go in as one batch each, as when the index is loaded.
        index.add_many(added)
        vector = f"SELECT {self._vector_column} FROM vec_{s} WHERE rowid = ?"
        index.set_vectors(
            (rowid, found[0]) for rowid in embedded_rows if (found := self._q(vector, (rowid,)).fetchone()) is not None
        )
        loaded.seq = changes[-1][0]
        return True

    @property
    def _vector_column(self) -> str:
        return "emb" if self.index == "binary" else "embedding"

    def _doc_tokens(self, text: str) -> list[str]:
        return self._tokenize(text, self._tokenize_document)

    def _tokenize(self, text: str, flags: int) -> list[str]:
        # Without offsets and colocated tokens apsw returns plain strings.
        tokens = self._tokenizer(text.encode(), flags, None, include_offsets=False, include_colocated=False)
        return cast("list[str]", tokens)

    def _query_tokens(self, query: str) -> list[str]:
        """FTS5's tokens of each query word: the phrases `_bm25` puts in its MATCH. (A word that
        FTS5 splits into several tokens would be one phrase there and several terms here; rare,
        since `query_terms` already splits on punctuation and underscores.)"""
        out: list[str] = []
        for term in query_terms(query):
            out += self._tokenize(term, self._tokenize_query)
        return out

    def _where_sql(self, prefix: str, scope: SearchScope) -> tuple[str, list[Any]]:
        """Every filter of `scope` as SQL over the items table (aliased by `prefix`)."""
        marks = ", ".join("?" * len(scope.keys))
        sql = f"{prefix}ns IN ({marks}) AND {prefix}valid_from <= ? "
        sql += f"AND ({prefix}valid_to IS NULL OR {prefix}valid_to > ?)"
        params: list[Any] = [*scope.keys, scope.at, scope.at]
        if not scope.include_untrusted:
            sql += f" AND {prefix}trust = 'trusted'"
        if scope.kind is not None:
            sql += f" AND {prefix}kind = ?"
            params.append(scope.kind)
        if scope.since is not None:
            sql += f" AND {prefix}valid_from >= ?"
            params.append(scope.since)
        if scope.until is not None:
            sql += f" AND {prefix}valid_from < ?"
            params.append(scope.until)
        rows_sql, rows_params = self._row_filters(prefix, scope)
        return sql + rows_sql, params + rows_params

    def _bm25(self, s: str, scope: SearchScope, query: str) -> list[tuple[int, float]]:
        """FTS5's `bm25()`: its statistics span the tenant's whole table (unlike the RAM index,
        whose statistics are those of the namespaces searched)."""
        terms = query_terms(query)
        if not terms:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)
        k = scope.depth
        cap = k * BM25_CANDIDATES
        filters, params = self._where_sql("i.", scope)
        # Rank inside FTS5 first and look up only the best `cap` rows: joining every match to
        # its item row before ranking cost ~1 ms per 2,000 matches (measured, 100k items).
        rows = self._q(
            f"WITH c AS MATERIALIZED (SELECT rowid, bm25(fts_{s}) AS score FROM fts_{s} WHERE fts_{s} MATCH ? "
            f"ORDER BY score LIMIT ?) SELECT c.rowid, c.score, (SELECT count(*) FROM c) FROM c "
            f"JOIN items_{s} i ON i.rowid = c.rowid WHERE {filters} ORDER BY c.score, c.rowid LIMIT ?",
            [match, cap, *params, k],
        ).fetchall()
        if len(rows) < k and (not rows or rows[0][2] >= cap):
            # Filters (namespace, validity, trust, kind) removed too many of the capped
            # candidates: rank every match, so the result is exact, never short.
            rows = self._q(
                f"SELECT i.rowid, bm25(fts_{s}) AS score, 0 FROM fts_{s} JOIN items_{s} i ON i.rowid = fts_{s}.rowid "
                f"WHERE fts_{s} MATCH ? AND {filters} ORDER BY score, i.rowid LIMIT ?",
                [match, *params, k],
            ).fetchall()
        return [(r[0], -r[1]) for r in rows]  # FTS5 bm25() is lower-is-better

    def _knn(self, s: str, scope: SearchScope, vector: list[float]) -> list[tuple[int, float]]:
        k = scope.depth
        if scope.needs_rows:
            # Metadata filters live in the items table: score the rows that pass them exactly.
            filters, params = self._where_sql("i.", scope)
            rows = self._q(
                f"SELECT v.rowid, vec_distance_cosine(v.{self._vector_column}, ?) AS d FROM vec_{s} v "
                f"JOIN items_{s} i ON i.rowid = v.rowid WHERE {filters} ORDER BY d, v.rowid LIMIT ?",
                [_blob(vector), *params, k],
            ).fetchall()
            return [(r[0], 1.0 - r[1]) for r in rows]
        filters = " AND trusted = 1" if not scope.include_untrusted else ""
        if scope.kind is not None:
            filters += " AND kind = :kind"
        if scope.since is not None:
            filters += " AND valid_from >= :since"
        if scope.until is not None:
            filters += " AND valid_from < :until"
        found: list[tuple[int, float]] = []
        for key in scope.keys:  # the namespace is vec0's partition key: one scan per namespace
            params = {"q": _blob(vector), "ns": key, "t": float(scope.at), "k": k, "kind": scope.kind,
                      "since": scope.since, "until": scope.until}  # fmt: skip
            if self.index == "binary":
                params["kk"] = max(k, self.candidates)
                rows = self._q(
                    f"SELECT rowid, vec_distance_cosine(emb, :q) AS d FROM vec_{s} "
                    "WHERE embedding MATCH vec_quantize_binary(:q) AND k = :kk AND ns = :ns "
                    f"AND valid_from <= :t AND valid_to > :t{filters} ORDER BY d LIMIT :k",
                    params,
                ).fetchall()
            else:
                rows = self._q(
                    f"SELECT rowid, distance FROM vec_{s} WHERE embedding MATCH :q AND k = :k AND ns = :ns "
                    f"AND valid_from <= :t AND valid_to > :t{filters} ORDER BY distance",
                    params,
                ).fetchall()
            found += [(r[0], 1.0 - r[1]) for r in rows]
        return sorted(found, key=lambda r: (-r[1], r[0]))[:k]

    def _hits(self, s: str, ranked: list[tuple[int, float, dict[str, int]]]) -> list[SearchHit]:
        if not ranked:
            return []
        marks = ", ".join("?" * len(ranked))
        rows = self._q(
            f"SELECT rowid, {cols(ITEM_COLUMNS)} FROM items_{s} WHERE rowid IN ({marks})",
            [r for r, _, _ in ranked],
        ).fetchall()
        by_rowid = {row[0]: item_from_row(row[1:]) for row in rows}
        return [SearchHit(by_rowid[r], score, ranks) for r, score, ranks in ranked if r in by_rowid]

    # --- episodes and skills -------------------------------------------------------------

    async def add_episode(self, ns: Namespace, episode: Episode) -> Episode:
        self._check_open()
        check_episode(episode)
        s = self._suffix(ns.tenant, create=True)
        if episode.occurred_at is None:
            episode.occurred_at = now()
        with self._db:
            self._q(
                f"INSERT INTO episodes_{s}({cols(EPISODE_COLUMNS)}, ns) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (*episode_values(episode), ns.key),
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
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return []
        sql = f"SELECT {cols(EPISODE_COLUMNS)} FROM episodes_{s} WHERE ns = :ns"
        if session is not None:
            sql += " AND session = :session"
        if since is not None:
            sql += " AND occurred_at >= :since"
        if until is not None:
            sql += " AND occurred_at < :until"
        params = {"ns": ns.key, "session": session, "since": to_ts(since), "until": to_ts(until), "n": limit}
        rows = self._q(sql + " ORDER BY occurred_at, id LIMIT :n", params).fetchall()
        return [episode_from_row(r) for r in rows]

    async def put_skill(self, ns: Namespace, skill: Skill) -> Skill:
        self._check_open()
        check_skill(skill)
        s = self._suffix(ns.tenant, create=True)
        with self._db:
            (latest,) = self._q(
                f"SELECT coalesce(max(version), 0) FROM skills_{s} WHERE ns = ? AND name = ?", (ns.key, skill.name)
            ).fetchone()
            skill.version = int(latest) + 1
            skill.created_at = now()
            self._q(
                f"INSERT INTO skills_{s}({cols(SKILL_COLUMNS)}, ns) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    skill.name,
                    skill.version,
                    skill.instructions,
                    json.dumps(skill.tools),
                    skill.description,
                    skill.created_at,
                    skill.trust,
                    ns.key,
                ),
            )
        return skill

    async def get_skill(self, ns: Namespace, name: str, version: int | None = None) -> Skill | None:
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return None
        sql = f"SELECT {cols(SKILL_COLUMNS)} FROM skills_{s} WHERE ns = ? AND name = ?"
        params: tuple[Any, ...] = (ns.key, name)
        if version is not None:
            sql += " AND version = ?"
            params += (version,)
        row = self._q(sql + " ORDER BY version DESC LIMIT 1", params).fetchone()
        return skill_from_row(row) if row else None

    async def list_skills(self, ns: Namespace) -> list[Skill]:
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return []
        rows = self._q(
            f"SELECT {cols(SKILL_COLUMNS)} FROM skills_{s} k WHERE ns = ? AND version = "
            f"(SELECT max(version) FROM skills_{s} WHERE ns = k.ns AND name = k.name) ORDER BY name",
            (ns.key,),
        ).fetchall()
        return [skill_from_row(r) for r in rows]

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def pending_embeddings(self) -> int:
        return self._batcher.backlog

    async def flush(self) -> None:
        await self._batcher.flush()

    async def reembed(self) -> int:
        """Queue every item that has no vector yet (its batch failed, or the process stopped
        before the batch ran) and return how many; `flush()` then waits for them."""
        self._check_open()
        queued = 0
        for (s,) in self._q("SELECT suffix FROM tenants").fetchall():
            for rowid, text in self._q(f"SELECT rowid, text FROM items_{s} WHERE embedded = 0").fetchall():
                self._batcher.submit((s, rowid), text)
                queued += 1
        return queued

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._batcher.close()
        finally:
            self._closed = True
            self._db.close()

    def _q(self, sql: str, params: Any = None) -> Any:
        """Execute on the connection; rows are typed loosely (apsw's own row type is a union)."""
        return self._db.execute(sql, params)

    def _check_open(self) -> None:
        if self._closed:
            raise UserError("this memory store is closed; open a new one")

    async def __aenter__(self) -> SQLiteMemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["SQLiteMemoryStore", "VectorIndex"]
