"""The in-memory search index of one tenant, used by the SQLite backend to answer searches.

SQLite stays the store of record (items, FTS5, vectors); this index is derived from it and
rebuilt from it at will. It exists because SQLite's own search cannot meet the latency target
at 100k items per tenant (measured: FTS5's `bm25()` costs ~0.4 µs per matching row, 3.5 ms at
the 95th percentile; sqlite-vec's brute-force scan costs ~5.4 ms; see `bench/memory.py`).

Layout: one `_Partition` per namespace, like vec0's partition key, so a search scans only
its namespace's rows; filters (validity at `as_of`, trust, kind) are masks applied *before*
ranking, never to a ranked top-k. Inside a partition each row has a slot in column arrays:
- BM25: postings per token (slot, term frequency) scored with FTS5's exact formula over the
  statistics (row count, document frequency, average length) of the namespaces searched, not
  the whole tenant, so one user's ranking never depends on other users' data (with a single
  namespace in the tenant, scores equal what `bm25()` on the tenant's FTS5 table returns);
- vectors: 1-bit codes (48 bytes at 384 dimensions) scanned by Hamming distance for the
  `candidates` nearest, re-scored by int8 codes with a per-vector scale (384 bytes), about
  0.45 KB per item in all.

Not thread-safe: the owning store calls it from its event loop thread only (an index may be
built in a worker thread and handed over when complete, as the PostgreSQL store does).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

BM25_K1 = 1.2
BM25_B = 0.75
"""FTS5's constants (fts5_aux.c), so scores match SQLite's `bm25()`."""

_INF = math.inf


@dataclass(frozen=True, slots=True)
class RowState:
    """What the index keeps of one item (its text enters as `tokens`)."""

    ns: str
    kind: str
    trusted: bool
    valid_from: float
    valid_to: float | None


@dataclass(frozen=True, slots=True)
class Filter:
    at: float
    include_untrusted: bool = False
    kind: str | None = None
    since: float | None = None
    until: float | None = None
    allowed: npt.NDArray[np.int64] | None = None  # rowids passing filters the index cannot see (sorted)


class _Postings:
    __slots__ = ("slots", "tfs")

    def __init__(self) -> None:
        self.slots = array("i")
        self.tfs = array("i")


_Codes = tuple[npt.NDArray[np.uint64], npt.NDArray[np.int8], npt.NDArray[np.float32]]


def _encode(vectors: npt.NDArray[np.float32]) -> _Codes:
    """Unit-normalise rows and encode each as 1-bit codes (64-bit words) and int8 codes with a
    per-row scale (so `q8 * scale` approximates the unit vector)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    words = (vectors.shape[1] + 63) // 64
    packed = np.zeros((len(vectors), words * 8), np.uint8)
    packed[:, : (vectors.shape[1] + 7) // 8] = np.packbits(unit > 0, axis=1)
    peak = np.abs(unit).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0).astype(np.float32)
    q8 = np.round(unit * (127.0 / peak)[:, None]).astype(np.int8)
    return packed.view(np.uint64), q8, peak / 127.0


