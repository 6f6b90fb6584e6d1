from __future__ import annotations

import subprocess
import sys

import bastion.checkpoint
import bastion.graph


def test_graph_public_surface_is_pinned() -> None:
    assert sorted(bastion.graph.__all__) == sorted(
        [
            "END",
            "START",
            "Command",
            "CompiledGraph",
            "Graph",
            "GraphEvent",
            "Interrupt",
            "NodeConfig",
            "RetryPolicy",
            "Send",
            "StateSnapshot",
            "append",
            "emit",
            "get_config",
            "interrupt",
            "memo",
        ]
    )
    for name in bastion.graph.__all__:
        assert getattr(bastion.graph, name) is not None


def test_checkpoint_public_surface_is_pinned() -> None:
    assert sorted(bastion.checkpoint.__all__) == sorted(
        [
            "FORMAT_VERSION",
            "KNOWN_LATEST",
            "MIGRATIONS",
            "CheckpointRecord",
            "Checkpointer",
            "JournalEntry",
            "KnownLatest",
            "MemoryCheckpointer",
            "PostgresCheckpointer",
            "SqliteCheckpointer",
            "WriteRecord",
            "dumps",
            "loads",
            "register_type",
        ]
    )
    for name in bastion.checkpoint.__all__:
        assert getattr(bastion.checkpoint, name) is not None


def test_graph_import_stays_light() -> None:
    code = (
        "import sys, bastion.graph, bastion.checkpoint; "
        "print(','.join(m for m in ('pydantic', 'psycopg', 'sqlite3', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
