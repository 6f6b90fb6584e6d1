from __future__ import annotations

import asyncio
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
    with pytest.raises(UserError, match="no case has expected tool calls"):
        await run_eval(Dataset.from_cases("d", [Case("x")]), flaky_target({}), [TrajectoryMatch()])
    with pytest.raises(UserError, match="concurrency=0"):
        await run_eval(dataset(), flaky_target({}), [OutcomeCheck()], concurrency=0)
    with pytest.raises(UserError, match="timeout_s=0"):
        await run_eval(dataset(), flaky_target({}), [OutcomeCheck()], timeout_s=0)


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
    missing = _cli(str(tmp_path / "nope.json"), "--min-pass-hat-k", "0.8", cwd=tmp_path)
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
    bad = _cli("--suite", "my_suite", "--min-pass-hat-k", "0.5", cwd=tmp_path, extra_path=tmp_path)
    assert bad.returncode == 2 and "package.module:suite" in bad.stderr


async def test_a_mixed_dataset_marks_trajectory_not_applicable_instead_of_aborting() -> None:
    ds = Dataset.from_cases(
        "promoted",
        [
            Case("weather in Paris?", Expected(tool_calls=[WEATHER], output_contains=["paris"]), id="golden"),
            Case("Paris weather", Expected(output_contains=["paris"]), id="no-trajectory"),
        ],
    )
    report = await run_eval(ds, flaky_target({}), [TrajectoryMatch("strict"), OutcomeCheck()], n=2)
    assert [c.passes for c in report.cases] == [2, 2]  # n/a neither fails nor aborts
    assert report.not_applicable() == {"trajectory_strict": 2}
    assert report.evaluator_means() == {"outcome": 1.0, "trajectory_strict": 1.0}  # over the 2 it applied to
    summary = report.summary()
    assert summary["not_applicable"] == {"trajectory_strict": 2}
    assert "trajectory_strict: not applicable to 2 attempt(s)" in report.render()
    na = report.cases[1].attempts[0].results[0]
    assert (na.applicable, na.label) == (False, "not_applicable")
    assert EvalReport.from_dict(json.loads(json.dumps(report.to_dict()))).not_applicable() == {"trajectory_strict": 2}


async def test_attempts_of_different_cases_run_concurrently_within_the_bound() -> None:
    in_flight: set[str] = set()
    peak = 0
    all_in = asyncio.Event()

    async def target(case: Case) -> str:
        nonlocal peak
        in_flight.add(case.id)
        peak = max(peak, len(in_flight))
        if len(in_flight) == 3:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)  # only returns if 3 cases are in flight together
        in_flight.discard(case.id)
        return "ok"

    ds = Dataset.from_cases("d", [Case("q", Expected(output="ok"), id=f"c{i}") for i in range(6)])
    report = await run_eval(ds, target, [OutcomeCheck()], n=1, concurrency=3)
    assert report.passes == 6 and peak == 3  # across cases, never beyond the bound
    assert [c.case_id for c in report.cases] == [f"c{i}" for i in range(6)]  # order kept


async def test_sync_targets_run_in_threads_and_a_hung_one_times_out() -> None:
    import threading

    barrier = threading.Barrier(2, timeout=5)  # breaks unless two sync attempts run at once
    release = threading.Event()

    def target(case: Case) -> str:
        if case.id == "hang":
            release.wait(30)  # hangs until the test releases it: a thread cannot be killed
            return "late"
        barrier.wait()
        return "ok"

    ds = Dataset.from_cases(
        "d", [Case("q", Expected(output="ok"), id="a"), Case("q", Expected(output="ok"), id="b"), Case("q", id="hang")]
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        report = await run_eval(ds, target, [OutcomeCheck()], n=1, concurrency=3, timeout_s=0.5)
    finally:
        release.set()
    assert loop.time() - started < 5
    a, b, hang = report.cases
    assert a.passes == 1 and b.passes == 1, (a.attempts[0].error, b.attempts[0].error)
    assert hang.attempts[0].timed_out and "timeout_s=0.5" in (hang.attempts[0].error or "")
    assert report.timed_out == 1 and "1 attempt(s) timed out" in report.render()


def test_report_intervals_are_a_bootstrap_over_cases() -> None:
    # 10 cases x 10 attempts, each case all-pass or all-fail: the attempts are perfectly
    # correlated, so there are 10 observations, not 100.
    report = _report([10] * 5 + [0] * 5, n=10, k=3)
    lo, hi = report.intervals()["pass^k"]
    assert lo <= report.pass_hat_k == 0.5 <= hi
    assert lo < report.wilson_lower - 0.1  # Wilson, over 100 "independent" attempts, is too narrow
    assert report.intervals() == _report([10] * 5 + [0] * 5, n=10, k=3).intervals()  # fixed seed
    assert set(report.summary()["intervals"]) == {"pass@1", "pass@k", "pass^k"}
    assert "95% bootstrap over 10 cases: pass@1 [" in report.render() and "pass^3 [" in report.render()


def test_gate_refuses_no_thresholds_and_out_of_range_ones() -> None:
    report = _report([4, 4, 3])
    with pytest.raises(UserError, match="no threshold, so it could never fail"):
        gate(report)
    with pytest.raises(UserError, match=r"--min-pass-hat-k 5 is not a fraction.*0\.8"):
        gate(report, min_pass_hat_k=5)
    with pytest.raises(UserError, match=r"--max-drop -0\.1"):
        gate(report, baseline=report, max_drop=-0.1)
    assert gate(report, baseline=report).ok  # a baseline alone is a gate
    lower = report.intervals()["pass^k"][0]
    assert gate(report, min_pass_hat_k_lower=lower).ok
    assert "bootstrap 95% lower bound" in gate(report, min_pass_hat_k_lower=min(1.0, lower + 0.01)).reasons[0]


async def test_a_case_no_evaluator_applies_to_is_skipped_not_passed_vacuously() -> None:
    ds = Dataset.from_cases(
        "promoted", [Case("weather in Paris?", Expected(tool_calls=[WEATHER]), id="golden"), Case("x", id="bare")]
    )
    calls: list[str] = []

    async def target(case: Case) -> Trajectory:
        calls.append(case.id)
        return Trajectory(tool_calls=[ToolCall("get_weather", {"city": "Rome"})])

    report = await run_eval(ds, target, [TrajectoryMatch("strict")], n=2)
    assert calls == ["golden", "golden"] and report.skipped == ["bare"]
    assert [c.case_id for c in report.cases] == ["golden"] and report.pass_hat_k == 0.0
    assert "1 case(s) skipped, no evaluator applies to them: bare" in report.render()
    assert EvalReport.from_dict(report.to_dict()).skipped == ["bare"]
