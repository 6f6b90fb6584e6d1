"""The idempotency journal: a resumed run never repeats a completed side effect.

Each side-effecting call gets a key (run id + tool call id + arguments hash). The runner marks
the key `pending` before calling the tool and `done` with the result after; a replay of the
same call returns the recorded result instead of calling again. A key left `pending` (the
process died mid-call) is reported as "outcome unknown" rather than blindly repeated.

The journal must live where the process that resumes the run can read it. A run that resumes
on another worker cannot see a `MemoryJournal`, nor a `SqliteJournal` on the dead worker's
disk, so the agent loop scopes a journal kept in the run's own checkpointer (shared whenever
the checkpoints are) around each tool call with `use_journal`; the runner prefers that one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from bastion.tools._plain import to_plain
from bastion.tools._tool import canonical_json
from bastion.types import ToolResult

JOURNAL_FORMAT_VERSION = 1

EntryState = Literal["pending", "done"]


def idempotency_key(run_id: str, tool_call_id: str, arguments: dict[str, Any]) -> str:
    """Stable key of one side effect: the same call in the same run maps to the same key."""
    args_hash = hashlib.sha256(canonical_json(to_plain(arguments)).encode()).hexdigest()
    return f"{run_id}:{tool_call_id}:{args_hash[:32]}"


@dataclass(slots=True)
class IdempotencyEntry:
    """The idempotency record of one side-effecting tool call: pending, then done with its result."""

    key: str
    tool: str
    state: EntryState
    result: ToolResult | None = None


class IdempotencyJournal(Protocol):
    """Where side effects are recorded. Implementations must make `begin` atomic: it returns
    the existing entry when the key is already known, else records `pending` and returns None."""

    async def begin(self, key: str, tool: str) -> IdempotencyEntry | None: ...

    async def complete(self, key: str, result: ToolResult) -> None: ...

    async def abort(self, key: str) -> None:
        """Forget a pending key whose call failed cleanly (so a retry may run it again)."""
        ...


def _result_to_json(result: ToolResult) -> str:
    return json.dumps(
        {
            "v": JOURNAL_FORMAT_VERSION,
            "tool_call_id": result.tool_call_id,
            "name": result.name,
            "content": result.content,
            "is_error": result.is_error,
            "trust": result.trust,
        },
        ensure_ascii=False,
        default=str,
    )


def _result_from_json(blob: str) -> ToolResult:
    d = json.loads(blob)
    return ToolResult(
        tool_call_id=d["tool_call_id"],
        name=d["name"],
        content=d["content"],
        is_error=bool(d["is_error"]),
        trust=d["trust"],
    )


class MemoryJournal:
    """In-process journal (tests, single-process runs without durability)."""

    def __init__(self) -> None:
        self._entries: dict[str, IdempotencyEntry] = {}

    async def begin(self, key: str, tool: str) -> IdempotencyEntry | None:
        existing = self._entries.get(key)
        if existing is not None:
            return existing
        self._entries[key] = IdempotencyEntry(key, tool, "pending")
        return None

    async def complete(self, key: str, result: ToolResult) -> None:
        # Round-trip through JSON so memory and SQLite return the same shapes.
        self._entries[key] = IdempotencyEntry(key, result.name, "done", _result_from_json(_result_to_json(result)))

    async def abort(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.state == "pending":
            del self._entries[key]


class SqliteJournal:
    """Durable journal in one SQLite file (WAL). Writes are tiny single-row statements, run
    inline: cheaper than a thread hop and still well under a millisecond."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tool_journal ("
            " key TEXT PRIMARY KEY, tool TEXT NOT NULL, state TEXT NOT NULL,"
            " result TEXT, updated_at REAL NOT NULL, v INTEGER NOT NULL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def begin(self, key: str, tool: str) -> IdempotencyEntry | None:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO tool_journal(key, tool, state, result, updated_at, v)"
                " VALUES (?, ?, 'pending', NULL, ?, ?) ON CONFLICT(key) DO NOTHING",
                (key, tool, time.time(), JOURNAL_FORMAT_VERSION),
            )
            if cur.rowcount == 1:
                return None
            row = self._db.execute("SELECT tool, state, result FROM tool_journal WHERE key = ?", (key,)).fetchone()
        tool_name, state, blob = row
        return IdempotencyEntry(key, tool_name, state, _result_from_json(blob) if blob else None)

    async def complete(self, key: str, result: ToolResult) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO tool_journal(key, tool, state, result, updated_at, v)"
                " VALUES (?, ?, 'done', ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET state='done', result=excluded.result,"
                " updated_at=excluded.updated_at",
                (key, result.name, _result_to_json(result), time.time(), JOURNAL_FORMAT_VERSION),
            )

    async def abort(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM tool_journal WHERE key = ? AND state = 'pending'", (key,))


_SCOPED: ContextVar[IdempotencyJournal | None] = ContextVar("bastion_tool_journal", default=None)


@contextmanager
def use_journal(journal: IdempotencyJournal | None) -> Generator[None]:
    """Make `journal` the one every `ToolRunner` uses for calls made inside this block (the
    agent loop passes the run's durable, shared journal this way). None restores each runner's
    own journal, e.g. for a nested run without durable state inside a journaled tool call."""
    token = _SCOPED.set(journal)
    try:
        yield
    finally:
        _SCOPED.reset(token)


def scoped_journal() -> IdempotencyJournal | None:
    """The journal set by the innermost `use_journal` block, if any."""
    return _SCOPED.get()


__all__ = [
    "IdempotencyEntry",
    "IdempotencyJournal",
    "MemoryJournal",
    "SqliteJournal",
    "idempotency_key",
    "scoped_journal",
    "use_journal",
]
