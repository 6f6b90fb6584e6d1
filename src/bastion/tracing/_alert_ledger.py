"""Where fired cost alerts are remembered: a small `cost_alerts` table in the trace store's own
database, so a restarted server (or a second process sharing a PostgreSQL store) does not fire
the same alert again, and `GET /v1/alerts` can list them.

The spans table is read-only to the monitor (`SpanStore.query`); the ledger opens its own
connection to the same database because claiming an alert is a write.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

_COLUMNS = "kind TEXT NOT NULL, key TEXT NOT NULL, slot TEXT NOT NULL, tenant TEXT, at DOUBLE PRECISION NOT NULL, alert TEXT NOT NULL, PRIMARY KEY (kind, key, slot)"  # noqa: E501


class AlertLedger(Protocol):
    """Claims each (kind, key, slot) once, across restarts and processes."""

    def claim(self, kind: str, key: str, slot: str, tenant: str | None, at: float, alert: dict[str, Any]) -> bool:
        """Record the alert; False when it was already recorded (then it must not fire)."""
        ...

    def recent(self, *, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest recorded alerts (of `tenant` when given), newest first."""
        ...

    def close(self) -> None: ...


class MemoryAlertLedger:
    """For a monitor without a database: deduplicates within this process only."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], tuple[str | None, float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def claim(self, kind: str, key: str, slot: str, tenant: str | None, at: float, alert: dict[str, Any]) -> bool:
        with self._lock:
            if (kind, key, slot) in self._rows:
                return False
            self._rows[(kind, key, slot)] = (tenant, at, alert)
            return True

    def recent(self, *, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda r: r[1], reverse=True)
        return [a for t, _, a in rows if tenant is None or t == tenant][:limit]

    def close(self) -> None:
        pass


class SQLiteAlertLedger:
    """The `cost_alerts` table in a SQLite file (the embedded trace store's `traces.db`)."""

    def __init__(self, path: str | Path) -> None:
        self._conn = sqlite3.connect(Path(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS cost_alerts ({_COLUMNS})")

    def claim(self, kind: str, key: str, slot: str, tenant: str | None, at: float, alert: dict[str, Any]) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO cost_alerts (kind, key, slot, tenant, at, alert) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (kind, key, slot, tenant, at, json.dumps(alert)),
            )
            return cur.rowcount == 1

    def recent(self, *, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where = " WHERE tenant = ?" if tenant is not None else ""
        params: list[Any] = [tenant] if tenant is not None else []
        with self._lock:
            rows = self._conn.execute(
                f"SELECT alert FROM cost_alerts{where} ORDER BY at DESC LIMIT ?", [*params, limit]
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresAlertLedger:
    """The `bastion_cost_alerts` table in the PostgreSQL trace store's database (shared by every process)."""

    def __init__(self, url: str) -> None:
        from bastion.tracing._store_pg import _LOCK, _psycopg  # pyright: ignore[reportPrivateUsage]

        self._conn: Any = _psycopg().connect(url, autocommit=True, connect_timeout=10)
        self._lock = threading.Lock()
        # Under the trace schema's lock: concurrent CREATE TABLE IF NOT EXISTS from a server and a
        # worker starting together fails in PostgreSQL (a duplicate pg_type row).
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS bastion_cost_alerts ({_COLUMNS})")

    def claim(self, kind: str, key: str, slot: str, tenant: str | None, at: float, alert: dict[str, Any]) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO bastion_cost_alerts (kind, key, slot, tenant, at, alert) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (kind, key, slot, tenant, at, json.dumps(alert)),
            )
            return bool(cur.rowcount == 1)

    def recent(self, *, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where = " WHERE tenant = %s" if tenant is not None else ""
        params: list[Any] = [tenant] if tenant is not None else []
        with self._lock:
            rows = self._conn.execute(
                f"SELECT alert FROM bastion_cost_alerts{where} ORDER BY at DESC LIMIT %s", [*params, limit]
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_alert_ledger(store: object) -> AlertLedger:
    """The ledger living in `store`'s database: its SQLite file (`.path`) or PostgreSQL (`.url`);
    in memory for any other store."""
    url = getattr(store, "url", None)
    if isinstance(url, str) and url.startswith(("postgres://", "postgresql://")):
        return PostgresAlertLedger(url)
    path = getattr(store, "path", None)
    if isinstance(path, Path):
        return SQLiteAlertLedger(path)
    return MemoryAlertLedger()
