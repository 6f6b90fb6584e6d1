from __future__ import annotations

import subprocess
import sys

import bastion.evals
import bastion.tracing

TRACING_ALL = [
    "AlertLedger",
    "AlertSink",
    "CallbackSink",
    "CostAlert",
    "CostMonitor",
    "CostRow",
    "LogSink",
    "PostgresTraceStore",
    "SpanRecord",
    "SpanStore",
    "StoreStats",
    "TraceStore",
    "TraceSummary",
    "TraceTree",
    "TracingHandle",
    "WebhookSink",
    "active_tracer",
    "configure_metrics",
    "configure_tracing",
    "cost_by",
    "cost_series",
    "open_alert_ledger",
    "open_trace_store",
    "prometheus_text",
    "queue_gauges_text",
    "record_budget",
    "record_circuit_state",
    "record_tool_cost",
    "redact",
    "semconv",
    "set_redactor",
    "spans",
    "start_cost_alerts",
]

EVALS_ALL = [
    "Attempt",
    "CallMatcher",
    "Case",
    "CaseDiff",
    "CaseReport",
    "Dataset",
    "DatasetInfo",
    "DatasetStore",
    "EvalReport",
    "EvalResult",
    "EvalSuite",
    "Evaluator",
    "Expected",
    "FinalState",
    "GateResult",
    "JsonlDatasetStore",
    "LLMJudge",
    "ModelUser",
    "OutcomeCheck",
    "PostgresDatasetStore",
    "ReportDiff",
    "ScriptedUser",
    "SessionView",
    "ToolCallPrecisionRecall",
    "Trajectory",
    "TrajectoryJudge",
    "TrajectoryMatch",
    "UserSimulator",
    "Verdict",
    "bootstrap_interval",
    "check_thresholds",
    "compare_reports",
    "evaluate_trace",
    "gate",
    "main",
    "match_trajectory",
    "parse_verdict",
    "pass_at_k",
    "pass_hat_k",
    "promote_traces",
    "run_eval",
    "run_eval_sync",
    "run_session",
    "session_target",
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


def test_an_application_wide_otel_provider_is_used_without_configure_tracing() -> None:
    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "from bastion.tracing import spans\n"
        "from bastion.types import RunContext\n"
        "with spans.tool('before', 'c0') as t0:\n"
        "    pass\n"
        "memory = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(memory))\n"
        "trace.set_tracer_provider(provider)\n"
        "with spans.agent('a', RunContext(run_id='r')):\n"
        "    with spans.tool('t', 'c1'):\n"
        "        pass\n"
        "print(t0.recording, sorted(s.name for s in memory.get_finished_spans()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False ['execute_tool t', 'invoke_agent a']"
