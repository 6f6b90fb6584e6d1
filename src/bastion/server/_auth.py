"""API keys for the runtime server: each key belongs to one tenant and has one role.

Roles: `viewer` reads, `operator` also creates/cancels runs and decides approvals, `admin`
also manages keys. Keys are stored as sha256 hashes (the plaintext is shown once, at minting).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from bastion.errors import UserError
from bastion.gateway.proxy._keys import hash_key

Role = Literal["viewer", "operator", "admin"]
_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    role: Role

    def can(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]


class ApiKeyStore(Protocol):
    async def lookup(self, key: str) -> Principal | None: ...
    async def mint(self, tenant: str, role: Role) -> tuple[str, Principal]: ...


class SQLiteApiKeyStore:
    """API keys in one SQLite file (or `:memory:`)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS bastion_api_keys (key_hash TEXT PRIMARY KEY, key_id TEXT UNIQUE NOT NULL, "
            "tenant TEXT NOT NULL, role TEXT NOT NULL, created_at REAL NOT NULL, v INTEGER NOT NULL DEFAULT 1)"
        )

    def _lookup(self, key: str) -> Principal | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT key_id, tenant, role FROM bastion_api_keys WHERE key_hash = ?", (hash_key(key),)
            ).fetchone()
        return Principal(row[0], row[1], row[2]) if row else None

    async def lookup(self, key: str) -> Principal | None:
        return await asyncio.to_thread(self._lookup, key)

    def add(self, key: str, tenant: str, role: Role) -> Principal:
        """Register a known plaintext key (e.g. from configuration)."""
        if role not in _RANK:
            raise UserError(f"unknown role {role!r}; use one of {sorted(_RANK)}")
        principal = Principal(f"key_{hash_key(key)[:10]}", tenant, role)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO bastion_api_keys (key_hash, key_id, tenant, role, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (hash_key(key), principal.key_id, tenant, role, time.time()),
            )
        return principal

    async def mint(self, tenant: str, role: Role) -> tuple[str, Principal]:
        key = "bsk-" + secrets.token_urlsafe(32)
        return key, await asyncio.to_thread(self.add, key, tenant, role)

    def close(self) -> None:
        self._conn.close()
