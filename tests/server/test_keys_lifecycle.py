"""API key lifecycle in the deployment's key store: configuration is the source of truth for
config-declared keys, minted keys live until revoked or expired, revocations stick."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.server._auth import SQLiteApiKeyStore, key_id_of, open_api_key_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str | None:
    """None: the embedded store under the home directory; else a PostgreSQL URL."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


async def test_keys_removed_from_the_configuration_are_revoked(tmp_path: Path, database: str | None) -> None:
    with_b = {"key-a": ("a", "operator"), "key-b": ("b", "viewer")}
    store = open_api_key_store(tmp_path, database)
    assert store.sync_config(with_b) == []
    minted, _ = await store.mint("a", "viewer")
    store.close()

    store = open_api_key_store(tmp_path, database)  # a restart with key-b gone
    assert store.sync_config({"key-a": ("a", "admin")}) == [key_id_of("key-b")]
    assert await store.lookup("key-b") is None
    a = await store.lookup("key-a")
    assert a is not None and a.role == "admin"  # the configuration also decides the role
    assert await store.lookup(minted) is not None  # minted keys are not the configuration's to revoke
    info = {k.key_id: k for k in store.keys()}
    assert info[key_id_of("key-b")].status() == "revoked"
    assert info[key_id_of("key-b")].revoked_reason == "removed from the configuration"

    assert store.sync_config(with_b) == []  # configured again: back
    assert await store.lookup("key-b") is not None
    store.close()


async def test_a_hand_revoked_key_stays_revoked_even_if_still_configured(tmp_path: Path, database: str | None) -> None:
    config = {"leaked": ("a", "operator")}
    store = open_api_key_store(tmp_path, database)
    store.sync_config(config)
    assert store.revoke(key_id_of("leaked"))
    assert not store.revoke(key_id_of("leaked"))  # already revoked
    store.sync_config(config)
    assert await store.lookup("leaked") is None
    store.close()


async def test_expired_keys_are_refused(tmp_path: Path, database: str | None) -> None:
    store = open_api_key_store(tmp_path, database)
    key, _ = await store.mint("a", "operator", expires_in=3600)
    assert await store.lookup(key) is not None
    store.add(key, "a", "operator", source="cli", expires_at=time.time() - 1)
    assert await store.lookup(key) is None
    assert store.keys()[0].status() == "expired"
    with pytest.raises(UserError, match="expires_in"):
        await store.mint("a", "operator", expires_in=-1)
    with pytest.raises(UserError, match="role"):
        store.add("k", "a", "root")  # type: ignore[arg-type]
    store.close()


async def test_keys_of_the_earlier_api_keys_file_are_imported(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "api_keys.db")
    old.execute(
        "CREATE TABLE bastion_api_keys (key_hash TEXT PRIMARY KEY, key_id TEXT UNIQUE NOT NULL, "
        "tenant TEXT NOT NULL, role TEXT NOT NULL, created_at REAL NOT NULL, v INTEGER NOT NULL DEFAULT 1)"
    )
    from bastion.gateway.proxy import hash_key

    for key in ("old-config", "old-minted"):
        old.execute(
            "INSERT INTO bastion_api_keys VALUES (?, ?, 'a', 'operator', 0, 1)", (hash_key(key), key_id_of(key))
        )
    old.commit()
    old.close()
    store = SQLiteApiKeyStore.for_home(tmp_path)
    assert (tmp_path / "api_keys.db.migrated").exists() and not (tmp_path / "api_keys.db").exists()
    store.sync_config({"old-config": ("a", "operator")})
    store.sync_config({})  # the configured one is now known as config-declared: removed, revoked
    assert await store.lookup("old-config") is None
    assert await store.lookup("old-minted") is not None  # unknown origin: kept, listed as legacy
    assert {k.key_id: k.source for k in store.keys()}[key_id_of("old-minted")] == "legacy"
    store.close()


@pytest.mark.parametrize("tenant", ["", "a/x", "a:x", "a x", "ü", "x" * 129])
async def test_tenant_names_that_could_merge_storage_keys_are_refused(tmp_path: Path, tenant: str) -> None:
    # tenants are parts of budget, cache and thread keys: "a/x" must never share a key with "a"
    from bastion.gateway.proxy import new_key

    store = open_api_key_store(tmp_path)
    try:
        with pytest.raises(UserError, match="invalid tenant name"):
            await store.mint(tenant, "operator")
        with pytest.raises(UserError, match="invalid tenant name"):
            store.sync_config({"k": (tenant, "viewer")})
        with pytest.raises(UserError, match="invalid tenant name"):
            new_key(tenant=tenant)
    finally:
        store.close()


def test_an_unreachable_database_fails_fast_with_the_password_redacted() -> None:
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot reach the database") as info:
        open_api_key_store("unused", "postgresql://bob:hunter2@127.0.0.1:1/x?connect_timeout=1")
    assert "hunter2" not in str(info.value)
