"""Hard budgets: tokens and USD per run, session, user, tenant and calendar day.

Before a call the gateway *reserves* an estimate (prompt tokens + `max_tokens`, priced) in every
scope the call's `RunContext` falls into, and refuses with `BudgetExceededError` if any scope
would cross its limit; after the call it *settles* the reservation with the real usage. Checking
and reserving happen in one atomic step, so concurrent calls cannot all slip under a limit: the
overspend is bounded by how much one call's real usage exceeds its estimate.

Scope keys: `run:<tenant>/<run_id>`, `session:<tenant>/<session>`, `user:<tenant>/<user>`,
`tenant:<tenant>`, `day:<tenant>/<YYYY-MM-DD>` (UTC). `overrides` sets limits for one key, e.g.
`{"tenant:acme": BudgetLimits(usd=500)}`.

`BudgetStore` is the small backend protocol: in-memory (one process) and SQLite (several
processes on one host; WAL) here, a Postgres one fits the same three methods.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from bastion.errors import BudgetExceededError, UserError
from bastion.types import RunContext


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Hard caps for one scope; None means unlimited."""

    tokens: int | None = None
    usd: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens is not None and self.tokens < 0) or (self.usd is not None and self.usd < 0):
            raise UserError("BudgetLimits must be >= 0 (or None for unlimited)")


@dataclass(frozen=True, slots=True)
class Spend:
    """What a scope has used (settled) and holds (reserved by calls in flight)."""

    tokens: int = 0
    usd: float = 0.0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Violation:
    key: str
    unit: str  # "tokens" | "usd"
    limit: float
    spend: Spend
    needed: float


def check(key: str, limits: BudgetLimits, spend: Spend, tokens: int, usd: float) -> Violation | None:
    """The limit `key` would cross by reserving (tokens, usd) on top of `spend`, if any."""
    if limits.tokens is not None and spend.tokens + spend.reserved_tokens + tokens > limits.tokens:
        return Violation(key, "tokens", limits.tokens, spend, tokens)
    # A tiny epsilon so float sums such as 0.1 + 0.2 do not refuse a call that exactly fits.
    if limits.usd is not None and spend.usd + spend.reserved_usd + usd > limits.usd + 1e-12:
        return Violation(key, "usd", limits.usd, spend, usd)
    return None


class BudgetStore(Protocol):
    """Where spend lives. `try_reserve` must check and reserve atomically."""

    async def try_reserve(
        self, charges: Sequence[tuple[str, BudgetLimits]], tokens: int, usd: float
    ) -> str | Violation:
        """Reserve in every scope, or in none: a reservation id, or the first violation."""
        ...

    async def settle(self, reservation: str, tokens: int, usd: float) -> None:
        """Replace the reservation by the real usage in each of its scopes."""
        ...

    async def spent(self, key: str) -> Spend: ...


class MemoryBudgetStore:
    """Spend in a dict: for one process. Atomic because it never awaits while it checks."""

    def __init__(self) -> None:
        self._spend: dict[str, Spend] = {}
        self._reservations: dict[str, tuple[list[str], int, float]] = {}

    async def try_reserve(
        self, charges: Sequence[tuple[str, BudgetLimits]], tokens: int, usd: float
    ) -> str | Violation:
        for key, limits in charges:
            violation = check(key, limits, self._spend.get(key, _ZERO), tokens, usd)
            if violation is not None:
                return violation
        for key, _ in charges:
            s = self._spend.get(key, _ZERO)
            self._spend[key] = Spend(s.tokens, s.usd, s.reserved_tokens + tokens, s.reserved_usd + usd)
        rid = uuid.uuid4().hex
        self._reservations[rid] = ([k for k, _ in charges], tokens, usd)
        return rid

    async def settle(self, reservation: str, tokens: int, usd: float) -> None:
        entry = self._reservations.pop(reservation, None)
        if entry is None:
            return
        keys, held_tokens, held_usd = entry
        for key in keys:
            s = self._spend.get(key, _ZERO)
            self._spend[key] = Spend(
                s.tokens + tokens,
                s.usd + usd,
                max(0, s.reserved_tokens - held_tokens),
                max(0.0, s.reserved_usd - held_usd),
            )

    async def spent(self, key: str) -> Spend:
        return self._spend.get(key, _ZERO)


