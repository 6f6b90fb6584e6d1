"""Run storage and the run queue: one SQL implementation for SQLite (embedded) and PostgreSQL.

Claiming is a lease: a worker takes a queued run (or one whose lease expired because its
worker died) and must heartbeat to keep it. Writes that finish a run are fenced by the
lease owner, so a worker that lost its lease cannot overwrite the new owner's result.
On PostgreSQL the claim uses `FOR UPDATE SKIP LOCKED` and enqueueing sends `NOTIFY`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bastion._grouped import Execute, GroupedTransactions, Work, run_grouped
from bastion._pg import GroupWriter, LoopPool
from bastion.errors import MissingExtraError, UserError
from bastion.runtime._types import ACTIVE, Run, RunOutcome, RunStatus, opened_thread_id
from bastion.types import new_sortable_id

log = logging.getLogger("bastion.runtime")
SCHEMA_VERSION = 1
NOTIFY_CHANNEL = "bastion_runs"  # a run was queued: idle workers claim
WORKER_APPLICATION_NAME = "bastion-worker"  # tags each `bastion worker`'s LISTEN connection
DONE_CHANNEL = "bastion_runs_done"  # a run ended (payload: its id): API servers answer waiting clients

_COLUMNS = (
    "id, tenant, thread_id, agent, status, input, output, error, interrupts, resume, attempts, worker, "
    "lease_expires_at, cancel_requested, user_id, metadata, usage, cost_usd, trace_id, checkpoint_before, "
    "created_at, updated_at"
)
_JSON_FIELDS = ("input", "output", "interrupts", "resume", "metadata", "usage")
_INSERT_EVENT = "INSERT INTO bastion_run_events (run_id, kind, data, at) VALUES (?, ?, ?, ?)"
_UPSERT_THREAD = (
    "INSERT INTO bastion_threads (tenant, thread_id, metadata, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (tenant, thread_id) DO UPDATE SET metadata = CASE WHEN excluded.metadata = '{}' "
    "THEN bastion_threads.metadata ELSE excluded.metadata END"  # empty metadata keeps what is there
)
# PostgreSQL: AND-ed into a write's WHERE clause, commits that one statement without waiting for
# the WAL flush (`SET LOCAL synchronous_commit = off` without a transaction block: the setting in
# effect at commit decides, and a statement that matched no row wrote nothing to wait for).
_ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true) IS NOT NULL"
# PostgreSQL: rows as one JSON array of arrays (one statement text, prepared once, for any count;
# `json.dumps` costs a fraction of what psycopg's Python list dumper does per element).
_EVENT_ROWS = (
    "(SELECT e.r->>0 AS kind, e.r->>1 AS data, (e.r->>2)::float8 AS at, e.n "
    "FROM json_array_elements(?::json) WITH ORDINALITY AS e(r, n)) AS v"
)
T = TypeVar("T")


def _schema(dialect: str) -> list[str]:
    real = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    serial = "BIGSERIAL" if dialect == "postgres" else "INTEGER"
    auto = "" if dialect == "postgres" else " AUTOINCREMENT"
    return [
        f"""CREATE TABLE IF NOT EXISTS bastion_runs (
            id TEXT PRIMARY KEY, tenant TEXT NOT NULL, thread_id TEXT NOT NULL, agent TEXT NOT NULL,
            status TEXT NOT NULL, input TEXT, output TEXT, error TEXT, interrupts TEXT, resume TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_expires_at {real},
            cancel_requested INTEGER NOT NULL DEFAULT 0, user_id TEXT, metadata TEXT, usage TEXT,
            cost_usd {real} NOT NULL DEFAULT 0, trace_id TEXT, checkpoint_before TEXT,
            created_at {real} NOT NULL, updated_at {real} NOT NULL, v INTEGER NOT NULL DEFAULT {SCHEMA_VERSION})""",
        "CREATE INDEX IF NOT EXISTS bastion_runs_queue ON bastion_runs (status, created_at)",
        "CREATE INDEX IF NOT EXISTS bastion_runs_thread ON bastion_runs (tenant, thread_id, created_at)",
        "CREATE INDEX IF NOT EXISTS bastion_runs_lease ON bastion_runs (status, lease_expires_at)",
        f"""CREATE TABLE IF NOT EXISTS bastion_run_events (
            seq {serial} PRIMARY KEY{auto}, run_id TEXT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL,
            at {real} NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS bastion_run_events_run ON bastion_run_events (run_id, seq)",
        f"""CREATE TABLE IF NOT EXISTS bastion_threads (
            tenant TEXT NOT NULL, thread_id TEXT NOT NULL, metadata TEXT, created_at {real} NOT NULL,
            PRIMARY KEY (tenant, thread_id))""",
    ]


