"""Each gateway call is one `chat` span with GenAI usage/cost attributes; breaker transitions
reach the metrics; the `on_call` hook sees every call, cache hits included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.errors import ProviderUnavailableError
from bastion.gateway import CallRecord, CircuitBreakerConfig, Gateway, ResponseCache, RetryPolicy
from bastion.testing import FunctionModel, ScriptedModel
from bastion.tracing import TracingHandle, configure_tracing, semconv
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, RunContext, Usage


class Spans:
    def __init__(self, exporter: InMemorySpanExporter, handle: TracingHandle) -> None:
        self._exporter = exporter
        self.handle = handle

    def get_finished_spans(self) -> tuple[ReadableSpan, ...]:
        assert self.handle.force_flush(5)  # spans are exported in batches
        return self._exporter.get_finished_spans()


@pytest.fixture
def exporter() -> Iterator[Spans]:
    exp = InMemorySpanExporter()
    handle: TracingHandle = configure_tracing(otlp_endpoint="", exporters=[exp], capture_content="off")
    try:
        yield Spans(exp, handle)
    finally:
        handle.shutdown()


def priced(r: ModelRequest) -> ModelResponse:
    return ModelResponse(Message.assistant("ok"), usage=Usage(1_000_000, 0, requests=1))


async def test_one_chat_span_per_call_with_usage_and_cost(exporter: Spans) -> None:
    gw = Gateway(
        models=[FunctionModel(priced, name="acme:m")],
        pricing={"acme:m": {"input": 3.0, "output": 1.0}},
        cache=ResponseCache.in_memory(),
    )
    request = ModelRequest(
        [Message.user("hi")], settings=ModelSettings(temperature=0), context=RunContext(tenant="acme")
    )
    await gw.request(request, "acme:m")
    await gw.request(request, "acme:m")  # a cache hit
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["chat m", "chat m"]
    first, second = (dict(s.attributes or {}) for s in spans)
    assert first[semconv.GEN_AI_PROVIDER_NAME] == "acme"
    assert first[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 1_000_000
    assert first[semconv.BASTION_COST_USD] == pytest.approx(3.0)
    assert second[semconv.BASTION_CACHED] is True and second[semconv.BASTION_COST_USD] == 0.0


async def test_failed_call_is_an_error_span(exporter: Spans) -> None:
    gw = Gateway(
        models=[ScriptedModel([ProviderUnavailableError(503, "down")], name="test:m")],
        cache=False,
        retry=RetryPolicy.none(),
    )
    with pytest.raises(ProviderUnavailableError):
        await gw.request(ModelRequest([Message.user("hi")]), "test:m")
    [span] = exporter.get_finished_spans()
    assert not span.status.is_ok


async def test_retries_and_fallbacks_are_span_events(exporter: Spans) -> None:
    async def no_sleep(_: float) -> None:
        return None

    a = ScriptedModel([ProviderUnavailableError(503, "x"), ProviderUnavailableError(503, "y")], name="test:a")
    b = ScriptedModel(["ok"], name="test:b")
    gw = Gateway(
        models=[a, b], tiers={"t": ["test:a", "test:b"]}, cache=False, sleep=no_sleep, retry=RetryPolicy(max_attempts=2)
    )
    await gw.request(ModelRequest([Message.user("hi")]), "t")
    [span] = exporter.get_finished_spans()
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert [name for name, _ in events] == ["bastion.retry", "bastion.fallback"]
    assert events[0][1]["bastion.model"] == "test:a" and events[0][1]["error.type"] == "ProviderUnavailableError"
    assert events[1][1]["bastion.from"] == "test:a"


async def test_streams_get_a_span_too(exporter: Spans) -> None:
    gw = Gateway(models=[ScriptedModel(["a b c"], name="test:m")], cache=False)
    events = [e async for e in gw.stream(ModelRequest([Message.user("hi")]), "test:m")]
    assert events[-1].kind == "done"
    [span] = exporter.get_finished_spans()
    assert span.name == "chat m" and dict(span.attributes or {})[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] >= 1


async def test_breaker_transitions_reach_metrics(exporter: Spans) -> None:
    seen: list[tuple[str, str]] = []
    gw = Gateway(
        models=[ScriptedModel([ProviderUnavailableError(503, "down")], name="test:m")],
        cache=False,
        retry=RetryPolicy.none(),
        breaker=CircuitBreakerConfig(failure_threshold=1),
    )
    gw._breaker_for("test:m").on_change = lambda name, state: seen.append((name, state))  # pyright: ignore[reportPrivateUsage]
    with pytest.raises(ProviderUnavailableError):
        await gw.request(ModelRequest([Message.user("hi")]), "test:m")
    assert seen == [("test:m", "open")]


async def test_on_call_hook_sees_every_call() -> None:
    records: list[CallRecord] = []
    gw = Gateway(models=[FunctionModel(priced, name="test:m")], cache=ResponseCache.in_memory(), on_call=records.append)
    request = ModelRequest([Message.user("hi")], settings=ModelSettings(temperature=0))
    await gw.request(request, "test:m")
    await gw.request(request, "test:m")
    assert [(r.target, r.model, r.response is not None and r.response.cached) for r in records] == [
        ("test:m", "test:m", False),
        ("test:m", "test:m", True),
    ]
    assert all(r.error is None and r.ended >= r.started for r in records)


async def test_budget_consumption_is_a_gauge(exporter: Spans) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from bastion.gateway import Budget, BudgetLimits

    gw = Gateway(
        models=[FunctionModel(priced, name="acme:m")],
        pricing={"acme:m": {"input": 1.0, "output": 1.0}},
        budgets=Budget(tenant=BudgetLimits(tokens=4_000_000, usd=10.0)),
        cache=False,
    )
    await gw.request(ModelRequest([Message.user("hi")], context=RunContext(tenant="acme")), "acme:m")
    samples = {
        s.labels.get("bastion_budget_scope"): s.value
        for fam in text_string_to_metric_families(exporter.handle.prometheus_text())
        for s in fam.samples
        if s.name == "bastion_budget_used"
    }
    assert samples["tenant:acme:tokens"] == pytest.approx(0.25)
    assert samples["tenant:acme:usd"] == pytest.approx(0.1)
