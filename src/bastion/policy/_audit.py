"""The audit log: every security decision, append-only and chained with a keyed hash.

Each entry records who (tenant, agent, user, run), what (tool, arguments hash and redacted
arguments), why (the rule or policy ids) and when. Each entry's hash is an HMAC-SHA256, under
the audit key, of its content and the previous entry's hash: without the key nobody can edit a
row and recompute the chain. Triggers reject UPDATE and DELETE; the chain catches tampering
that goes around them (raw file edits, dropped triggers).

A valid shorter chain is still a valid chain, so after every append the log also writes an
*anchor* (newest sequence number, its hash, and an HMAC over both) somewhere else: the
`bastion_audit_anchor` table of the run store (`<dir>/runs.db` next to an SQLite log, the same
PostgreSQL database for `AuditLog.postgres`). `verify()` checks the chain against the anchor,
so deleted newest rows, an emptied or truncated file, or an older copy of the file all fail.

The key comes from the secret provider (`audit_key`, i.e. `BASTION_SECRET_AUDIT_KEY` by
default); when none is configured, a random key is generated once into `<dir>/audit.key`
(mode 0600). What this does not stop: someone holding the key, or someone who can rewrite
both the log and the anchor store back to an older consistent pair (keep exports elsewhere).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from bastion.errors import PolicyError, UserError
from bastion.policy._secrets import EnvSecretProvider, SecretProvider
from bastion.tools import canonical_json, to_plain

# v1: plain SHA-256 chain (read as a legacy prefix only); v2: HMAC-SHA256 under the audit key.
AUDIT_FORMAT_VERSION = 2
GENESIS = "0" * 64
KEY_SECRET = "audit_key"
KEY_FILE = "audit.key"
EXPORT_FORMAT = "bastion-audit-export"
_log = logging.getLogger("bastion.policy.audit")

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
    "outcome_unknown",
]

_COLUMNS = ("seq", "ts", "event", "tenant", "agent", "user", "run_id", "tool", "tool_call_id", "args_hash")


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


def entry_hash(prev_hash: str, body: dict[str, Any], key: bytes | None = None) -> str:
    """The chain link of one entry: HMAC-SHA256 under `key`, or plain SHA-256 (format v1)."""
    message = (prev_hash + canonical_json(body)).encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def args_hash(arguments: Any) -> str:
    return hashlib.sha256(canonical_json(to_plain(arguments)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditAnchor:
    """The newest entry as last recorded outside the log, with an HMAC so it cannot be forged."""

    seq: int
    hash: str
    mac: str

    @staticmethod
    def make(key: bytes, seq: int, hash: str) -> AuditAnchor:
        return AuditAnchor(seq, hash, _anchor_mac(key, seq, hash))

    def valid(self, key: bytes) -> bool:
        return hmac.compare_digest(self.mac, _anchor_mac(key, self.seq, self.hash))


def _anchor_mac(key: bytes, seq: int, hash: str) -> str:
    return hmac.new(key, f"bastion-audit-anchor|{seq}|{hash}".encode(), hashlib.sha256).hexdigest()


@dataclass(slots=True)
class VerifyResult:
    """`ok` or the first problem found: `reason` says what is wrong, `first_bad_seq` where."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str = ""
    anchor_seq: int | None = None

    @property
    def problem(self) -> str:
        return self.reason


# --- the key ---------------------------------------------------------------------------------


def _from_provider(provider: SecretProvider, name: str) -> str | None:
    # A fresh loop in a helper thread: constructors are sync and may run inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, provider.get(name)).result(timeout=30)  # type: ignore[arg-type]


def audit_key(
    directory: str | Path | None, secrets_provider: SecretProvider | None = None, *, create: bool = True
) -> bytes:
    """The audit key: the `audit_key` secret if configured (env `BASTION_SECRET_AUDIT_KEY` by
    default), else `<directory>/audit.key`, generated once with mode 0600. In memory without a
    directory: a random key for this process."""
    value = _from_provider(secrets_provider or EnvSecretProvider(), KEY_SECRET)
    if value:
        return value.encode()
    if directory is None:
        return secrets.token_bytes(32)
    path = Path(directory) / KEY_FILE
    for _ in range(50):
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text().strip()
            if text:
                return text.encode()
        if not create:
            raise PolicyError(f"no audit key: {path} does not exist and BASTION_SECRET_AUDIT_KEY is not set")
        Path(directory).mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # atomic: two processes starting at once agree on one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    raise PolicyError(f"cannot read the audit key {path}; delete the empty file or set BASTION_SECRET_AUDIT_KEY")


