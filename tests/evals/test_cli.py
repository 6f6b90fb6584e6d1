"""`bastion eval` as a subprocess: one CLI (the same as `python -m bastion.evals`), usage errors
exit 2 with a fix, and a hung sync target cannot hang the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bastion.evals import Attempt, CaseReport, EvalReport

SUITE = """\
from bastion.evals import Case, Dataset, EvalSuite, Expected, OutcomeCheck

def target(case):
    return "ok" if case.id != "bad" else "wrong"

suite = EvalSuite(
    Dataset.from_cases("s", [Case("q", Expected(output="ok"), id="c1"), Case("q", Expected(output="ok"), id="bad")]),
    target,
    [OutcomeCheck()],
    n=3,
)
"""


def bastion(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli", "--home", str(cwd / ".bastion"), "eval", *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bastion_eval_help_lists_the_suite_and_gate_options(tmp_path: Path) -> None:
    result = bastion("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: bastion eval")
    for option in ("--suite", "--dataset", "--min-pass-hat-k", "--min-pass-hat-k-lower", "--timeout", "--report-only"):
        assert option in result.stdout


def test_bastion_eval_runs_a_suite_from_a_file_and_gates_it(tmp_path: Path) -> None:
    (tmp_path / "suite.py").write_text(SUITE)
    out = tmp_path / "report.json"
    failing = bastion("--suite", "suite.py:suite", "--out", str(out), "--min-pass-hat-k", "0.8", cwd=tmp_path)
    assert failing.returncode == 1, failing.stderr  # one of two cases always fails: pass^3 = 0.5
    assert "gate: FAIL: pass^k 0.500 is below the minimum 0.800" in failing.stderr
    assert "95% bootstrap over 2 cases" in failing.stdout
    assert EvalReport.load(out).pass_hat_k == 0.5
    passing = bastion("--suite", "suite.py:suite", "--k", "1", "--min-pass-hat-k", "0.5", cwd=tmp_path)
    assert passing.returncode == 0 and "gate: PASS" in passing.stdout, passing.stderr
    # --dataset replaces the suite's cases: JSONL, or the JSON the server exports
    (tmp_path / "good.jsonl").write_text(json.dumps({"id": "g", "input": "q", "expected": {"output": "ok"}}) + "\n")
    (tmp_path / "export.json").write_text(json.dumps({"name": "x", "cases": [{"id": "g", "input": "q"}]}))
    for file in ("good.jsonl", "export.json"):
        r = bastion("--suite", "suite.py:suite", "--dataset", file, "--min-pass-hat-k", "1", cwd=tmp_path)
        assert r.returncode == 0 and "gate: PASS" in r.stdout, r.stderr


def test_usage_errors_exit_2_and_say_how_to_fix(tmp_path: Path) -> None:
    report = EvalReport("d", 2, 2, [CaseReport("c", [Attempt(True, []), Attempt(True, [])], 2)])
    path = str(report.save(tmp_path / "r.json"))
    silent = bastion(path, cwd=tmp_path)
    assert silent.returncode == 2 and "no threshold, so it could never fail" in silent.stderr
    assert "--report-only" in silent.stderr
    percent = bastion(path, "--min-pass-hat-k", "5", cwd=tmp_path)
    assert percent.returncode == 2 and "5 is not between 0 and 1; for 80 % write 0.8" in percent.stderr
    only = bastion(path, "--report-only", cwd=tmp_path)
    assert only.returncode == 0 and "TOTAL" in only.stdout and "gate:" not in only.stdout + only.stderr
    same = subprocess.run(
        [sys.executable, "-m", "bastion.evals", path, "--min-pass-hat-k", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert same.returncode == 0 and "gate: PASS" in same.stdout


def test_a_hung_sync_target_times_out_and_the_command_still_exits(tmp_path: Path) -> None:
    (tmp_path / "hang.py").write_text(
        "import threading\n"
        "from bastion.evals import Case, Dataset, EvalSuite, Expected, OutcomeCheck\n"
        "def target(case):\n"
        "    if case.id == 'hang':\n"
        "        threading.Event().wait()  # never returns: a thread cannot be killed\n"
        "    return 'ok'\n"
        "cases = [Case('q', Expected(output='ok'), id='fine'), Case('q', id='hang')]\n"
        "suite = EvalSuite(Dataset.from_cases('h', cases), target, [OutcomeCheck()], n=2)\n"
    )
    started = time.monotonic()
    result = bastion("--suite", "hang.py:suite", "--timeout", "0.5", "--out", "r.json", "--report-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "2 attempt(s) timed out" in result.stdout
    report = EvalReport.load(tmp_path / "r.json")
    fine, hang = report.cases
    assert fine.passes == 2 and all(a.timed_out for a in hang.attempts)