@dataclass(slots=True, frozen=True)
class QueueGauge:
    """The runs of one (agent, tenant) waiting and executing: what an autoscaler scales on."""

    agent: str
    tenant: str
    queued: int
    oldest_queued_age_s: float
    in_flight: int  # running under a live lease
    lease_expired: int  # running, but the lease lapsed: the worker died; another will recover it


_NAMES = tuple(c.strip() for c in _COLUMNS.split(","))


def _row_to_run(row: Sequence[Any]) -> Run:
    data = dict(zip(_NAMES, row, strict=True))
    for key in _JSON_FIELDS:
        raw = data[key]
        data[key] = json.loads(raw) if raw is not None else None
    data["user"] = data.pop("user_id")
    data["cancel_requested"] = bool(data["cancel_requested"])
    data["interrupts"] = data["interrupts"] or []
    data["metadata"] = data["metadata"] or {}
    data["usage"] = data["usage"] or {}
    return Run(**data)


def run_from_json(text: str) -> Run:
    """A run from its row as PostgreSQL's `row_to_json` writes it (a run-done notification)."""
    data = json.loads(text)
    return _row_to_run(tuple(data[name] for name in _NAMES))


def _decode_rows(rows: Sequence[Sequence[Any]]) -> list[Run]:
    """Rows of a listing as runs; a row that cannot be decoded is skipped and logged, so one bad
    row never makes a tenant's whole listing fail."""
    runs: list[Run] = []
    for row in rows:
        try:
            runs.append(_row_to_run(row))
        except (ValueError, TypeError, RecursionError) as e:
            _skip("run", row[0], e)
    return runs


def _skip(kind: str, key: object, error: BaseException) -> None:
    from bastion.config import redact_credentials

    log.warning("skipping %s %s in a listing: it cannot be decoded (%s)", kind, key, redact_credentials(repr(error)))


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _one_statement(
    statements: Sequence[tuple[str, Sequence[Any]]], notify: tuple[str, str] | None
) -> tuple[str, list[Any]]:
    """PostgreSQL: several INSERTs (and a NOTIFY) as one statement of data-modifying CTEs, which
    commits atomically like the transaction it replaces."""
    parts = [f"s{i} AS ({query})" for i, (query, _) in enumerate(statements)]
    params = [p for _, ps in statements for p in ps]
    if notify is not None:
        params += notify
    return f"WITH {', '.join(parts)} SELECT {'pg_notify(?, ?)' if notify else '1'}", params


class RunStore(Protocol):
    """Where runs, their events and threads live; also the queue workers claim from."""

    async def create(self, run: Run, thread_metadata: dict[str, Any] | None = None) -> Run: ...
    async def get(self, run_id: str, tenant: str | None = None) -> Run | None: ...
    async def list(
        self, tenant: str, *, thread_id: str | None = None, agent: str | None = None,
        status: str | None = None, limit: int = 100,
    ) -> list[Run]: ...  # fmt: skip
    async def claim(self, worker: str, lease_seconds: float) -> Run | None: ...
    async def claim_many(self, worker: str, lease_seconds: float, limit: int) -> list[Run]: ...
    async def heartbeat(self, run_id: str, worker: str, lease_seconds: float) -> str: ...
    async def finish(
        self,
        run_id: str,
        worker: str,
        outcome: RunOutcome | None,
        error: str | None,
        *,
        cancelled: bool = False,
        trace_id: str | None = None,
        events: Sequence[tuple[str, str, float]] = (),
    ) -> bool: ...
    async def update(self, run_id: str, **fields: Any) -> None: ...
    async def add_event(self, run_id: str, kind: str, data: dict[str, Any]) -> None: ...
    async def add_events(self, run_id: str, events: Sequence[tuple[str, str, float]]) -> None: ...
    async def events(self, run_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]: ...
    async def active_for_thread(self, tenant: str, thread_id: str) -> list[Run]: ...
    async def upsert_thread(self, tenant: str, thread_id: str, metadata: dict[str, Any]) -> None: ...
    async def list_threads(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]: ...
    async def delete_thread(self, tenant: str, thread_id: str) -> None: ...
    async def has_thread(self, tenant: str, thread_id: str) -> bool: ...
    async def thread_agents(self, tenant: str, thread_id: str) -> list[str]: ...
    async def idle_threads(self, older_than: float, tenant: str | None = None) -> list[tuple[str, str, list[str]]]: ...
    async def close(self) -> None: ...


