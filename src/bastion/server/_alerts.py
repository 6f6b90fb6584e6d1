"""`GET /v1/alerts`: the cost alerts the background monitor fired, for the caller's tenant.

Read from the alert ledger (the `cost_alerts` table in the trace store's database), so every
server of a deployment sharing PostgreSQL lists the same alerts, whichever process fired them.
"""

# No `from __future__ import annotations`: FastAPI reads these route annotations at runtime.
import asyncio
from typing import Annotated, Any

from fastapi import FastAPI, Query

from bastion.server._app import Extension, Viewer
from bastion.tracing import AlertLedger


def alert_routes(ledger: AlertLedger) -> Extension:
    """`/v1/alerts?limit=N`: newest first, only the caller's tenant (budget alerts carry no
    tenant and are not listed here)."""

    def extend(app: FastAPI) -> None:
        @app.get("/v1/alerts", tags=["costs"])
        async def list_alerts(
            principal: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
        ) -> list[dict[str, Any]]:
            return await asyncio.to_thread(ledger.recent, tenant=principal.tenant, limit=limit)

    return extend