class _Partition:
    """The rows of one namespace, as column arrays indexed by slot."""

    _COLUMNS = ("rowid", "alive", "has_vec", "trusted", "kind", "valid_from", "valid_to", "length", "scale")

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.live = 0
        self.rowid = np.zeros(0, np.int64)
        self.alive = np.zeros(0, np.bool_)
        self.has_vec = np.zeros(0, np.bool_)
        self.trusted = np.zeros(0, np.bool_)
        self.kind = np.zeros(0, np.int32)
        self.valid_from = np.zeros(0, np.float64)
        self.valid_to = np.zeros(0, np.float64)
        self.length = np.zeros(0, np.float64)
        # Hamming scans sum one 64-bit word per column, so codes are stored word-major.
        self.bits = np.zeros(((dim + 63) // 64, 0), np.uint64)
        self.q8 = np.zeros((0, dim), np.int8)
        self.scale = np.zeros(0, np.float32)
        self.postings: dict[str, _Postings] = {}
        self.terms: list[tuple[str, ...]] = []  # distinct tokens per slot, to undo document frequencies
        # BM25 statistics of this namespace (rows, tokens, rows per token), combined per search
        self.df: dict[str, int] = {}
        self.tokens = 0.0

    def _reserve(self, extra: int) -> None:
        if self.n + extra <= len(self.rowid):
            return
        cap = max(64, 2 * len(self.rowid), self.n + extra)
        for name in self._COLUMNS:
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)
        bits = np.zeros((self.bits.shape[0], cap), np.uint64)
        bits[:, : self.n] = self.bits[:, : self.n]
        self.bits = bits
        q8 = np.zeros((cap, self.dim), np.int8)
        q8[: self.n] = self.q8[: self.n]
        self.q8 = q8

    def add_many(self, rows: Sequence[tuple[int, int, RowState, Sequence[str]]]) -> tuple[int, dict[str, int]]:
        """Append rows of (rowid, kind code, state, tokens); returns the first new slot and how
        many of the new rows contain each token."""
        self._reserve(len(rows))
        first, end = self.n, self.n + len(rows)
        self.rowid[first:end] = [r[0] for r in rows]
        self.kind[first:end] = [r[1] for r in rows]
        self.length[first:end] = [len(r[3]) for r in rows]
        self.alive[first:end] = True
        self._set_states(slice(first, end), [r[2] for r in rows])
        # Postings in bulk: number the batch's distinct tokens, count (token, slot) pairs with
        # one sort, then extend each token's postings once (3x faster than appending per token
        # when a tenant's index is loaded).
        vocab: dict[str, int] = {}
        ids: list[int] = []
        for tokens in (r[3] for r in rows):
            distinct = dict.fromkeys(tokens)
            self.terms.append(tuple(distinct))
            ids += [vocab.setdefault(t, len(vocab)) for t in tokens]
        added: dict[str, int] = {}
        if ids:
            owner = np.repeat(np.arange(first, end, dtype=np.int64), [len(r[3]) for r in rows])
            pairs, tfs = np.unique(np.asarray(ids, np.int64) * end + owner, return_counts=True)
            term_of, slot_of = np.divmod(pairs, end)
            bounds = np.flatnonzero(np.diff(term_of)) + 1
            names = list(vocab)
            for lo, hi in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(pairs)].tolist(), strict=True):
                token = names[int(term_of[lo])]
                post = self.postings.get(token)
                if post is None:
                    post = self.postings[token] = _Postings()
                post.slots.frombytes(slot_of[lo:hi].astype(np.int32).tobytes())
                post.tfs.frombytes(tfs[lo:hi].astype(np.int32).tobytes())
                added[token] = hi - lo
                self.df[token] = self.df.get(token, 0) + hi - lo
        self.n = end
        self.live += len(rows)
        self.tokens += float(sum(len(r[3]) for r in rows))
        return first, added

    def _set_states(self, slots: slice | list[int], states: Sequence[RowState]) -> None:
        self.trusted[slots] = [st.trusted for st in states]
        self.valid_from[slots] = [st.valid_from for st in states]
        self.valid_to[slots] = [_INF if st.valid_to is None else st.valid_to for st in states]

    def update(self, slot: int, state: RowState) -> None:
        self._set_states([slot], [state])

    def set_vectors(self, slots: list[int], vectors: npt.NDArray[np.float32]) -> None:
        bits, q8, scale = _encode(vectors)
        self.bits[:, slots] = bits.T
        self.q8[slots] = q8
        self.scale[slots] = scale
        self.has_vec[slots] = True

    def remove(self, slot: int) -> tuple[str, ...]:
        self.alive[slot] = False
        self.has_vec[slot] = False
        self.live -= 1
        self.tokens -= float(self.length[slot])
        for token in self.terms[slot]:
            left = self.df[token] - 1
            if left:
                self.df[token] = left
            else:
                del self.df[token]
        return self.terms[slot]

    def visible(self, slots: npt.NDArray[np.intp] | slice, flt: Filter, kind: int | None) -> npt.NDArray[np.bool_]:
        ok = self.alive[slots] & (self.valid_from[slots] <= flt.at) & (self.valid_to[slots] > flt.at)
        if not flt.include_untrusted:
            ok &= self.trusted[slots]
        if kind is not None:
            ok &= self.kind[slots] == kind
        if flt.since is not None:
            ok &= self.valid_from[slots] >= flt.since
        if flt.until is not None:
            ok &= self.valid_from[slots] < flt.until
        if flt.allowed is not None:
            ok &= _member(self.rowid[slots], flt.allowed)
        return ok


