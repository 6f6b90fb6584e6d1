from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.evals import (
    Case,
    Dataset,
    EvalReport,
    Expected,
    OutcomeCheck,
    Trajectory,
    TrajectoryMatch,
    gate,
    run_eval,
    run_eval_sync,
)
from bastion.tracing import TraceStore, TracingHandle, spans
from bastion.tracing import semconv as sc
from bastion.types import RunContext, ToolCall

WEATHER = ToolCall("get_weather", {"city": "Paris"})


def flaky_target(fail_every: dict[str, int]):  # type: ignore[no-untyped-def]
    """A deterministic stand-in for a non-deterministic agent: case X fails on every
    `fail_every[X]`-th attempt (0 = never)."""
    counts: dict[str, int] = {}

    async def target(case: Case) -> Trajectory:
        counts[case.id] = counts.get(case.id, 0) + 1
        every = fail_every.get(case.id, 0)
        wrong = every and counts[case.id] % every == 0
        call = ToolCall("get_weather", {"city": "Rome" if wrong else "Paris"})
        with spans.agent("weather-bot", RunContext(run_id=f"{case.id}-{counts[case.id]}")):
            with spans.tool(call.name, call.id, arguments=call.arguments):
                pass
        return Trajectory(tool_calls=[call], output="Sunny in Rome" if wrong else "Sunny in Paris")

    return target


def dataset() -> Dataset:
    exp = Expected(tool_calls=[WEATHER], output_contains=["paris"])
    return Dataset.from_cases(
        "weather",
        [
            Case("weather in Paris?", exp, id="always"),
            Case("Paris weather", exp, id="half"),
            Case("x", exp, id="never"),
        ],
    )


async def test_run_eval_counts_attempts_and_records_evaluation_events(traced: TracingHandle, store: TraceStore) -> None:
    target = flaky_target({"always": 0, "half": 2, "never": 1})
    report = await run_eval(dataset(), target, [TrajectoryMatch("strict"), OutcomeCheck()], n=4, k=2)
    by_case = {c.case_id: c for c in report.cases}
    assert [(c, by_case[c].passes) for c in ("always", "half", "never")] == [("always", 4), ("half", 2), ("never", 0)]
    assert by_case["half"].pass_hat_k == pytest.approx(1 / 6)  # C(2,2)/C(4,2)
    assert by_case["half"].pass_at_k == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)
    assert report.pass_hat_k == pytest.approx((1 + 1 / 6 + 0) / 3)
    assert report.pass_at_k == pytest.approx((1 + 5 / 6 + 0) / 3)
    assert report.pass_rate == pytest.approx(6 / 12)
    assert 0 < report.wilson_lower < 0.5
    assert report.evaluator_means() == {"outcome": pytest.approx(0.75), "trajectory_strict": 0.5}
    # every attempt is a span with one evaluation event per evaluator; the agent nests under it
    traced.force_flush()
    attempt_spans = store.spans(operation="bastion.eval", limit=100)
    assert len(attempt_spans) == 12
    events = [e for s in attempt_spans for e in s.events]
    assert {e["name"] for e in events} == {sc.EVENT_EVALUATION_RESULT}
    assert len(events) == 24
    failed = [e["attributes"] for e in events if e["attributes"][sc.GEN_AI_EVALUATION_SCORE_LABEL] == "fail"]
    assert any("Rome" in a[sc.GEN_AI_EVALUATION_EXPLANATION] for a in failed)
    attempt = report.cases[0].attempts[0]
    tree = store.get_trace(attempt.trace_id or "")
    assert tree is not None and [s.name for _, s in tree.walk()] == [
        "eval weather",
        "invoke_agent weather-bot",
        "execute_tool get_weather",
    ]


def test_sync_runner_with_a_sync_target_that_raises() -> None:
    def target(case: Case) -> str:
        if case.id == "boom":
            raise RuntimeError("agent crashed")
        return "Paris is sunny"

    ds = Dataset.from_cases("d", [Case("q", Expected(output_contains=["sunny"]), id="ok"), Case("q", id="boom")])
    report = run_eval_sync(ds, target, [OutcomeCheck()], n=2)
    ok, boom = report.cases
    assert ok.passes == 2 and boom.passes == 0
    assert boom.attempts[0].error == "RuntimeError: agent crashed"


