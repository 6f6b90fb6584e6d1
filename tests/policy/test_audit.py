"""The audit log is append-only, chained with a keyed hash and anchored outside the log: every
tampering fails `verify()`, which never raises. The chain tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import PolicyError, UserError
from bastion.policy import AuditEntry, AuditLog, StaticSecretProvider, verify_audit_log, verify_export
from bastion.policy._audit import GENESIS, entry_hash
from bastion.tools._tool import canonical_json

KEY = "k" * 64


def fill(log: AuditLog, n: int = 4) -> None:
    events = ["allow", "deny", "approval_requested", "approval_granted"]
    for i in range(n):
        log.append(
            AuditEntry(
                event=events[i % 4],  # type: ignore[arg-type]
                tool="transfer",
                tool_call_id=f"call_{i}",
                tenant="acme",
                agent="assistant",
                user="alice",
                run_id="run-1",
                args_hash="h",
                args={"amount": 10 * i},
                reasons=["cedar:grant-reversible"],
            )
        )


class Backend:
    """Opens the log and runs raw SQL against its storage, guards dropped (the attacker's view)."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where
        self.table = "audit_log" if kind == "sqlite" else "bastion_audit_log"

    def open(self, key: str = KEY) -> AuditLog:
        if self.kind == "sqlite":
            return AuditLog(self.where, key=key)
        return AuditLog.postgres(self.where, key=key)

    def tamper(self, *statements: str, params: tuple[Any, ...] = ()) -> None:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.where, isolation_level=None)
            try:
                db.execute("DROP TRIGGER IF EXISTS audit_no_update")
                db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
                for s in statements:
                    db.execute(s.replace("{t}", self.table), params if "?" in s else ())
            finally:
                db.close()
            return
        import psycopg

        with psycopg.connect(self.where, autocommit=True) as db:
            db.execute(f"DROP TRIGGER IF EXISTS {self.table}_append_only ON {self.table}")
            for s in statements:
                db.execute(s.replace("{t}", self.table).replace("?", "%s"), params if "?" in s else ())  # type: ignore[arg-type]

    def rows(self) -> list[tuple[Any, ...]]:
        with self.open() as log:
            return [(e.seq, e.body(), e.prev_hash, e.hash) for e in log.entries()]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "audit.db"))
    else:
        yield Backend("postgres", request.getfixturevalue("pg_url"))


def test_chain_verifies_and_survives_reopen(backend: Backend) -> None:
    with backend.open() as log:
        fill(log)
        assert log.verify().ok
    with backend.open() as log:
        fill(log)
        result = log.verify()
        entries = log.entries()
        anchor = log.anchor()
    assert result.ok and result.entries == 8 and result.anchor_seq == 8
    assert anchor is not None and (anchor.seq, anchor.hash) == (8, entries[-1].hash)
    assert [e.seq for e in entries] == list(range(1, 9))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))


def test_updates_and_deletes_are_refused(backend: Backend) -> None:
    with backend.open() as log:
        fill(log)
    if backend.kind == "sqlite":
        db = sqlite3.connect(backend.where)
        try:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute("UPDATE audit_log SET event = 'allow' WHERE seq = 2")
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute("DELETE FROM audit_log WHERE seq = 2")
        finally:
            db.close()
    else:
        import psycopg

        with psycopg.connect(backend.where, autocommit=True) as pg:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                pg.execute("UPDATE bastion_audit_log SET event = 'allow' WHERE seq = 2")
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                pg.execute("DELETE FROM bastion_audit_log WHERE seq = 2")


