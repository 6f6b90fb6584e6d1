"""The audit log is append-only and hash-chained: tampering is detected."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import pytest

from bastion.policy import AuditEntry, AuditLog


def fill(log: AuditLog) -> None:
    for i, event in enumerate(["allow", "deny", "approval_requested", "approval_granted"]):
        log.append(
            AuditEntry(
                event=event,  # type: ignore[arg-type]
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


def test_chain_verifies_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        fill(log)
        assert log.verify().ok
    with AuditLog(path) as log:
        fill(log)
        result = log.verify()
        entries = log.entries()
    assert result.ok and result.entries == 8
    assert [e.seq for e in entries] == list(range(1, 9))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))


def test_updates_and_deletes_are_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db") as log:
        fill(log)
    db = sqlite3.connect(tmp_path / "a.db")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE audit_log SET event = 'allow' WHERE seq = 2")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit_log WHERE seq = 2")
    finally:
        db.close()


@pytest.mark.parametrize("tamper", ["edit_body", "edit_column", "delete_middle", "reorder_hash"])
def test_tampering_with_raw_sql_is_detected(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        fill(log)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # a determined attacker drops the guards first
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("DROP TRIGGER audit_no_delete")
        if tamper == "edit_body":
            body = json.loads(db.execute("SELECT body FROM audit_log WHERE seq = 2").fetchone()[0])
            body["event"] = "allow"
            db.execute("UPDATE audit_log SET body = ? WHERE seq = 2", (json.dumps(body, sort_keys=True),))
        elif tamper == "edit_column":
            db.execute("UPDATE audit_log SET event = 'allow' WHERE seq = 2")
        elif tamper == "delete_middle":
            db.execute("DELETE FROM audit_log WHERE seq = 2")
        else:
            # flip the first hex digit (always a real change)
            db.execute(
                "UPDATE audit_log SET hash = CASE WHEN substr(hash, 1, 1) = '0' THEN '1' ELSE '0' END"
                " || substr(hash, 2) WHERE seq = 3"
            )
    finally:
        db.close()
    with AuditLog(path) as log:
        result = log.verify()
    assert not result.ok
    assert result.first_bad_seq in (2, 3)
    assert result.problem


def test_truncation_detected_against_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        fill(log)
        anchor = log.head()
        assert anchor[0] == 4 and log.verify(anchor=anchor).ok
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit_log WHERE seq >= 3")
    finally:
        db.close()
    with AuditLog(path) as log:
        assert log.verify().ok  # a shorter chain is still a valid chain...
        result = log.verify(anchor=anchor)  # ...but not against the anchor
    assert not result.ok and "removed" in result.problem