# --- storage ---------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL,
    tenant TEXT NOT NULL, agent TEXT NOT NULL, "user" TEXT, run_id TEXT,
    tool TEXT NOT NULL, tool_call_id TEXT NOT NULL, args_hash TEXT NOT NULL,
    body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, v INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_run ON audit_log(run_id, tool_call_id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_ANCHOR_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bastion_audit_anchor (log TEXT PRIMARY KEY, seq BIGINT NOT NULL, "
    "hash TEXT NOT NULL, mac TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
)
# Concurrent appenders may save out of order: never move the anchor backwards.
_ANCHOR_UPSERT = (
    "INSERT INTO bastion_audit_anchor (log, seq, hash, mac, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (log) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, "
    "updated_at = excluded.updated_at WHERE excluded.seq > bastion_audit_anchor.seq"
)


def _pg_schema(table: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (seq BIGINT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, "
        'event TEXT NOT NULL, tenant TEXT NOT NULL, agent TEXT NOT NULL, "user" TEXT, run_id TEXT, '
        "tool TEXT NOT NULL, tool_call_id TEXT NOT NULL, args_hash TEXT NOT NULL, body TEXT NOT NULL, "
        "prev_hash TEXT NOT NULL, hash TEXT NOT NULL, v INTEGER NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {table}_run ON {table} (run_id, tool_call_id)",
        "CREATE OR REPLACE FUNCTION bastion_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$",
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION bastion_audit_append_only()",
        _ANCHOR_SCHEMA,
    ]


class _SQLiteAnchors:
    """The anchor row in another SQLite file (by default the run store next to the log)."""

    def __init__(self, path: str, log: str) -> None:
        self.path, self.log = path, log
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                # No fsync per anchor: after a power cut an anchor may lag the log, which verify
                # accepts; it must never lead it, and it cannot (it is written after the commit).
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_ANCHOR_SCHEMA)
            self._conn = conn
        return self._conn

    def load(self) -> AuditAnchor | None:
        if self.path != ":memory:" and self._conn is None and not Path(self.path).exists():
            return None
        row = (
            self._connect()
            .execute("SELECT seq, hash, mac FROM bastion_audit_anchor WHERE log = ?", (self.log,))
            .fetchone()
        )
        return AuditAnchor(int(row[0]), str(row[1]), str(row[2])) if row else None

    def save(self, anchor: AuditAnchor) -> None:
        self._connect().execute(_ANCHOR_UPSERT, (self.log, anchor.seq, anchor.hash, anchor.mac, time.time()))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _row_values(entry: AuditEntry, body: dict[str, Any]) -> tuple[Any, ...]:
    return (
        entry.seq, entry.ts, entry.event, entry.tenant, entry.agent, entry.user, entry.run_id, entry.tool,
        entry.tool_call_id, entry.args_hash, json.dumps(body, sort_keys=True, ensure_ascii=False, default=str),
        entry.prev_hash, entry.hash, AUDIT_FORMAT_VERSION,
    )  # fmt: skip


_SELECT_ALL = (
    'SELECT seq, ts, event, tenant, agent, "user", run_id, tool, tool_call_id, args_hash, body, prev_hash, hash'
    " FROM {table} ORDER BY seq"
)


class AuditLog:
    """Append-only, HMAC-chained and anchored. `path=":memory:"` keeps it in process (tests);
    `AuditLog.postgres(url)` keeps it in a shared PostgreSQL (scale-out).

    `key` overrides the audit key (bytes or text); `secrets` is where to look it up;
    `anchor_path` is the SQLite file holding the anchor (default: `runs.db` beside the log)."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        key: bytes | str | None = None,
        secrets: SecretProvider | None = None,
        anchor_path: str | Path | None = None,
    ) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._table = "audit_log"
        self._pg = False
        self._complained = False
        directory = None if self.path == ":memory:" else Path(self.path).resolve().parent
        self._key = key.encode() if isinstance(key, str) else key if key is not None else audit_key(directory, secrets)
        if anchor_path is None:
            anchor_path = ":memory:" if directory is None else directory / "runs.db"
        self._anchors: _SQLiteAnchors | None = _SQLiteAnchors(str(anchor_path), Path(self.path).name)
        self._db: Any = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        try:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SQLITE_SCHEMA)
            self._adopt_legacy()
        except sqlite3.DatabaseError as e:
            self.close()
            raise PolicyError(
                f"the audit log {self.path} cannot be opened ({e}); run `bastion audit verify` to see what is "
                "wrong, move the file aside and restore it from a backup or an export"
            ) from None

    @classmethod
    def postgres(
        cls, url: str, *, key: bytes | str | None = None, secrets: SecretProvider | None = None, name: str = "log"
    ) -> AuditLog:
        """The log in PostgreSQL (table `bastion_audit_<name>`); the anchor is written in the same
        transaction to `bastion_audit_anchor`, and appends from many processes are serialised."""
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name):
            raise UserError(f"audit log name {name!r} must be lower-case letters, digits and '_'")
        if key is None and _from_provider(secrets or EnvSecretProvider(), KEY_SECRET) is None:
            raise UserError(
                "a PostgreSQL audit log needs a key shared by every process: set BASTION_SECRET_AUDIT_KEY "
                "(or pass secrets=/key=), e.g. to `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - the extra is installed in CI
            from bastion.errors import MissingExtraError

            raise MissingExtraError("postgres", "psycopg", "AuditLog.postgres") from e
        self = cls.__new__(cls)
        self.path = url
        self._lock = threading.Lock()
        self._table = f"bastion_audit_{name}"
        self._pg = True
        self._complained = False
        self._key = key.encode() if isinstance(key, str) else key if key is not None else audit_key(None, secrets)
        self._anchors = None
        self._db = psycopg.connect(url, autocommit=True)
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(hashtext('bastion_audit_schema'))")
            for stmt in _pg_schema(self._table):
                self._db.execute(stmt)
        self._adopt_legacy()
        return self

    # -- plumbing ------------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        sql = sql.replace("{table}", self._table)
        return sql.replace("?", "%s") if self._pg else sql

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(self._sql(sql), tuple(params)).fetchall())

    def _load_anchor(self) -> AuditAnchor | None:
        if self._anchors is not None:
            return self._anchors.load()
        row = self._q("SELECT seq, hash, mac FROM bastion_audit_anchor WHERE log = ?", (self._table,))
        return AuditAnchor(int(row[0][0]), str(row[0][1]), str(row[0][2])) if row else None

    def _adopt_legacy(self) -> None:
        """Anchor a log written before anchors existed (its newest entry is format v1), once; and
        say loudly at open when the log no longer reaches its anchor (one indexed read, not a
        full `verify()`): appends go on, the evidence stays for `bastion audit verify`."""
        with self._lock:
            row = self._q("SELECT seq, hash, v FROM {table} ORDER BY seq DESC LIMIT 1")
        stored = self._load_anchor()
        if row and int(row[0][2]) == 1 and stored is None and self._anchors is not None:
            self._anchors.save(AuditAnchor.make(self._key, int(row[0][0]), str(row[0][1])))
        elif stored is not None:
            with self._lock:
                self._continues_anchor(stored.seq + 1)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._anchors is not None:
                self._anchors.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def append(self, entry: AuditEntry) -> AuditEntry:
        key = self._key
        with self._lock:
            self._db.execute("BEGIN" if self._pg else "BEGIN IMMEDIATE")
            try:
                if self._pg:
                    self._db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._table,))
                row = self._q("SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1")
                entry.seq = int(row[0][0]) + 1 if row else 1
                entry.prev_hash = str(row[0][1]) if row else GENESIS
                body = entry.body()
                entry.hash = entry_hash(entry.prev_hash, body, key)
                self._db.execute(
                    self._sql(
                        'INSERT INTO {table} (seq, ts, event, tenant, agent, "user", run_id, tool, tool_call_id,'
                        " args_hash, body, prev_hash, hash, v) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    ),
                    _row_values(entry, body),
                )
                anchor = AuditAnchor.make(key, entry.seq, entry.hash)
                if self._pg and self._continues_anchor(entry.seq):
                    self._db.execute(
                        self._sql(_ANCHOR_UPSERT), (self._table, anchor.seq, anchor.hash, anchor.mac, time.time())
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # After the commit: an anchor may lag the log (a crash in between), never lead it.
            if self._anchors is not None and self._continues_anchor(entry.seq):
                self._anchors.save(anchor)
        return entry

    def _continues_anchor(self, seq: int) -> bool:
        """Whether the log still runs through the stored anchor. If it does not (rows were removed
        or rewritten under us), the anchor stays where it is: moving it past the damage would
        launder the evidence. Two indexed reads per append."""
        stored = self._load_anchor()
        if stored is None:
            return True
        at = self._q("SELECT hash FROM {table} WHERE seq = ?", (stored.seq,))
        if stored.seq < seq and at and str(at[0][0]) == stored.hash:
            return True
        if not self._complained:
            self._complained = True
            _log.error(
                "the audit log %s no longer matches its anchor (entry %d): it was rolled back or rewritten; the "
                "anchor stays put. Run `bastion audit verify` and restore the log from a backup or an export",
                self.path,
                stored.seq,
            )
        return False

    # -- reading -------------------------------------------------------------------------------

    def entries(self, *, run_id: str | None = None, event: str | None = None) -> list[AuditEntry]:
        sql = "SELECT body, prev_hash, hash FROM {table}"
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
            rows = self._q(sql + " ORDER BY seq", params)
        return [_entry(json.loads(blob), prev, h) for blob, prev, h in rows]

    def has(self, event: str, run_id: str, tool_call_id: str) -> bool:
        with self._lock:
            row = self._q(
                "SELECT 1 FROM {table} WHERE run_id = ? AND tool_call_id = ? AND event = ? LIMIT 1",
                (run_id, tool_call_id, event),
            )
        return bool(row)

    def head(self) -> tuple[int, str]:
        """(sequence, hash) of the newest entry."""
        with self._lock:
            row = self._q("SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1")
        return (int(row[0][0]), str(row[0][1])) if row else (0, GENESIS)

    def anchor(self) -> AuditAnchor | None:
        """The anchor as stored outside the log (None before the first entry)."""
        with self._lock:
            return self._load_anchor()

    def verify(self, *, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Recompute the chain and check it against the stored anchor (and `anchor`, an earlier
        `head()`, if given). Never raises: an unreadable log is a failed result."""
        try:
            with self._lock:
                rows = self._q(_SELECT_ALL)
                stored = self._load_anchor()
        except Exception as e:
            return VerifyResult(False, 0, None, f"the audit log cannot be read: {e}")
        return check_chain(rows, self._key, stored, extra=anchor)

    def export(self, out: TextIO) -> int:
        """Write the log as JSON lines: a header with the anchor, then one line per entry. Returns
        the number of entries. `verify_export` checks such a file on its own."""
        with self._lock:
            rows = self._q(_SELECT_ALL)
            stored = self._load_anchor()
        head = AuditAnchor.make(self._key, int(rows[-1][0]), str(rows[-1][-1])) if rows else None
        anchor = stored if stored is not None and head is not None and stored.seq > head.seq else head
        header: dict[str, Any] = {"format": EXPORT_FORMAT, "v": 1, "entries": len(rows), "exported_at": time.time()}
        header["anchor"] = None if anchor is None else {"seq": anchor.seq, "hash": anchor.hash, "mac": anchor.mac}
        out.write(json.dumps(header) + "\n")
        for row in rows:
            out.write(json.dumps({"body": json.loads(row[10]), "prev_hash": row[11], "hash": row[12]}) + "\n")
        return len(rows)


def _entry(b: dict[str, Any], prev: str, h: str) -> AuditEntry:
    return AuditEntry(
        event=b["event"], tool=b["tool"], tool_call_id=b["tool_call_id"], tenant=b["tenant"], agent=b["agent"],
        user=b["user"], run_id=b["run_id"], args_hash=b["args_hash"], args=b["args"], reasons=b["reasons"],
        detail=b["detail"], ts=b["ts"], seq=b["seq"], prev_hash=prev, hash=h,
    )  # fmt: skip


def check_chain(
    rows: Sequence[Sequence[Any]],
    key: bytes,
    stored: AuditAnchor | None,
    *,
    extra: tuple[int, str] | None = None,
) -> VerifyResult:
    """Verify rows `(seq, *indexed columns, body json, prev_hash, hash)` (indexed columns may be
    None: exported logs have none) against `stored`, the anchor kept outside the log."""
    n = len(rows)

    def fail(seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, n, seq, reason, stored.seq if stored else None)

    try:
        prev, expected, keyed_seen = GENESIS, 1, False
        for row in rows:
            seq, blob, prev_hash, h = row[0], row[10], row[11], row[12]
            try:
                body = json.loads(blob) if isinstance(blob, str) else blob
                if not isinstance(body, dict):
                    raise ValueError(blob)
            except ValueError:
                return fail(seq, f"entry {seq}: the body is not valid JSON")
            if seq != expected:
                return fail(seq, f"expected entry {expected}, found {seq}: entries were removed or reordered")
            if row[1] is not None and any(body.get(k) != v for k, v in zip(_COLUMNS, row[:10], strict=True)):
                return fail(seq, f"entry {seq}: the indexed columns differ from the hashed body")
            if prev_hash != prev:
                return fail(seq, f"entry {seq}: the link to the previous entry is broken")
            version = body.get("v")
            if version == 1 and not keyed_seen:
                ok = hmac.compare_digest(entry_hash(prev, body), str(h))
            elif version == AUDIT_FORMAT_VERSION:
                keyed_seen = True
                ok = hmac.compare_digest(entry_hash(prev, body, key), str(h))
            else:
                return fail(seq, f"entry {seq}: format version {version!r} is not allowed here")
            if not ok:
                return fail(
                    seq, f"entry {seq}: its content does not match its keyed hash (edited, or the audit key changed)"
                )
            prev, expected = str(h), expected + 1
        for label, anchor in (("stored anchor", stored), ("given anchor", extra)):
            if anchor is None:
                continue
            seq, h = (anchor.seq, anchor.hash) if isinstance(anchor, AuditAnchor) else anchor
            if isinstance(anchor, AuditAnchor) and not anchor.valid(key):
                return fail(seq, f"the {label} fails its MAC check (forged, or the audit key changed)")
            if seq > n:
                gone = (
                    "every entry was removed"
                    if n == 0
                    else f"entry {seq} was removed"
                    if seq == n + 1
                    else f"entries {n + 1} to {seq} were removed"
                )
                return fail(seq, f"the log ends at entry {n} but the {label} is at {seq}: {gone} "
                                 "(or the file was replaced by an older copy)")  # fmt: skip
            if seq > 0 and str(rows[seq - 1][12]) != h:
                return fail(seq, f"entry {seq} differs from the {label}: the log was rewritten")
        if stored is None and n > 0:
            return fail(None, f"the log has {n} entries but no anchor: the anchor store was removed or this "
                              "log was copied from elsewhere")  # fmt: skip
        return VerifyResult(True, n, None, "", stored.seq if stored else None)
    except Exception as e:  # a malformed row must never turn into a crash of the verifier
        return fail(None, f"the log is malformed: {type(e).__name__}: {e}")


def verify_audit_log(
    path: str | Path,
    *,
    key: bytes | str | None = None,
    secrets: SecretProvider | None = None,
    anchor_path: str | Path | None = None,
) -> VerifyResult:
    """Verify an SQLite audit log file without modifying it (or creating it). Never raises."""
    file = Path(path)
    try:
        anchors = _SQLiteAnchors(str(anchor_path or file.resolve().parent / "runs.db"), file.name)
        try:
            stored = anchors.load()
        finally:
            anchors.close()
    except Exception as e:
        return VerifyResult(False, 0, None, f"the anchor cannot be read: {e}")
    if not file.exists() and stored is None:
        return VerifyResult(False, 0, None, f"no audit log at {file} (and no anchor for one): check --home / --log")
    try:
        if isinstance(key, str):
            k = key.encode()
        else:
            k = key if key is not None else audit_key(file.resolve().parent, secrets, create=False)
    except Exception as e:
        return VerifyResult(False, 0, None, f"the audit key cannot be read: {e}", stored.seq if stored else None)
    if not file.exists():
        return check_chain([], k, stored)
    try:
        db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute(_SELECT_ALL.replace("{table}", "audit_log")).fetchall()
        finally:
            db.close()
    except Exception as e:
        return VerifyResult(False, 0, None, f"the audit log cannot be read: {type(e).__name__}: {e}",
                            stored.seq if stored else None)  # fmt: skip
    return check_chain(rows, k, stored)


def verify_export(lines: Iterable[str], *, key: bytes | str) -> VerifyResult:
    """Verify an `AuditLog.export` file against the anchor in its own header. Never raises."""
    k = key.encode() if isinstance(key, str) else key
    try:
        it = iter(lines)
        header = json.loads(next(it))
        if header.get("format") != EXPORT_FORMAT:
            return VerifyResult(False, 0, None, "not a Bastion audit export (the first line is not its header)")
        a = header.get("anchor")
        stored = AuditAnchor(int(a["seq"]), str(a["hash"]), str(a["mac"])) if a else None
        rows: list[tuple[Any, ...]] = []
        for line in it:
            if line.strip():
                d = json.loads(line)
                rows.append((d["body"].get("seq"), *([None] * 9), d["body"], d["prev_hash"], d["hash"]))
    except Exception as e:
        return VerifyResult(False, 0, None, f"the export is malformed: {type(e).__name__}: {e}")
    if stored is None and rows:
        return VerifyResult(False, len(rows), None, "the export has entries but no anchor in its header")
    if header.get("entries") != len(rows):
        return VerifyResult(
            False, len(rows), None, f"the header promises {header.get('entries')} entries, found {len(rows)}"
        )
    return check_chain(rows, k, stored)


__all__ = [
    "AuditAnchor",
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "VerifyResult",
    "args_hash",
    "audit_key",
    "check_chain",
    "entry_hash",
    "verify_audit_log",
    "verify_export",
]
