"""`GET /v1/runs/{run_id}/audit`: the audit log's entries for one of the caller's runs.

The log read is the deployment's (`ProjectEnv.audit_log()`): PostgreSQL when scaled out, so
any API server shows what any worker appended; `<home>/audit.db` when embedded. A run of another
tenant is a 404 like on every other route, and only entries of the caller's tenant are returned.
This is a reader: checking the chain stays with `bastion audit verify`. A project that keeps
its audit log elsewhere gets no route (404).
"""

# No `from __future__ import annotations`: FastAPI reads these route annotations at runtime.
import asyncio
from typing import Any

from fastapi import FastAPI

from bastion.errors import UserError
from bastion.runtime import Runtime
from bastion.server._app import Extension, Viewer
from bastion.server._project import ProjectEnv


def open_deployment_audit(env: ProjectEnv) -> Any:
    """The deployment's audit log to read, or None when it has none: PostgreSQL needs the shared
    audit key (BASTION_SECRET_AUDIT_KEY) that every writer uses; embedded, the file must exist."""
    from bastion.policy import AuditLog

    if env.database_url:
        try:
            return AuditLog.postgres(env.database_url)
        except UserError:  # no shared audit key: then no process of the deployment can write one
            return None
    path = env.home / "audit.db"
    return AuditLog(path) if path.exists() else None


def _entry_json(e: Any) -> dict[str, Any]:
    fields = ("seq", "ts", "event", "tool", "tool_call_id", "agent", "user", "args", "reasons", "detail")
    return {name: getattr(e, name) for name in fields}


def audit_routes(audit: Any, runtime: Runtime) -> Extension:
    """`/v1/runs/{run_id}/audit` from an `AuditLog`."""

    def extend(app: FastAPI) -> None:
        @app.get("/v1/runs/{run_id}/audit", tags=["audit"])
        async def run_audit(run_id: str, principal: Viewer) -> list[dict[str, Any]]:
            run = await runtime.get_run(run_id, tenant=principal.tenant)
            entries = await asyncio.to_thread(audit.entries, run_id=run.id)
            return [_entry_json(e) for e in entries if e.tenant == principal.tenant]

    return extend
