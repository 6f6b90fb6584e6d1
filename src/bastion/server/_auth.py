"""API keys for the runtime server: each key belongs to one tenant and has one role.

Roles: `viewer` reads, `operator` also creates/cancels runs and decides approvals, `admin`
also manages keys. Keys are stored as sha256 hashes (the plaintext is shown once, at minting).

One key store per deployment: `<home>/keys.db` (the proxy's virtual keys live in the same
file). Keys declared in `Project(api_keys=...)` are synchronised at every start: the
configuration is the source of truth for them, so a key that was configured before and is no
longer is revoked. Keys minted with `bastion keys create` stay until `bastion keys revoke`
or their expiry. A revoked key stays revoked: re-adding a key someone revoked by hand to the
configuration does not bring it back (a leaked key must not return with the next deploy); a
key revoked only because it left the configuration comes back when it is configured again.

Lookups are not cached: every request reads the store (one primary-key read), so a revocation
or an expiry is refused by every server of a deployment at its next request (the first request
after `bastion keys revoke` exits, in `tests/runtime/test_scaleout.py`). A cache in front of
`lookup` must keep that within seconds (a short TTL plus invalidation); that test checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from bastion._pg import LoopPool
from bastion.errors import ConfigError, UserError
from bastion.gateway.proxy import KEYS_FILE, hash_key
from bastion.types import check_tenant

Role = Literal["viewer", "operator", "admin"]
CONNECT_TIMEOUT_S = 10.0
_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
Source = Literal["config", "cli", "legacy"]
LEGACY_FILE = "api_keys.db"
_REMOVED = "removed from the configuration"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    role: Role

    def can(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """A key's record as listed (never the key itself)."""

    key_id: str
    tenant: str
    role: Role
    source: Source
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    revoked_reason: str | None = None

    def status(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now if now is not None else time.time()):
            return "expired"
        return "active"


class ApiKeyStore(Protocol):
    async def lookup(self, key: str) -> Principal | None: ...
    async def mint(self, tenant: str, role: Role) -> tuple[str, Principal]: ...


_COLUMNS = {
    "expires_at": "REAL",
    "revoked_at": "REAL",
    "revoked_reason": "TEXT",
    "source": "TEXT NOT NULL DEFAULT 'legacy'",
}


def key_id_of(key: str) -> str:
    """The listed, non-secret id of a plaintext API key."""
    return f"key_{hash_key(key)[:10]}"


