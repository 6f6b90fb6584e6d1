"""`SpanStore`: what the server routes, cost rollups and alerts need from a trace store.

Two implementations pass one conformance suite (tests/tracing/test_store_conformance.py):
`TraceStore` (SQLite, embedded) and `PostgresTraceStore` (shared by every process of a
scaled-out deployment). Ingest is the separate `QueuedSpanWriter` base both extend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bastion.tracing._store import QueuedSpanWriter, SpanRecord, TimeLike, TraceSummary, TraceTree


@runtime_checkable
class SpanStore(Protocol):
    """Read side of a trace store. `table` names the spans table for `query`."""

    table: str

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the spans queued in this process are queryable."""
        ...

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query with `?` placeholders in SQL common to SQLite and PostgreSQL."""
        ...

    def get_trace(self, trace_id: str) -> TraceTree | None: ...

    def spans(
        self,
        *,
        trace_id: str | None = None,
        operation: str | None = None,
        name: str | None = None,
        run_id: str | None = None,
        session: str | None = None,
        tenant: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        limit: int = 1000,
    ) -> list[SpanRecord]: ...

    def list_traces(
        self,
        *,
        run_id: str | None = None,
        session: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        agent: str | None = None,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        errors_only: bool = False,
        limit: int = 100,
    ) -> list[TraceSummary]: ...


def open_trace_store(home: Path, database_url: str | None = None) -> QueuedSpanWriter:
    """The deployment's trace store: PostgreSQL when `database_url` is set (every process shares
    it), else `<home>/traces.db`; retention from the settings (`BASTION_TRACE_MAX_AGE_DAYS`,
    `BASTION_TRACE_MAX_BYTES`)."""
    from bastion.config import get_settings

    settings = get_settings()
    days = settings.trace_max_age_days
    retention: dict[str, Any] = {
        "max_age_s": days * 86_400 if days is not None else None,
        "max_bytes": int(settings.trace_max_bytes) if settings.trace_max_bytes is not None else None,
    }
    if database_url:
        from bastion.tracing._store_pg import PostgresTraceStore

        return PostgresTraceStore(database_url, **retention)
    from bastion.tracing._store import TraceStore

    home.mkdir(parents=True, exist_ok=True)
    return TraceStore(home / "traces.db", **retention)
