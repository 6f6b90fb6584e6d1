"""The embedded trace store: finished spans in one SQLite file, queryable by trace, run,
session, tenant and time.

Ingest is decoupled from the request path: the span processor only appends the finished
span to a bounded in-memory queue (sized for bursts); a background thread converts and
writes them in batches, one transaction per batch. When the queue is full the span is
dropped and counted (`stats().dropped`, metric `bastion.tracing.spans.dropped`), never
silently. Rows carry a format version `v`; the schema migrates through an ordered list.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.errors import UserError
from bastion.tracing import semconv as sc

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

ROW_VERSION = 1
LINGER_S = 0.02  # how long the writer gathers spans into one batch (well within "queryable in 1 s")

logger = logging.getLogger("bastion.tracing")

# Position = schema version. Append, never edit.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE spans (
        trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
        kind TEXT, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
        status TEXT NOT NULL, status_message TEXT, operation TEXT,
        run_id TEXT, session_id TEXT, tenant TEXT, user_id TEXT, team TEXT, agent TEXT,
        model TEXT, tool TEXT, cost_usd REAL, input_tokens INTEGER, output_tokens INTEGER,
        attributes TEXT NOT NULL, events TEXT, v INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX spans_trace ON spans(trace_id, span_id);
    CREATE INDEX spans_run ON spans(run_id) WHERE run_id IS NOT NULL;
    CREATE INDEX spans_session ON spans(session_id) WHERE session_id IS NOT NULL;
    CREATE INDEX spans_tenant_time ON spans(tenant, start_ns);
    CREATE INDEX spans_time ON spans(start_ns);
    """,
    # Planner statistics fixed by shape, not measured: without them SQLite served
    # `run_id = ? AND tenant = ?` from the tenant index (40 ms at 1M spans instead of 0.3 ms).
    # Relative selectivities: a run or trace has ~10 spans, a session ~100, a tenant many.
    """
    ANALYZE;
    DELETE FROM sqlite_stat1 WHERE tbl = 'spans';
    INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
        ('spans', NULL, '1000000'),
        ('spans', 'spans_trace', '1000000 10 1'),
        ('spans', 'spans_run', '1000000 10'),
        ('spans', 'spans_session', '1000000 100'),
        ('spans', 'spans_tenant_time', '1000000 50000 1'),
        ('spans', 'spans_time', '1000000 1');
    ANALYZE sqlite_schema
    """,
]

SPAN_COLUMNS = _COLUMNS = (
    "trace_id, span_id, parent_id, name, kind, start_ns, end_ns, status, status_message, operation, "
    "run_id, session_id, tenant, user_id, team, agent, model, tool, cost_usd, input_tokens, "
    "output_tokens, attributes, events, v"
)
_INSERT = f"INSERT OR REPLACE INTO spans ({_COLUMNS}) VALUES ({', '.join('?' * 24)})"
_SELECT_FROM = (
    "SELECT trace_id, span_id, parent_id, name, kind, start_ns, end_ns, status, status_message, "
    "attributes, events FROM {table}"
)

TimeLike = datetime | float | int

# Tuples (OTel sequence attributes) encode as JSON arrays; anything else odd becomes a string.
_dumps = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def to_ns(t: TimeLike) -> int:
    """Epoch nanoseconds from a datetime or epoch seconds."""
    if isinstance(t, datetime):
        return int(t.timestamp() * 1e9)
    return int(t * 1e9)


def _indexed_columns(a: Mapping[str, Any]) -> tuple[Any, ...]:
    """The attributes the store keeps in their own (indexed) columns, in column order."""
    cost = a.get(sc.BASTION_COST_USD)
    return (
        a.get(sc.GEN_AI_OPERATION_NAME),
        a.get(sc.BASTION_RUN_ID),
        a.get(sc.GEN_AI_CONVERSATION_ID),
        a.get(sc.BASTION_TENANT_ID),
        a.get(sc.BASTION_USER_ID),
        a.get(sc.BASTION_TEAM_ID),
        a.get(sc.GEN_AI_AGENT_NAME),
        a.get(sc.GEN_AI_RESPONSE_MODEL) or a.get(sc.GEN_AI_REQUEST_MODEL),
        a.get(sc.GEN_AI_TOOL_NAME),
        float(cost) if cost is not None else None,
        a.get(sc.GEN_AI_USAGE_INPUT_TOKENS),
        a.get(sc.GEN_AI_USAGE_OUTPUT_TOKENS),
    )


