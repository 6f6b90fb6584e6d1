from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bastion.memory import HashingEmbedder, MemoryStore, Namespace, PostgresMemoryStore, SQLiteMemoryStore


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite-disk-search",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-sql-search", marks=pytest.mark.postgres),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[MemoryStore]:
    """Every backend, for the conformance suite: a real SQLite file (searched through the RAM
    index, or by FTS5 and sqlite-vec directly) or a fresh Postgres database (searched through
    the RAM index, or by ts_rank_cd and HNSW)."""
    embedder = HashingEmbedder(64)
    if request.param.startswith("sqlite"):
        search_index = "sqlite" if request.param == "sqlite-disk-search" else "ram"
        s: MemoryStore = SQLiteMemoryStore(tmp_path / "memory.db", embedder, search_index=search_index)
    else:
        search_index = "postgres" if request.param == "postgres-sql-search" else "ram"
        s = PostgresMemoryStore(request.getfixturevalue("pg_url"), embedder, search_index=search_index)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def ns() -> Namespace:
    return Namespace("acme", agent="helper", user="alice")
