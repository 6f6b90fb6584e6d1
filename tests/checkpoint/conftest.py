from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bastion.checkpoint import Checkpointer, MemoryCheckpointer


@pytest.fixture(
    params=[
        "memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-async-commit", marks=pytest.mark.postgres),
    ]
)  # fmt: skip
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Checkpointer]:
    """Every checkpointer backend, empty."""
    cp: Checkpointer
    if request.param == "memory":
        cp = MemoryCheckpointer()
    elif request.param == "sqlite":
        from bastion.checkpoint import SqliteCheckpointer

        cp = SqliteCheckpointer(tmp_path / "cp.db")
    else:
        from bastion.checkpoint import PostgresCheckpointer

        # async_commit: what `ProjectEnv.checkpointer()` deploys (single-statement autocommit writes)
        cp = PostgresCheckpointer(request.getfixturevalue("pg_url"), async_commit=request.param.endswith("commit"))
    yield cp
    await cp.aclose()
