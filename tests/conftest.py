from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# The gateway's exact cache is on by default and persists under .bastion/; tests must never
# reuse an answer from an earlier test run (fake servers may reuse ports).
os.environ.setdefault("BASTION_CACHE_ENABLED", "false")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """One PostgreSQL server for the whole session (starting one takes ~1 s)."""
    from bastion.testing._postgres import postgres_server

    with postgres_server() as uri:
        yield uri


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server for each test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.replace("/postgres?", f"/{name}?")
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
