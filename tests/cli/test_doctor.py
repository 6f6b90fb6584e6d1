"""`bastion doctor --database URL` against a real PostgreSQL: connectivity, schema versions
and pgvector, each reported on its own row; a schema newer than this Bastion fails the check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from bastion.tracing import PostgresTraceStore
from bastion.tracing._store_pg import SCHEMA_VERSION


def doctor(home: Path, url: str) -> tuple[int, dict[str, tuple[str, str]]]:
    out = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "--home", str(home), "doctor", "--database", url],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "400"},  # one table row per line
    )  # fmt: skip
    rows: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 3:
            rows[cells[0]] = (cells[1], cells[2])
    return out.returncode, rows


@pytest.mark.postgres
def test_doctor_reports_connectivity_schema_and_pgvector(pg_url: str, tmp_path: Path) -> None:
    _, rows = doctor(tmp_path, pg_url)
    assert rows["database"][0] == "yes" and "reachable" in rows["database"][1]
    assert rows["schema"] == ("yes", "empty: the first `bastion serve` or `bastion worker` creates the schema")
    assert rows["pgvector"][0] == "yes" and "available, not yet created" in rows["pgvector"][1]

    PostgresTraceStore(pg_url).close()  # what the first server or worker does
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    _, rows = doctor(tmp_path, pg_url)
    assert rows["schema"] == ("yes", f"traces v{SCHEMA_VERSION}/{SCHEMA_VERSION}; runs: not created yet")
    assert re.fullmatch(r"vector [\d.]+ installed", rows["pgvector"][1])

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE bastion_trace_meta SET value = '99' WHERE key = 'schema_version'")
    code, rows = doctor(tmp_path, pg_url)
    assert code == 1
    assert rows["schema"][0] == "no" and "v99 is newer than this Bastion" in rows["schema"][1]


def test_doctor_with_an_unreachable_database_fails_that_check(tmp_path: Path) -> None:
    code, rows = doctor(tmp_path, "postgresql://u:pw@127.0.0.1:1/db")
    assert code == 1
    assert rows["database"][0] == "no" and rows["database"][1].startswith("PostgreSQL unreachable")
    assert "schema" not in rows