def _unkeyed_rewrite(backend: Backend, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Rewrite the whole table with edited bodies and a freshly computed plain SHA-256 chain:
    what an attacker without the key can do."""
    bodies = edit([body for _, body, _, _ in backend.rows()])
    statements = ["DELETE FROM {t}"]
    backend.tamper(*statements)
    prev = GENESIS
    for i, body in enumerate(bodies, 1):
        body["seq"] = i
        h = hashlib.sha256((prev + canonical_json(body)).encode()).hexdigest()
        backend.tamper(
            'INSERT INTO {t} (seq, ts, event, tenant, agent, "user", run_id, tool, tool_call_id, args_hash, body,'
            " prev_hash, hash, v) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            params=(
                i, body["ts"], body["event"], body["tenant"], body["agent"], body["user"], body["run_id"],
                body["tool"], body["tool_call_id"], body["args_hash"], json.dumps(body, sort_keys=True), prev, h,
                body["v"],
            ),
        )  # fmt: skip
        prev = h


def _set_event(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bodies[1]["event"] = "allow"
    return bodies


def _as_v1(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for b in bodies:
        b["v"] = 1
    bodies[1]["event"] = "allow"
    return bodies


TAMPERING: dict[str, Callable[[Backend], None]] = {
    "edit_column": lambda b: b.tamper("UPDATE {t} SET event = 'allow' WHERE seq = 2"),
    "delete_middle": lambda b: b.tamper("DELETE FROM {t} WHERE seq = 2"),
    "delete_last_row": lambda b: b.tamper("DELETE FROM {t} WHERE seq = 4"),
    "delete_last_two": lambda b: b.tamper("DELETE FROM {t} WHERE seq >= 3"),
    "delete_all_rows": lambda b: b.tamper("DELETE FROM {t}"),
    "flip_hash": lambda b: b.tamper(
        "UPDATE {t} SET hash = CASE WHEN substr(hash, 1, 1) = '0' THEN '1' ELSE '0' END || substr(hash, 2)"
        " WHERE seq = 3"
    ),
    "swap_rows": lambda b: b.tamper(
        "UPDATE {t} SET seq = -2 WHERE seq = 2",
        "UPDATE {t} SET seq = 2 WHERE seq = 3",
        "UPDATE {t} SET seq = 3 WHERE seq = -2",
    ),
    "edit_and_recompute_unkeyed_chain": lambda b: _unkeyed_rewrite(b, _set_event),
    "downgrade_to_legacy_unkeyed_chain": lambda b: _unkeyed_rewrite(b, _as_v1),
    "drop_last_and_recompute": lambda b: _unkeyed_rewrite(b, lambda bodies: bodies[:-1]),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_every_tampering_fails_verify(backend: Backend, tamper: str) -> None:
    with backend.open() as log:
        fill(log)
    TAMPERING[tamper](backend)
    with backend.open() as log:
        result = log.verify()
    assert not result.ok, tamper
    assert result.reason and result.problem == result.reason


def test_edit_body_with_a_chain_recomputed_under_another_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path, key=KEY) as log:
        fill(log)
    with AuditLog(path, key="attacker") as log:
        assert not log.verify().ok  # the attacker's key cannot vouch for the existing rows
    with AuditLog(path, key=KEY) as log:
        fill(log, 1)
        assert log.verify().ok


def _copy_sqlite(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def test_an_older_copy_of_the_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path, key=KEY) as log:
        fill(log, 2)
    _copy_sqlite(path, tmp_path / "old.db")
    with AuditLog(path, key=KEY) as log:
        fill(log, 2)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.db", path)
    result = verify_audit_log(path, key=KEY)
    assert not result.ok and "older copy" in result.reason and result.anchor_seq == 4


@pytest.mark.parametrize("damage", ["truncate_4k", "garbage", "empty_file", "deleted"])
def test_a_damaged_file_is_a_failed_result_never_an_exception(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path, key=KEY) as log:
        fill(log, 200)  # several pages, so 4 KiB cuts real data
    assert path.stat().st_size > 8192
    if damage == "truncate_4k":
        with path.open("r+b") as f:
            f.truncate(4096)
    elif damage == "garbage":
        path.write_bytes(b"not a database" * 1000)
    elif damage == "empty_file":
        path.write_bytes(b"")
    else:
        path.unlink()
    result = verify_audit_log(path, key=KEY)
    assert not result.ok and result.reason
    if damage in ("truncate_4k", "garbage"):
        with pytest.raises(PolicyError, match="bastion audit verify"):
            AuditLog(path, key=KEY)


def test_key_file_is_generated_once_0600_beside_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_SECRET_AUDIT_KEY", raising=False)
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        fill(log, 2)
    key_file = tmp_path / "audit.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = key_file.read_text()
    with AuditLog(path) as log:
        fill(log, 1)
        assert log.verify().ok
    assert key_file.read_text() == first
    assert verify_audit_log(path).ok
    key_file.write_text("f" * 64)  # a different key: the rows no longer verify
    assert not verify_audit_log(path).ok


def test_key_from_the_secret_provider_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provided = StaticSecretProvider({"audit_key": "from-provider"})
    with AuditLog(tmp_path / "a.db", secrets=provided) as log:
        fill(log, 2)
    assert not (tmp_path / "audit.key").exists()
    assert verify_audit_log(tmp_path / "a.db", secrets=provided).ok
    assert verify_audit_log(tmp_path / "a.db", key="from-provider").ok
    monkeypatch.setenv("BASTION_SECRET_AUDIT_KEY", "from-env")
    assert not verify_audit_log(tmp_path / "a.db").ok
    with AuditLog(tmp_path / "b.db") as log:
        fill(log, 1)
    assert verify_audit_log(tmp_path / "b.db", key="from-env").ok
    assert not (tmp_path / "audit.key").exists()


def test_postgres_needs_an_explicit_shared_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_SECRET_AUDIT_KEY", raising=False)
    with pytest.raises(UserError, match="BASTION_SECRET_AUDIT_KEY"):
        AuditLog.postgres("postgresql://127.0.0.1:1/none")


def test_a_legacy_unkeyed_log_is_adopted_once_and_keeps_verifying(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    db = sqlite3.connect(path, isolation_level=None)
    prev = GENESIS
    db.executescript(
        "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL, tenant TEXT NOT"
        ' NULL, agent TEXT NOT NULL, "user" TEXT, run_id TEXT, tool TEXT NOT NULL, tool_call_id TEXT NOT NULL,'
        " args_hash TEXT NOT NULL, body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, v INTEGER NOT NULL)"
    )
    for seq in (1, 2):
        e = AuditEntry(event="allow", tool="t", tool_call_id=f"c{seq}", seq=seq, ts=1.0)
        body = {**e.body(), "v": 1}
        h = entry_hash(prev, body)
        db.execute(
            "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (seq, 1.0, "allow", "default", "", None, None, "t", f"c{seq}", "", json.dumps(body), prev, h, 1),
        )
        prev = h
    db.close()
    with AuditLog(path, key=KEY) as log:  # the first open anchors the legacy head
        assert log.verify().ok
        fill(log, 2)  # new entries are keyed and chain onto the legacy ones
        result = log.verify()
    assert result.ok and result.entries == 4


def test_an_explicit_anchor_is_still_checked(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", key=KEY) as log:
        fill(log)
        assert log.verify(anchor=log.head()).ok
        assert not log.verify(anchor=(3, "0" * 64)).ok
        assert not log.verify(anchor=(9, "0" * 64)).ok


def test_export_carries_the_anchor_and_verifies_alone(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", key=KEY) as log:
        fill(log)
        out = io.StringIO()
        assert log.export(out) == 4
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0])["anchor"]["seq"] == 4
    assert verify_export(lines, key=KEY).ok
    assert not verify_export(lines, key="wrong").ok
    # drop the newest entry and fix up the header's count: the anchor still says 4
    header = json.loads(lines[0])
    header["entries"] = 3
    cut = verify_export([json.dumps(header), *lines[1:-1]], key=KEY)
    assert not cut.ok and "removed" in cut.reason
    edited = json.loads(lines[2])
    edited["body"]["event"] = "allow"
    assert not verify_export([lines[0], lines[1], json.dumps(edited), *lines[3:]], key=KEY).ok
    assert not verify_export(["{not json"], key=KEY).ok
    assert not verify_export([], key=KEY).ok


def test_bastion_audit_verify_and_export(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.cli._main import main

    monkeypatch.setenv("BASTION_SECRET_AUDIT_KEY", KEY)
    where = ["--database", backend.where] if backend.kind == "postgres" else ["--log", backend.where]
    with backend.open() as log:
        fill(log)
    assert main(["--home", str(tmp_path), "audit", "verify", *where]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    out = tmp_path / "audit.jsonl"
    assert main(["--home", str(tmp_path), "audit", "export", *where, "--out", str(out)]) == 0
    assert main(["--home", str(tmp_path), "audit", "verify", "--export", str(out)]) == 0
    TAMPERING["delete_last_row"](backend)
    capsys.readouterr()
    assert main(["--home", str(tmp_path), "audit", "verify", *where]) == 1
    failed = capsys.readouterr().out
    assert failed.startswith("FAILED") and "entry 4 was removed" in failed
    assert main(["--home", str(tmp_path / "nowhere"), "audit", "verify"]) == 1
    assert "no audit log" in capsys.readouterr().out


def test_opening_a_rolled_back_log_says_so(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    with backend.open() as log:
        fill(log)
    with caplog.at_level("ERROR", logger="bastion.policy.audit"), backend.open():
        pass
    assert not caplog.records
    TAMPERING["delete_last_two"](backend)
    with caplog.at_level("ERROR", logger="bastion.policy.audit"), backend.open() as log:
        fill(log, 6)  # appends go on, past the anchor's entry; the anchor must not follow them
        result = log.verify()
    assert not result.ok and result.anchor_seq == 4 and "differs" in result.reason
    assert "no longer matches its anchor" in caplog.text
