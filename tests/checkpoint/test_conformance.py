from __future__ import annotations

import pytest

from bastion.checkpoint import Checkpointer
from bastion.checkpoint.conformance import CHECKS, Check


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_backend_conforms(backend: Checkpointer, check: Check) -> None:
    await check(backend)


def test_backends_satisfy_the_protocol(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bastion.checkpoint import MemoryCheckpointer, PostgresCheckpointer, SqliteCheckpointer

    sqlite = SqliteCheckpointer(tmp_path / "x.db")
    try:
        for cp in (MemoryCheckpointer(), sqlite, PostgresCheckpointer("postgresql://unused")):
            assert isinstance(cp, Checkpointer)
    finally:
        sqlite.close()