def _member(values: npt.NDArray[np.int64], sorted_set: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    if len(sorted_set) == 0:
        return np.zeros(len(values), np.bool_)
    at = np.searchsorted(sorted_set, values).clip(0, len(sorted_set) - 1)
    return sorted_set[at] == values


class TenantIndex:
    """BM25 and vector search over one tenant's items (see the module docstring)."""

    def __init__(self, dim: int, *, candidates: int = 400) -> None:
        self.dim = dim
        self.candidates = candidates
        self._parts: dict[str, _Partition] = {}
        self._where: dict[int, tuple[_Partition, int]] = {}
        self._kinds: dict[str, int] = {}
        self._docs = 0
        self.removed = 0

    def __len__(self) -> int:
        return self._docs

    def __contains__(self, rowid: int) -> bool:
        return rowid in self._where

    def add_many(self, rows: Iterable[tuple[int, RowState, Sequence[str]]]) -> None:
        """Index new items: (rowid, state, tokens), the tokens of its text as FTS5 produces them."""
        by_ns: dict[str, list[tuple[int, int, RowState, Sequence[str]]]] = {}
        for rowid, state, tokens in rows:
            if rowid in self._where:
                raise ValueError(f"row {rowid} is already indexed")
            kind = self._kinds.setdefault(state.kind, len(self._kinds))
            by_ns.setdefault(state.ns, []).append((rowid, kind, state, tokens))
        for ns, group in by_ns.items():
            part = self._parts.get(ns)
            if part is None:
                part = self._parts[ns] = _Partition(self.dim)
            first, _ = part.add_many(group)
            for slot, (rowid, _, _, _) in enumerate(group, start=first):
                self._where[rowid] = (part, slot)
            self._docs += len(group)

    def update(self, rowid: int, state: RowState) -> None:
        """Apply new validity or trust of an indexed item."""
        part, slot = self._where[rowid]
        part.update(slot, state)

    def has_vector(self, rowid: int) -> bool:
        part, slot = self._where[rowid]
        return bool(part.has_vec[slot])

    def set_vectors(self, rows: Iterable[tuple[int, bytes | Sequence[float] | npt.NDArray[np.float32]]]) -> None:
        """Set the vectors of indexed items (float32 bytes, as SQLite stores them, or numbers);
        rows that are not indexed are skipped."""
        by_part: dict[int, tuple[_Partition, list[int], list[bytes]]] = {}
        size = self.dim * 4
        for rowid, vector in rows:
            found = self._where.get(rowid)
            if found is None:
                continue
            blob = vector if isinstance(vector, bytes) else np.asarray(vector, np.float32).tobytes()
            if len(blob) != size:
                raise ValueError(f"vector of row {rowid} has {len(blob) // 4} dimensions, the index has {self.dim}")
            part, slot = found
            entry = by_part.setdefault(id(part), (part, [], []))
            entry[1].append(slot)
            entry[2].append(blob)
        for part, slots, blobs in by_part.values():
            matrix = np.frombuffer(b"".join(blobs), np.float32).reshape(len(slots), self.dim)
            for lo in range(0, len(slots), 8192):  # in slices that stay in cache
                part.set_vectors(slots[lo : lo + 8192], matrix[lo : lo + 8192])

    def remove(self, rowid: int) -> None:
        found = self._where.pop(rowid, None)
        if found is None:
            return
        part, slot = found
        part.remove(slot)
        self._docs -= 1
        self.removed += 1

    # --- search ----------------------------------------------------------------------------

    def bm25(self, keys: str | Sequence[str], terms: Iterable[str], k: int, flt: Filter) -> list[tuple[int, float]]:
        """The `k` best visible rows of the namespaces `keys` by BM25 over `terms` (FTS5 tokens,
        one per phrase of the OR-query), as (rowid, score) with higher scores better. The row
        count, average length and document frequencies are those of these namespaces only."""
        kind = self._kind_code(flt)
        parts = self._partitions(keys)
        if not parts or kind == -1:
            return []
        docs = sum(p.live for p in parts)
        avg = sum(p.tokens for p in parts) / docs
        # A token may come twice (two query words with one stem): FTS5 scores each phrase.
        idfs: list[tuple[str, float]] = []
        for term in terms:
            hits = sum(p.df.get(term, 0) for p in parts)
            if hits:
                idf = math.log((docs - hits + 0.5) / (hits + 0.5))
                idfs.append((term, idf if idf > 0.0 else 1e-6))  # as FTS5 does
        if not idfs:
            return []
        best: list[tuple[int, float]] = []
        for part in parts:
            n = part.n
            acc = np.zeros(n, np.float64)
            length = part.length[:n]
            for term, idf in idfs:
                post = part.postings.get(term)
                if post is None:
                    continue
                slots = np.frombuffer(post.slots, np.int32)
                tf = np.frombuffer(post.tfs, np.int32).astype(np.float64)
                denom = tf + BM25_K1 * (1.0 - BM25_B + BM25_B * length[slots] / avg)
                acc[slots] += idf * tf * (BM25_K1 + 1.0) / denom
            cand = np.flatnonzero(acc)
            cand = cand[part.visible(cand, flt, kind)]
            best += self._top(part, cand, acc[cand], k)
        return _merge(best, k)

    def knn(
        self, keys: str | Sequence[str], vector: Sequence[float] | npt.NDArray[np.float32], k: int, flt: Filter
    ) -> list[tuple[int, float]]:
        """The `k` visible rows of the namespaces `keys` nearest to `vector` by (int8-estimated)
        cosine similarity, as (rowid, similarity)."""
        kind = self._kind_code(flt)
        parts = self._partitions(keys)
        if not parts or kind == -1:
            return []
        q = np.asarray(vector, dtype=np.float32)
        if q.shape != (self.dim,) or not np.any(q):
            return []
        qbits, qq, qscale = _encode(q[None, :])
        best: list[tuple[int, float]] = []
        for part in parts:
            n = part.n
            ok = part.visible(slice(0, n), flt, kind) & part.has_vec[:n]
            count = max(k, self.candidates)
            if np.count_nonzero(ok) <= count:
                cand = np.flatnonzero(ok)
            else:
                cand = self._nearest_codes(part, qbits[0], ok, count)
            sims = (part.q8[cand].astype(np.int32) @ qq[0].astype(np.int32)) * part.scale[cand] * qscale[0]
            best += self._top(part, cand, sims.astype(np.float64), k)
        return _merge(best, k)

    def _partitions(self, keys: str | Sequence[str]) -> list[_Partition]:
        found = (self._parts.get(key) for key in ([keys] if isinstance(keys, str) else keys))
        return [p for p in found if p is not None and p.live]

    def _nearest_codes(
        self, part: _Partition, qw: npt.NDArray[np.uint64], ok: npt.NDArray[np.bool_], count: int
    ) -> npt.NDArray[np.intp]:
        """Slots of the `count` visible rows nearest to the query's 1-bit code `qw` by Hamming
        distance."""
        n = part.n
        dist = np.zeros(n, np.uint16)
        for j, word in enumerate(qw):
            dist += np.bitwise_count(part.bits[j, :n] ^ word)
        far = len(qw) * 64 + 1
        dist[~ok] = far
        # Distances are small integers: a histogram finds the cut-off distance in one pass,
        # ~3x faster than argpartition at 100k rows.
        counts = np.cumsum(np.bincount(dist, minlength=far + 1))
        cut = int(np.searchsorted(counts, count))
        below = np.flatnonzero(dist < cut)
        at_cut, need = np.flatnonzero(dist == cut), count - len(below)
        if len(at_cut) > need:
            # Rows tied at the cut-off go by rowid, not slot: slots follow the order rows were
            # loaded in, which differs between processes (the PostgreSQL store's catch-ups).
            at_cut = at_cut[np.argpartition(part.rowid[at_cut], need - 1)[:need]] if need else at_cut[:0]
        return np.concatenate((below, at_cut))

    def _kind_code(self, flt: Filter) -> int | None:
        if flt.kind is None:
            return None
        return self._kinds.get(flt.kind, -1)

    @staticmethod
    def _top(
        part: _Partition, slots: npt.NDArray[np.intp], scores: npt.NDArray[np.float64], k: int
    ) -> list[tuple[int, float]]:
        """The best `k` as (rowid, score), ties broken by rowid, so the first `k` are the same
        whatever `k` is (argpartition alone would pick among rows tied at the cut at random)."""
        if len(slots) > k:
            keep = np.argpartition(-scores, k - 1)[:k]
            cut = scores[keep].min()
            keep = np.flatnonzero(scores >= cut)
            slots, scores = slots[keep], scores[keep]
        rowids = part.rowid[slots]
        order = np.lexsort((rowids, -scores))[:k]  # best first; ties by insertion order
        return [(int(rowids[i]), float(scores[i])) for i in order]


def _merge(rows: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """The best `k` of several namespaces' lists, ties by rowid."""
    return sorted(rows, key=lambda r: (-r[1], r[0]))[:k]


class Fts5Tokens:
    """FTS5's `porter unicode61` tokenizer outside any FTS5 table (an in-memory SQLite
    connection), for backends that keep their own index: documents and queries come out as the
    SQLite store's FTS5 tables tokenize them, so BM25 scores are the same on every backend.
    One instance per thread."""

    def __init__(self) -> None:
        import apsw

        self._db = apsw.Connection(":memory:")
        self._tokenizer = self._db.fts5_tokenizer("porter", ["unicode61"])
        self._document = apsw.FTS5_TOKENIZE_DOCUMENT
        self._query = apsw.FTS5_TOKENIZE_QUERY

    def document(self, text: str) -> list[str]:
        return self._tokenize(text, self._document)

    def query(self, terms: Iterable[str]) -> list[str]:
        """The tokens of each query term (`query_terms` of the query), in order."""
        out: list[str] = []
        for term in terms:
            out += self._tokenize(term, self._query)
        return out

    def _tokenize(self, text: str, flags: int) -> list[str]:
        # Without offsets and colocated tokens apsw returns plain strings.
        tokens = self._tokenizer(text.encode(), flags, None, include_offsets=False, include_colocated=False)
        return cast("list[str]", tokens)


__all__ = ["BM25_B", "BM25_K1", "Filter", "Fts5Tokens", "RowState", "TenantIndex"]
