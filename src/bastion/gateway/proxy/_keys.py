"""Virtual API keys: what a proxy client presents instead of a provider key.

A key maps to a tenant (and optionally a user and team), the models it may call and its
budget limits. Only the sha256 of a key is stored; the plaintext exists once, when it is
minted, and is never logged (`VirtualKey` does not hold it). Backends: `InMemoryKeyStore`
(tests, single process) and `SQLiteKeyStore` (one file, survives restarts). A deployment keeps
its virtual keys and its server API keys in one file, `<home>/keys.db` (`SQLiteKeyStore.for_home`),
which both `python -m bastion.gateway.proxy` and `bastion serve` open; scaled out, every
server shares `PostgresKeyStore`. Lookups are not cached, so a revoked key is refused by every
server at its next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bastion.errors import UserError
from bastion.types import check_tenant

KEY_PREFIX = "bst-"
KEYS_FILE = "keys.db"
# Where earlier versions kept virtual keys: the proxy CLI wrote one name, `bastion serve` read the other.
LEGACY_FILES = ("proxy-keys.db", "proxy_keys.db")


def hash_key(key: str) -> str:
    """The sha256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode()).hexdigest()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w`, `45s` (or a sum like `1d12h`) in seconds."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(a + b for a, b in parts) != text.strip():
        raise UserError(f"cannot read the duration {text!r}; write it like 30d, 12h, 90m or 1d12h")
    return sum(float(n) * _UNIT[u] for n, u in parts)


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A virtual key's record. `models=None` allows every model; budgets of `None` are unlimited.

    `key_id` is a short, non-secret handle (shown in logs, listings and budget scopes)."""

    key_id: str
    key_hash: str
    tenant: str
    user: str | None = None
    team: str | None = None
    models: frozenset[str] | None = None
    max_budget_usd: float | None = None
    max_tokens: int | None = None
    revoked: bool = False
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    v: int = 1

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def usable(self, now: float | None = None) -> bool:
        """Neither revoked nor expired."""
        if self.revoked:
            return False
        return self.expires_at is None or self.expires_at > (now if now is not None else time.time())

    @property
    def budget_scope(self) -> str:
        """The budget scope this key's own limits apply to."""
        return f"key:{self.key_id}"


@runtime_checkable
class KeyStore(Protocol):
    """Where virtual keys live. Lookups are by hash only: a store never sees a plaintext key."""

    async def get(self, key_hash: str) -> VirtualKey | None:
        """The key with this hash, or None (unknown keys and revoked keys look the same to callers
        that check `revoked`)."""
        ...

    async def add(self, key: VirtualKey) -> None:
        """Store a new key; raises `UserError` if its hash or id is already taken."""
        ...

    async def revoke(self, key_id: str) -> bool:
        """Mark a key revoked; returns False if no key has this id."""
        ...

    async def list_keys(self, tenant: str | None = None) -> list[VirtualKey]:
        """Every key (of one tenant), newest first."""
        ...


def new_key(
    *,
    tenant: str,
    user: str | None = None,
    team: str | None = None,
    models: Iterable[str] | None = None,
    max_budget_usd: float | None = None,
    max_tokens: int | None = None,
    expires_in: float | None = None,
) -> tuple[str, VirtualKey]:
    """Generate a key: returns `(plaintext, record)`. Hand the plaintext to the client once.
    `expires_in` (seconds) makes the key stop working after that long."""
    check_tenant(tenant)
    if max_budget_usd is not None and max_budget_usd < 0:
        raise UserError(f"max_budget_usd must be >= 0, got {max_budget_usd}")
    if max_tokens is not None and max_tokens < 0:
        raise UserError(f"max_tokens must be >= 0, got {max_tokens}")
    if expires_in is not None and expires_in <= 0:
        raise UserError(f"expires_in must be positive seconds, got {expires_in}")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    record = VirtualKey(
        key_id=secrets.token_hex(6),
        key_hash=hash_key(plaintext),
        tenant=tenant,
        user=user,
        team=team,
        models=frozenset(models) if models is not None else None,
        max_budget_usd=max_budget_usd,
        max_tokens=max_tokens,
        expires_at=time.time() + expires_in if expires_in is not None else None,
    )
    return plaintext, record


async def mint_key(
    store: KeyStore,
    *,
    tenant: str,
    user: str | None = None,
    team: str | None = None,
    models: Iterable[str] | None = None,
    max_budget_usd: float | None = None,
    max_tokens: int | None = None,
    expires_in: float | None = None,
) -> tuple[str, VirtualKey]:
    """Create a key, store its hash, and return `(plaintext, record)`."""
    plaintext, record = new_key(
        tenant=tenant,
        user=user,
        team=team,
        models=models,
        max_budget_usd=max_budget_usd,
        max_tokens=max_tokens,
        expires_in=expires_in,
    )
    await store.add(record)
    return plaintext, record


class InMemoryKeyStore:
    """Keys in a dict: for tests and single-process setups without persistence."""

    def __init__(self, keys: Iterable[VirtualKey] = ()) -> None:
        self._by_hash: dict[str, VirtualKey] = {}
        for key in keys:
            self._put(key)

    def _put(self, key: VirtualKey) -> None:
        if key.key_hash in self._by_hash or any(k.key_id == key.key_id for k in self._by_hash.values()):
            raise UserError(f"virtual key {key.key_id!r} already exists; mint a new key instead")
        self._by_hash[key.key_hash] = key

    async def get(self, key_hash: str) -> VirtualKey | None:
        return self._by_hash.get(key_hash)

    async def add(self, key: VirtualKey) -> None:
        self._put(key)

    async def revoke(self, key_id: str) -> bool:
        for h, k in self._by_hash.items():
            if k.key_id == key_id:
                self._by_hash[h] = replace(k, revoked=True)
                return True
        return False

    async def list_keys(self, tenant: str | None = None) -> list[VirtualKey]:
        keys = [k for k in self._by_hash.values() if tenant is None or k.tenant == tenant]
        return sorted(keys, key=lambda k: k.created_at, reverse=True)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS virtual_keys (
    key_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    record TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS virtual_keys_tenant ON virtual_keys (tenant);
"""


class SQLiteKeyStore:
    """Keys in one SQLite file (WAL). Each row carries a format version `v` in its JSON record.

    Lookups are one primary-key read (tens of microseconds), so they run inline rather than in
    a thread: handing them to a thread pool would cost more than the read itself."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)

    @classmethod
    def for_home(cls, home: str | Path) -> SQLiteKeyStore:
        """The deployment's store, `<home>/keys.db`, importing keys from the files earlier
        versions used (`proxy-keys.db`, `proxy_keys.db`) once; those are renamed `*.migrated`."""
        home = Path(home)
        store = cls(home / KEYS_FILE)
        for name in LEGACY_FILES:
            legacy = home / name
            if not legacy.exists():
                continue
            with store._lock:
                store._conn.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
                try:
                    store._conn.execute(
                        "INSERT OR IGNORE INTO virtual_keys SELECT key_hash, key_id, tenant, record, revoked,"
                        " created_at FROM legacy.virtual_keys"
                    )
                finally:
                    store._conn.execute("DETACH DATABASE legacy")
            legacy.rename(legacy.with_name(name + ".migrated"))
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _encode(key: VirtualKey) -> str:
        return json.dumps(
            {
                "v": key.v,
                "key_id": key.key_id,
                "tenant": key.tenant,
                "user": key.user,
                "team": key.team,
                "models": sorted(key.models) if key.models is not None else None,
                "max_budget_usd": key.max_budget_usd,
                "max_tokens": key.max_tokens,
                "created_at": key.created_at,
                "expires_at": key.expires_at,
            }
        )

    @staticmethod
    def _decode(key_hash: str, record: str, revoked: int) -> VirtualKey:
        d = json.loads(record)
        models = d.get("models")
        return VirtualKey(
            key_id=d["key_id"],
            key_hash=key_hash,
            tenant=d["tenant"],
            user=d.get("user"),
            team=d.get("team"),
            models=frozenset(models) if models is not None else None,
            max_budget_usd=d.get("max_budget_usd"),
            max_tokens=d.get("max_tokens"),
            revoked=bool(revoked),
            created_at=d.get("created_at", 0.0),
            expires_at=d.get("expires_at"),
            v=d.get("v", 1),
        )

    async def get(self, key_hash: str) -> VirtualKey | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT record, revoked FROM virtual_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone()
        return None if row is None else self._decode(key_hash, row[0], row[1])

    async def add(self, key: VirtualKey) -> None:
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO virtual_keys (key_hash, key_id, tenant, record, revoked, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        key.key_hash,
                        key.key_id,
                        key.tenant,
                        self._encode(key),
                        int(key.revoked),
                        key.created_at,
                    ),
                )
        except sqlite3.IntegrityError:
            raise UserError(f"virtual key {key.key_id!r} already exists; mint a new key instead") from None

    async def revoke(self, key_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute("UPDATE virtual_keys SET revoked = 1 WHERE key_id = ?", (key_id,))
        return cur.rowcount > 0

    async def list_keys(self, tenant: str | None = None) -> list[VirtualKey]:
        sql = "SELECT key_hash, record, revoked FROM virtual_keys"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql += " WHERE tenant = ?"
            args = (tenant,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at DESC", args).fetchall()
        return [self._decode(h, r, rv) for h, r, rv in rows]


_PG_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS bastion_virtual_keys (key_hash TEXT PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, "
    "tenant TEXT NOT NULL, record TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, "
    "created_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS bastion_virtual_keys_tenant ON bastion_virtual_keys (tenant)",
]


class PostgresKeyStore:
    """Virtual keys in PostgreSQL (`bastion_virtual_keys`): the key store of a scaled-out
    deployment, shared by every API server. Queries run on a small pool, off the event loop."""

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        try:
            import psycopg_pool
        except ImportError as e:  # pragma: no cover - the extra is installed in CI
            from bastion.errors import MissingExtraError

            raise MissingExtraError("postgres", "psycopg-pool", "PostgresKeyStore") from e
        self.path = url
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=max_connections, kwargs={"autocommit": True}, open=True
        )
        with self._pool.connection() as c, c.transaction():
            conn: Any = c  # our SQL is built from constants, not user input
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('bastion_keys_schema'))")
            for stmt in _PG_SCHEMA:
                conn.execute(stmt)

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        with self._pool.connection() as c:
            conn: Any = c
            cur = conn.execute(sql, params)
            return (cur.fetchall() if cur.description is not None else []), cur.rowcount

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def get(self, key_hash: str) -> VirtualKey | None:
        rows, _ = await asyncio.to_thread(
            self._run, "SELECT record, revoked FROM bastion_virtual_keys WHERE key_hash = %s", (key_hash,)
        )
        return SQLiteKeyStore._decode(key_hash, rows[0][0], rows[0][1]) if rows else None  # pyright: ignore[reportPrivateUsage]

    async def add(self, key: VirtualKey) -> None:
        record = SQLiteKeyStore._encode(key)  # pyright: ignore[reportPrivateUsage]
        _, n = await asyncio.to_thread(
            self._run,
            "INSERT INTO bastion_virtual_keys (key_hash, key_id, tenant, record, revoked, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (key.key_hash, key.key_id, key.tenant, record, int(key.revoked), key.created_at),
        )
        if n == 0:
            raise UserError(f"virtual key {key.key_id!r} already exists; mint a new key instead")

    async def revoke(self, key_id: str) -> bool:
        _, n = await asyncio.to_thread(
            self._run, "UPDATE bastion_virtual_keys SET revoked = 1 WHERE key_id = %s", (key_id,)
        )
        return n > 0

    async def list_keys(self, tenant: str | None = None) -> list[VirtualKey]:
        sql = "SELECT key_hash, record, revoked FROM bastion_virtual_keys"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = %s", (tenant,)
        rows, _ = await asyncio.to_thread(self._run, sql + " ORDER BY created_at DESC", args)
        return [SQLiteKeyStore._decode(h, r, rv) for h, r, rv in rows]  # pyright: ignore[reportPrivateUsage]


def open_key_store(home: str | Path, database_url: str | None = None) -> SQLiteKeyStore | PostgresKeyStore:
    """The deployment's virtual-key store: PostgreSQL when `database_url` is set, else `<home>/keys.db`."""
    return PostgresKeyStore(database_url) if database_url else SQLiteKeyStore.for_home(home)


__all__ = [
    "KEYS_FILE",
    "KEY_PREFIX",
    "InMemoryKeyStore",
    "KeyStore",
    "PostgresKeyStore",
    "SQLiteKeyStore",
    "VirtualKey",
    "hash_key",
    "mint_key",
    "new_key",
    "open_key_store",
    "parse_duration",
]