@dataclass(slots=True)
class SpanRecord:
    """One stored span."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: str = "UNSET"  # UNSET | OK | ERROR
    status_message: str | None = None
    kind: str = "INTERNAL"
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def operation(self) -> str | None:
        return self.attributes.get(sc.GEN_AI_OPERATION_NAME)

    @property
    def is_error(self) -> bool:
        return self.status == "ERROR"

    def to_row(self) -> tuple[Any, ...]:
        a = self.attributes
        return (
            self.trace_id,
            self.span_id,
            self.parent_id,
            self.name,
            self.kind,
            self.start_ns,
            self.end_ns,
            self.status,
            self.status_message,
            *_indexed_columns(a),
            _dumps(a),  # one shared encoder: json.dumps with options builds one per call
            _dumps(self.events) if self.events else None,
            ROW_VERSION,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> SpanRecord:
        return cls(
            trace_id=row[0],
            span_id=row[1],
            parent_id=row[2],
            name=row[3],
            kind=row[4] or "INTERNAL",
            start_ns=row[5],
            end_ns=row[6],
            status=row[7],
            status_message=row[8],
            attributes=_loads(row[9]),
            events=_loads(row[10]) if row[10] else [],
        )

    @staticmethod
    def row_from_otel(span: ReadableSpan) -> tuple[Any, ...]:
        """`from_otel(span).to_row()` without the intermediate record (the writer's hot path)."""
        ctx = span.context
        parent = span.parent
        a: dict[str, Any] = dict(span.attributes or {})
        events = (
            _dumps(
                [{"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events]
            )
            if span.events
            else None
        )
        return (
            format(ctx.trace_id, "032x") if ctx else "",
            format(ctx.span_id, "016x") if ctx else "",
            format(parent.span_id, "016x") if parent is not None else None,
            span.name,
            span.kind.name,
            span.start_time or 0,
            span.end_time or 0,
            span.status.status_code.name,
            span.status.description,
            *_indexed_columns(a),
            _dumps(a),
            events,
            ROW_VERSION,
        )

    @classmethod
    def from_otel(cls, span: ReadableSpan) -> SpanRecord:
        ctx = span.context
        parent = span.parent
        events = [{"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events]
        return cls(
            trace_id=format(ctx.trace_id, "032x") if ctx else "",
            span_id=format(ctx.span_id, "016x") if ctx else "",
            parent_id=format(parent.span_id, "016x") if parent is not None else None,
            name=span.name,
            kind=span.kind.name,
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            status=span.status.status_code.name,
            status_message=span.status.description,
            attributes={k: list(v) if isinstance(v, tuple) else v for k, v in (span.attributes or {}).items()},
            events=events,
        )


@dataclass(slots=True)
class TraceTree:
    """All stored spans of one trace, ordered by start time, with parent/child navigation."""

    trace_id: str
    spans: list[SpanRecord]

    def by_id(self, span_id: str) -> SpanRecord | None:
        return next((s for s in self.spans if s.span_id == span_id), None)

    @property
    def roots(self) -> list[SpanRecord]:
        ids = {s.span_id for s in self.spans}
        return [s for s in self.spans if s.parent_id is None or s.parent_id not in ids]

    def children(self, span: SpanRecord | str) -> list[SpanRecord]:
        sid = span if isinstance(span, str) else span.span_id
        return [s for s in self.spans if s.parent_id == sid]

    def walk(self) -> Iterator[tuple[int, SpanRecord]]:
        """(depth, span) in depth-first order."""
        stack = [(0, r) for r in reversed(self.roots)]
        while stack:
            depth, s = stack.pop()
            yield depth, s
            stack.extend((depth + 1, c) for c in reversed(self.children(s)))

    def find(self, operation: str | None = None, name: str | None = None) -> list[SpanRecord]:
        return [
            s
            for s in self.spans
            if (operation is None or s.operation == operation) and (name is None or s.name == name)
        ]

    def render(self) -> str:
        """An indented text tree (for the CLI and debugging)."""
        lines = []
        for depth, s in self.walk():
            flag = " ERROR" if s.is_error else ""
            lines.append(f"{'  ' * depth}{s.name} ({s.duration_s * 1000:.1f} ms){flag}")
        return "\n".join(lines)


@dataclass(slots=True)
class TraceSummary:
    trace_id: str
    name: str | None
    start_ns: int
    end_ns: int
    span_count: int
    error_count: int
    status: str
    cost_usd: float
    input_tokens: int
    output_tokens: int
    run_id: str | None
    session_id: str | None
    tenant: str | None
    user_id: str | None
    agent: str | None

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(slots=True)
class StoreStats:
    """Ingest counters: every span handed to the store ends up written, dropped or queued."""

    received: int
    written: int
    dropped: int
    queued: int
    failed_batches: int
    last_error: str | None


class _StoreProcessor:
    """Span processor feeding the store: `on_end` only enqueues (O(1), never blocks)."""

    def __init__(self, store: QueuedSpanWriter) -> None:
        self._store = store

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def _on_ending(self, span: Span) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._store.enqueue(span)

    def shutdown(self) -> None:
        self._store.flush(10.0)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._store.flush(timeout_millis / 1000)


class SpanQueries:
    """The queries of `SpanStore` over any SQL backend that provides `query()` (with `?`
    placeholders) and `table`; the few dialect differences are class attributes."""

    table = "spans"
    _errors_sql = "sum(s.status = 'ERROR')"
    _sep_sql = "char(31)"
    _tiebreak = "rowid"  # insertion order for spans starting in the same nanosecond
    # Candidate traces are read newest-first in chunks of this many matching spans.
    _scan_chunk = 2000

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError(f"{type(self).__name__} must implement query")

    def _attribute_clause(self, key: str, value: Any) -> tuple[str, list[Any]]:
        return "json_extract(attributes, ?) = ?", [_json_path(key), value]

    def _in_clause(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def get_trace(self, trace_id: str) -> TraceTree | None:
        rows = self.query(
            f"{_SELECT_FROM.format(table=self.table)} WHERE trace_id = ? ORDER BY start_ns, {self._tiebreak}",
            (trace_id,),
        )
        if not rows:
            return None
        return TraceTree(trace_id, [SpanRecord.from_row(r) for r in rows])

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
    ) -> list[SpanRecord]:
        """Spans matching every given filter; `attributes` matches attribute values exactly."""
        where, params = sql_filters(
            trace_id=trace_id,
            operation=operation,
            name=name,
            run_id=run_id,
            session_id=session,
            tenant=tenant,
            since=since,
            until=until,
        )
        for key, value in (attributes or {}).items():
            clause, extra = self._attribute_clause(key, value)
            where.append(clause)
            params += extra
        sql = f"{_SELECT_FROM.format(table=self.table)}{sql_where(where)} ORDER BY start_ns, {self._tiebreak} LIMIT ?"
        return [SpanRecord.from_row(r) for r in self.query(sql, [*params, limit])]

    def _recent_trace_ids(self, where: list[str], params: list[Any], limit: int) -> list[str]:
        """The `limit` traces with the most recent matching spans, read newest-first through the
        time indexes in chunks: grouping every matching span first cost seconds at 1M spans."""
        found: dict[str, None] = {}
        cursor: int | None = None
        while len(found) < limit:
            clauses = [*where, "start_ns < ?"] if cursor is not None else where
            rows = self.query(
                f"SELECT trace_id, start_ns FROM {self.table}{sql_where(clauses)} ORDER BY start_ns DESC LIMIT ?",
                [*params, *([cursor] if cursor is not None else []), self._scan_chunk],
            )
            for trace_id, _ in rows:
                found.setdefault(trace_id, None)
            if len(rows) < self._scan_chunk:
                break
            cursor = int(rows[-1][1])
        return list(found)[:limit]

    def _summaries(self, trace_ids: list[str]) -> list[tuple[Any, ...]]:
        """One row per trace: (trace_id, start, end, spans, errors, cost, input tokens, output
        tokens, run, session, tenant, user, root name + chr(31) + root status, root agent)."""
        member, member_params = self._in_clause("s.trace_id", trace_ids)
        t = self.table
        sql = f"""
            SELECT s.trace_id, min(s.start_ns), max(s.end_ns), count(*),
                   {self._errors_sql}, coalesce(sum(s.cost_usd), 0),
                   coalesce(sum(s.input_tokens), 0), coalesce(sum(s.output_tokens), 0),
                   max(s.run_id), max(s.session_id), max(s.tenant), max(s.user_id),
                   (SELECT r.name || {self._sep_sql} || r.status FROM {t} r
                     WHERE r.trace_id = s.trace_id AND r.parent_id IS NULL ORDER BY r.start_ns LIMIT 1),
                   -- the root agent labels the trace: the outermost agent span starts first (and,
                   -- on a tie, ends last); max(agent) named a supervisor's trace after a member
                   (SELECT a.agent FROM {t} a WHERE a.trace_id = s.trace_id AND a.agent IS NOT NULL
                     ORDER BY a.start_ns, a.end_ns DESC LIMIT 1)
            FROM {t} s WHERE {member}
            GROUP BY s.trace_id ORDER BY min(s.start_ns) DESC"""
        return self.query(sql, member_params)

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
    ) -> list[TraceSummary]:
        """Traces with a span matching every filter: the `limit` with the most recent matching
        spans, newest (by trace start) first."""
        where, params = sql_filters(
            run_id=run_id, session_id=session, tenant=tenant, user_id=user, agent=agent, since=since, until=until
        )
        if errors_only:
            where.append("status = 'ERROR'")
        trace_ids = self._recent_trace_ids(where, params, limit)
        if not trace_ids:
            return []
        out: list[TraceSummary] = []
        for r in self._summaries(trace_ids):
            root_name, _, root_status = (r[12] or "").partition("\x1f")
            out.append(
                TraceSummary(
                    trace_id=r[0],
                    name=root_name or None,
                    start_ns=int(r[1]),
                    end_ns=int(r[2]),
                    span_count=int(r[3]),
                    error_count=int(r[4] or 0),
                    status=root_status or ("ERROR" if r[4] else "UNSET"),
                    cost_usd=float(r[5]),
                    input_tokens=int(r[6]),
                    output_tokens=int(r[7]),
                    run_id=r[8],
                    session_id=r[9],
                    tenant=r[10],
                    user_id=r[11],
                    agent=r[13],
                )
            )
        return out

    def count(self) -> int:
        return int(self.query(f"SELECT count(*) FROM {self.table}")[0][0])


class QueuedSpanWriter:
    """The ingest half shared by every trace store backend: a bounded queue filled by the span
    processor and drained in batches by one background thread, which also applies retention.

    Subclasses implement `_write_rows(rows)` (one batch, in the writer thread), `_retain()`
    (retention, in the writer thread) and `_close_backend()`.
    """

    label = "trace store"

    def __init__(
        self,
        *,
        queue_size: int,
        batch_size: int,
        max_age_s: float | None = None,
        max_bytes: int | None = None,
        retention_interval_s: float = 300.0,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise UserError(f"{type(self).__name__}: queue_size and batch_size must be at least 1")
        if (max_age_s is not None and max_age_s <= 0) or (max_bytes is not None and max_bytes <= 0):
            raise UserError(f"{type(self).__name__}: max_age_s and max_bytes must be positive (or None: keep all)")
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.retention_interval_s = retention_interval_s
        self._next_retention = 0.0  # the first batch (or idle tick) applies retention once
        self._retention_lock = threading.Lock()  # the writer's schedule and `apply_retention()`
        self._queue: deque[ReadableSpan | SpanRecord] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        # The writer gathers a batch for LINGER_S after the first span wakes it, and keeps doing
        # so while spans keep coming; only an idle writer is woken, so a busy request path pays
        # no thread wake-up (and GIL handoff) per span. `flush()` and `close()` cut the wait short.
        self._idle = False
        self._hurry = threading.Event()
        self._hurry_at = min(batch_size, max(1, queue_size // 2))
        self._done = threading.Condition()
        self._received = 0
        self._dropped = 0
        self._reported_dropped = 0
        self._written = 0
        self._failed = 0  # spans lost to write errors
        self._failed_batches = 0
        self._last_error: str | None = None
        self._last_drop_log = -1e9
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._writer, name="bastion-trace-store", daemon=True)

    def _start_writer(self) -> None:
        self._thread.start()

    # --- backend hooks ---
    def _write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _write_rows")

    def _retain(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement _retain")

    def _close_backend(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _close_backend")

    # --- ingest ---
    def span_processor(self) -> SpanProcessor:
        """A span processor to add to a `TracerProvider` (done by `configure_tracing`)."""
        return _StoreProcessor(self)  # type: ignore[return-value]

    def enqueue(self, span: ReadableSpan | SpanRecord) -> bool:
        """Queue a finished span for writing; False (and counted) if the queue is full."""
        with self._lock:
            self._received += 1
            if self._closing or len(self._queue) >= self.queue_size:
                self._dropped += 1
                return False
            self._queue.append(span)
            full = len(self._queue) >= self._hurry_at
        if full and not self._hurry.is_set():  # a batch is ready, or the queue half full: write now
            self._hurry.set()
        if self._idle and not self._wakeup.is_set():
            self._wakeup.set()
        return True

    def _writer(self) -> None:
        busy = False
        while True:
            if busy:  # spans keep coming: gather the next batch without being woken per span
                self._hurry.wait(LINGER_S)
            else:
                self._idle = True
                if not self._queue:  # checked after flagging idle: any span queued from now on wakes us
                    self._wakeup.wait(0.5)
                self._idle = False
                self._wakeup.clear()
                if self._queue and not self._closing:
                    self._hurry.wait(LINGER_S)
            self._hurry.clear()
            busy = bool(self._queue) and not self._closing
            while self._queue:
                batch: list[ReadableSpan | SpanRecord] = []
                with self._lock:
                    for _ in range(min(self.batch_size, len(self._queue))):
                        batch.append(self._queue.popleft())
                self._write_batch(batch)
            self._report_drops()
            with self._done:
                self._done.notify_all()
            if self._closing and not self._queue:
                return
            self._maybe_retain()

    def _maybe_retain(self) -> None:
        if self.max_age_s is None and self.max_bytes is None:
            return
        now = time.monotonic()
        if now < self._next_retention:
            return
        self._next_retention = now + self.retention_interval_s
        try:
            with self._retention_lock:
                self._retain()
        except Exception as e:  # retention must never stop ingest; it is retried next interval
            logger.warning("%s: retention failed (%s: %s); retrying later", self.label, type(e).__name__, e)

    def apply_retention(self) -> int:
        """Apply the age and size limits now (the writer also does so every `retention_interval_s`).
        Returns what was deleted: spans on SQLite, whole daily partitions on PostgreSQL."""
        self._check_open()
        self.flush()
        with self._retention_lock:
            return self._retain()

    def _write_batch(self, batch: list[ReadableSpan | SpanRecord]) -> None:
        try:
            rows = [s.to_row() if isinstance(s, SpanRecord) else SpanRecord.row_from_otel(s) for s in batch]
            self._write_rows(rows)
        except Exception as e:  # a bad batch must not kill the writer; it is counted instead
            with self._lock:
                self._failed += len(batch)
                self._failed_batches += 1
                self._last_error = f"{type(e).__name__}: {e}"
            return
        with self._lock:
            self._written += len(batch)

    def _report_drops(self) -> None:
        with self._lock:
            new = self._dropped - self._reported_dropped
            self._reported_dropped = self._dropped
        if new:
            from bastion.tracing._metrics import record_spans_dropped

            record_spans_dropped(new, self.label)
            now = time.monotonic()
            if now - self._last_drop_log >= 10.0:  # loud, but not a log line per span
                self._last_drop_log = now
                logger.warning(
                    "trace store %s: queue full, dropped %d spans (%d in total); raise "
                    "queue_size=... or reduce the span rate",
                    self.label,
                    new,
                    self._dropped,
                )

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every span queued so far is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            target = self._received - self._dropped
        self._hurry.set()
        self._wakeup.set()
        with self._done:
            while True:
                with self._lock:
                    done = self._written + self._failed >= target
                if done:
                    self._report_drops()
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._hurry.set()
                self._wakeup.set()
                self._done.wait(min(remaining, 0.1))

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                received=self._received,
                written=self._written,
                dropped=self._dropped,
                queued=len(self._queue),
                failed_batches=self._failed_batches,
                last_error=self._last_error,
            )

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, stop the writer and close the backend."""
        if self._closed:
            return
        self.flush(timeout_s)
        with self._lock:
            self._closing = True
        self._hurry.set()
        self._wakeup.set()
        self._thread.join(timeout_s)
        self._closed = True
        self._close_backend()

    def _check_open(self) -> None:
        if self._closed:
            raise UserError(f"this {type(self).__name__} is closed; open a new one on the same location")


class TraceStore(SpanQueries, QueuedSpanWriter):
    """SQLite trace store. `path` defaults to `<BASTION_HOME>/traces.db`.

    `queue_size` bounds the spans waiting to be written (a burst larger than this, faster than
    the writer, is dropped and counted); `batch_size` is the most spans per transaction.
    Retention: traces older than `max_age_s`, and the oldest traces while the live data exceeds
    `max_bytes`, are deleted by the writer every `retention_interval_s` (None: keep everything).
    Close it with `close()` (or use it as a context manager).
    """

    table = "spans"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        queue_size: int = 200_000,
        batch_size: int = 5_000,
        max_age_s: float | None = None,
        max_bytes: int | None = None,
        retention_interval_s: float = 300.0,
    ) -> None:
        if path is None:
            from bastion.config import get_settings

            path = get_settings().path("traces.db")
        super().__init__(
            queue_size=queue_size,
            batch_size=batch_size,
            max_age_s=max_age_s,
            max_bytes=max_bytes,
            retention_interval_s=retention_interval_s,
        )
        self.path = Path(path)
        self.label = self.path.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._write_conn = self._connect()
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path} is not a usable trace store ({e}); point TraceStore at another file") from e
        try:
            self._migrate(self._write_conn)
        except BaseException:
            self._write_conn.close()
            raise
        self._read_conn = self._connect()
        self._read_lock = threading.Lock()
        self._start_writer()

    # --- connections ---
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > len(_MIGRATIONS):
            raise UserError(
                f"trace store {self.path} has schema version {current}, newer than this Bastion "
                f"({len(_MIGRATIONS)}); upgrade Bastion or use another file"
            )
        for version in range(current, len(_MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in filter(str.strip, _MIGRATIONS[version].split(";")):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version + 1),)
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def add(self, records: Iterable[SpanRecord]) -> None:
        """Write records synchronously (imports, tests); bypasses the queue."""
        rows = [r.to_row() for r in records]
        with self._read_lock:
            self._read_conn.execute("BEGIN IMMEDIATE")
            try:
                self._read_conn.executemany(_INSERT, rows)
                self._read_conn.execute("COMMIT")
            except BaseException:
                self._read_conn.execute("ROLLBACK")
                raise

    def _write_rows(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._write_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _close_backend(self) -> None:
        self._write_conn.close()
        self._read_conn.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- retention ---
    def live_bytes(self) -> int:
        """Bytes of the file in use (freed pages are reused by later writes, not returned)."""
        (page_size,), (pages,), (free,) = (
            self.query("PRAGMA page_size")[0],
            self.query("PRAGMA page_count")[0],
            self.query("PRAGMA freelist_count")[0],
        )
        return int(page_size) * (int(pages) - int(free))

    def _retain(self) -> int:
        deleted = 0
        if self.max_age_s is not None:
            deleted += self.prune(time.time() - self.max_age_s)
        if self.max_bytes is not None:
            used = self.live_bytes()
            if used > self.max_bytes:
                total = self.count()
                # Delete the oldest share of spans that brings the file to 90% of the cap.
                n = min(total, max(1, int(total * (1 - 0.9 * self.max_bytes / used)) + 1))
                row = self.query("SELECT start_ns FROM spans ORDER BY start_ns LIMIT 1 OFFSET ?", (n - 1,))
                if row:
                    deleted += self._delete_traces_started_before(int(row[0][0]) + 1)
        return deleted

    def _delete_traces_started_before(self, cutoff_ns: int) -> int:
        with self._read_lock:
            self._read_conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._read_conn.execute(
                    "DELETE FROM spans WHERE trace_id IN (SELECT trace_id FROM spans WHERE start_ns < ?)", (cutoff_ns,)
                )
                self._read_conn.execute("COMMIT")
            except BaseException:
                self._read_conn.execute("ROLLBACK")
                raise
        return cur.rowcount

    # --- queries ---
    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query against the `spans` table (for rollups and tools)."""
        self._check_open()
        with self._read_lock:
            return self._read_conn.execute(sql, params).fetchall()

    def prune(self, before: TimeLike) -> int:
        """Delete whole traces whose every span started before `before`; returns spans deleted.
        (Retention: call it from a schedule.)"""
        cutoff = to_ns(before)
        with self._read_lock:
            self._read_conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._read_conn.execute(
                    "DELETE FROM spans WHERE trace_id IN "
                    "(SELECT trace_id FROM spans GROUP BY trace_id HAVING max(start_ns) < ?)",
                    (cutoff,),
                )
                self._read_conn.execute("COMMIT")
            except BaseException:
                self._read_conn.execute("ROLLBACK")
                raise
        return cur.rowcount


def _json_path(key: str) -> str:
    return '$."' + key.replace('"', '\\"') + '"'


def sql_where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def sql_filters(
    *, since: TimeLike | None = None, until: TimeLike | None = None, **columns: str | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in columns.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("start_ns >= ?")
        params.append(to_ns(since))
    if until is not None:
        where.append("start_ns < ?")
        params.append(to_ns(until))
    return where, params
