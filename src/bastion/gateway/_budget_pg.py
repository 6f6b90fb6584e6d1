"""`PostgresBudgetStore`: budget spend shared by every process and host (extra `postgres`).

Same protocol as the memory and SQLite stores. Grant-and-reserve is one transaction that first
locks the scopes' spend rows (`SELECT ... FOR UPDATE`, in key order, so concurrent reservations
cannot deadlock): every reservation and settlement of a scope queues on that row lock, so no
other process can read the same remainder before our reservation is committed. Reservations are
rows with an expiry so a crashed worker cannot hold a budget forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from bastion._pg import LazyPool
from bastion.gateway._budget import BudgetLimits, Claim, Grant, Spend, Violation, grant

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bastion_budget_spend (
    key TEXT PRIMARY KEY,
    tokens BIGINT NOT NULL DEFAULT 0,
    usd DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bastion_budget_reservation (
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    usd DOUBLE PRECISION NOT NULL,
    expires TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (id, key)
);
CREATE INDEX IF NOT EXISTS bastion_budget_reservation_key ON bastion_budget_reservation (key, expires);
"""

_SCHEMA_LOCK = 0x62617374_62756467  # "bastbudg": serialises schema creation across processes
_HELD = (
    "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) FROM bastion_budget_reservation "
    "WHERE key = %s AND expires > now()"
)


class PostgresBudgetStore:
    """Budget spend in PostgreSQL. `url` is a `postgresql://` URI; the pool opens on first use."""

    def __init__(self, url: str, *, reservation_ttl: float = 900.0, max_connections: int = 10) -> None:
        self._pool = LazyPool(
            url, schema=_SCHEMA, schema_lock=_SCHEMA_LOCK, max_connections=max_connections, owner="PostgresBudgetStore"
        )
        self._ttl = reservation_ttl

    async def _open(self) -> Any:
        return await self._pool.get()

    async def try_reserve(self, charges: Sequence[tuple[str, BudgetLimits]], claim: Claim) -> Grant | Violation:
        pool = await self._open()
        ordered = sorted(charges, key=lambda c: c[0])
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO bastion_budget_spend (key) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                ([k for k, _ in ordered],),
            )
            scopes: list[tuple[str, BudgetLimits, Spend]] = []
            for key, limits in ordered:
                cur = await conn.execute(
                    "SELECT tokens, usd FROM bastion_budget_spend WHERE key = %s FOR UPDATE", (key,)
                )
                spent_tokens, spent_usd = await cur.fetchone()
                # Read after the lock is held: READ COMMITTED gives this statement a fresh
                # snapshot, so it sees every reservation committed by whoever held it before.
                held = await (await conn.execute(_HELD, (key,))).fetchone()
                scopes.append((key, limits, Spend(int(spent_tokens), float(spent_usd), int(held[0]), float(held[1]))))
            output = grant(scopes, claim)
            if isinstance(output, Violation):
                return output  # commits only the empty spend rows inserted above
            tokens, usd = claim.held(output)
            rid = uuid.uuid4().hex
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO bastion_budget_reservation (id, key, tokens, usd, expires) "
                    "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))",
                    [(rid, key, tokens, usd, self._ttl) for key, _ in ordered],
                )
            # SKIP LOCKED: two reservers sweeping the same expired rows must not deadlock.
            await conn.execute(
                "DELETE FROM bastion_budget_reservation WHERE ctid IN (SELECT ctid FROM bastion_budget_reservation "
                "WHERE expires <= now() FOR UPDATE SKIP LOCKED)"
            )
            return Grant(rid, output)

    async def settle(self, reservation: str, keys: Sequence[str], tokens: int, usd: float) -> None:
        pool = await self._open()
        async with pool.connection() as conn, conn.transaction():
            # Spend rows first, in key order (the order reservers lock them in), then the
            # reservation: the swap becomes visible to the next reserver in one commit.
            async with conn.cursor() as c:
                await c.executemany(
                    "INSERT INTO bastion_budget_spend (key, tokens, usd) VALUES (%s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET tokens = bastion_budget_spend.tokens + excluded.tokens, "
                    "usd = bastion_budget_spend.usd + excluded.usd",
                    [(k, tokens, usd) for k in sorted(keys)],
                )
            await conn.execute("DELETE FROM bastion_budget_reservation WHERE id = %s", (reservation,))

    async def spent(self, key: str) -> Spend:
        pool = await self._open()
        async with pool.connection() as conn:
            row = await (
                await conn.execute("SELECT tokens, usd FROM bastion_budget_spend WHERE key = %s", (key,))
            ).fetchone()
            held = await (await conn.execute(_HELD, (key,))).fetchone()
        tokens, spent_usd = row if row else (0, 0.0)
        return Spend(int(tokens), float(spent_usd), int(held[0]), float(held[1]))

    async def spent_prefix(self, prefix: str) -> list[tuple[str, Spend]]:
        """Settled spend of every key starting with `prefix` (for reports; reservations not included)."""
        pool = await self._open()
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT key, tokens, usd FROM bastion_budget_spend WHERE left(key, %s) = %s ORDER BY key",
                    (len(prefix), prefix),
                )
            ).fetchall()
        return [(str(k), Spend(int(t), float(u))) for k, t, u in rows]

    async def aclose(self) -> None:
        await self._pool.close()


__all__ = ["PostgresBudgetStore"]
