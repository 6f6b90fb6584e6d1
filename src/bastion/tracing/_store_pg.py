"""`PostgresTraceStore`: the trace store of a scaled-out deployment (extra `postgres`).

Every API server and worker writes its spans to, and reads them from, one PostgreSQL
database, so a run executed by any worker is visible (trace and cost) through any server.
Same queue-and-writer-thread ingest as the SQLite store; the writer sends each batch with
one `COPY` (measured in bench/tracing.py). Spans live in a table range-partitioned by start
time, one partition per UTC day, created on demand under an advisory lock; age retention
drops whole days, size retention drops the oldest days while the table is over the cap.
Schema migrations are versioned in `bastion_trace_meta` and run once, under an advisory lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bastion.config import redact_credentials
from bastion.errors import ConfigError, MissingExtraError, UserError
from bastion.tracing._store import SPAN_COLUMNS, QueuedSpanWriter, SpanQueries, SpanRecord, logger

DAY_NS = 86_400 * 10**9
TABLE = "bastion_spans"
_LOCK = 0x62617374_74726163  # "basttrac": migrations, partition creation and retention

# Position = schema version. Append, never edit.
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE {TABLE} (
        trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
        kind TEXT, start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL,
        status TEXT NOT NULL, status_message TEXT, operation TEXT,
        run_id TEXT, session_id TEXT, tenant TEXT, user_id TEXT, team TEXT, agent TEXT,
        model TEXT, tool TEXT, cost_usd DOUBLE PRECISION, input_tokens BIGINT, output_tokens BIGINT,
        attributes TEXT NOT NULL, events TEXT, v INTEGER NOT NULL
    ) PARTITION BY RANGE (start_ns);
    CREATE INDEX {TABLE}_trace ON {TABLE} (trace_id);
    CREATE INDEX {TABLE}_run ON {TABLE} (run_id) WHERE run_id IS NOT NULL;
    CREATE INDEX {TABLE}_session ON {TABLE} (session_id) WHERE session_id IS NOT NULL;
    CREATE INDEX {TABLE}_tenant_time ON {TABLE} (tenant, start_ns);
    CREATE INDEX {TABLE}_time ON {TABLE} (start_ns);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_COPY = f"COPY {TABLE} ({SPAN_COLUMNS}) FROM STDIN"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise MissingExtraError("postgres", "psycopg", "PostgresTraceStore") from e
    return psycopg


def partition_name(day: int) -> str:
    return f"{TABLE}_p{datetime.fromtimestamp(day * 86_400, UTC):%Y%m%d}"


def _partition_day(name: str) -> int | None:
    try:
        stamp = datetime.strptime(name.removeprefix(f"{TABLE}_p"), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(stamp.timestamp()) // 86_400


def migrate(conn: Any) -> int:
    """Bring the trace schema to this version (once, whoever gets the lock first); returns it."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS bastion_trace_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM bastion_trace_meta WHERE key = 'schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise UserError(
                f"the trace schema in this database is version {current}, newer than this Bastion "
                f"({SCHEMA_VERSION}); upgrade Bastion on every process sharing the database"
            )
        for version in range(current, SCHEMA_VERSION):
            for stmt in filter(str.strip, MIGRATIONS[version].split(";")):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO bastion_trace_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(version + 1),),
            )
    return SCHEMA_VERSION


def schema_version(conn: Any) -> int | None:
    """The trace schema version in the database, or None before the first migration."""
    exists = conn.execute("SELECT to_regclass('bastion_trace_meta')").fetchone()
    if exists is None or exists[0] is None:
        return None
    row = conn.execute("SELECT value FROM bastion_trace_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def _clean(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # PostgreSQL text cannot hold NUL; a span name or attribute with one must not lose the batch.
    return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)


