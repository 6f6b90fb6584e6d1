"""Durable state for graph runs: the `Checkpointer` protocol and its backends.

`SqliteCheckpointer` (one file, the embedded default), `PostgresCheckpointer` (scale-out; needs
`pip install 'bastion[postgres]'`), `MemoryCheckpointer` (tests). Payloads are versioned tagged
JSON (never pickle): register your own dataclasses / pydantic models with `register_type`.
`bastion.checkpoint.conformance` checks a backend against the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr
from bastion.checkpoint._base import (
    KNOWN_LATEST,
    Checkpointer,
    CheckpointRecord,
    JournalEntry,
    KnownLatest,
    WriteRecord,
)
from bastion.checkpoint._format import FORMAT_VERSION, MIGRATIONS
from bastion.checkpoint._memory import MemoryCheckpointer
from bastion.checkpoint._serde import dumps, loads, register_type

if TYPE_CHECKING:
    from bastion.checkpoint._postgres import PostgresCheckpointer
    from bastion.checkpoint._sqlite import SqliteCheckpointer

__all__ = [
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

_LAZY = {"SqliteCheckpointer": "bastion.checkpoint._sqlite", "PostgresCheckpointer": "bastion.checkpoint._postgres"}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
