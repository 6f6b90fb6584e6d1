"""The project the crash tests' server and worker processes run: one durable agent whose single
tool is a non-idempotent write recorded in a shared SQLite file, so a test can count repeats.

The tool uses Bastion's defaults for its journal (no `SqliteJournal` on a local disk), so the
tests exercise what a deployment gets. Keys listed in `CHAOS_BLOCK` (comma-separated) block
inside the tool body, right after their side effect is committed and only on their first
call, until the test SIGKILLs the process: a deterministic kill in the middle of a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path

from bastion.graph.agent import Agent
from bastion.policy import AuditLog, Policy, ToolGateway
from bastion.server import Project, ProjectEnv
from bastion.testing import FunctionModel
from bastion.tools import tool
from bastion.types import ModelRequest, ToolCall

SHARED = Path(os.environ.get("CHAOS_SHARED_DIR", "/tmp"))
BLOCK = frozenset(k for k in os.environ.get("CHAOS_BLOCK", "").split(",") if k)
BLOCK_FOR_S = 120.0  # bounded: a test that fails to kill the worker still ends
API_KEY = "key-chaos"


def effects_db(shared: Path) -> sqlite3.Connection:
    db = sqlite3.connect(shared / "effects.db", timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, pid INTEGER, at REAL)")
    return db


@tool(side_effect="write")
async def record(key: str) -> str:
    """Record one side effect for `key` (slow on purpose, to be killed in the middle)."""
    if key in BLOCK:
        with contextlib.closing(effects_db(SHARED)) as db:
            db.execute("INSERT INTO effects VALUES (?, ?, ?)", (key, os.getpid(), time.time()))
            first = db.execute("SELECT count(*) FROM effects WHERE key = ?", (key,)).fetchone()[0] == 1
        if first:  # the effect is committed; the test sees its row and kills this process now
            await asyncio.wait_for(asyncio.Event().wait(), BLOCK_FOR_S)
        return f"recorded {key}"
    await asyncio.sleep(0.3)  # a window for the chaos test's random kills
    with contextlib.closing(effects_db(SHARED)) as db:
        db.execute("INSERT INTO effects VALUES (?, ?, ?)", (key, os.getpid(), time.time()))
    return f"recorded {key}"


def _model(request: ModelRequest) -> ToolCall | str:
    user = next(m.text for m in request.messages if m.role == "user")
    results = [r for m in request.messages for r in m.tool_results]
    if results:
        content = results[-1].content
        unknown = isinstance(content, dict) and content.get("type") == "outcome_unknown"
        return f"{'unknown' if unknown else 'done'} {user}"
    # Deterministic call ids: a re-asked model (killed before its answer was journaled) plans the
    # same call, so the idempotency key matches.
    return ToolCall("record", {"key": user}, id=f"call_{user}")


def build(env: ProjectEnv) -> Project:
    audit = AuditLog(env.home / "audit.db")
    gateway = ToolGateway(Policy({"chaos": ["record"]}), audit=audit)
    agent = Agent(FunctionModel(_model), tools=[record], name="chaos", tool_executor=gateway,
                  checkpointer=env.checkpointer())  # fmt: skip
    return Project({"chaos": agent}, api_keys={API_KEY: ("t", "operator")}, on_close=[audit.close])