class PostgresTraceStore(SpanQueries, QueuedSpanWriter):
    """Trace store in PostgreSQL (`url`: `postgresql://...`), shared by every process.

    `queue_size`, `batch_size`, `max_age_s`, `max_bytes` and `retention_interval_s` as for
    `TraceStore`; age retention works in whole UTC days (a day is dropped once all of it is
    older than `max_age_s`), size retention drops the oldest days while the spans table and
    its indexes exceed `max_bytes` (the current day is always kept).
    """

    # For `bastion doctor --database`: the version this code migrates to, and the database's.
    SCHEMA_VERSION = SCHEMA_VERSION
    schema_version = staticmethod(schema_version)

    table = TABLE
    _errors_sql = "count(*) FILTER (WHERE s.status = 'ERROR')"
    _sep_sql = "chr(31)"
    _tiebreak = "span_id"

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 200_000,
        batch_size: int = 5_000,
        max_age_s: float | None = None,
        max_bytes: int | None = None,
        retention_interval_s: float = 300.0,
        max_connections: int = 4,
    ) -> None:
        psycopg = _psycopg()
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as e:
            raise MissingExtraError("postgres", "psycopg-pool", "PostgresTraceStore") from e
        super().__init__(
            queue_size=queue_size,
            batch_size=batch_size,
            max_age_s=max_age_s,
            max_bytes=max_bytes,
            retention_interval_s=retention_interval_s,
        )
        self.url = url
        self.label = "postgresql"
        self._psycopg = psycopg
        try:
            self._write_conn: Any = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as e:
            raise ConfigError(
                f"trace store: cannot connect to {redact_credentials(url)} "
                f"({redact_credentials(str(e).strip())}); check the URL and that PostgreSQL is running"
            ) from None
        try:
            migrate(self._write_conn)
        except BaseException:
            self._write_conn.close()
            raise
        self._partitions: set[int] = set()
        self._write_lock = threading.Lock()  # the writer thread, `add()` and retention share the connection
        self._pool: Any = ConnectionPool(
            url, min_size=1, max_size=max_connections, kwargs={"autocommit": True}, open=True
        )
        self._start_writer()

    def __enter__(self) -> PostgresTraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ---
    def _conn(self) -> Any:
        if self._write_conn.closed or self._write_conn.broken:  # the server restarted: reconnect once per batch
            self._write_conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            self._partitions.clear()
        return self._write_conn

    def _ensure_partitions(self, conn: Any, days: set[int]) -> None:
        missing = days - self._partitions
        if not missing:
            return
        with conn.transaction():
            # CREATE ... IF NOT EXISTS still races in the catalog when several processes start a day.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            for day in sorted(missing):
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {TABLE} "
                    f"FOR VALUES FROM ({day * DAY_NS}) TO ({(day + 1) * DAY_NS})"
                )
        self._partitions |= missing

    def _copy(self, rows: Sequence[tuple[Any, ...]], *, replace: bool) -> None:
        conn = self._conn()
        self._ensure_partitions(conn, {int(r[5]) // DAY_NS for r in rows})
        with conn.transaction(), conn.cursor() as cur:
            if replace:
                cur.execute(
                    f"DELETE FROM {TABLE} t USING unnest(%s::text[], %s::text[]) AS k(trace_id, span_id) "
                    "WHERE t.trace_id = k.trace_id AND t.span_id = k.span_id",
                    ([r[0] for r in rows], [r[1] for r in rows]),
                )
            with cur.copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)

    def _write_rows(self, rows: list[tuple[Any, ...]], *, replace: bool = False) -> None:
        errors = self._psycopg.errors
        with self._write_lock:
            try:
                self._copy(rows, replace=replace)
            except errors.CheckViolation:
                # Another process dropped a day this process still had cached (retention).
                self._partitions.clear()
                self._copy(rows, replace=replace)
            except self._psycopg.DataError:
                self._copy([_clean(r) for r in rows], replace=replace)

    def add(self, records: Sequence[SpanRecord]) -> None:
        """Write records synchronously (imports, tests), replacing spans with the same ids."""
        self._check_open()
        rows = [r.to_row() for r in records]
        if rows:
            self._write_rows(rows, replace=True)

    def _close_backend(self) -> None:
        self._pool.close()
        self._write_conn.close()

    # --- reading ---
    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query; `?` placeholders as on SQLite (the shared SQL of the rollups)."""
        self._check_open()
        with self._pool.connection() as conn:
            return conn.execute(sql.replace("%", "%%").replace("?", "%s"), params).fetchall()

    def _attribute_clause(self, key: str, value: Any) -> tuple[str, list[Any]]:
        return "attributes::jsonb @> ?::jsonb", [json.dumps({key: value})]

    def _in_clause(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _summaries(self, trace_ids: list[str]) -> list[tuple[Any, ...]]:
        # One aggregate per trace through the trace_id index (LATERAL): with the IN-list form the
        # planner, before autovacuum had analyzed fresh partitions, scanned every partition and
        # took 11 s for 100 traces at 300k spans; this form takes milliseconds either way.
        return self.query(
            f"""SELECT t.trace_id, a.* FROM unnest(?::text[]) AS t(trace_id) CROSS JOIN LATERAL (
                SELECT min(s.start_ns) AS start_ns, max(s.end_ns), count(*), {self._errors_sql},
                       coalesce(sum(s.cost_usd), 0), coalesce(sum(s.input_tokens), 0),
                       coalesce(sum(s.output_tokens), 0), max(s.run_id), max(s.session_id),
                       max(s.tenant), max(s.user_id),
                       (array_agg(s.name || chr(31) || s.status ORDER BY s.start_ns)
                           FILTER (WHERE s.parent_id IS NULL))[1],
                       (array_agg(s.agent ORDER BY s.start_ns, s.end_ns DESC)
                           FILTER (WHERE s.agent IS NOT NULL))[1]
                FROM {TABLE} s WHERE s.trace_id = t.trace_id) AS a
            WHERE a.start_ns IS NOT NULL ORDER BY a.start_ns DESC""",
            (list(trace_ids),),
        )

    def prune(self, before: float | datetime) -> int:
        """Delete whole traces whose every span started before `before`; returns spans deleted."""
        from bastion.tracing._store import to_ns

        with self._write_lock, self._conn().transaction():
            cur = self._write_conn.execute(
                f"DELETE FROM {TABLE} WHERE trace_id IN "
                f"(SELECT trace_id FROM {TABLE} GROUP BY trace_id HAVING max(start_ns) < %s)",
                (to_ns(before),),
            )
            return int(cur.rowcount)

    # --- retention ---
    def partitions(self) -> list[tuple[int, str, int]]:
        """(day, partition name, bytes with indexes), oldest first."""
        rows = self.query(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = ?::regclass",
            (TABLE,),
        )
        out = [(day, name, int(size)) for name, size in rows if (day := _partition_day(name)) is not None]
        return sorted(out)

    def live_bytes(self) -> int:
        return sum(size for _, _, size in self.partitions())

    def _retain(self) -> int:
        import time

        parts = self.partitions()
        if not parts:
            return 0
        today = int(time.time()) // 86_400
        drop: list[tuple[int, str, int]] = []
        if self.max_age_s is not None:
            cutoff_ns = int((time.time() - self.max_age_s) * 1e9)
            drop = [p for p in parts if (p[0] + 1) * DAY_NS <= cutoff_ns and p[0] < today]
        if self.max_bytes is not None:
            kept = [p for p in parts if p not in drop]
            total = sum(size for _, _, size in kept)
            for part in kept:
                if total <= self.max_bytes or part[0] >= today:
                    break
                drop.append(part)
                total -= part[2]
        if not drop:
            return 0
        with self._write_lock:
            conn = self._conn()
            with conn.transaction():
                # One process applies retention at a time; the others skip this round.
                got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK,)).fetchone()
                if not got or not got[0]:
                    return 0
                for _, name, _ in drop:
                    conn.execute(f"DROP TABLE IF EXISTS {name}")
            self._partitions -= {day for day, _, _ in drop}
        logger.info("trace store: retention dropped %s", ", ".join(name for _, name, _ in drop))
        return len(drop)
