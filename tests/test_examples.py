"""The example programs in examples/ run as written (offline, in fresh processes), print what
they did, and stay short enough to read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROGRAMS = ["approval_restart.py", "graph_fanout_timetravel.py", "gateway_fallbacks.py", "memory_rag.py"]


def run(tmp_path: Path, program: str, *args: str) -> list[str]:
    env = {**os.environ, "BASTION_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / program), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{program} {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


@pytest.mark.parametrize("program", PROGRAMS)
def test_each_example_is_at_most_80_lines(program: str) -> None:
    lines = (EXAMPLES / program).read_text().splitlines()
    assert len(lines) <= 80, f"{program} has {len(lines)} lines; examples stay at 80 or fewer"


def test_approval_survives_a_process_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    assert run(tmp_path, "approval_restart.py", "request", db) == [
        "phase 1: waiting for approval of refund {'order_id': 1044, 'amount': 89.0}; exiting"
    ]
    # A second process: the approval is answered from the SQLite checkpoint alone.
    assert run(tmp_path, "approval_restart.py", "approve", db) == [
        "phase 2: approved in a new process -> 'Done: refunded 89.00 EUR on order 1044'"
    ]


def test_approval_example_runs_both_phases_by_itself(tmp_path: Path) -> None:
    out = run(tmp_path, "approval_restart.py")
    assert [line.split(":")[0] for line in out] == ["phase 1", "phase 2"]


def test_graph_example_fans_out_retries_and_travels_in_time(tmp_path: Path) -> None:
    out = run(tmp_path, "graph_fanout_timetravel.py")
    notes = "notes on churn; notes on pricing; notes on retention"
    assert out[0] == f"report: long: {notes} | retries: ['ConnectionError: search API reset the connection']"
    assert out[1] == "history: checkpoints of steps [3, 2, 1, 0]"
    assert out[2] == f"re-written: brief: {notes}"
    assert out[3] == f"fork: long: {notes} | research calls: 7"


def test_gateway_example_falls_back_caches_and_enforces_the_budget(tmp_path: Path) -> None:
    out = run(tmp_path, "gateway_fallbacks.py")
    assert out[0].startswith("answer: Capital(city='Paris', country='France') from openai-compat:http://127.0.0.1:")
    assert out[1] == "primary tried 2x (503), fallbacks: 1"
    assert out[2] == "again: cached=True, cost $0.0, backup calls: 1"
    assert out[3].startswith("refused: budget 'user:acme/ada' is exhausted")
    assert out[4].startswith("spent by ada: Spend(tokens=")


def test_memory_example_answers_from_ingested_documents(tmp_path: Path) -> None:
    out = run(tmp_path, "memory_rag.py")
    assert out == [
        "answer: Items can be returned within 30 days. (source: returns.md)",
        "tool call: search_memory {'query': 'How many days do I have to return an item?', 'k': 2}",
        "globex: I found nothing about that.",
    ]
