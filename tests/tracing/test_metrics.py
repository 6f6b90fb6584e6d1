from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bastion.tracing import TracingHandle, record_budget, record_circuit_state, spans
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, ToolResult, Usage


def _samples(handle: TracingHandle) -> list[tuple[str, dict[str, str], float]]:
    text = handle.prometheus_text()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    matches = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert matches, f"no sample {name} {labels}"
    return sum(matches)


def test_genai_client_metrics_cost_tool_errors_circuit_and_budget(traced: TracingHandle) -> None:
    ctx = RunContext(tenant="acme")
    for _ in range(2):
        with spans.chat("openai:gpt-4o", ModelRequest([Message.user("x")], context=ctx)) as c:
            c.record_response(
                ModelResponse(Message.assistant("y"), Usage(100, 20), model="openai:gpt-4o", cost_usd=0.5)
            )
    with spans.tool("search", "c1") as t:
        t.record_result(ToolResult("c1", "search", "ok"))
    with spans.tool("search", "c2") as t:
        t.record_result(ToolResult("c2", "search", "timeout", is_error=True))
    with pytest.raises(RuntimeError), spans.tool("crash", "c3"):
        raise RuntimeError("x")
    record_circuit_state("openai", "gpt-4o", "open")
    record_budget("tenant:acme:daily", used=8.0, limit=10.0)

    s = _samples(traced)
    assert _value(s, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 200
    assert _value(s, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 40
    assert _value(s, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 2
    assert _value(s, "gen_ai_client_operation_duration_count", gen_ai_request_model="gpt-4o") == 2
    assert _value(s, "gen_ai_client_operation_duration_bucket", le="+Inf") == 2
    assert _value(s, "bastion_cost_usd_total", bastion_tenant_id="acme") == pytest.approx(1.0)
    assert _value(s, "bastion_tool_calls_total", gen_ai_tool_name="search") == 2
    assert _value(s, "bastion_tool_errors_total", gen_ai_tool_name="search", error_type="tool_error") == 1
    assert _value(s, "bastion_tool_errors_total", gen_ai_tool_name="crash", error_type="RuntimeError") == 1
    assert _value(s, "bastion_circuit_breaker_state", gen_ai_provider_name="openai") == 2
    assert _value(s, "bastion_budget_used", bastion_budget_scope="tenant:acme:daily") == pytest.approx(0.8)


def test_bad_circuit_state_is_rejected(traced: TracingHandle) -> None:
    with pytest.raises(ValueError, match="half_open"):
        record_circuit_state("openai", "gpt-4o", "ajar")


def test_metric_helpers_are_noops_without_configuration() -> None:
    record_circuit_state("openai", "gpt-4o", "open")
    record_budget("x", 1.0, 2.0)
