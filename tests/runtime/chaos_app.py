"""The project the chaos test's worker processes run: one durable agent whose single tool has a
side effect recorded in a shared SQLite file, so the test can count repetitions."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from bastion.graph.agent import Agent
from bastion.policy import Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.tools import SqliteJournal, ToolRunner, tool
from bastion.types import ModelRequest, ToolCall

SHARED = Path(os.environ.get("CHAOS_SHARED_DIR", "/tmp"))


def _effects() -> sqlite3.Connection:
    db = sqlite3.connect(SHARED / "effects.db", timeout=30)
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, pid INTEGER, at REAL)")
    return db


@tool(side_effect="write")
def record(key: str) -> str:
    """Record one side effect for `key` (slow on purpose, to be killed in the middle)."""
    time.sleep(0.3)
    with _effects() as db:
        db.execute("INSERT INTO effects VALUES (?, ?, ?)", (key, os.getpid(), time.time()))
    return f"recorded {key}"


def _model(request: ModelRequest) -> ToolCall | str:
    user = next(m.text for m in request.messages if m.role == "user")
    if any(m.role == "tool" for m in request.messages):
        return f"done {user}"
    # Deterministic call ids: a re-asked model (killed before its answer was journaled) plans the
    # same call, so the idempotency key matches.
    return ToolCall("record", {"key": user}, id=f"call_{user}")


def build(env: ProjectEnv) -> Project:
    runner = ToolRunner(journal=SqliteJournal(SHARED / "journal.db"))
    gateway = ToolGateway(Policy({"chaos": ["record"]}), runner=runner)
    agent = Agent(FunctionModel(_model), tools=[record], name="chaos", tool_executor=gateway,
                  checkpointer=env.checkpointer())  # fmt: skip
    return Project({"chaos": agent})
