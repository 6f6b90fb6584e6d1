"""Tampering with the audit log of a real `bastion serve` after real runs: every attack makes
`bastion audit verify` exit 1 with a reason, on the deployment's home exactly as it was left."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

APP = f"{Path(__file__).with_name('apps.py')}:build"
AUDIT_APP = f"{Path(__file__).with_name('audit_app.py')}:build"
ServerFactory = Callable[..., Any]


def bastion(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bastion.cli", "--home", str(home), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("BASTION_HOME", "BASTION_SECRET_AUDIT_KEY")}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def pay(url: str, amount: int) -> dict[str, Any]:
    body = {"agent": "bank", "input": f"pay {amount} to DE89370400440532013000", "wait": True}
    req = urllib.request.Request(f"{url}/v1/runs", data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", "Bearer key-a-op")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        run = json.loads(r.read())
    if run["status"] == "interrupted":  # approve, so the log also holds the human's decision
        req = urllib.request.Request(
            f"{url}/v1/approvals/{run['id']}", data=json.dumps({"decision": "approve"}).encode(), method="POST"
        )
        req.add_header("Authorization", "Bearer key-a-op")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as r:
            run = json.loads(r.read())
    return run


def sql(home: Path, *statements: str, params: tuple[Any, ...] = ()) -> None:
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    try:
        db.execute("DROP TRIGGER IF EXISTS audit_no_update")  # an attacker drops the guards first
        db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for s in statements:
            db.execute(s, params if "?" in s else ())
    finally:
        db.close()


def recompute_unkeyed(home: Path) -> None:
    """Edit the first entry, then rewrite every hash as a plain SHA-256 chain (no key)."""
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    rows = db.execute("SELECT seq, body FROM audit_log ORDER BY seq").fetchall()
    db.close()
    prev = "0" * 64
    for seq, blob in rows:
        body = json.loads(blob)
        if seq == 1:
            body["event"] = "deny"
        h = hashlib.sha256(
            (prev + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)).encode()
        )
        sql(home, "UPDATE audit_log SET body = ?, event = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            params=(json.dumps(body, sort_keys=True), body["event"], prev, h.hexdigest(), seq))  # fmt: skip
        prev = h.hexdigest()


def delete_anchor(home: Path) -> None:
    db = sqlite3.connect(home / "runs.db", isolation_level=None)
    try:
        db.execute("DELETE FROM bastion_audit_anchor")
    finally:
        db.close()


def truncate_4k(home: Path) -> None:
    with (home / "audit.db").open("r+b") as f:
        f.truncate(4096)


TAMPERING: dict[str, Callable[[Path], None]] = {
    "delete the last row": lambda h: sql(h, "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)"),
    "delete all rows": lambda h: sql(h, "DELETE FROM audit_log"),
    "truncate the file to 4 KiB": truncate_4k,
    "edit a row and recompute an unkeyed chain": recompute_unkeyed,
    "swap two rows": lambda h: sql(
        h,
        "UPDATE audit_log SET seq = -1 WHERE seq = 1",
        "UPDATE audit_log SET seq = 1 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = -1",
    ),
    "delete the file": lambda h: (h / "audit.db").unlink(),
    "delete the anchor": delete_anchor,
}


def test_every_tampering_fails_bastion_audit_verify(bastion_server: ServerFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    served = bastion_server(APP, home=home)
    pay(served.url, 10)
    live = bastion("audit", "verify", home=home)  # while the server is up (WAL mode)
    assert live.returncode == 0 and live.stdout.startswith("ok"), live.stdout + live.stderr
    served.stop()
    older = tmp_path / "older"
    shutil.copytree(home, older)

    served = bastion_server(APP, home=home)  # a restart keeps appending to the same chain
    pay(served.url, 20)
    served.stop()
    good = bastion("audit", "verify", home=home)
    assert good.returncode == 0, good.stdout + good.stderr
    n = int(good.stdout.split(": ")[2].split()[0])
    assert n >= 2 and "anchored" in good.stdout
    assert (home / "audit.key").stat().st_mode & 0o777 == 0o600

    failures: dict[str, str] = {}
    for name, attack in TAMPERING.items():
        copy = tmp_path / f"attack-{len(failures)}"
        shutil.copytree(home, copy)
        attack(copy)
        result = bastion("audit", "verify", home=copy)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert result.stdout.startswith("FAILED"), (name, result.stdout)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        failures[name] = result.stdout
    assert len(failures) == len(TAMPERING)
    # a server refuses to start on a log it cannot read, and says what to run
    with pytest.raises(RuntimeError, match="bastion audit verify"):
        bastion_server(APP, home=tmp_path / f"attack-{list(TAMPERING).index('truncate the file to 4 KiB')}")

    # the older copy of the file put back in place of the current one
    copy = tmp_path / "attack-older"
    shutil.copytree(home, copy)
    for suffix in ("", "-wal", "-shm"):
        (copy / f"audit.db{suffix}").unlink(missing_ok=True)
    shutil.copy(older / "audit.db", copy / "audit.db")
    result = bastion("audit", "verify", home=copy)
    assert result.returncode == 1 and "older copy" in result.stdout, result.stdout


def test_an_export_verifies_on_its_own_and_catches_a_cut(bastion_server: ServerFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    served = bastion_server(APP, home=home)
    pay(served.url, 10)
    pay(served.url, 11)
    served.stop()
    out = tmp_path / "audit.jsonl"
    exported = bastion("audit", "export", "--out", str(out), home=home)
    assert exported.returncode == 0, exported.stderr
    assert bastion("audit", "verify", "--export", str(out), home=home).returncode == 0
    lines = out.read_text().splitlines()
    header = json.loads(lines[0])
    header["entries"] -= 1
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join([json.dumps(header), *lines[1:-1]]) + "\n")
    result = bastion("audit", "verify", "--export", str(cut), home=home)
    assert result.returncode == 1 and "removed" in result.stdout, result.stdout


@pytest.mark.postgres
def test_the_audit_log_of_a_scaled_out_deployment_lives_in_postgres(
    bastion_server: ServerFactory, tmp_path: Path, pg_url: str
) -> None:
    import psycopg

    key = {"BASTION_SECRET_AUDIT_KEY": "a-shared-audit-key-for-every-process"}
    served = bastion_server(AUDIT_APP, database=pg_url, env=key, home=tmp_path / "api-1")
    pay(served.url, 10)
    served.stop()
    other = bastion_server(AUDIT_APP, database=pg_url, env=key, home=tmp_path / "api-2")  # another API server
    pay(other.url, 11)
    other.stop()
    verify = [sys.executable, "-m", "bastion.cli", "audit", "verify", "--database", pg_url]
    env = {**os.environ, **key}
    good = subprocess.run(verify, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert good.returncode == 0 and "2 entries" in good.stdout, good.stdout + good.stderr
    assert not (tmp_path / "api-1" / "audit.db").exists()  # nothing on local disk
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("DROP TRIGGER bastion_audit_log_append_only ON bastion_audit_log")
        db.execute("DELETE FROM bastion_audit_log WHERE seq = 2")
    bad = subprocess.run(verify, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "entry 2 was removed" in bad.stdout, bad.stdout
