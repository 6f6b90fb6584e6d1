"""Virtual keys: one behaviour suite run against every KeyStore backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.gateway.proxy import (
    KEY_PREFIX,
    InMemoryKeyStore,
    KeyStore,
    SQLiteKeyStore,
    hash_key,
    mint_key,
    new_key,
)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "memory":
        yield InMemoryKeyStore()
    elif request.param == "sqlite":
        with SQLiteKeyStore(tmp_path / "keys.db") as s:
            yield s
    else:
        from bastion.gateway.proxy import PostgresKeyStore

        with PostgresKeyStore(request.getfixturevalue("pg_url")) as p:
            yield p


async def test_mint_then_look_up_by_hash(store: KeyStore) -> None:
    plaintext, record = await mint_key(
        store, tenant="acme", user="ana", team="core", models=["cheap"], max_budget_usd=2.5, max_tokens=1000
    )
    assert plaintext.startswith(KEY_PREFIX) and len(plaintext) > 40
    assert record.key_hash == hash_key(plaintext) != plaintext
    found = await store.get(hash_key(plaintext))
    assert found == record
    assert found is not None and found.allows("cheap") and not found.allows("smart")
    assert found.budget_scope == f"key:{record.key_id}"
    assert await store.get(hash_key(plaintext + "x")) is None
    assert isinstance(store, KeyStore)


async def test_keys_are_unique_and_duplicates_refused(store: KeyStore) -> None:
    a, rec_a = await mint_key(store, tenant="acme")
    b, rec_b = await mint_key(store, tenant="acme")
    assert a != b and rec_a.key_id != rec_b.key_id
    with pytest.raises(UserError, match="already exists"):
        await store.add(rec_a)
    with pytest.raises(UserError, match="already exists"):
        await store.add(replace(rec_b, key_hash="0" * 64))  # same id, other hash
    assert {k.key_id for k in await store.list_keys()} == {rec_a.key_id, rec_b.key_id}


async def test_revoke_and_list_by_tenant(store: KeyStore) -> None:
    key, rec = await mint_key(store, tenant="acme")
    _, other = await mint_key(store, tenant="globex")
    assert await store.revoke(rec.key_id)
    assert not await store.revoke("no-such-id")
    found = await store.get(hash_key(key))
    assert found is not None and found.revoked
    assert [k.key_id for k in await store.list_keys("globex")] == [other.key_id]
    assert [k.key_id for k in await store.list_keys("acme")] == [rec.key_id]


def test_invalid_mint_arguments_are_refused() -> None:
    with pytest.raises(UserError, match="tenant"):
        new_key(tenant="")
    with pytest.raises(UserError, match="max_budget_usd"):
        new_key(tenant="a", max_budget_usd=-1)
    with pytest.raises(UserError, match="max_tokens"):
        new_key(tenant="a", max_tokens=-5)


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir())


async def test_sqlite_persists_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with SQLiteKeyStore(path) as store:
        plaintext, record = await mint_key(store, tenant="acme", models=["a", "b"], max_budget_usd=1.0)
    raw = _all_bytes(tmp_path)
    assert plaintext.encode() not in raw
    assert plaintext[len(KEY_PREFIX) :].encode() not in raw
    with SQLiteKeyStore(path) as reopened:
        assert await reopened.get(hash_key(plaintext)) == record


def test_cli_mint_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bastion.gateway.proxy.__main__ import main

    db = str(tmp_path / "keys.db")
    assert main(["--keys", db, "mint", "--tenant", "acme", "--model", "cheap", "--max-budget-usd", "3"]) == 0
    minted = capsys.readouterr()
    plaintext = minted.out.strip()
    assert plaintext.startswith(KEY_PREFIX)
    assert main(["--keys", db, "keys", "--tenant", "acme"]) == 0
    listing = capsys.readouterr().out
    assert "tenant=acme" in listing and "models=cheap" in listing and "max_usd=3.0" in listing
    assert plaintext not in listing  # listings never show keys
    key_id = listing.split()[0]
    assert main(["--keys", db, "revoke", key_id]) == 0
    assert main(["--keys", db, "revoke", "nope"]) == 1
    capsys.readouterr()
    assert main(["--keys", db, "keys"]) == 0
    assert "REVOKED" in capsys.readouterr().out


def test_public_surface_is_pinned() -> None:
    import bastion.gateway.proxy as proxy

    assert sorted(proxy.__all__) == sorted(
        [
            "KEYS_FILE",
            "KEY_PREFIX",
            "BudgetHook",
            "ChatCompletionBody",
            "GatewayKeyBudgets",
            "InMemoryKeyStore",
            "InMemoryResponseStore",
            "KeyStore",
            "PostgresKeyStore",
            "PostgresResponseStore",
            "ProxyApp",
            "ProxyGateway",
            "ResponseStore",
            "SQLiteKeyStore",
            "SQLiteResponseStore",
            "StoredResponse",
            "VirtualKey",
            "create_proxy_app",
            "hash_key",
            "key_scope",
            "mint_key",
            "new_key",
            "open_key_store",
            "parse_duration",
        ]
    )
    for name in proxy.__all__:
        assert getattr(proxy, name) is not None


async def test_expiry_is_kept_and_enforced(store: KeyStore) -> None:
    key, record = await mint_key(store, tenant="acme", expires_in=3600)
    found = await store.get(hash_key(key))
    assert found is not None and found.expires_at == record.expires_at and found.usable()
    assert record.expires_at is not None and not found.usable(now=record.expires_at + 1)
    with pytest.raises(UserError, match="expires_in"):
        await mint_key(store, tenant="acme", expires_in=0)


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("1d12h", 129600)])
def test_durations(text: str, seconds: float) -> None:
    from bastion.gateway.proxy import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "3 days", "1x"])
def test_bad_durations_say_how_to_write_them(text: str) -> None:
    from bastion.gateway.proxy import parse_duration

    with pytest.raises(UserError, match="30d"):
        parse_duration(text)


def test_cli_writes_the_deployment_store_under_bastion_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bastion.config import get_settings
    from bastion.gateway.proxy.__main__ import main

    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        assert main(["mint", "--tenant", "acme", "--expires-in", "1h"]) == 0
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().out.startswith(KEY_PREFIX)
    assert (tmp_path / "home" / "keys.db").exists()  # the file `bastion serve --home` reads
    assert not (tmp_path / "home" / "proxy-keys.db").exists()
    assert main(["--keys", str(tmp_path / "x.db"), "mint", "--tenant", "a", "--expires-in", "soon"]) == 2


async def test_keys_in_the_files_of_earlier_versions_are_imported_once(tmp_path: Path) -> None:
    minted: list[str] = []
    for name in ("proxy-keys.db", "proxy_keys.db"):
        with SQLiteKeyStore(tmp_path / name) as old:
            minted.append((await mint_key(old, tenant="acme"))[0])
    with SQLiteKeyStore.for_home(tmp_path) as store:
        for key in minted:
            assert await store.get(hash_key(key)) is not None
    assert not (tmp_path / "proxy-keys.db").exists() and (tmp_path / "proxy-keys.db.migrated").exists()
    with SQLiteKeyStore.for_home(tmp_path) as store:
        assert len(await store.list_keys()) == 2
