"""The `MemoryStore` contract every long-term memory backend implements, plus the pieces the
backends share (query terms, reciprocal rank fusion, argument checks).

A backend must isolate tenants structurally: each tenant's rows live in their own partition
(own tables in SQLite, a list partition in PostgreSQL), and every search names the tenant's
partition *before* the full-text or vector search runs. Results are never post-filtered by
tenant: a bug in a filter cannot leak another tenant's memories.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bastion.errors import UserError
from bastion.memory._embedders import Embedder
from bastion.memory._types import Episode, MemoryItem, Namespace, SearchHit, SearchMode, Skill, Timestamp, to_ts

FORMAT_VERSION = 1
"""Version of the persisted layout (stored in each backend's meta table)."""

RRF_K = 60
"""The constant of reciprocal rank fusion (Cormack et al. 2009): score = sum 1 / (RRF_K + rank)."""

FUSION_DEPTH = 50
"""Each ranked list is cut at max(k, FUSION_DEPTH) before fusion, so `search(k=1)` is
`search(k=10)[0]`: fusing the top 2k of each list (as before) changed the winner with k."""

QUERY_CACHE = 256
"""Query embeddings kept per store (an agent run tends to repeat its queries)."""

WhereValue = str | int | Sequence[str | int]


@runtime_checkable
class MemoryStore(Protocol):
    """Long-term memory: semantic items (facts, document chunks), episodes and skills, each
    under a `Namespace`. Writes are acknowledged at once and are full-text searchable at once;
    they become vector-searchable when the background embedding batch flushes
    (`await store.flush()` waits for that)."""

    async def put(self, ns: Namespace, item: MemoryItem) -> MemoryItem:
        """Store one item. A currently valid fact with the same `subject` and `predicate` (or
        the one named by `supersedes`) is invalidated, not deleted. Returns the stored item."""
        ...

    async def put_many(self, ns: Namespace, items: Sequence[MemoryItem]) -> list[MemoryItem]:
        """Store several items in one transaction (same rules as `put`)."""
        ...

    async def get(self, ns: Namespace, item_id: str) -> MemoryItem | None:
        """One item by id, valid or not; None if it does not exist in this namespace."""
        ...

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
        """The `k` best items for `query` among those valid at `as_of` (default: now), in `ns`
        and (with `inherit`) the shared levels above it (`Namespace.lineage()`); several
        namespaces of one tenant may be searched at once. Filters apply before ranking:
        `kind`; `where` (metadata key -> value or list of values, compared as text);
        `source` (`provenance["source"]`, e.g. the ingested file); `since`/`until` (the
        item's `valid_from` in [since, until)). The first `k` results are the same for every
        `k` up to `FUSION_DEPTH` (ties broken by id)."""
        ...

    async def history(self, ns: Namespace, subject: str, predicate: str | None = None) -> list[MemoryItem]:
        """Every version of the facts about `subject` (and `predicate`), oldest first."""
        ...

    async def forget(self, ns: Namespace, item_id: str, *, hard: bool = False) -> bool:
        """Invalidate an item (it stays for `as_of` queries), or erase it with `hard=True`
        (right-to-be-forgotten). Returns whether the item existed."""
        ...

    async def document_hash(self, ns: Namespace, doc_id: str) -> str | None:
        """The content hash of an ingested document's current chunks, if any."""
        ...

    async def delete_document(self, ns: Namespace, doc_id: str) -> int:
        """Erase every chunk of a document; returns how many were removed."""
        ...

    async def add_episode(self, ns: Namespace, episode: Episode) -> Episode: ...

    async def episodes(
        self,
        ns: Namespace,
        *,
        session: str | None = None,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        limit: int = 100,
    ) -> list[Episode]:
        """Episodes in time order, optionally of one session and within [since, until)."""
        ...

    async def put_skill(self, ns: Namespace, skill: Skill) -> Skill:
        """Save a skill as the next version of its name; returns it with `version` set."""
        ...

    async def get_skill(self, ns: Namespace, name: str, version: int | None = None) -> Skill | None:
        """The latest version of a skill (or the named version)."""
        ...

    async def list_skills(self, ns: Namespace) -> list[Skill]:
        """The latest version of every skill in the namespace."""
        ...

    async def flush(self) -> None:
        """Wait until every write so far is vector-searchable."""
        ...

    async def close(self) -> None:
        """Flush and release connections."""
        ...


# --- shared helpers ---------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    """a an and are as at be but by did do does for from had has have he her his how i if in into
    is it its me my of on or our she so than that the their them then there these they this to
    us was we were what when where which who whom why will with would you your""".split()
)


def query_terms(query: str) -> list[str]:
    """Lower-cased content words of a query (stopwords dropped unless nothing else is left),
    deduplicated in order. Used to build OR-queries for BM25 so every word may contribute."""
    words = [w.lower() for w in _WORD.findall(query)]
    content = [w for w in words if w not in _STOPWORDS] or words
    return list(dict.fromkeys(content))


def rrf(ranked: Mapping[str, Sequence[str]], k: int, constant: int = RRF_K) -> list[tuple[str, float, dict[str, int]]]:
    """Fuse ranked id lists by reciprocal rank fusion; returns (id, score, ranks) best first."""
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    for source, ids in ranked.items():
        for rank, item_id in enumerate(ids, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (constant + rank)
            ranks.setdefault(item_id, {})[source] = rank
    best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [(i, scores[i], ranks[i]) for i in best]


@dataclass(frozen=True, slots=True)
class SearchScope:
    """A search's resolved arguments: which namespaces of which tenant, and the filters."""

    tenant: str
    keys: tuple[str, ...]  # `Namespace.key` of every namespace searched
    at: float
    include_untrusted: bool
    kind: str | None
    where: tuple[tuple[str, tuple[str, ...]], ...]
    source: tuple[str, ...] | None
    since: float | None
    until: float | None
    depth: int

    @property
    def needs_rows(self) -> bool:
        """Whether a filter reads item columns the search indexes do not hold."""
        return bool(self.where) or self.source is not None


def search_scope(
    ns: Namespace | Sequence[Namespace],
    *,
    k: int,
    at: float,
    include_untrusted: bool,
    kind: str | None,
    where: Mapping[str, WhereValue] | None,
    source: str | Sequence[str] | None,
    since: Timestamp | None,
    until: Timestamp | None,
    inherit: bool,
) -> SearchScope:
    """Check a search's namespaces and filters and resolve them (see `MemoryStore.search`)."""
    given = [ns] if isinstance(ns, Namespace) else list(ns)
    if not given or not all(isinstance(n, Namespace) for n in given):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise UserError("search needs a Namespace or a non-empty list of Namespaces")
    tenants = {n.tenant for n in given}
    if len(tenants) > 1:
        raise UserError(
            f"one search cannot span tenants ({sorted(tenants)}): tenants are isolated; search each separately"
        )
    spanned = [m for n in given for m in (n.lineage() if inherit else [n])]
    keys = tuple(dict.fromkeys(m.key for m in spanned))
    pairs: list[tuple[str, tuple[str, ...]]] = []
    for key, value in (where or {}).items():
        if not isinstance(key, str) or not key or '"' in key or "\\" in key:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise UserError(f"where= keys must be non-empty strings without quotes or backslashes, got {key!r}")
        pairs.append((key, _text_values(f"where[{key!r}]", value)))
    return SearchScope(
        tenant=given[0].tenant,
        keys=keys,
        at=at,
        include_untrusted=include_untrusted,
        kind=kind,
        where=tuple(pairs),
        source=_text_values("source", source) if source is not None else None,
        since=to_ts(since),
        until=to_ts(until),
        depth=max(k, FUSION_DEPTH),
    )


def _text_values(name: str, value: WhereValue) -> tuple[str, ...]:
    values: list[object] = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, str | int):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise UserError(f"{name} values must be strings or integers (compared as text), got {v!r}")
    if not values:
        raise UserError(f"{name} needs at least one value")
    return tuple(str(v) for v in values)


