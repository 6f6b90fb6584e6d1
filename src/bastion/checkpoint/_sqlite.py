"""SQLite checkpointer: one file, WAL, the embedded default.

Statements run inline on the event loop thread: each is a short local transaction (tens of
microseconds in WAL mode with synchronous=NORMAL, which survives process crashes; only an OS
crash or power loss can drop the last commits). That is much cheaper than a hop to a worker
thread per superstep. What concurrent runs store in one turn of the loop (checkpoints, pending
writes, journal entries) shares one transaction (group commit, `bastion._grouped`). Open one
instance per file and process; several processes may share the file (SQLite serialises
writers; `busy_timeout` waits for the lock).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion._grouped import Execute, GroupedTransactions, Work, run_grouped
from bastion.checkpoint._base import CheckpointRecord, JournalEntry, WriteRecord, follow_parents
from bastion.errors import CheckpointError

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS checkpoints (
        thread_id TEXT NOT NULL, ns TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
        parent_id TEXT, keyframe_id TEXT NOT NULL, step INTEGER NOT NULL,
        created_at REAL NOT NULL, payload TEXT NOT NULL,
        PRIMARY KEY (thread_id, ns, checkpoint_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS writes (
        thread_id TEXT NOT NULL, ns TEXT NOT NULL, checkpoint_id TEXT NOT NULL,
        seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, kind TEXT NOT NULL,
        payload TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS writes_by_checkpoint ON writes (thread_id, ns, checkpoint_id)",
    """CREATE TABLE IF NOT EXISTS journal (
        thread_id TEXT NOT NULL, ns TEXT NOT NULL, task_id TEXT NOT NULL, key TEXT NOT NULL,
        payload TEXT NOT NULL, PRIMARY KEY (thread_id, ns, task_id, key)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS bastion_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO bastion_meta VALUES ('checkpoint_schema', '1')",
]

_COLS = "thread_id, ns, checkpoint_id, parent_id, keyframe_id, step, created_at, payload"


def _rec(row: tuple[str, str, str, str | None, str, int, float, str]) -> CheckpointRecord:
    return CheckpointRecord(*row)


