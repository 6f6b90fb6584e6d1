"""Hard budgets: tokens and USD per run, session, user, tenant and calendar day.

A budget is hard: before a call the gateway makes a `Claim` (an upper bound of the prompt's
tokens and cost, plus up to `max_output` output tokens at the dearest output price of the
fallback chain). The store grants, in one atomic step across every scope the call's
`RunContext` falls into, the largest output allowance that the remainder of each scope (limit
minus settled spend minus what calls in flight hold) can pay for; the gateway sends that as the
call's `max_tokens`, and the store holds the worst case until the call settles with its real
usage. Only when not even `min_output` tokens fit is the call refused (`BudgetExceededError`
naming the scope and what remains). So against a provider that honours `max_tokens`, spend never
crosses a limit, however many calls run at once; a provider that overspends anyway is recorded
at its real usage and every later call is refused.

Scope keys: `run:<tenant>/<run_id>`, `session:<tenant>/<session>`, `user:<tenant>/<user>`,
`tenant:<tenant>`, `day:<tenant>/<YYYY-MM-DD>` (UTC). `overrides` sets limits for one key, e.g.
`{"tenant:acme": BudgetLimits(usd=500)}`.

`BudgetStore` is the small backend protocol: in-memory (one process) and SQLite (several
processes on one host; WAL) here, PostgreSQL in `_budget_pg.py`. All three grant through
`grant()`, so they clamp alike.
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


@dataclass(slots=True)  # not frozen: built on every budgeted call, and frozen init costs ~1 µs
class Claim:
    """What one call may cost: a fixed part (the prompt: `tokens`, `usd`, upper bounds) plus
    between `min_output` and `max_output` output tokens at `usd_per_output` each."""

    tokens: int
    usd: float
    max_output: int
    usd_per_output: float = 0.0
    min_output: int = 1

    def held(self, output: int) -> tuple[int, float]:
        """The (tokens, usd) a grant of `output` output tokens holds."""
        return self.tokens + output, self.usd + output * self.usd_per_output


@dataclass(slots=True)  # not frozen: built on every budgeted call, and frozen init costs ~1 µs
class Grant:
    """A reservation: its id and the output tokens it may use (the call's `max_tokens`)."""

    id: str
    output: int


@dataclass(frozen=True, slots=True)
class Violation:
    key: str
    unit: str  # "tokens" | "usd"
    limit: float
    spend: Spend
    needed: float  # the least the call needs (prompt + `min_output`)


# Float sums such as 0.1 + 0.2 must not refuse a call that exactly fits.
_EPS = 1e-12


def grant(scopes: Sequence[tuple[str, BudgetLimits, Spend]], claim: Claim) -> int | Violation:
    """The output tokens every scope can pay for (at most `claim.max_output`), or the first scope
    that cannot pay even `claim.min_output`. Pure: stores call it inside their atomic step."""
    output = claim.max_output
    for key, limits, spend in scopes:
        if limits.tokens is not None:
            room = limits.tokens - spend.tokens - spend.reserved_tokens - claim.tokens
            if room < claim.min_output:
                return Violation(key, "tokens", limits.tokens, spend, claim.tokens + claim.min_output)
            output = min(output, room)
        if limits.usd is not None:
            room_usd = limits.usd - spend.usd - spend.reserved_usd - claim.usd
            least = claim.min_output * claim.usd_per_output
            if room_usd + _EPS < least or room_usd + _EPS < 0:
                return Violation(key, "usd", limits.usd, spend, claim.usd + least)
            if claim.usd_per_output > 0:
                fits = int((room_usd + _EPS) / claim.usd_per_output)
                # Division rounds; step down until the held amount provably fits.
                while fits > 0 and fits * claim.usd_per_output > room_usd + _EPS:
                    fits -= 1
                output = min(output, fits)
    return max(output, 0)


def check(key: str, limits: BudgetLimits, spend: Spend, tokens: int, usd: float) -> Violation | None:
    """The limit `key` would cross by reserving exactly (tokens, usd) on top of `spend`, if any."""
    result = grant([(key, limits, spend)], Claim(tokens, usd, 0, 0.0, 0))
    return result if isinstance(result, Violation) else None


class BudgetStore(Protocol):
    """Where spend lives. `try_reserve` must grant and hold atomically (see `grant()`)."""

    async def try_reserve(self, charges: Sequence[tuple[str, BudgetLimits]], claim: Claim) -> Grant | Violation:
        """Hold `claim.held(output)` in every scope for the largest output `grant()` allows, or
        hold nothing and return the first violation."""
        ...

    async def settle(self, reservation: str, keys: Sequence[str], tokens: int, usd: float) -> None:
        """Drop the reservation and add the real usage to each scope in `keys` (also when the
        reservation already expired: the spend happened)."""
        ...

    async def spent(self, key: str) -> Spend: ...


class MemoryBudgetStore:
    """Spend in a dict: for one process. Atomic because it never awaits while it checks."""

    def __init__(self) -> None:
        self._spend: dict[str, Spend] = {}
        self._reservations: dict[str, tuple[int, float]] = {}

    async def try_reserve(self, charges: Sequence[tuple[str, BudgetLimits]], claim: Claim) -> Grant | Violation:
        output = grant([(k, lim, self._spend.get(k, _ZERO)) for k, lim in charges], claim)
        if isinstance(output, Violation):
            return output
        tokens, usd = claim.held(output)
        for key, _ in charges:
            s = self._spend.get(key, _ZERO)
            self._spend[key] = Spend(s.tokens, s.usd, s.reserved_tokens + tokens, s.reserved_usd + usd)
        rid = uuid.uuid4().hex
        self._reservations[rid] = (tokens, usd)
        return Grant(rid, output)

    async def settle(self, reservation: str, keys: Sequence[str], tokens: int, usd: float) -> None:
        held_tokens, held_usd = self._reservations.pop(reservation, (0, 0.0))
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

    async def try_reserve(self, charges: Sequence[tuple[str, BudgetLimits]], claim: Claim) -> Grant | Violation:
        return await asyncio.to_thread(self._try_reserve, charges, claim)

    async def settle(self, reservation: str, keys: Sequence[str], tokens: int, usd: float) -> None:
        await asyncio.to_thread(self._settle, reservation, keys, tokens, usd)

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

    def _try_reserve(self, charges: Sequence[tuple[str, BudgetLimits]], claim: Claim) -> Grant | Violation:
        now = time.time()
        with self._lock:
            # IMMEDIATE takes the write lock first: no other process can reserve between our
            # read of the remainders and our insert.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                output = grant([(k, lim, self._spent_locked(k, now)) for k, lim in charges], claim)
                if isinstance(output, Violation):
                    self._db.execute("ROLLBACK")
                    return output
                tokens, usd = claim.held(output)
                rid = uuid.uuid4().hex
                self._db.executemany(
                    "INSERT INTO budget_reservation (id, key, tokens, usd, expires) VALUES (?, ?, ?, ?, ?)",
                    [(rid, key, tokens, usd, now + self._ttl) for key, _ in charges],
                )
                self._db.execute("DELETE FROM budget_reservation WHERE expires <= ?", (now,))
                self._db.execute("COMMIT")
                return Grant(rid, output)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _settle(self, reservation: str, keys: Sequence[str], tokens: int, usd: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
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


@dataclass(slots=True)  # not frozen: built on every budgeted call
class Reservation:
    """What a call holds: `tokens` and `usd` in each scope of `charges`; `output` is the
    `max_tokens` it was granted."""

    id: str
    tokens: int
    usd: float
    charges: tuple[tuple[str, BudgetLimits], ...] = ()
    output: int = 0


class Budget:
    """Limits per scope plus the store that tracks spend against them.

    `default_output_tokens` is the `max_tokens` a call under a limit gets when it sets none (a
    call without a cap could spend without bound); `min_output_tokens` is the least output worth
    making a call for: a call the remainder cannot pay that much for is refused, not clamped.
    """

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
        default_output_tokens: int = 4096,
        min_output_tokens: int = 16,
        today: Callable[[], str] | None = None,
    ) -> None:
        if default_output_tokens < 1 or min_output_tokens < 1:
            raise UserError("Budget(default_output_tokens=..., min_output_tokens=...) must be >= 1")
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
        self.min_output_tokens = min_output_tokens
        self._today = today or (lambda: datetime.now(UTC).date().isoformat())

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

    async def reserve(self, charges: Sequence[tuple[str, BudgetLimits]], claim: Claim) -> Reservation:
        """Hold the largest output allowance of `claim` that every scope in `charges` can pay
        for, or raise `BudgetExceededError` naming the scope and what remains of it."""
        result = await self.store.try_reserve(charges, claim)
        if isinstance(result, Violation):
            raise _exceeded(result)
        tokens, usd = claim.held(result.output)
        return Reservation(result.id, tokens, usd, tuple(charges), result.output)

    async def settle(self, reservation: Reservation | None, tokens: int, usd: float) -> None:
        """Replace the reservation by the real usage (the provider's, even above what was held)."""
        if reservation is None:
            return
        await self.store.settle(reservation.id, [k for k, _ in reservation.charges], tokens, usd)
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
    left = max(0.0, v.limit - used - held)

    def fmt(x: float) -> str:
        return f"{int(x)} tokens" if v.unit == "tokens" else f"${x:.6f}"

    return BudgetExceededError(
        f"budget {v.key!r} is exhausted: {fmt(left)} of its limit of {fmt(v.limit)} remain "
        f"(used {fmt(used)}, +{fmt(held)} reserved by calls in flight), and this call needs at least "
        f"{fmt(v.needed)} (its prompt plus a minimal answer). Raise it with "
        f"Budget({scope}=BudgetLimits({v.unit}=...)) or Budget(overrides={{{v.key!r}: BudgetLimits({v.unit}=...)}}), "
        "send a shorter prompt, or wait for calls in flight to settle",
        scope=v.key,
        limit=float(v.limit),
        used=float(used),
    )


__all__ = [
    "Budget",
    "BudgetLimits",
    "BudgetStore",
    "Claim",
    "Grant",
    "MemoryBudgetStore",
    "Reservation",
    "SQLiteBudgetStore",
    "Spend",
    "Violation",
    "check",
    "grant",
]
