from __future__ import annotations

import subprocess
import sys

import bastion.evals
import bastion.tracing

TRACING_ALL = [
    "AlertSink",
    "CallbackSink",
    "CostAlert",
    "CostMonitor",
    "CostRow",
    "LogSink",
    "SpanRecord",
    "StoreStats",
    "TraceStore",
    "TraceSummary",
    "TraceTree",
    "TracingHandle",
    "WebhookSink",
    "configure_metrics",
    "configure_tracing",
    "cost_by",
    "cost_series",
    "prometheus_text",
    "record_budget",
    "record_circuit_state",
    "redact",
    "semconv",
    "set_redactor",
    "spans",
]

EVALS_ALL = [
    "Attempt",
    "CallMatcher",
    "Case",
    "CaseReport",
    "Dataset",
    "EvalReport",
    "EvalResult",
    "EvalSuite",
    "Evaluator",
    "Expected",
    "GateResult",
    "LLMJudge",
    "OutcomeCheck",
    "ToolCallPrecisionRecall",
    "Trajectory",
    "TrajectoryMatch",
    "Verdict",
    "gate",
    "main",
    "match_trajectory",
    "parse_verdict",
    "pass_at_k",
    "pass_hat_k",
    "run_eval",
    "run_eval_sync",
    "trajectory_from_trace",
    "wilson_lower_bound",
]


def test_public_surfaces_are_pinned_and_resolve() -> None:
    assert bastion.tracing.__all__ == TRACING_ALL
    assert bastion.evals.__all__ == EVALS_ALL
    for module in (bastion.tracing, bastion.evals):
        for name in module.__all__:
            assert getattr(module, name) is not None, name


def test_span_helpers_do_not_import_opentelemetry_until_tracing_is_on() -> None:
    code = (
        "import sys\n"
        "from bastion.tracing import spans\n"
        "from bastion.types import RunContext\n"
        "with spans.agent('a', RunContext()):\n"
        "    with spans.tool('t', 'c'):\n"
        "        pass\n"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