class SqliteCheckpointer:
    """Checkpoints in one SQLite file (`":memory:"` works for tests)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = str(path)
        # One connection shared by threads (sync wrappers, to_thread nodes): serialise use.
        self._lock = threading.RLock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx() as db:
                for stmt in _SCHEMA:
                    db.execute(stmt)
        except sqlite3.Error as e:
            raise CheckpointError(f"cannot open checkpoint database {self.path!r}: {e}") from e
        self._puts = GroupedTransactions(self._grouped)

    @contextmanager
    def _tx(self) -> Generator[sqlite3.Connection]:
        db = self._db
        self._lock.acquire()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as e:
            raise CheckpointError(f"checkpoint database {self.path!r} failed: {e}") from e
        finally:
            self._lock.release()

    def _query(self, sql: str, args: Sequence[object]) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise CheckpointError(f"checkpoint database {self.path!r} failed: {e}") from e

    def _grouped(self, works: list[Work]) -> list[tuple[bool, Any]]:
        with self._lock:
            try:
                return run_grouped(self._db, works)
            except sqlite3.Error as e:
                raise CheckpointError(f"checkpoint database {self.path!r} failed: {e}") from e

    async def _write(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """In one transaction with what other runs of this loop store meanwhile (group commit:
        consecutive runs' rows share pages, so a commit of many costs about what one did)."""

        def work(execute: Execute) -> None:
            try:
                for row in rows:
                    execute(sql, row)
            except sqlite3.Error as e:
                raise CheckpointError(f"checkpoint database {self.path!r} failed: {e}") from e

        await self._puts.submit(work)

    async def put(self, record: CheckpointRecord) -> None:
        r = record
        row = (r.thread_id, r.ns, r.checkpoint_id, r.parent_id, r.keyframe_id, r.step, r.created_at, r.payload)
        await self._write(f"INSERT OR REPLACE INTO checkpoints ({_COLS}) VALUES (?,?,?,?,?,?,?,?)", [row])

    async def put_writes(self, writes: Sequence[WriteRecord]) -> None:
        if writes:
            await self._write(
                "INSERT INTO writes (thread_id, ns, checkpoint_id, task_id, kind, payload) VALUES (?,?,?,?,?,?)",
                [(w.thread_id, w.ns, w.checkpoint_id, w.task_id, w.kind, w.payload) for w in writes],
            )

    async def get(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> CheckpointRecord | None:
        if checkpoint_id is None:
            rows = self._query(
                f"SELECT {_COLS} FROM checkpoints WHERE thread_id=? AND ns=? ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_id, ns),
            )
        else:
            rows = self._query(
                f"SELECT {_COLS} FROM checkpoints WHERE thread_id=? AND ns=? AND checkpoint_id=?",
                (thread_id, ns, checkpoint_id),
            )
        return _rec(rows[0]) if rows else None  # type: ignore[arg-type]

    async def get_chain(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> list[CheckpointRecord]:
        target = await self.get(thread_id, ns, checkpoint_id)
        if target is None:
            return []
        if target.is_keyframe:
            return [target]
        candidates = self._query(
            f"SELECT {_COLS} FROM checkpoints WHERE thread_id=? AND ns=? AND checkpoint_id>=? AND checkpoint_id<?",
            (thread_id, ns, target.keyframe_id, target.checkpoint_id),
        )
        return follow_parents([_rec(c) for c in candidates], target)  # type: ignore[arg-type]

    async def list(
        self, thread_id: str, ns: str = "", *, before: str | None = None, limit: int | None = None
    ) -> list[CheckpointRecord]:
        sql = f"SELECT {_COLS} FROM checkpoints WHERE thread_id=? AND ns=?"
        args: list[object] = [thread_id, ns]
        if before is not None:
            sql += " AND checkpoint_id<?"
            args.append(before)
        sql += " ORDER BY checkpoint_id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_rec(r) for r in self._query(sql, args)]  # type: ignore[arg-type]

    async def get_writes(self, thread_id: str, ns: str, checkpoint_id: str) -> list[WriteRecord]:
        rows = self._query(
            "SELECT task_id, kind, payload FROM writes WHERE thread_id=? AND ns=? AND checkpoint_id=? ORDER BY seq",
            (thread_id, ns, checkpoint_id),
        )
        return [WriteRecord(thread_id, ns, checkpoint_id, t, k, p) for t, k, p in rows]  # type: ignore[arg-type]

    async def put_journal(self, entry: JournalEntry) -> None:
        e = entry
        await self._write(
            "INSERT OR IGNORE INTO journal VALUES (?,?,?,?,?)", [(e.thread_id, e.ns, e.task_id, e.key, e.payload)]
        )

    async def get_journal(self, thread_id: str, ns: str, task_id: str) -> dict[str, str]:
        rows = self._query(
            "SELECT key, payload FROM journal WHERE thread_id=? AND ns=? AND task_id=?", (thread_id, ns, task_id)
        )
        return {str(k): str(p) for k, p in rows}

    async def fork(self, thread_id: str, ns: str, checkpoint_id: str, new_thread_id: str) -> None:
        chain = await self.get_chain(thread_id, ns, checkpoint_id)
        if not chain:
            raise CheckpointError(f"no checkpoint {checkpoint_id!r} in thread {thread_id!r} to fork")
        with self._tx() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO checkpoints ({_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (new_thread_id, r.ns, r.checkpoint_id, r.parent_id, r.keyframe_id, r.step, r.created_at, r.payload)
                    for r in chain
                ],
            )

    async def delete_thread(self, thread_id: str) -> None:
        with self._tx() as db:
            for table in ("checkpoints", "writes", "journal"):
                db.execute(f"DELETE FROM {table} WHERE thread_id=?", (thread_id,))

    async def prune(self, *, older_than: float, keep_interrupted: bool = True) -> list[str]:
        rows = self._query(
            "SELECT thread_id FROM checkpoints GROUP BY thread_id HAVING max(created_at) < ? ORDER BY thread_id",
            (older_than,),
        )
        doomed: list[str] = []
        for (thread,) in rows:
            if keep_interrupted and self._interrupted(str(thread)):
                continue
            doomed.append(str(thread))
        if doomed:
            with self._tx() as db:
                for table in ("checkpoints", "writes", "journal"):
                    db.executemany(f"DELETE FROM {table} WHERE thread_id=?", [(t,) for t in doomed])
        return doomed

    def _interrupted(self, thread_id: str) -> bool:
        rows = self._query(
            """SELECT 1 FROM writes WHERE thread_id=? AND ns='' AND kind='interrupt' AND checkpoint_id=(
                 SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id=? AND ns='') LIMIT 1""",
            (thread_id, thread_id),
        )
        return bool(rows)

    def size_bytes(self) -> int:
        """Bytes used by the database pages (for measurements)."""
        (pages,) = self._query("PRAGMA page_count", ())[0]
        (size,) = self._query("PRAGMA page_size", ())[0]
        (free,) = self._query("PRAGMA freelist_count", ())[0]
        return (int(pages) - int(free)) * int(size)  # type: ignore[call-overload]

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["SqliteCheckpointer"]
