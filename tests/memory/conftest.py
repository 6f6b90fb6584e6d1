from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bastion.memory import HashingEmbedder, MemoryStore, Namespace, PostgresMemoryStore, SQLiteMemoryStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[MemoryStore]:
    """Every backend, for the conformance suite: a real SQLite file or a fresh Postgres database."""
    embedder = HashingEmbedder(64)
    if request.param == "sqlite":
        s: MemoryStore = SQLiteMemoryStore(tmp_path / "memory.db", embedder)
    else:
        s = PostgresMemoryStore(request.getfixturevalue("pg_url"), embedder)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def ns() -> Namespace:
    return Namespace("acme", agent="helper", user="alice")
