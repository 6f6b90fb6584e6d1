"""The audit log: every security decision, append-only and hash-chained in SQLite.

Each entry records who (tenant, agent, user, run), what (tool, arguments hash and redacted
arguments), why (the rule or policy ids) and when. Each entry's hash covers its content and
the previous entry's hash, so editing or deleting any row breaks the chain from there on and
`verify()` reports the first bad entry. Triggers reject UPDATE and DELETE; the chain catches
tampering that goes around them (raw file edits, dropped triggers).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bastion.tools._plain import to_plain
from bastion.tools._tool import canonical_json

AUDIT_FORMAT_VERSION = 1
GENESIS = "0" * 64

AuditEvent = Literal[
    "allow",
    "deny",
    "approval_requested",
    "approval_granted",
    "approval_rejected",
    "approval_edited",
    "redaction",
    "injection_signal",
    "tool_changed",
]


@dataclass(slots=True)
class AuditEntry:
    event: AuditEvent
    tool: str = ""
    tool_call_id: str = ""
    tenant: str = "default"
    agent: str = ""
    user: str | None = None
    run_id: str | None = None
    args_hash: str = ""
    args: Any = None  # redacted
    reasons: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    def body(self) -> dict[str, Any]:
        return {
            "v": AUDIT_FORMAT_VERSION,
            "seq": self.seq,
            "ts": self.ts,
            "event": self.event,
            "tool": self.tool,
            "tool_call_id": self.tool_call_id,
            "tenant": self.tenant,
            "agent": self.agent,
            "user": self.user,
            "run_id": self.run_id,
            "args_hash": self.args_hash,
            "args": self.args,
            "reasons": self.reasons,
            "detail": self.detail,
        }


def entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def args_hash(arguments: Any) -> str:
    return hashlib.sha256(canonical_json(to_plain(arguments)).encode()).hexdigest()


@dataclass(slots=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str = ""


class AuditLog:
    """SQLite-backed, hash-chained. `path=":memory:"` keeps it in process (tests)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS audit_log (
                seq INTEGER PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL,
                tenant TEXT NOT NULL, agent TEXT NOT NULL, user TEXT, run_id TEXT,
                tool TEXT NOT NULL, tool_call_id TEXT NOT NULL, args_hash TEXT NOT NULL,
                body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, v INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS audit_run ON audit_log(run_id, tool_call_id);
            CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
            CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
            """
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, entry: AuditEntry) -> AuditEntry:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
                entry.seq = (row[0] + 1) if row else 1
                entry.prev_hash = row[1] if row else GENESIS
                body = entry.body()
                entry.hash = entry_hash(entry.prev_hash, body)
                self._db.execute(
                    "INSERT INTO audit_log(seq, ts, event, tenant, agent, user, run_id, tool, tool_call_id,"
                    " args_hash, body, prev_hash, hash, v) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        entry.seq,
                        entry.ts,
                        entry.event,
                        entry.tenant,
                        entry.agent,
                        entry.user,
                        entry.run_id,
                        entry.tool,
                        entry.tool_call_id,
                        entry.args_hash,
                        json.dumps(body, sort_keys=True, ensure_ascii=False, default=str),
                        entry.prev_hash,
                        entry.hash,
                        AUDIT_FORMAT_VERSION,
                    ),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return entry

    def entries(self, *, run_id: str | None = None, event: str | None = None) -> list[AuditEntry]:
        sql = "SELECT body, prev_hash, hash FROM audit_log"
        where: list[str] = []
        params: list[Any] = []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if event is not None:
            where.append("event = ?")
            params.append(event)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", params).fetchall()
        out: list[AuditEntry] = []
        for blob, prev, h in rows:
            b = json.loads(blob)
            out.append(
                AuditEntry(
                    event=b["event"],
                    tool=b["tool"],
                    tool_call_id=b["tool_call_id"],
                    tenant=b["tenant"],
                    agent=b["agent"],
                    user=b["user"],
                    run_id=b["run_id"],
                    args_hash=b["args_hash"],
                    args=b["args"],
                    reasons=b["reasons"],
                    detail=b["detail"],
                    ts=b["ts"],
                    seq=b["seq"],
                    prev_hash=prev,
                    hash=h,
                )
            )
        return out

    def has(self, event: str, run_id: str, tool_call_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM audit_log WHERE run_id = ? AND tool_call_id = ? AND event = ? LIMIT 1",
                (run_id, tool_call_id, event),
            ).fetchone()
        return row is not None

    def head(self) -> tuple[int, str]:
        """(sequence, hash) of the newest entry: store it elsewhere now and then, so removing
        the newest rows (which leaves a valid shorter chain) is detectable too."""
        with self._lock:
            row = self._db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def verify(self, *, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Recompute the chain; report the first entry whose content, order or link is wrong.
        With `anchor` (an earlier `head()`), also check that entry is still there, unchanged."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, ts, event, tenant, agent, user, run_id, tool, tool_call_id, args_hash,"
                " body, prev_hash, hash FROM audit_log ORDER BY seq"
            ).fetchall()
        prev = GENESIS
        expected_seq = 1
        for seq, ts, event, tenant, agent, user, run_id, tool, call_id, a_hash, blob, prev_hash, h in rows:
            try:
                body = json.loads(blob)
            except ValueError:
                return VerifyResult(False, len(rows), seq, "entry body is not valid JSON")
            columns = {
                "seq": seq,
                "ts": ts,
                "event": event,
                "tenant": tenant,
                "agent": agent,
                "user": user,
                "run_id": run_id,
                "tool": tool,
                "tool_call_id": call_id,
                "args_hash": a_hash,
            }
            if seq != expected_seq:
                return VerifyResult(False, len(rows), seq, f"expected entry {expected_seq}: entries removed")
            if any(body.get(k) != v for k, v in columns.items()):
                return VerifyResult(False, len(rows), seq, "indexed columns differ from the hashed body")
            if prev_hash != prev:
                return VerifyResult(False, len(rows), seq, "previous-hash link broken")
            if entry_hash(prev, body) != h:
                return VerifyResult(False, len(rows), seq, "entry content does not match its hash")
            prev = h
            expected_seq += 1
        if anchor is not None and anchor[0] > 0:
            seq, h = anchor
            if seq > len(rows):
                return VerifyResult(False, len(rows), seq, f"entries from {len(rows) + 1} to {seq} were removed")
            if rows[seq - 1][-1] != h:
                return VerifyResult(False, len(rows), seq, "entry differs from the stored anchor")
        return VerifyResult(True, len(rows))


__all__ = ["AuditEntry", "AuditEvent", "AuditLog", "VerifyResult", "args_hash", "entry_hash"]
