"""Hard budgets: tokens and USD per run, session, user, team, tenant and API key, over no period
or a calendar day, week or month in a configured timezone.

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
`team:<tenant>/<team>`, `key:<tenant>/<key id>` (the `virtual_key` tag of the context),
`tenant:<tenant>`; the legacy `day=` limit is `day:<tenant>/<YYYY-MM-DD>` (UTC). A limit with a
`period` counts in one bucket per calendar period, named by the period in its timezone:
`user:acme/bob@month:2026-12`, `team:acme/ml@week:2026-W49`, `tenant:acme@day:2026-12-02[Europe/Paris]`
(the timezone is named unless it is UTC). A new day, week (ISO, from Monday) or month is a new
key, so spend starts again from zero at local midnight, DST changes included. `overrides` replaces
the limits of one scope id, e.g. `{"tenant:acme": BudgetLimits(usd=500)}` or
`{"user:acme/bob": [BudgetLimits(usd=5, period="day"), BudgetLimits(usd=50, period="month")]}`.

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
from typing import Literal, Protocol, get_args

from bastion.errors import BudgetExceededError, UserError
from bastion.gateway._periods import PERIODS, Period, key_part, period_bounds, period_key, split_key, unquote, zone
from bastion.types import RunContext

Scope = Literal["run", "session", "user", "team", "tenant", "key"]
SCOPES: tuple[str, ...] = get_args(Scope)
# The context tag naming the API key a call is made with (the proxy sets it).
KEY_TAG = "virtual_key"


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Hard caps for one scope; None means unlimited. `period` None counts forever; "day",
    "week" (ISO, Monday to Sunday) or "month" starts afresh at the period's local midnight in
    `tz` (an IANA name; None = the `Budget`'s `tz`)."""

    tokens: int | None = None
    usd: float | None = None
    period: Period | None = None
    tz: str | None = None

    def __post_init__(self) -> None:
        if (self.tokens is not None and self.tokens < 0) or (self.usd is not None and self.usd < 0):
            raise UserError("BudgetLimits must be >= 0 (or None for unlimited)")
        if self.period is not None and self.period not in PERIODS:
            raise UserError(f"BudgetLimits(period={self.period!r}) must be None, 'day', 'week' or 'month'")
        if self.tz is not None:
            zone(self.tz)


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

    # Optional, for reports (`Budget.report`): `async def spent_prefix(prefix) -> list[(key, Spend)]`.


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

    async def spent_prefix(self, prefix: str) -> list[tuple[str, Spend]]:
        return sorted((k, s) for k, s in self._spend.items() if k.startswith(prefix))


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

    async def spent_prefix(self, prefix: str) -> list[tuple[str, Spend]]:
        """Settled spend of every key starting with `prefix` (for reports; reservations not included)."""
        return await asyncio.to_thread(self._spent_prefix, prefix)

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

    def _spent_prefix(self, prefix: str) -> list[tuple[str, Spend]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, tokens, usd FROM budget_spend WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
        return [(str(k), Spend(int(t), float(u))) for k, t, u in rows]


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One limit as it stands: what `GET /v1/budgets` lists. `starts`/`resets` bound the
    current period (None for a limit without one)."""

    key: str
    scope: str
    id: str
    limits: BudgetLimits
    tz: str | None
    spend: Spend
    starts: datetime | None
    resets: datetime | None

    def used(self) -> float:
        """The largest share of a limit used or held (1.0 = exhausted)."""
        return used_share(self.limits, self.spend)


def used_share(limits: BudgetLimits, spend: Spend) -> float:
    """The largest share of `limits` that `spend` uses or holds (tokens or USD)."""
    share = 0.0
    if limits.tokens is not None:
        used = spend.tokens + spend.reserved_tokens
        share = max(share, used / limits.tokens if limits.tokens else 1.0)
    if limits.usd is not None:
        used_usd = spend.usd + spend.reserved_usd
        share = max(share, used_usd / limits.usd if limits.usd else 1.0)
    return share


@dataclass(frozen=True, slots=True)
class DegradePolicy:
    """Route to a cheaper target when a budget runs low: once any limit that applies to a call
    has `at` (a share, 0.8 = 80%) or more used or held, the call goes to `to` (a tier, deployment
    alias or `provider:model`) instead of what it asked for. The chat span records
    `bastion.budget.degraded_from`, `bastion.budget.degraded_to` and the scope that triggered it."""

    at: float = 0.8
    to: str = "cheap"

    def __post_init__(self) -> None:
        if not 0.0 <= self.at <= 1.0:
            raise UserError(f"DegradePolicy(at={self.at}) must be a share between 0 and 1 (0.8 = at 80% used)")
        if not self.to:
            raise UserError("DegradePolicy(to=...) must name a cheaper tier or model, e.g. 'cheap'")


def _first(limits: tuple[BudgetLimits, ...]) -> BudgetLimits | None:
    return limits[0] if limits else None


@dataclass(slots=True)  # not frozen: built on every budgeted call
class Reservation:
    """What a call holds: `tokens` and `usd` in each scope of `charges`; `output` is the
    `max_tokens` it was granted."""

    id: str
    tokens: int
    usd: float
    charges: tuple[tuple[str, BudgetLimits], ...] = ()
    output: int = 0


Limits = BudgetLimits | Sequence[BudgetLimits] | None


def _as_list(limits: Limits) -> tuple[BudgetLimits, ...]:
    if limits is None:
        return ()
    return (limits,) if isinstance(limits, BudgetLimits) else tuple(limits)


class Budget:
    """Limits per scope plus the store that tracks spend against them.

    Each scope (`run`, `session`, `user`, `team`, `tenant`, `key`) takes one `BudgetLimits` or a
    list of them, e.g. `user=[BudgetLimits(usd=1, period="day"), BudgetLimits(usd=20,
    period="month")]`: a call must fit every one. `tz` is the timezone of periods that name none.
    `clock` returns the current aware datetime (tests inject one). `day=` is the older spelling
    of a per-tenant UTC day (`tenant=BudgetLimits(..., period="day")` is the same limit under the
    newer key format).

    `default_output_tokens` is the `max_tokens` a call under a limit gets when it sets none (a
    call without a cap could spend without bound); `min_output_tokens` is the least output worth
    making a call for: a call the remainder cannot pay that much for is refused, not clamped.
    """

    def __init__(
        self,
        *,
        run: Limits = None,
        session: Limits = None,
        user: Limits = None,
        team: Limits = None,
        tenant: Limits = None,
        key: Limits = None,
        day: BudgetLimits | None = None,
        overrides: Mapping[str, Limits] | None = None,
        store: BudgetStore | None = None,
        tz: str = "UTC",
        clock: Callable[[], datetime] | None = None,
        default_output_tokens: int = 4096,
        min_output_tokens: int = 16,
        today: Callable[[], str] | None = None,
    ) -> None:
        if default_output_tokens < 1 or min_output_tokens < 1:
            raise UserError("Budget(default_output_tokens=..., min_output_tokens=...) must be >= 1")
        zone(tz)
        self.tz = tz
        self.limits: dict[str, tuple[BudgetLimits, ...]] = {
            "run": _as_list(run),
            "session": _as_list(session),
            "user": _as_list(user),
            "team": _as_list(team),
            "tenant": _as_list(tenant),
            "key": _as_list(key),
        }
        self.day = day
        # A dict on purpose: the proxy registers each virtual key's limits here as keys appear.
        self.overrides: dict[str, Limits] = dict(overrides or {})
        for name in self.overrides:
            if name.split(":", 1)[0] not in (*SCOPES, "day") or "@" in name:
                raise UserError(
                    f"budget override key {name!r} must start with run:, session:, user:, team:, key:, tenant: "
                    "or day: and name one id (e.g. 'tenant:acme' or 'user:acme/bob'; a period goes in "
                    "BudgetLimits(period=...), not in the key; build keys of ids with '@' or '/' with "
                    "Budget.key('user', 'acme', 'bob@example.com'))"
                )
        self.store: BudgetStore = store if store is not None else MemoryBudgetStore()
        self.default_output_tokens = default_output_tokens
        self.min_output_tokens = min_output_tokens
        self._clock = clock or (lambda: datetime.now(UTC))
        self._today = today or (lambda: self._clock().astimezone(UTC).date().isoformat())

    @staticmethod
    def key(scope: Scope, tenant: str, ident: str | None = None) -> str:
        """The override key of one scope id, escaped as the budget keys it: `Budget.key("user",
        "acme", "bob@example.com")` -> `user:acme/bob%40example.com`; `Budget.key("tenant", "acme")`."""
        if scope not in SCOPES:
            raise UserError(f"budget scope {scope!r} must be one of {', '.join(SCOPES)}")
        if scope == "tenant":
            return f"tenant:{key_part(tenant)}"
        if not ident:
            raise UserError(f"Budget.key({scope!r}, tenant, id) needs the {scope} id")
        return f"{scope}:{key_part(tenant)}/{key_part(ident)}"

    @property
    def run(self) -> BudgetLimits | None:
        return _first(self.limits["run"])

    @property
    def session(self) -> BudgetLimits | None:
        return _first(self.limits["session"])

    @property
    def user(self) -> BudgetLimits | None:
        return _first(self.limits["user"])

    @property
    def tenant(self) -> BudgetLimits | None:
        return _first(self.limits["tenant"])

    def now(self) -> datetime:
        """The budget clock's current time (aware)."""
        return self._clock()

    def scope_ids(self, ctx: RunContext) -> list[tuple[str, str]]:
        """The (scope, base key) pairs a call made under `ctx` falls into (only scopes that have
        limits or overrides: this runs on every budgeted call)."""
        t = key_part(ctx.tenant)
        out = [("tenant", f"tenant:{t}")]
        limits, any_override = self.limits, bool(self.overrides)
        ids = (
            ("user", ctx.user),
            ("team", ctx.team),
            ("session", ctx.session),
            ("key", ctx.tags.get(KEY_TAG) if ctx.tags else None),
            ("run", ctx.run_id),
        )
        for scope, ident in ids:
            if ident and (any_override or limits[scope]):
                out.append((scope, f"{scope}:{t}/{key_part(ident)}"))
        return out

    def limits_for(self, scope: str, base: str) -> tuple[BudgetLimits, ...]:
        """The limits of one scope id: its override, else the scope's."""
        if base in self.overrides:
            return _as_list(self.overrides[base])
        return self.limits[scope]

    def charges(self, ctx: RunContext) -> list[tuple[str, BudgetLimits]]:
        """The (scope key, limits) pairs a call made under `ctx` counts against: one per limit,
        a periodic limit keyed by the bucket of the current period."""
        now: datetime | None = None
        out: list[tuple[str, BudgetLimits]] = []
        overrides, limits_of = self.overrides, self.limits
        for scope, base in self.scope_ids(ctx):
            if base in overrides:
                chosen = _as_list(overrides[base])
            else:
                chosen = limits_of[scope]
            for limits in chosen:
                if limits.tokens is None and limits.usd is None:
                    continue
                if limits.period is None:
                    out.append((base, limits))
                    continue
                now = now or self._clock()
                out.append((period_key(base, limits.period, limits.tz or self.tz, now), limits))
        if self.day is None and not self.overrides:
            return out  # no legacy day limit can apply: skip reading the clock
        day_key = f"day:{key_part(ctx.tenant)}/{self._today()}"
        day = _first(_as_list(self.overrides.get(day_key, self.day)))
        if day is not None and (day.tokens is not None or day.usd is not None):
            out.append((day_key, day))
        return out

    async def charge(self, ctx: RunContext, usd: float, tokens: int = 0) -> Reservation | None:
        """Hold exactly (tokens, usd) in every scope of `ctx` (a priced tool call), or raise
        `BudgetExceededError`; settle it with `settle()` once the cost is known."""
        charges = self.charges(ctx)
        if not charges:
            return None
        return await self.reserve(charges, Claim(tokens, usd, 0, 0.0, 0))

    async def report(self, tenant: str, *, limit: int = 500) -> list[BudgetLine]:
        """Every limit that applies in `tenant`, with its spend in the current period: the
        tenant's own limits and overrides always, the other scopes for each id (user, team, key,
        session, run) that has spent in its current period; at most `limit` lines, tenant ones first."""
        now = self._clock()
        tenant = key_part(tenant)
        candidates: list[tuple[str, str]] = [("tenant", f"tenant:{tenant}")]
        candidates += [(n.split(":", 1)[0], n) for n in self.overrides if n.split(":", 1)[0] in SCOPES]
        listed: set[str] = set()
        lister = getattr(self.store, "spent_prefix", None)
        for scope in SCOPES:
            if scope != "tenant" and lister is not None:
                for key, _ in await lister(f"{scope}:{tenant}/"):
                    listed.add(key)
                    candidates.append((scope, key.partition("@")[0]))
        lines: list[BudgetLine] = []
        seen: set[str] = set()
        day_key = f"day:{tenant}/{self._today()}"
        day = _first(_as_list(self.overrides.get(day_key, self.day)))
        if day is not None and (day.tokens is not None or day.usd is not None):  # the legacy `day=` limit
            _, start, end = period_bounds("day", "UTC", now)
            shown = BudgetLimits(day.tokens, day.usd, "day", "UTC")
            lines.append(
                BudgetLine(
                    day_key, "tenant", unquote(tenant), shown, "UTC", await self.store.spent(day_key), start, end
                )
            )
        for scope, base in candidates:
            if not (base == f"tenant:{tenant}" or base.startswith(f"{scope}:{tenant}/")):
                continue
            for limits in self.limits_for(scope, base):
                if limits.tokens is None and limits.usd is None:
                    continue
                tz = limits.tz or self.tz
                start = end = None
                key = base
                if limits.period is not None:
                    _, start, end = period_bounds(limits.period, tz, now)
                    key = period_key(base, limits.period, tz, now)
                if key in seen or (scope != "tenant" and base not in self.overrides and key not in listed):
                    continue
                if len(lines) >= limit:
                    return lines
                seen.add(key)
                spend = await self.store.spent(key)
                lines.append(
                    BudgetLine(key, scope, split_key(key)[1], limits, tz if start else None, spend, start, end)
                )
        return lines

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
        from bastion.tracing import record_budget

        for key, limits in charges:
            spend = await self.store.spent(key)
            if limits.tokens is not None:
                record_budget(f"{key}:tokens", float(spend.tokens), float(limits.tokens))
            if limits.usd is not None:
                record_budget(f"{key}:usd", spend.usd, limits.usd)

    async def most_used(self, ctx: RunContext) -> tuple[str, float] | None:
        """The scope key of `ctx` with the largest share of its limit used or held, and that share."""
        top: tuple[str, float] | None = None
        for key, limits in self.charges(ctx):
            share = used_share(limits, await self.store.spent(key))
            if top is None or share > top[1]:
                top = (key, share)
        return top

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
    base = v.key.partition("@")[0]
    scope = base.split(":", 1)[0]
    _, _, period, _, _ = split_key(v.key)
    used = v.spend.tokens if v.unit == "tokens" else v.spend.usd
    held = v.spend.reserved_tokens if v.unit == "tokens" else v.spend.reserved_usd
    left = max(0.0, v.limit - used - held)

    def fmt(x: float) -> str:
        return f"{int(x)} tokens" if v.unit == "tokens" else f"${x:.6f}"

    return BudgetExceededError(
        f"budget {v.key!r} is exhausted: {fmt(left)} of its limit of {fmt(v.limit)} remain "
        f"(used {fmt(used)}, +{fmt(held)} reserved by calls in flight), and this call needs at least "
        f"{fmt(v.needed)} (its prompt plus a minimal answer, or a tool call's price). Raise it with "
        f"Budget({scope}=BudgetLimits({v.unit}=...)) or Budget(overrides={{{base!r}: BudgetLimits({v.unit}=...)}}), "
        "send a shorter prompt, "
        + (f"wait for the next {period} (it resets at local midnight), " if period else "")
        + "or wait for calls in flight to settle",
        scope=v.key,
        limit=float(v.limit),
        used=float(used),
    )


__all__ = [
    "KEY_TAG",
    "PERIODS",
    "SCOPES",
    "Budget",
    "BudgetLimits",
    "BudgetLine",
    "BudgetStore",
    "Claim",
    "DegradePolicy",
    "Grant",
    "MemoryBudgetStore",
    "Period",
    "Reservation",
    "SQLiteBudgetStore",
    "Scope",
    "Spend",
    "Violation",
    "check",
    "grant",
    "key_part",
    "period_bounds",
    "period_key",
    "split_key",
    "used_share",
]