class SQLiteApiKeyStore:
    """API keys in one SQLite file (or `:memory:`); `for_home` opens the deployment's store."""

    _inline = True  # lookups run on the event loop (PostgreSQL: in a thread, it waits on the network)

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS bastion_api_keys (key_hash TEXT PRIMARY KEY, key_id TEXT UNIQUE NOT NULL, "
            "tenant TEXT NOT NULL, role TEXT NOT NULL, created_at REAL NOT NULL, v INTEGER NOT NULL DEFAULT 1)"
        )
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(bastion_api_keys)")}
        for name, decl in _COLUMNS.items():
            if name not in have:  # files written before key lifecycle existed
                self._conn.execute(f"ALTER TABLE bastion_api_keys ADD COLUMN {name} {decl}")

    @classmethod
    def for_home(cls, home: str | Path) -> SQLiteApiKeyStore:
        """`<home>/keys.db`, importing the keys of a pre-lifecycle `<home>/api_keys.db` once."""
        home = Path(home)
        home.mkdir(parents=True, exist_ok=True)
        store = cls(home / KEYS_FILE)
        legacy = home / LEGACY_FILE
        if legacy.exists():
            with store._lock:
                store._conn.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
                try:
                    store._conn.execute(
                        "INSERT OR IGNORE INTO bastion_api_keys (key_hash, key_id, tenant, role, created_at, source) "
                        "SELECT key_hash, key_id, tenant, role, created_at, 'legacy' FROM legacy.bastion_api_keys"
                    )
                finally:
                    store._conn.execute("DETACH DATABASE legacy")
            legacy.rename(legacy.with_name(LEGACY_FILE + ".migrated"))
        return store

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            return cur.fetchall(), cur.rowcount

    # -- lookups ---------------------------------------------------------------------------------

    _LOOKUP = (
        "SELECT key_id, tenant, role FROM bastion_api_keys WHERE key_hash = ? AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > ?)"
    )

    def _lookup(self, key: str) -> Principal | None:
        rows = self._run(self._LOOKUP, (hash_key(key), time.time()))[0]
        return Principal(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def lookup(self, key: str) -> Principal | None:
        if self._inline:  # a local primary-key read: cheaper than the hop to a thread and back
            return self._lookup(key)
        return await asyncio.to_thread(self._lookup, key)

    # -- lifecycle -------------------------------------------------------------------------------

    def add(
        self, key: str, tenant: str, role: Role, *, source: Source = "config", expires_at: float | None = None
    ) -> Principal:
        """Register a known plaintext key (from configuration, or one just minted). Updates the
        tenant and role of a key that exists; never clears a revocation."""
        if role not in _RANK:
            raise UserError(f"unknown role {role!r}; use one of {sorted(_RANK)}")
        check_tenant(tenant)
        principal = Principal(key_id_of(key), tenant, role)
        self._run(
            "INSERT INTO bastion_api_keys (key_hash, key_id, tenant, role, created_at, source, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_hash) DO UPDATE SET tenant = excluded.tenant, "
            "role = excluded.role, expires_at = excluded.expires_at, "
            "source = CASE WHEN bastion_api_keys.source = 'cli' THEN 'cli' ELSE excluded.source END",
            (hash_key(key), principal.key_id, tenant, role, time.time(), source, expires_at),
        )
        return principal

    async def mint(self, tenant: str, role: Role, *, expires_in: float | None = None) -> tuple[str, Principal]:
        if expires_in is not None and expires_in <= 0:
            raise UserError(f"expires_in must be positive seconds, got {expires_in}")
        key = "bsk-" + secrets.token_urlsafe(32)
        expires_at = time.time() + expires_in if expires_in is not None else None
        return key, await asyncio.to_thread(self.add, key, tenant, role, source="cli", expires_at=expires_at)

    def sync_config(self, configured: Mapping[str, tuple[str, str]]) -> list[str]:
        """Make the configured keys the config-declared keys: add or update each, revoke every
        key that came from configuration before and is no longer in it. Returns revoked ids."""
        hashes = {hash_key(k) for k in configured}
        for key, (tenant, role) in configured.items():
            self.add(key, tenant, role, source="config")  # type: ignore[arg-type]
        now = time.time()
        rows = self._run("SELECT key_hash, key_id, revoked_reason FROM bastion_api_keys WHERE source = 'config'")[0]
        gone = [(h, i) for h, i, why in rows if h not in hashes and why is None]
        back = [h for h, _, why in rows if h in hashes and why == _REMOVED]
        for h, _ in gone:
            self._run(
                "UPDATE bastion_api_keys SET revoked_at = ?, revoked_reason = ? WHERE key_hash = ?", (now, _REMOVED, h)
            )
        for h in back:  # configured again: only the configuration had revoked it
            self._run("UPDATE bastion_api_keys SET revoked_at = NULL, revoked_reason = NULL WHERE key_hash = ?", (h,))
        return [i for _, i in gone]

    def keys(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        sql = (
            "SELECT key_id, tenant, role, source, created_at, expires_at, revoked_at, revoked_reason "
            "FROM bastion_api_keys"
        )
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = ?", (tenant,)
        rows = self._run(sql + " ORDER BY created_at DESC", args)[0]
        return [ApiKeyInfo(*row) for row in rows]

    def revoke(self, key_id: str, reason: str = "revoked") -> bool:
        """Revoke by id; False if no such key (or it was already revoked)."""
        n = self._run(
            "UPDATE bastion_api_keys SET revoked_at = ?, revoked_reason = ? WHERE key_id = ? AND revoked_at IS NULL",
            (time.time(), reason, key_id),
        )[1]
        return n > 0

    def close(self) -> None:
        with contextlib.suppress(sqlite3.ProgrammingError), self._lock:
            self._conn.close()

    async def aclose(self) -> None:
        self.close()


class PostgresApiKeyStore(SQLiteApiKeyStore):
    """API keys in PostgreSQL (`bastion_api_keys`): the key store of a scaled-out deployment."""

    _inline = False

    def __init__(self, url: str, *, max_connections: int = 4) -> None:  # pyright: ignore[reportMissingSuperCall]
        try:
            import psycopg_pool
        except ImportError as e:  # pragma: no cover - the extra is installed in CI
            from bastion.errors import MissingExtraError

            raise MissingExtraError("postgres", "psycopg-pool", "PostgresApiKeyStore") from e
        self.path = url
        self._apool = LoopPool(url, max_size=max_connections)
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=max_connections, kwargs={"autocommit": True}, open=True
        )
        try:
            # fail fast with a clear message: the pool would otherwise retry for 30 s per request
            self._pool.wait(timeout=CONNECT_TIMEOUT_S)
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            from bastion.config import redact_credentials

            raise ConfigError(
                f"cannot reach the database {redact_credentials(url)} within {CONNECT_TIMEOUT_S:.0f} s; "
                "check --database / BASTION_DATABASE_URL and that PostgreSQL is running"
            ) from None
        with self._pool.connection() as c, c.transaction():
            conn: Any = c  # constant SQL
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('bastion_keys_schema'))")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS bastion_api_keys (key_hash TEXT PRIMARY KEY, key_id TEXT UNIQUE NOT NULL,"
                " tenant TEXT NOT NULL, role TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
                " v INTEGER NOT NULL DEFAULT 1, expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION,"
                " revoked_reason TEXT, source TEXT NOT NULL DEFAULT 'legacy')"
            )

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        with self._pool.connection() as c:
            conn: Any = c
            cur = conn.execute(sql.replace("?", "%s"), params)
            return (cur.fetchall() if cur.description is not None else []), cur.rowcount

    async def lookup(self, key: str) -> Principal | None:
        """Every request's key check: on the event loop's own pool (a hop to a thread and back
        per request cost the API server more than the read), in a thread from any other loop."""
        params = (hash_key(key), time.time())
        rows = await self._apool.execute(
            self._LOOKUP.replace("?", "%s"), params, fetch="all", otherwise=lambda: self._run(self._LOOKUP, params)[0]
        )
        return Principal(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def close(self) -> None:
        self._pool.close()

    async def aclose(self) -> None:
        await self._apool.close()
        self.close()


def open_api_key_store(home: str | Path, database_url: str | None = None) -> SQLiteApiKeyStore:
    """The deployment's API key store: PostgreSQL when `database_url` is set, else `<home>/keys.db`."""
    return PostgresApiKeyStore(database_url) if database_url else SQLiteApiKeyStore.for_home(home)
