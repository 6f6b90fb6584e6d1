"""`GET /v1/budgets`: the caller's tenant's budgets, each limit with its spend and period.

The budget is the project gateway's (`Project.gateway.budgets`), looked up on every request:
the proxy may give the gateway a `Budget` only once a virtual key with limits is first used.
"""

# No `from __future__ import annotations`: FastAPI reads these route annotations at runtime.
from collections.abc import Callable
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Query

from bastion.server._app import Extension, Viewer


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _line_json(line: Any) -> dict[str, Any]:
    limits, spend = line.limits, line.spend

    def left(limit: float | None, used: float, held: float) -> float | None:
        return None if limit is None else max(0.0, limit - used - held)

    return {
        "key": line.key,
        "scope": line.scope,
        "id": line.id,
        "period": limits.period,
        "tz": line.tz,
        "limit_usd": limits.usd,
        "limit_tokens": limits.tokens,
        "spent_usd": spend.usd,
        "spent_tokens": spend.tokens,
        "reserved_usd": spend.reserved_usd,
        "reserved_tokens": spend.reserved_tokens,
        "remaining_usd": left(limits.usd, spend.usd, spend.reserved_usd),
        "remaining_tokens": left(limits.tokens, spend.tokens, spend.reserved_tokens),
        "used": round(line.used(), 6),
        # Local to the limit's timezone, so "resets at midnight" reads as midnight.
        "starts": _iso(line.starts.astimezone(_zone(line.tz))) if line.starts else None,
        "resets": _iso(line.resets.astimezone(_zone(line.tz))) if line.resets else None,
    }


def _zone(tz: str | None) -> ZoneInfo:
    # the limit's timezone was checked when its budget was built
    return ZoneInfo(tz or "UTC")


def budget_routes(budget_of: Callable[[], Any]) -> Extension:
    """`/v1/budgets` for the caller's tenant; `budget_of()` returns the `Budget` (or None)."""

    def extend(app: FastAPI) -> None:
        @app.get("/v1/budgets", tags=["costs"])
        async def budgets(principal: Viewer, limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
            """Every limit that applies in the caller's tenant with its spend in the current
            period (tenant limits always; user, team, key, session and run limits for each id
            that has spent in its current period), at most `limit` lines."""
            budget = budget_of()
            if budget is None:
                return {"tenant": principal.tenant, "configured": False, "budgets": []}
            lines = await budget.report(principal.tenant, limit=limit)
            return {
                "tenant": principal.tenant,
                "configured": True,
                "tz": budget.tz,
                "now": budget.now().isoformat(),
                "budgets": [_line_json(line) for line in lines],
            }

    return extend


__all__ = ["budget_routes"]