class SqlRunStore:
    """`RunStore` over SQL. Use `SqlRunStore.sqlite(path)` or `SqlRunStore.postgres(url)`."""

    def __init__(self, dialect: str, connect: Any, *, url: str | None = None) -> None:
        self.dialect = dialect
        self.url = url
        self._connect = connect
        self._local = threading.local()
        self._lock = threading.Lock()  # SQLite: one writer at a time in this process
        self._conns: list[Any] = []
        # PostgreSQL: single statements go through an async pool on the loop that first used the
        # store (no thread hop per statement); transactions, and other loops, use the threads.
        self._apool = LoopPool(url or "", max_size=16)
        self._next_recovery = 0.0  # PostgreSQL: when a claim next looks for expired leases
        self._events: GroupWriter[tuple[str, str, str, float]] = GroupWriter(self._write_events)
        self._writes = GroupedTransactions(self._run_grouped)  # SQLite group commit
        self._init_schema()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def sqlite(cls, path: str | Path) -> SqlRunStore:
        path = str(path)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn

        return cls("sqlite", connect, url=path)

    @classmethod
    def postgres(cls, url: str) -> SqlRunStore:
        try:
            import psycopg
        except ImportError as e:
            raise MissingExtraError("postgres", "psycopg", "the PostgreSQL run store") from e

        def connect() -> Any:
            return psycopg.connect(url, autocommit=True)

        return cls("postgres", connect, url=url)

    # -- plumbing (sync SQL run in a thread; each thread keeps its own connection) --------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s") if self.dialect == "postgres" else query

    def _init_schema(self) -> None:
        conn = self._conn()
        if self.dialect == "postgres":
            # Serialise schema creation across processes starting at once (catalog races).
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('bastion_runs_schema'))")
                for stmt in _schema(self.dialect):
                    conn.execute(stmt)
            return
        for stmt in _schema(self.dialect):
            conn.execute(stmt)

    def _exec(self, query: str, params: Sequence[Any] = (), *, fetch: str = "") -> Any:
        conn = self._conn()
        if self.dialect == "sqlite":
            if query.lstrip().startswith("SELECT"):  # WAL: readers never wait for the writer
                cur = conn.execute(query, params)
                return cur.fetchone() if fetch == "one" else cur.fetchall() if fetch == "all" else None
            with self._lock:
                cur = conn.execute(query, params)
                return cur.fetchone() if fetch == "one" else cur.fetchall() if fetch == "all" else None
        cur = conn.execute(self._sql(query), params)
        return cur.fetchone() if fetch == "one" else cur.fetchall() if fetch == "all" else None

    def _transaction(self, work: Callable[[Callable[[str, Sequence[Any]], Any]], T], durable: bool = True) -> T:
        """Run `work(execute)` in one transaction; `execute(sql, params)` takes `?` placeholders and
        returns the cursor. SQLite: BEGIN IMMEDIATE under this process's writer lock.

        `durable=False` (PostgreSQL): commit without waiting for the WAL flush (`synchronous_commit
        = off`) — for the steps in between (a claim, a heartbeat, events). WAL is flushed in order,
        so the next durable commit (a run created, a run's end) makes them durable too; a database
        crash before that loses only them, and the run is then claimed and recovered again."""
        conn = self._conn()
        if self.dialect == "sqlite":
            ok, result = self._run_grouped([work])[0]
            if not ok:
                raise result
            return result
        # Pipeline mode: the statements of one transaction travel together instead of one round
        # trip each (a fetch in `work` still waits for its own result).
        with conn.pipeline(), conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            return work(lambda sql, params: conn.execute(self._sql(sql), params))

    def _run_grouped(self, works: list[Work]) -> list[tuple[bool, Any]]:
        """SQLite: `works` in one transaction under this process's writer lock (see `_grouped`)."""
        conn = self._conn()
        with self._lock:
            return run_grouped(conn, works)

    async def _write(self, work: Callable[[Execute], T], durable: bool = True) -> T:
        """`_transaction(work)` from async code. SQLite: inline, in one transaction with the writes
        other tasks of this loop ask for meanwhile (group commit, `_grouped`); PostgreSQL: in a
        thread."""
        if self.dialect == "sqlite":
            return await self._writes.submit(work)
        return await asyncio.to_thread(self._transaction, work, durable)

    async def _query(self, query: str, params: Sequence[Any] = (), *, fetch: str = "", plan: bool = False) -> Any:
        """One statement, `?` placeholders, as `_exec`. SQLite: inline (see `_run`); PostgreSQL:
        on this loop's async connection pool, where a statement costs the loop a socket wait
        instead of a hand-off to a thread and back."""
        if self.dialect == "sqlite":
            return self._exec(query, params, fetch=fetch)
        # `plan=True`: planned at each execution, for the current size of the tables. A statement
        # prepared while they were nearly empty keeps the plan for that: a scan through another
        # index, growing with every run until ANALYZE replans it.
        return await self._apool.execute(
            self._sql(query), params, fetch=fetch, prepare=False if plan else None,
            otherwise=lambda: self._exec(query, params, fetch=fetch),
        )  # fmt: skip

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self.dialect == "sqlite":
            # Inline on the event loop, like the SQLite checkpointer: a local statement in WAL mode
            # takes tens of microseconds, less than the hop to a worker thread and back (and the
            # GIL handoffs it costs the loop). PostgreSQL waits on the network: a thread.
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    # -- runs ---------------------------------------------------------------------------------

    async def create(self, run: Run, thread_metadata: dict[str, Any] | None = None) -> Run:
        """Insert the run and its `run_queued` event together, so no worker can claim (and emit
        `run_started`) before the run's history begins; with `thread_metadata`, record the thread
        too (`upsert_thread`) in the same transaction. PostgreSQL: NOTIFY on commit."""
        now = time.time()
        run.created_at = run.created_at or now
        run.updated_at = now
        row = (
            run.id, run.tenant, run.thread_id, run.agent, run.status, _dump(run.input), _dump(run.output),
            run.error, _dump(run.interrupts), _dump(run.resume), run.attempts, run.worker,
            run.lease_expires_at, int(run.cancel_requested), run.user, _dump(run.metadata), _dump(run.usage),
            run.cost_usd, run.trace_id, run.checkpoint_before, run.created_at, run.updated_at,
        )  # fmt: skip

        statements: list[tuple[str, Sequence[Any]]] = []
        if thread_metadata is not None:
            statements.append((_UPSERT_THREAD, (run.tenant, run.thread_id, json.dumps(thread_metadata), now)))
        statements.append((f"INSERT INTO bastion_runs ({_COLUMNS}) VALUES ({', '.join('?' * 22)})", row))
        if run.status == "queued":
            statements.append((_INSERT_EVENT, (run.id, "run_queued", json.dumps({"agent": run.agent}), now)))
        if self.dialect == "postgres":
            # One statement (data-modifying CTEs), committed on its own: a client-visible commit
            # in one round trip, where BEGIN, three INSERTs, NOTIFY and COMMIT were six
            # statements for the server to parse and the driver to pipeline. NOTIFY is delivered
            # on commit.
            notify = run.status == "queued"
            await self._query(*_one_statement(statements, (NOTIFY_CHANNEL, run.id) if notify else None))
            return run

        def work(execute: Callable[[str, Sequence[Any]], Any]) -> None:
            for query, params in statements:
                execute(query, params)

        await self._write(work)
        return run

    async def get(self, run_id: str, tenant: str | None = None) -> Run | None:
        query = f"SELECT {_COLUMNS} FROM bastion_runs WHERE id = ?"
        params: list[Any] = [run_id]
        if tenant is not None:
            query += " AND tenant = ?"
            params.append(tenant)
        row = await self._query(query, params, fetch="one", plan=True)
        return _row_to_run(row) if row else None

    async def list(
        self,
        tenant: str,
        *,
        thread_id: str | None = None,
        agent: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        query = f"SELECT {_COLUMNS} FROM bastion_runs WHERE tenant = ?"
        params: list[Any] = [tenant]
        for column, value in (("thread_id", thread_id), ("agent", agent), ("status", status)):
            if value is not None:
                query += f" AND {column} = ?"
                params.append(value)
        query += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        rows = await self._query(query, params, fetch="all")
        return _decode_rows(rows)

    async def _claim(self, worker: str, lease_seconds: float, limit: int = 1) -> list[Run]:
        now = time.time()
        # Runs of one thread execute one at a time: skip threads with a live running run.
        eligible = """AND NOT EXISTS (SELECT 1 FROM bastion_runs o WHERE o.tenant = r.tenant
                    AND o.thread_id = r.thread_id AND o.id <> r.id AND o.status = 'running' AND o.lease_expires_at >= ?)
                AND NOT EXISTS (SELECT 1 FROM bastion_runs e WHERE e.tenant = r.tenant AND e.thread_id = r.thread_id
                    AND e.status IN ('queued', 'running') AND e.created_at < r.created_at)"""
        # In one batch, a thread's later run is not eligible while its earlier one is queued, so a
        # batch never holds two runs of one thread.
        set_running = """UPDATE bastion_runs SET status = 'running', worker = ?, lease_expires_at = ?,
                attempts = attempts + 1, updated_at = ?"""
        set_params = (worker, now + lease_seconds, now)
        if self.dialect == "postgres":
            # OFFSET 0 keeps each NOT EXISTS a lookup per candidate through the thread index: as an
            # anti-join the planner may hash every queued and running version instead, dead ones
            # included, which grows with every run until VACUUM.
            eligible = eligible.replace("e.created_at < r.created_at)", "e.created_at < r.created_at OFFSET 0)")
            eligible = eligible.replace("o.lease_expires_at >= ?)", "o.lease_expires_at >= ? OFFSET 0)")
            # The oldest eligible queued runs (an ordered index scan), and at most once a second the
            # oldest expired leases (a worker died), then the oldest of both. One OR over both
            # would be a bitmap scan, which visits every version a claim and a run's end left in
            # the index until VACUUM and never marks them dead: claims grew costlier with each run.
            recover = now >= self._next_recovery
            if recover:
                self._next_recovery = now + 1.0
            update = f"""WITH q AS (SELECT r.id, r.created_at FROM bastion_runs r WHERE r.status = 'queued'
                    {eligible} ORDER BY r.status, r.created_at LIMIT ? FOR UPDATE SKIP LOCKED),
                x AS (SELECT r.id, r.created_at FROM bastion_runs r WHERE ? AND r.status = 'running'
                    AND r.lease_expires_at < ? {eligible} ORDER BY r.status, r.lease_expires_at LIMIT ?
                    FOR UPDATE SKIP LOCKED)
                {set_running} WHERE id IN (SELECT id FROM (SELECT * FROM q UNION ALL SELECT * FROM x) u
                    ORDER BY created_at LIMIT ?) AND {_ASYNC_COMMIT} RETURNING {_COLUMNS}"""
            params = (now, limit, recover, now, now, limit, *set_params, limit)
            rows = await self._query(update, params, fetch="all", plan=True)  # one round trip, no WAL flush to wait for
        else:
            # SQLite serves an OR of both by scanning every running and queued run and sorting them,
            # per claim (quadratic with thousands in flight); instead take the oldest eligible queued
            # run and the oldest expired lease, each through an index, and the older of the two.
            eligible = eligible.replace("bastion_runs o WHERE", "bastion_runs o INDEXED BY bastion_runs_thread WHERE")
            pick = f"""SELECT id FROM (
                SELECT * FROM (SELECT r.id, r.created_at FROM bastion_runs r WHERE r.status = 'queued' {eligible}
                    ORDER BY r.created_at LIMIT ?)
                UNION ALL
                SELECT * FROM (SELECT r.id, r.created_at FROM bastion_runs r
                    WHERE r.status = 'running' AND r.lease_expires_at < ? {eligible} ORDER BY r.created_at LIMIT ?)
            ) ORDER BY created_at LIMIT ?"""
            update = f"{set_running} WHERE id IN ({pick}) RETURNING {_COLUMNS}"
            params = (*set_params, now, limit, now, now, limit, limit)
            rows = await self._write(lambda execute: execute(update, params).fetchall(), durable=False)
        return sorted((_row_to_run(row) for row in rows), key=lambda r: r.created_at)

    async def claim(self, worker: str, lease_seconds: float) -> Run | None:
        runs = await self._claim(worker, lease_seconds)
        return runs[0] if runs else None

    async def claim_many(self, worker: str, lease_seconds: float, limit: int) -> list[Run]:
        """Up to `limit` runs in one claim (oldest first): one round trip for a burst."""
        return await self._claim(worker, lease_seconds, limit)

    async def heartbeat(self, run_id: str, worker: str, lease_seconds: float) -> str:
        """Extend the lease: "ok", "cancel" (a cancel was requested) or "lost" (someone else owns it)."""
        now = time.time()
        fast = f" AND {_ASYNC_COMMIT}" if self.dialect == "postgres" else ""  # a step in between
        row = await self._query(
            "UPDATE bastion_runs SET lease_expires_at = ?, updated_at = ? "
            f"WHERE id = ? AND worker = ? AND status = 'running'{fast} RETURNING cancel_requested",
            (now + lease_seconds, now, run_id, worker),
            fetch="one",
        )
        if row is None:
            return "lost"
        return "cancel" if row[0] else "ok"

    async def finish(
        self,
        run_id: str,
        worker: str,
        outcome: RunOutcome | None,
        error: str | None,
        *,
        cancelled: bool = False,
        trace_id: str | None = None,
        events: Sequence[tuple[str, str, float]] = (),
    ) -> bool:
        """Record the end of an attempt and its final event (`run_completed`, `run_interrupted`,
        `run_failed`, `run_cancelled`) in one transaction; fenced: only the current lease owner
        may write, so a run ends exactly once even when its worker dies right after. `trace_id`
        is the failed attempt's trace (a failed run keeps it, to be inspected or promoted).
        `events` (as for `add_events`): the attempt's last events, not stored yet, written
        before the final one in the same transaction (and, fenced likewise, not at all by a
        worker that lost the lease)."""
        now = time.time()
        if cancelled:
            fields = ("cancelled", None, error, _dump([]), _dump({}), 0.0, None)
            event: tuple[str, dict[str, Any]] = ("run_cancelled", {})
        elif outcome is not None:
            status: RunStatus = outcome.status
            fields = (
                status, _dump(outcome.output), None, _dump(outcome.interrupts), _dump(outcome.usage),
                outcome.cost_usd, outcome.trace_id,
            )  # fmt: skip
            event = (f"run_{status}", {"output": outcome.output, "interrupts": outcome.interrupts})
        else:
            fields = ("failed", None, error, _dump([]), _dump({}), 0.0, trace_id)
            event = ("run_failed", {"error": error})
        update = (
            "UPDATE bastion_runs SET status = ?, output = ?, error = ?, interrupts = ?, usage = ?, cost_usd = ?, "
            "trace_id = COALESCE(?, trace_id), worker = NULL, lease_expires_at = NULL, updated_at = ? "
            "WHERE id = ? AND worker = ? AND status = 'running' RETURNING "
        )
        rows = [*events, (event[0], json.dumps(event[1], default=str), now)]
        if self.dialect == "postgres":
            # One statement in one round trip: the fenced UPDATE, the events and NOTIFY only if it
            # matched (the CTE `done` is empty otherwise), committed durably on its own.
            # The notification carries the ended run (as JSON, within NOTIFY's 8,000 bytes; else
            # its id), so the API server answering its client need not read it back.
            query = (
                f"WITH done AS ({update}{_COLUMNS}), ev AS (INSERT INTO bastion_run_events (run_id, kind, data, at) "
                f"SELECT done.id, v.kind, v.data, v.at FROM done, {_EVENT_ROWS} ORDER BY v.n) "
                "SELECT pg_notify(?, CASE WHEN octet_length(j.t) < 7900 THEN j.t ELSE done.id END) "
                "FROM done, LATERAL (SELECT row_to_json(done)::text AS t) j"
            )
            params = (*fields, now, run_id, worker, json.dumps(rows), DONE_CHANNEL)
            return await self._query(query, params, fetch="one") is not None

        def work(execute: Callable[[str, Sequence[Any]], Any]) -> bool:
            done = execute(update + "id", (*fields, now, run_id, worker)).fetchone() is not None
            if done:
                for kind, data, at in rows:
                    execute(_INSERT_EVENT, (run_id, kind, data, at))
            return done

        return await self._write(work)

    async def update(self, run_id: str, **fields: Any) -> None:
        allowed = {
            "status", "resume", "cancel_requested", "error", "worker", "lease_expires_at", "checkpoint_before",
            "attempts",
        }  # fmt: skip
        unknown = set(fields) - allowed
        if unknown:
            raise UserError(f"cannot update run fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [_dump(v) if k == "resume" else int(v) if k == "cancel_requested" else v for k, v in fields.items()]
        query, params = f"UPDATE bastion_runs SET {sets}, updated_at = ? WHERE id = ?", (*values, time.time(), run_id)
        # Where a running run's thread stood is worth no WAL flush of its own: lost in a database
        # crash, it is lost with the claim, and the next claim records it again.
        durable = set(fields) != {"checkpoint_before"}
        if self.dialect == "postgres":
            if not durable:
                query += f" AND {_ASYNC_COMMIT}"
            await self._query(query, params)
        else:

            def work(execute: Callable[[str, Sequence[Any]], Any]) -> None:
                execute(query, params)

            await self._write(work, durable)
        if self.dialect == "postgres" and fields.get("status") == "queued":
            await self._query("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, run_id))

    # -- events -------------------------------------------------------------------------------

    async def add_event(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        await self._query(
            _INSERT_EVENT,
            (run_id, kind, json.dumps(data, default=str), time.time()),
        )

    async def add_events(self, run_id: str, events: Sequence[tuple[str, str, float]]) -> None:
        """Several events of one run, `(kind, data as JSON text, at)`, in one transaction."""
        if not events:
            return
        if self.dialect == "postgres":
            rows = [(run_id, kind, data, at) for kind, data, at in events]
            if await self._apool.get():  # the pool's loop: group commit
                await self._events.submit(rows)  # with other runs' events, in one statement
            else:
                await self._write_events(rows)
            return

        def work(execute: Callable[[str, Sequence[Any]], Any]) -> None:
            for kind, data, at in events:
                execute(_INSERT_EVENT, (run_id, kind, data, at))

        await self._write(work, False)

    async def _write_events(self, rows: list[tuple[str, str, str, float]]) -> None:
        """PostgreSQL: events of any runs in one statement, in order, not waiting for the WAL flush."""
        query = (
            "INSERT INTO bastion_run_events (run_id, kind, data, at) SELECT e.r->>0, e.r->>1, e.r->>2, "
            "(e.r->>3)::float8 FROM json_array_elements(?::json) WITH ORDINALITY AS e(r, n) "
            f"WHERE {_ASYNC_COMMIT} ORDER BY e.n"
        )
        await self._query(query, (json.dumps(rows),))

    async def events(self, run_id: str, after: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
        rows = await self._query(
            "SELECT seq, kind, data FROM bastion_run_events WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after),
            fetch="all",
        )
        return [(int(seq), kind, json.loads(data)) for seq, kind, data in rows]

    # -- threads ------------------------------------------------------------------------------

    async def active_for_thread(self, tenant: str, thread_id: str) -> list[Run]:
        marks = ", ".join("?" * len(ACTIVE))
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM bastion_runs WHERE tenant = ? AND thread_id = ? AND status IN ({marks}) "
            "ORDER BY created_at",
            (tenant, thread_id, *sorted(ACTIVE)),
            fetch="all",
        )
        return [_row_to_run(r) for r in rows]

    async def upsert_thread(self, tenant: str, thread_id: str, metadata: dict[str, Any]) -> None:
        await self._query(_UPSERT_THREAD, (tenant, thread_id, json.dumps(metadata), time.time()))

    async def list_threads(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._query(
            "SELECT thread_id, metadata, created_at FROM bastion_threads WHERE tenant = ? "
            "ORDER BY created_at DESC LIMIT ?",
            (tenant, limit),
            fetch="all",
        )
        threads: list[dict[str, Any]] = []
        for t, m, c in rows:
            try:
                threads.append({"thread_id": t, "metadata": json.loads(m or "{}"), "created_at": c})
            except (ValueError, RecursionError) as e:
                _skip("thread", t, e)
        return threads

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        def go() -> None:
            self._exec(
                "DELETE FROM bastion_run_events WHERE run_id IN "
                "(SELECT id FROM bastion_runs WHERE tenant = ? AND thread_id = ?)",
                (tenant, thread_id),
            )
            self._exec("DELETE FROM bastion_runs WHERE tenant = ? AND thread_id = ?", (tenant, thread_id))
            self._exec("DELETE FROM bastion_threads WHERE tenant = ? AND thread_id = ?", (tenant, thread_id))

        await self._run(go)

    async def has_thread(self, tenant: str, thread_id: str) -> bool:
        """Whether this tenant has the thread (created explicitly or by a run)."""
        row = await self._query(
            "SELECT 1 FROM bastion_threads WHERE tenant = ? AND thread_id = ? UNION ALL "
            "SELECT 1 FROM bastion_runs WHERE tenant = ? AND thread_id = ? LIMIT 1",
            (tenant, thread_id, tenant, thread_id),
            fetch="one",
        )
        return row is not None

    def _thread_agents(self, tenant: str, thread_id: str) -> list[str]:
        rows = self._exec(
            "SELECT DISTINCT agent FROM bastion_runs WHERE tenant = ? AND thread_id = ?",
            (tenant, thread_id),
            fetch="all",
        )
        return sorted(a for (a,) in rows)

    async def thread_agents(self, tenant: str, thread_id: str) -> list[str]:
        """The agents that ran in the thread (whose checkpointers hold its state)."""
        return await self._run(self._thread_agents, tenant, thread_id)

    async def idle_threads(self, older_than: float, tenant: str | None = None) -> list[tuple[str, str, list[str]]]:
        """(tenant, thread, agents that ran in it) for threads with no run active or waiting for
        a human, and no activity since `older_than` (epoch seconds): what retention may delete."""
        query = """SELECT t.tenant, t.thread_id FROM bastion_threads t WHERE t.created_at < ?
            AND NOT EXISTS (SELECT 1 FROM bastion_runs r WHERE r.tenant = t.tenant AND r.thread_id = t.thread_id
                AND (r.status IN ('queued', 'running', 'interrupted') OR r.updated_at >= ?))"""
        params: list[Any] = [older_than, older_than]
        if tenant is not None:
            query += " AND t.tenant = ?"
            params.append(tenant)

        def go() -> list[tuple[str, str, list[str]]]:
            out: list[tuple[str, str, list[str]]] = []
            for t, thread in self._exec(query, params, fetch="all"):
                out.append((t, thread, self._thread_agents(t, thread)))
            return out

        return await self._run(go)

    async def queue_gauges(self, now: float | None = None) -> tuple[list[QueueGauge], int, int | None]:
        """Autoscaling signals per (agent, tenant) at this instant, the workers holding a live
        lease, and (PostgreSQL) the live `bastion worker` processes: those whose LISTEN
        connection, tagged `application_name=bastion-worker`, is open. Read through the
        (status, ...) indexes: cheap enough for every scrape."""
        now = time.time() if now is None else now

        def go() -> tuple[list[QueueGauge], int, int | None]:
            rows = self._exec(
                """SELECT agent, tenant,
                    sum(CASE WHEN status = 'queued' THEN 1 ELSE 0 END),
                    min(CASE WHEN status = 'queued' THEN created_at END),
                    sum(CASE WHEN status = 'running' AND lease_expires_at >= ? THEN 1 ELSE 0 END),
                    sum(CASE WHEN status = 'running' AND lease_expires_at < ? THEN 1 ELSE 0 END)
                FROM bastion_runs WHERE status IN ('queued', 'running') GROUP BY agent, tenant""",
                (now, now),
                fetch="all",
            )
            busy = self._exec(
                "SELECT count(DISTINCT worker) FROM bastion_runs WHERE status = 'running' AND lease_expires_at >= ?",
                (now,),
                fetch="one",
            )
            gauges = [
                QueueGauge(agent, tenant, int(q or 0), max(0.0, now - oldest) if oldest is not None else 0.0,
                           int(r or 0), int(x or 0))
                for agent, tenant, q, oldest, r, x in rows
            ]  # fmt: skip
            live: int | None = None
            if self.dialect == "postgres":
                row = self._exec(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    f"AND application_name = '{WORKER_APPLICATION_NAME}'",
                    fetch="one",
                )
                live = int(row[0]) if row else 0
            return gauges, int(busy[0] or 0) if busy else 0, live

        return await self._run(go)

    async def close(self) -> None:
        await self._apool.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


def new_run(
    *, tenant: str, thread_id: str | None, agent: str, input: Any, user: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Run:  # fmt: skip
    run_id = new_sortable_id("run_")
    return Run(
        id=run_id,
        tenant=tenant,
        thread_id=thread_id or opened_thread_id(run_id),  # see `Run.opened_thread`
        agent=agent,
        status="queued",
        input=input,
        user=user,
        metadata=dict(metadata or {}),
    )
