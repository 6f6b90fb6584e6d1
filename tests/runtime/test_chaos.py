"""Chaos: 3 worker processes on PostgreSQL, SIGKILLed while 50 runs execute: random busy ones
(between steps or inside a tool), and deterministically the one running a blocked write the
moment its side effect is committed. Every run completes exactly once, no side effect happens
twice, and a write killed mid-call is reported "outcome unknown" to the model, never re-run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bastion.runtime import Runtime, SqlRunStore
from bastion.runtime._types import TERMINAL

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
APP = str(Path(__file__).with_name("chaos_app.py"))
BLOCKED = [f"job-{i}" for i in range(0, 50, 10)]  # each blocks inside its write until killed


def _spawn(pg_url: str, home: Path, shared: Path, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CHAOS_SHARED_DIR": str(shared), "CHAOS_BLOCK": ",".join(BLOCKED)}
    with (home / f"w{n}.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        return _popen(pg_url, home, env, n, log)


def _popen(pg_url: str, home: Path, env: dict[str, str], n: int, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bastion.cli", "--home", str(home / f"w{n}"), "worker", "--app", f"{APP}:build",
         "--database", pg_url, "--lease", "2", "--concurrency", "8"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip


def _effects(shared: Path) -> dict[str, list[int]]:
    """Per key, the pids of the processes that performed its side effect."""
    with contextlib.closing(sqlite3.connect(shared / "effects.db", timeout=30)) as db:
        rows = db.execute("SELECT key, pid FROM effects ORDER BY at").fetchall()
    out: dict[str, list[int]] = {}
    for key, pid in rows:
        out.setdefault(key, []).append(pid)
    return out


async def test_killed_workers_lose_no_run_and_repeat_no_side_effect(pg_url: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    with contextlib.closing(sqlite3.connect(shared / "effects.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE effects (key TEXT, pid INTEGER, at REAL)")
    rng = random.Random(7)
    workers = [_spawn(pg_url, tmp_path, shared, i) for i in range(3)]
    api = Runtime(SqlRunStore.postgres(pg_url), {"chaos": object()}, workers=0)  # type: ignore[dict-item]
    random_kills = 0
    killed: set[int] = set()  # pids
    spawned = 3

    def kill(index: int) -> None:
        nonlocal spawned
        workers[index].send_signal(signal.SIGKILL)
        workers[index].wait(10)
        killed.add(workers[index].pid)
        workers[index] = _spawn(pg_url, tmp_path, shared, spawned)
        spawned += 1

    try:
        runs = [await api.create_run(tenant="t", agent="chaos", input=f"job-{i}") for i in range(50)]
        deadline = asyncio.get_running_loop().time() + 150
        next_random_kill = 0.0
        while True:
            current = [await api.get_run(r.id, tenant="t") for r in runs]
            if all(r.status in TERMINAL for r in current):
                break
            now = asyncio.get_running_loop().time()
            assert now < deadline, [r.status for r in current]
            # Deterministic: the worker inside a blocked write, as soon as its effect is committed.
            effects = _effects(shared)
            inside = {pids[0] for key in BLOCKED if (pids := effects.get(key))}
            for i, w in enumerate(workers):
                if w.pid in inside and w.pid not in killed:
                    kill(i)
            # Random: a worker that is executing runs right now (worker ids embed the pid), but not
            # one holding a blocked write that has not happened yet: killed before its body, that
            # write would only ever be "outcome unknown", and the kill inside it never tested.
            running = [r for r in current if r.status == "running" and r.worker]
            busy = {int(r.worker.split(":")[1]) for r in running}
            spared = {int(r.worker.split(":")[1]) for r in running if r.input in BLOCKED and not effects.get(r.input)}
            victims = [i for i, w in enumerate(workers) if w.pid in busy - spared]
            if random_kills < 4 and victims and now >= next_random_kill:
                kill(rng.choice(victims))
                random_kills += 1
                next_random_kill = now + 1.0  # chaos cadence: let work progress between kills
            await asyncio.sleep(0.05)  # polling the runs and the effects table, bounded above
        final = [await api.get_run(r.id, tenant="t") for r in runs]
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                w.kill()
        await api.store.close()

    assert random_kills >= 2
    assert [r.status for r in final] == ["completed"] * 50, [(r.id, r.error) for r in final if r.status != "completed"]
    effects = _effects(shared)
    repeated = {k: p for k, p in effects.items() if len(p) > 1}
    assert not repeated  # no side effect ever happened twice
    for key in BLOCKED:  # each blocked write ran once, in a worker that was then killed inside it
        assert len(effects[key]) == 1 and effects[key][0] in killed, (key, effects.get(key), killed)
    recovered = sum(r.attempts > 1 for r in final)
    assert recovered >= len(BLOCKED)  # those runs at least were taken over from a killed worker
    store = SqlRunStore.postgres(pg_url)
    try:
        for r in final:
            events = await store.events(r.id)
            kinds = [k for _, k, _ in events]
            assert kinds.count("run_completed") == 1
            types = [(d.get("result") or {}).get("content") for _, k, d in events if k == "tool_result"]
            unknown = any(isinstance(c, dict) and c.get("type") == "outcome_unknown" for c in types)
            # The model saw what happened: "unknown" exactly when the write's outcome was unknown.
            assert r.output == f"{'unknown' if unknown else 'done'} {r.input}", (r.id, r.output, types)
            if r.input in BLOCKED:
                assert unknown, (r.id, kinds)
            elif not unknown:
                assert len(effects.get(r.input, [])) == 1, (r.id, r.input, kinds)
    finally:
        await store.close()
