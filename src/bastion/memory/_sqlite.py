"""The embedded long-term memory backend: one SQLite file (WAL) via `apsw`, FTS5 for BM25 and
`sqlite-vec` for vectors.

Isolation is structural: every tenant gets its own tables (`items_<h>`, `fts_<h>`, `vec_<h>`,
`episodes_<h>`, `skills_<h>`, `<h>` a hash of the tenant name), so a search only ever scans
one tenant's rows. Inside a tenant the vector table is partitioned by namespace and carries
validity and trust as metadata columns, so filters apply *during* the k-nearest-neighbour
scan, not after it.

Vector index modes: `"binary"` (default) scans 1-bit quantised vectors (48 bytes for 384
dimensions) for `candidates` (default 40, at least k) nearest by Hamming distance and re-ranks
them by exact cosine on the stored float vectors; `"exact"` scans the float vectors (exact,
~4x slower at scale). sqlite-vec's scan slows down sharply for k above ~40 (measured: 25k rows,
k=40 ~1.4 ms, k=80 ~10 ms), hence the modest default.

SQLite calls run on the event loop thread: they take micro- to milliseconds, less than a
thread hop would cost; embedding (the slow part) runs in the background batcher.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

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
    check_episode,
    check_item,
    check_search_args,
    check_skill,
    query_terms,
    rrf,
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

VectorIndex = Literal["binary", "exact"]
_FOREVER = 1e300  # vec0 metadata columns cannot hold NULL: "valid forever"
BM25_CANDIDATES = 10
"""BM25 ranks the top `k * BM25_CANDIDATES` full-text matches before applying the namespace,
validity and trust filters (falling back to ranking every match if fewer than `k` pass)."""


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
        if embedder is None:
            from bastion.memory._embedders import MiniLMEmbedder

            embedder = MiniLMEmbedder()
        self.embedder = embedder
        self.index: VectorIndex = index
        self.candidates = max(1, candidates)
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
        return rowid

    def _invalidate(self, s: str, rowid: int, at: float, by: str | None) -> None:
        self._q(
            f"UPDATE items_{s} SET valid_to = ?, superseded_by = coalesce(?, superseded_by) WHERE rowid = ?",
            (at, by, rowid),
        )
        self._q(f"UPDATE vec_{s} SET valid_to = ? WHERE rowid = ?", (float(at), rowid))

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
        ns: Namespace,
        query: str,
        *,
        k: int = 10,
        mode: SearchMode = "hybrid",
        as_of: Timestamp | None = None,
        include_untrusted: bool = False,
        kind: str | None = None,
    ) -> list[SearchHit]:
        self._check_open()
        check_search_args(query, k, mode)
        s = self._suffix(ns.tenant, create=False)
        if s is None:
            return []
        t = to_ts(as_of) if as_of is not None else now()
        assert t is not None
        depth = k if mode != "hybrid" else 2 * k
        lists: dict[str, list[tuple[int, float]]] = {}
        if mode in ("bm25", "hybrid"):
            lists["bm25"] = self._bm25(s, ns, query, depth, t, include_untrusted, kind)
        if mode in ("vector", "hybrid"):
            vector = (await self.embedder.embed([query]))[0]
            lists["vector"] = self._knn(s, ns, vector, depth, t, include_untrusted, kind)
        if mode != "hybrid":
            ranked = [(rowid, score, {mode: i + 1}) for i, (rowid, score) in enumerate(lists[mode])]
        else:
            fused = rrf({name: [str(r) for r, _ in hits] for name, hits in lists.items()}, k)
            ranked = [(int(r), score, ranks) for r, score, ranks in fused]
        return self._hits(s, ranked)

    def _filters(self, prefix: str, include_untrusted: bool, kind: str | None) -> str:
        sql = ""
        if not include_untrusted:
            sql += f" AND {prefix}trust = 'trusted'"
        if kind is not None:
            sql += f" AND {prefix}kind = :kind"
        return sql

    def _bm25(
        self, s: str, ns: Namespace, query: str, k: int, t: float, untrusted: bool, kind: str | None
    ) -> list[tuple[int, float]]:
        terms = query_terms(query)
        if not terms:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)
        params = {"match": match, "ns": ns.key, "t": t, "k": k, "kind": kind, "cap": k * BM25_CANDIDATES}
        filters = "i.ns = :ns AND i.valid_from <= :t AND (i.valid_to IS NULL OR i.valid_to > :t)"
        filters += self._filters("i.", untrusted, kind)
        # Rank inside FTS5 first and look up only the best `cap` rows: joining every match to
        # its item row before ranking cost ~1 ms per 2,000 matches (measured, 100k items).
        rows = self._q(
            f"WITH c AS MATERIALIZED (SELECT rowid, bm25(fts_{s}) AS score FROM fts_{s} WHERE fts_{s} MATCH :match "
            f"ORDER BY score LIMIT :cap) SELECT c.rowid, c.score, (SELECT count(*) FROM c) FROM c "
            f"JOIN items_{s} i ON i.rowid = c.rowid WHERE {filters} ORDER BY c.score LIMIT :k",
            params,
        ).fetchall()
        if len(rows) < k and (not rows or rows[0][2] >= params["cap"]):
            # Filters (namespace, validity, trust, kind) removed too many of the capped
            # candidates: rank every match, so the result is exact, never short.
            rows = self._q(
                f"SELECT i.rowid, bm25(fts_{s}) AS score, 0 FROM fts_{s} JOIN items_{s} i ON i.rowid = fts_{s}.rowid "
                f"WHERE fts_{s} MATCH :match AND {filters} ORDER BY score LIMIT :k",
                params,
            ).fetchall()
        return [(r[0], -r[1]) for r in rows]  # FTS5 bm25() is lower-is-better

    def _knn(
        self, s: str, ns: Namespace, vector: list[float], k: int, t: float, untrusted: bool, kind: str | None
    ) -> list[tuple[int, float]]:
        filters = " AND trusted = 1" if not untrusted else ""
        if kind is not None:
            filters += " AND kind = :kind"
        params = {"q": _blob(vector), "ns": ns.key, "t": float(t), "k": k, "kind": kind}
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
        return [(r[0], 1.0 - r[1]) for r in rows]

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
