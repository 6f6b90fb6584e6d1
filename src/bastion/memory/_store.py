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
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from bastion.errors import UserError
from bastion.memory._types import Episode, MemoryItem, Namespace, SearchHit, SearchMode, Skill, Timestamp

FORMAT_VERSION = 1
"""Version of the persisted layout (stored in each backend's meta table)."""

RRF_K = 60
"""The constant of reciprocal rank fusion (Cormack et al. 2009): score = sum 1 / (RRF_K + rank)."""


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
        ns: Namespace,
        query: str,
        *,
        k: int = 10,
        mode: SearchMode = "hybrid",
        as_of: Timestamp | None = None,
        include_untrusted: bool = False,
        kind: str | None = None,
    ) -> list[SearchHit]:
        """The `k` best items for `query` among those valid at `as_of` (default: now)."""
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
    "RRF_K",
    "MemoryStore",
    "check_episode",
    "check_item",
    "check_search_args",
    "check_skill",
    "query_terms",
    "rrf",
    "tenant_suffix",
]
