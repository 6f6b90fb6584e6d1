"""Isolation is structural: each tenant's rows live in its own tables/partitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.memory import Episode, HashingEmbedder, MemoryItem, Namespace, PostgresMemoryStore, SQLiteMemoryStore
from bastion.memory._store import tenant_suffix


async def test_sqlite_keeps_each_tenant_in_its_own_tables(tmp_path: Path) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.db", HashingEmbedder(32))
    try:
        for tenant in ("acme", "globex"):
            await store.put(Namespace(tenant), MemoryItem(f"{tenant} secret"))
        await store.flush()
        for tenant in ("acme", "globex"):
            s = tenant_suffix(tenant)
            rows = store._db.execute(f"SELECT text FROM items_{s}").fetchall()
            assert rows == [(f"{tenant} secret",)]
            (count,) = store._db.execute(f"SELECT count(*) FROM vec_{s}").fetchone()
            assert count == 1
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_keeps_each_tenant_in_its_own_partitions(pg_url: str) -> None:
    import psycopg

    store = PostgresMemoryStore(pg_url, HashingEmbedder(32))
    try:
        for tenant in ("acme", "globex"):
            await store.put(Namespace(tenant), MemoryItem(f"{tenant} secret"))
            await store.add_episode(Namespace(tenant), Episode("s1", f"{tenant} run"))
        await store.flush()
    finally:
        await store.close()
    with psycopg.connect(pg_url) as conn:
        for tenant in ("acme", "globex"):
            s = tenant_suffix(tenant)
            for table, column in (("items", "text"), ("episodes", "summary")):
                rows = conn.execute(f"SELECT tenant, {column} FROM bastion_memory_{table}_{s}").fetchall()
                assert len(rows) == 1 and rows[0][0] == tenant
            (embedded,) = conn.execute(
                f"SELECT count(*) FROM bastion_memory_items_{s} WHERE embedding IS NOT NULL"
            ).fetchone()
            assert embedded == 1
        parents = {
            r[0]
            for r in conn.execute(
                "SELECT i.inhparent::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE c.relkind = 'r' AND c.relname LIKE 'bastion_memory_%'"
            ).fetchall()
        }
        assert parents == {"bastion_memory_items", "bastion_memory_episodes", "bastion_memory_skills"}