class QueryEmbeddings:
    """The store's embedder with a small LRU of query vectors: a run that asks the same
    question twice (retrieval node, then the model's own search) embeds it once."""

    def __init__(self, embedder: Embedder, size: int = QUERY_CACHE) -> None:
        self.embedder = embedder
        self.size = size
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self.misses = 0

    async def embed(self, query: str) -> list[float]:
        found = self._cache.get(query)
        if found is not None:
            self._cache.move_to_end(query)
            return found
        self.misses += 1
        (vector,) = await self.embedder.embed([query])
        self._cache[query] = vector
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return vector


def tenant_suffix(tenant: str) -> str:
    """A table-name-safe, collision-resistant suffix for a tenant's partition."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:20]


def check_search_args(query: str, k: int, mode: str) -> None:
    if not isinstance(query, str):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise UserError(f"search query must be a string, got {type(query).__name__}")
    if k < 1:
        raise UserError(f"search k must be at least 1, got {k}")
    if mode not in ("hybrid", "bm25", "vector"):
        raise UserError(f"unknown search mode {mode!r}; use 'hybrid', 'bm25' or 'vector'")


def check_item(item: MemoryItem) -> None:
    if not isinstance(item, MemoryItem):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise UserError(f"expected a MemoryItem, got {type(item).__name__}")
    if not item.text or not item.text.strip():
        raise UserError(f"memory item {item.id!r} has empty text; memories need text to be searchable")
    if item.trust not in ("trusted", "untrusted"):
        raise UserError(f"memory item trust must be 'trusted' or 'untrusted', got {item.trust!r}")
    if (item.subject is None) != (item.predicate is None):
        raise UserError(
            f"memory item {item.id!r}: give both subject and predicate (they key contradiction detection) or neither"
        )
    if item.valid_from is not None and item.valid_to is not None and item.valid_to <= item.valid_from:
        raise UserError(f"memory item {item.id!r}: valid_to must be after valid_from")


def check_skill(skill: Skill) -> None:
    if not skill.name or not skill.instructions:
        raise UserError("a skill needs a non-empty name and instructions")


def check_episode(episode: Episode) -> None:
    if not episode.session:
        raise UserError("an episode needs its session id")


__all__ = [
    "FORMAT_VERSION",
    "FUSION_DEPTH",
    "QUERY_CACHE",
    "RRF_K",
    "MemoryStore",
    "QueryEmbeddings",
    "SearchScope",
    "WhereValue",
    "check_episode",
    "check_item",
    "check_search_args",
    "check_skill",
    "query_terms",
    "rrf",
    "search_scope",
    "tenant_suffix",
]
