"""Database passwords never reach the output of `bastion serve`, `bastion worker` or
`bastion doctor`: not the banner, not a log line, not an error or traceback, not a file under
`--home`. Real subprocesses; a real PostgreSQL role with a password for the working case."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

HERE = Path(__file__).parent
APP = f"{HERE / 'redaction_app.py'}:build"
LIGHT_APP = f"{HERE / 'redaction_app.py'}:build_light"
PASSWORD = "Sup3r-secret-pw"
DOWN = f"postgresql://bastion:{PASSWORD}@127.0.0.1:1/bastion"  # nothing listens on port 1


def bastion(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> tuple[int, str]:
    argv = [sys.executable, "-m", "bastion.cli", "--home", str(home), *args]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=home.parent
    )
    return proc.returncode, proc.stdout + proc.stderr


def assert_nowhere(home: Path, output: str, secret: str = PASSWORD) -> None:
    assert secret not in output, output
    for file in home.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), f"{file} holds the password"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_with_an_unreachable_database_fails_without_printing_the_password(tmp_path: Path) -> None:
    # (~30 s today: the PostgreSQL API-key store's pool waits that long before it gives up.)
    url = DOWN + f"?password={PASSWORD}&connect_timeout=3"  # in the userinfo and as a parameter
    home = tmp_path / "home"
    code, out = bastion(home, "serve", "--app", LIGHT_APP, "--port", str(free_port()), "--database", url)
    assert code != 0
    assert "Connection refused" in out or "connection failed" in out, out  # the cause is still shown
    assert "bastion:***@127.0.0.1:1/bastion" in out  # the project's log line, redacted
    assert_nowhere(home, out)


def test_worker_and_doctor_with_an_unreachable_database_do_not_print_the_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, out = bastion(home, "worker", "--app", LIGHT_APP, env={"BASTION_DATABASE_URL": DOWN})
    assert code != 0 and "bastion:***@" in out
    assert_nowhere(home, out)
    code, out = bastion(home, "worker", "--app", LIGHT_APP, "--database", DOWN)
    assert code != 0
    assert_nowhere(home, out)
    code, out = bastion(home, "doctor", "--database", DOWN)
    assert code == 1 and "PostgreSQL unreachable" in out
    assert_nowhere(home, out)


@pytest.fixture
def password_url(pg_url: str) -> str:
    """`pg_url`'s database, owned by a new role that logs in with `PASSWORD`."""
    role = f"edge_{uuid.uuid4().hex[:10]}"
    database = urlsplit(pg_url).path.lstrip("/")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(role)))
    scheme, rest = pg_url.split("://", 1)
    return f"{scheme}://{role}:{PASSWORD}@" + rest.split("@", 1)[1]


@pytest.mark.postgres
def test_a_live_server_and_worker_on_postgres_never_print_the_password(
    bastion_server: Any, password_url: str, tmp_path: Path
) -> None:
    import json
    import urllib.request

    served = bastion_server(APP, database=password_url, workers=0)
    worker_home = tmp_path / "worker-home"
    worker_home.mkdir()
    log = worker_home / "worker.log"
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "bastion.cli", "--home", str(worker_home), "worker", "--app", APP,
             "--database", password_url, "--concurrency", "4"],
            stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        body = json.dumps({"agent": "echo", "input": "hello", "wait": True, "timeout": 60}).encode()
        req = urllib.request.Request(
            f"{served.url}/v1/runs", data=body,
            headers={"Authorization": "Bearer key-a-op", "content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=90) as r:
            run = json.loads(r.read())
        assert run["status"] == "completed", run  # the worker, on the same database, ran it
        with urllib.request.urlopen(f"{served.url}/ready", timeout=30) as r:
            assert r.status == 200
    finally:
        worker.terminate()
        worker.wait(60)
    assert served.stop() == 0
    _, doctor = bastion(tmp_path / "doctor-home", "doctor", "--database", password_url)
    assert re.search(r"PostgreSQL \d+\S* reachable", doctor), doctor
    serve_out, worker_out = served.output(), log.read_text()
    assert ":***@" in serve_out and "Bastion worker" in worker_out  # banner and log lines were printed, redacted
    assert_nowhere(served.home, serve_out)
    assert_nowhere(worker_home, worker_out)
    assert_nowhere(tmp_path / "doctor-home", doctor)
