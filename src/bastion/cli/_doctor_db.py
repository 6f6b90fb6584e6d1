"""`bastion doctor --database URL`: is this PostgreSQL ready for a scaled-out deployment?

Read-only: connectivity, the schema versions Bastion keeps there, and the extensions it
needs (pgvector, for the PostgreSQL memory store). Schemas are created and migrated by the
first `bastion serve` / `bastion worker` (once, under an advisory lock), never by the doctor.
"""

from __future__ import annotations

from typing import Any

Check = tuple[str, bool, str]  # (name, ok, detail)


def database_checks(url: str) -> list[Check]:
    try:
        import psycopg
    except ImportError:
        return [("database", False, "psycopg missing: pip install 'bastion[postgres]'")]
    try:
        conn = psycopg.connect(url, connect_timeout=5, autocommit=True)
    except Exception as e:
        return [("database", False, f"PostgreSQL unreachable: {e}")]
    with conn:
        version = conn.execute("SHOW server_version").fetchone()
        checks: list[Check] = [("database", True, f"PostgreSQL {version[0] if version else '?'} reachable")]
        checks.append(_schema(conn))
        checks.append(_pgvector(conn))
    return checks


def _schema(conn: Any) -> Check:
    from bastion.tracing import PostgresTraceStore

    latest = PostgresTraceStore.SCHEMA_VERSION
    traces = PostgresTraceStore.schema_version(conn)
    runs = conn.execute("SELECT to_regclass('bastion_runs')").fetchone()
    if traces is not None and traces > latest:
        return (
            "schema",
            False,
            f"trace schema v{traces} is newer than this Bastion (v{latest}): upgrade Bastion on this host",
        )
    if traces is None and (runs is None or runs[0] is None):
        return ("schema", True, "empty: the first `bastion serve` or `bastion worker` creates the schema")
    trace_state = f"traces v{traces}/{latest}" if traces is not None else "traces: not created yet"
    pending = " (migrated on the next start)" if traces is not None and traces < latest else ""
    runs_state = "runs: present" if runs and runs[0] else "runs: not created yet"
    return ("schema", True, f"{trace_state}{pending}; {runs_state}")


def _pgvector(conn: Any) -> Check:
    installed = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if installed:
        return ("pgvector", True, f"vector {installed[0]} installed")
    available = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if available:
        return (
            "pgvector",
            True,
            f"vector {available[0]} available, not yet created (the PostgreSQL memory store runs "
            "CREATE EXTENSION vector, which needs a role allowed to)",
        )
    return (
        "pgvector",
        False,
        "pgvector is not installed on this server: the PostgreSQL memory store needs it "
        "(use an image with pgvector, e.g. pgvector/pgvector:pg16, or install postgresql-16-pgvector)",
    )
