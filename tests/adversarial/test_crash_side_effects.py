"""Attack: SIGKILL the process running a run while it is inside a non-idempotent write tool,
and let another process take the run over. The write must not happen twice: the recovering
process reports "outcome unknown" to the model (and to the audit log) instead of re-running it.

Deterministic: the tool commits its side effect, then blocks; the test kills the process that
the effect row names. Once with PostgreSQL workers (`bastion worker`), once with the embedded
SQLite `bastion serve` killed and restarted on the same home.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ServerFactory = Callable[..., Any]  # conftest.bastion_server

CHAOS = Path(__file__).parents[1] / "runtime" / "chaos_app.py"
APP = f"{CHAOS}:build"
KEY = "job-kill"
API_KEY = "key-chaos"  # chaos_app.API_KEY: an operator of tenant "t"
BOUND_S = 60.0


def _shared_dir(tmp_path: Path) -> Path:
    """Where the tool records its side effects (the table made here, before any process runs)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    with contextlib.closing(sqlite3.connect(shared / "effects.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE effects (key TEXT, pid INTEGER, at REAL)")
    return shared


def _effects(shared: Path, key: str) -> list[int]:
    """Pids of the processes that performed `key`'s side effect, in order."""
    with contextlib.closing(sqlite3.connect(shared / "effects.db", timeout=30)) as db:
        return [pid for (pid,) in db.execute("SELECT pid FROM effects WHERE key = ? ORDER BY at", (key,))]


def _wait_for_effect(shared: Path, key: str, proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + BOUND_S
    while not (pids := _effects(shared, key)):
        assert proc.poll() is None, f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the tool did not start within {BOUND_S}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)  # polling another process's committed row, bounded by the deadline
    return pids[0]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(20)
    assert proc.returncode == -signal.SIGKILL


def _assert_reported_unknown(events: list[tuple[str, dict[str, Any]]]) -> None:
    kinds = [k for k, _ in events]
    assert "recovered" in kinds, kinds
    results = [d.get("result", {}) for k, d in events if k == "tool_result"]
    assert [r.get("content", {}).get("type") for r in results] == ["outcome_unknown"], results
    assert results[0].get("is_error") is True


def _unknown_in_audit(home: Path) -> list[Any]:
    from bastion.policy import AuditLog

    audit = AuditLog(home / "audit.db")
    try:
        return audit.entries(event="outcome_unknown")
    finally:
        audit.close()


def _worker(pg_url: str, home: Path, shared: Path) -> tuple[subprocess.Popen[bytes], Path]:
    home.mkdir(parents=True)
    log = home / "worker.log"
    env = {**os.environ, "CHAOS_SHARED_DIR": str(shared), "CHAOS_BLOCK": KEY}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bastion.cli", "--home", str(home), "worker", "--app", APP,
             "--database", pg_url, "--lease", "1", "--concurrency", "4"],
            env=env, stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    return proc, log


@pytest.mark.postgres
async def test_postgres_worker_killed_inside_write_is_not_rerun_by_the_next(pg_url: str, tmp_path: Path) -> None:
    from bastion.runtime import Runtime, SqlRunStore

    shared = _shared_dir(tmp_path)
    first, first_log = _worker(pg_url, tmp_path / "w1", shared)
    second: subprocess.Popen[bytes] | None = None
    api = Runtime(SqlRunStore.postgres(pg_url), {"chaos": object()}, workers=0)  # type: ignore[dict-item]
    try:
        run = await api.create_run(tenant="t", agent="chaos", input=KEY)
        pid = await asyncio.to_thread(_wait_for_effect, shared, KEY, first, first_log)
        assert pid == first.pid
        _kill(first)
        second, _ = _worker(pg_url, tmp_path / "w2", shared)
        final = await api.wait(run.id, tenant="t", timeout=BOUND_S)
        events = [(k, d) for _, k, d in await api.store.events(run.id)]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        await api.store.close()

    assert _effects(shared, KEY) == [first.pid]  # exactly once, by the killed worker
    assert final.status == "completed", final.error
    assert final.attempts == 2
    assert final.output == f"unknown {KEY}"  # the model was told, and said so
    _assert_reported_unknown(events)
    [entry] = _unknown_in_audit(tmp_path / "w2")
    assert entry.tool == "record" and entry.tool_call_id == f"call_{KEY}" and entry.tenant == "t"


def _http(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, method=method, headers={"Authorization": f"Bearer {API_KEY}"})
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_sqlite_serve_killed_inside_write_is_not_rerun_after_restart(
    bastion_server: ServerFactory, tmp_path: Path
) -> None:
    shared = _shared_dir(tmp_path)
    env = {"CHAOS_SHARED_DIR": str(shared), "CHAOS_BLOCK": KEY}
    first = bastion_server(APP, env=env, args=["--lease", "1"])
    run = _http(f"{first.url}/v1/runs", "POST", {"agent": "chaos", "input": KEY})
    pid = _wait_for_effect(shared, KEY, first.proc, first.log_path)
    assert pid == first.proc.pid
    _kill(first.proc)

    again = bastion_server(APP, env=env, args=["--lease", "1"], home=first.home)
    deadline = time.monotonic() + BOUND_S
    while (final := _http(f"{again.url}/v1/runs/{run['id']}"))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, final
        time.sleep(0.05)  # polling the API of a real server, bounded by the deadline
    events = [(e["kind"], e["data"]) for e in _http(f"{again.url}/v1/runs/{run['id']}/events")]

    assert _effects(shared, KEY) == [first.proc.pid]
    assert final["status"] == "completed", final
    assert final["attempts"] == 2
    assert final["output"] == f"unknown {KEY}"
    _assert_reported_unknown(events)
    [entry] = _unknown_in_audit(first.home)
    assert entry.tool == "record" and entry.tool_call_id == f"call_{KEY}"