async def test_runner_rejects_bad_configuration() -> None:
    with pytest.raises(UserError, match="1 <= k <= n"):
        await run_eval(dataset(), flaky_target({}), [OutcomeCheck()], n=2, k=3)
    with pytest.raises(UserError, match="at least one evaluator"):
        await run_eval(dataset(), flaky_target({}), [], n=1)
    with pytest.raises(UserError, match="no expected tool calls"):
        await run_eval(Dataset.from_cases("d", [Case("x")]), flaky_target({}), [TrajectoryMatch()])


def _report(passes: list[int], n: int = 4, k: int = 2) -> EvalReport:
    from bastion.evals import Attempt, CaseReport

    cases = [CaseReport(f"c{i}", [Attempt(j < p, []) for j in range(n)], k) for i, p in enumerate(passes)]
    return EvalReport("d", n, k, cases)


def test_gate_thresholds_and_baseline_drop() -> None:
    good = _report([4, 4, 3])  # pass^2: 1, 1, C(3,2)/C(4,2)=0.5 -> 0.8333
    assert good.pass_hat_k == pytest.approx(2.5 / 3)
    assert gate(good, min_pass_hat_k=0.8).ok
    result = gate(good, min_pass_hat_k=0.9, min_pass_rate=0.95)
    assert not result and len(result.reasons) == 2 and "pass^k 0.833 is below the minimum 0.900" in result.reasons[0]
    worse = _report([4, 2, 3])  # 1, 1/6, 0.5 -> 0.5556
    assert not gate(worse, baseline=good, max_drop=0.1).ok
    assert gate(worse, baseline=good, max_drop=0.3).ok
    assert "differs" in gate(worse, baseline=_report([4], k=3)).reasons[0]


def test_report_roundtrip(tmp_path: Path) -> None:
    report = _report([4, 1])
    path = report.save(tmp_path / "r.json")
    loaded = EvalReport.load(path)
    assert loaded.summary() == report.summary()
    assert "TOTAL" in loaded.render() and "pass^2" in loaded.render()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"v": 99}))
    with pytest.raises(UserError, match="not supported"):
        EvalReport.load(bad)


def _cli(*args: str, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "bastion.evals", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_gate_cli_exit_codes(tmp_path: Path) -> None:
    report = _report([4, 4, 3]).save(tmp_path / "r.json")
    passing = _cli(str(report), "--min-pass-hat-k", "0.8", cwd=tmp_path)
    assert passing.returncode == 0, passing.stderr
    assert "gate: PASS" in passing.stdout
    failing = _cli(str(report), "--min-pass-hat-k", "0.9", cwd=tmp_path)
    assert failing.returncode == 1
    assert "pass^k 0.833 is below the minimum 0.900" in failing.stderr
    missing = _cli(str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read eval report" in missing.stderr


def test_gate_cli_runs_a_suite(tmp_path: Path) -> None:
    (tmp_path / "my_suite.py").write_text(
        "from bastion.evals import Case, Dataset, EvalSuite, Expected, OutcomeCheck\n"
        "calls = {'n': 0}\n"
        "def target(case):\n"
        "    calls['n'] += 1\n"
        "    return 'ok' if calls['n'] % 3 else 'wrong'\n"
        "def suite():\n"
        "    ds = Dataset.from_cases('s', [Case('q', Expected(output='ok'), id='c1')])\n"
        "    return EvalSuite(ds, target, [OutcomeCheck()], n=3, k=1)\n"
    )
    out = tmp_path / "out.json"
    result = _cli(
        "--suite", "my_suite:suite", "--out", str(out), "--min-pass-hat-k", "0.9", cwd=tmp_path, extra_path=tmp_path
    )
    assert result.returncode == 1, result.stderr  # 2 of 3 attempts pass: pass^1 = 0.667
    assert EvalReport.load(out).pass_hat_k == pytest.approx(2 / 3)
    ok = _cli("--suite", "my_suite:suite", "--min-pass-hat-k", "0.6", cwd=tmp_path, extra_path=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = _cli("--suite", "my_suite", cwd=tmp_path, extra_path=tmp_path)
    assert bad.returncode == 2 and "package.module:suite" in bad.stderr