_ZERO = Spend()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend (
    key TEXT PRIMARY KEY, tokens INTEGER NOT NULL DEFAULT 0, usd REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS budget_reservation (
    id TEXT NOT NULL, key TEXT NOT NULL, tokens INTEGER NOT NULL, usd REAL NOT NULL,
    expires REAL NOT NULL, PRIMARY KEY (id, key)
);
CREATE INDEX IF NOT EXISTS budget_reservation_key ON budget_reservation (key, expires);
"""


class SQLiteBudgetStore:
    """Spend in a SQLite file (WAL), shared by every process on the host.

    Reservations are rows with an expiry (`reservation_ttl`, default 15 min), so a process that
    dies mid-call does not hold a tenant's budget forever. Queries run in a worker thread so the
    event loop never waits on the file lock.
    """

    def __init__(self, path: str | Path, *, reservation_ttl: float = 900.0) -> None:
        import sqlite3

        self.path = Path(path)
        self._ttl = reservation_ttl
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    async def try_reserve(
        self, charges: Sequence[tuple[str, BudgetLimits]], tokens: int, usd: float
    ) -> str | Violation:
        return await asyncio.to_thread(self._try_reserve, charges, tokens, usd)

    async def settle(self, reservation: str, tokens: int, usd: float) -> None:
        await asyncio.to_thread(self._settle, reservation, tokens, usd)

    async def spent(self, key: str) -> Spend:
        return await asyncio.to_thread(self._spent, key)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def aclose(self) -> None:
        self.close()

    def _spent_locked(self, key: str, now: float) -> Spend:
        row = self._db.execute("SELECT tokens, usd FROM budget_spend WHERE key = ?", (key,)).fetchone()
        held = self._db.execute(
            "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) FROM budget_reservation "
            "WHERE key = ? AND expires > ?",
            (key, now),
        ).fetchone()
        tokens, spent_usd = row if row else (0, 0.0)
        return Spend(int(tokens), float(spent_usd), int(held[0]), float(held[1]))

    def _try_reserve(self, charges: Sequence[tuple[str, BudgetLimits]], tokens: int, usd: float) -> str | Violation:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, limits in charges:
                    violation = check(key, limits, self._spent_locked(key, now), tokens, usd)
                    if violation is not None:
                        self._db.execute("ROLLBACK")
                        return violation
                rid = uuid.uuid4().hex
                self._db.executemany(
                    "INSERT INTO budget_reservation (id, key, tokens, usd, expires) VALUES (?, ?, ?, ?, ?)",
                    [(rid, key, tokens, usd, now + self._ttl) for key, _ in charges],
                )
                self._db.execute("DELETE FROM budget_reservation WHERE expires <= ?", (now,))
                self._db.execute("COMMIT")
                return rid
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _settle(self, reservation: str, tokens: int, usd: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                keys = [
                    k for (k,) in self._db.execute("SELECT key FROM budget_reservation WHERE id = ?", (reservation,))
                ]
                self._db.execute("DELETE FROM budget_reservation WHERE id = ?", (reservation,))
                self._db.executemany(
                    "INSERT INTO budget_spend (key, tokens, usd) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET tokens = tokens + excluded.tokens, usd = usd + excluded.usd",
                    [(k, tokens, usd) for k in keys],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _spent(self, key: str) -> Spend:
        with self._lock:
            return self._spent_locked(key, time.time())


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    tokens: int
    usd: float
    charges: tuple[tuple[str, BudgetLimits], ...] = ()


class Budget:
    """Limits per scope plus the store that tracks spend against them."""

    def __init__(
        self,
        *,
        run: BudgetLimits | None = None,
        session: BudgetLimits | None = None,
        user: BudgetLimits | None = None,
        tenant: BudgetLimits | None = None,
        day: BudgetLimits | None = None,
        overrides: Mapping[str, BudgetLimits] | None = None,
        store: BudgetStore | None = None,
        default_output_tokens: int = 1024,
        today: Callable[[], str] | None = None,
    ) -> None:
        self.run, self.session, self.user, self.tenant, self.day = run, session, user, tenant, day
        self.overrides = dict(overrides or {})
        for key in self.overrides:
            if key.split(":", 1)[0] not in ("run", "session", "user", "tenant", "day"):
                raise UserError(
                    f"budget override key {key!r} must start with run:, session:, user:, tenant: or day: "
                    "(e.g. 'tenant:acme' or 'user:acme/bob')"
                )
        self.store: BudgetStore = store if store is not None else MemoryBudgetStore()
        self.default_output_tokens = default_output_tokens
        self._today = today or (lambda: datetime.now(UTC).date().isoformat())
        every = [run, session, user, tenant, day, *self.overrides.values()]
        self.tracks_usd = any(lim is not None and lim.usd is not None for lim in every)

    def charges(self, ctx: RunContext) -> list[tuple[str, BudgetLimits]]:
        """The (scope key, limits) pairs a call made under `ctx` counts against."""
        t = ctx.tenant
        keys: list[tuple[str, BudgetLimits | None]] = [(f"tenant:{t}", self.tenant)]
        if ctx.user:
            keys.append((f"user:{t}/{ctx.user}", self.user))
        if ctx.session:
            keys.append((f"session:{t}/{ctx.session}", self.session))
        if ctx.run_id:
            keys.append((f"run:{t}/{ctx.run_id}", self.run))
        keys.append((f"day:{t}/{self._today()}", self.day))
        out: list[tuple[str, BudgetLimits]] = []
        for key, limits in keys:
            limits = self.overrides.get(key, limits)
            if limits is not None and (limits.tokens is not None or limits.usd is not None):
                out.append((key, limits))
        return out

    async def reserve(self, ctx: RunContext, tokens: int, usd: float) -> Reservation | None:
        """Hold (tokens, usd) in every scope of `ctx`, or raise `BudgetExceededError`."""
        charges = self.charges(ctx)
        if not charges:
            return None
        result = await self.store.try_reserve(charges, tokens, usd)
        if isinstance(result, Violation):
            raise _exceeded(result)
        return Reservation(result, tokens, usd, tuple(charges))

    async def settle(self, reservation: Reservation | None, tokens: int, usd: float) -> None:
        if reservation is None:
            return
        await self.store.settle(reservation.id, tokens, usd)
        if _metrics_on():
            await self._report(reservation.charges)

    async def _report(self, charges: Sequence[tuple[str, BudgetLimits]]) -> None:
        """Budget gauges (`bastion_budget_used`, fraction consumed) for dashboards and alerts."""
        from bastion.tracing._metrics import record_budget

        for key, limits in charges:
            spend = await self.store.spent(key)
            if limits.tokens is not None:
                record_budget(f"{key}:tokens", float(spend.tokens), float(limits.tokens))
            if limits.usd is not None:
                record_budget(f"{key}:usd", spend.usd, limits.usd)

    async def spent(self, key: str) -> Spend:
        """Spend so far for a scope key such as `tenant:acme`."""
        return await self.store.spent(key)

    async def aclose(self) -> None:
        close = getattr(self.store, "aclose", None)
        if close is not None:
            await close()


def _metrics_on() -> bool:
    # Only look once tracing is loaded anyway (the gateway's chat span imports it).
    import sys

    state = sys.modules.get("bastion.tracing._state")
    return state is not None and getattr(state, "STATE", None) is not None and state.STATE.instruments is not None


def _exceeded(v: Violation) -> BudgetExceededError:
    scope = v.key.split(":", 1)[0]
    used = v.spend.tokens if v.unit == "tokens" else v.spend.usd
    held = v.spend.reserved_tokens if v.unit == "tokens" else v.spend.reserved_usd

    def fmt(x: float) -> str:
        return f"{int(x)} tokens" if v.unit == "tokens" else f"${x:.6f}"

    return BudgetExceededError(
        f"budget {v.key!r} would be exceeded: limit {fmt(v.limit)}, used {fmt(used)} "
        f"(+{fmt(held)} reserved by calls in flight), this call needs up to {fmt(v.needed)}. "
        f"Raise it with Budget({scope}=BudgetLimits({v.unit}=...)) or "
        f"Budget(overrides={{{v.key!r}: BudgetLimits({v.unit}=...)}}), or lower max_tokens",
        scope=v.key,
        limit=float(v.limit),
        used=float(used),
    )


__all__ = [
    "Budget",
    "BudgetLimits",
    "BudgetStore",
    "MemoryBudgetStore",
    "Reservation",
    "SQLiteBudgetStore",
    "Spend",
    "Violation",
    "check",
]
