"""The gateway's public surface is deliberate: `__all__` is pinned and every name resolves."""

from __future__ import annotations

import subprocess
import sys

import bastion.gateway as gateway

EXPECTED = {
    "BatchItemResult",
    "BatchResult",
    "BatchStore",
    "MemoryBatchStore",
    "PostgresBatchStore",
    "SQLiteBatchStore",
    "BreakerState",
    "Budget",
    "BudgetLimits",
    "BudgetStore",
    "CacheStore",
    "CallRecord",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "Gateway",
    "GatewayModel",
    "GatewayStats",
    "MemoryBudgetStore",
    "MemoryCacheStore",
    "MemorySemanticStore",
    "Model",
    "PostgresBudgetStore",
    "PostgresSemanticStore",
    "Pricing",
    "Provider",
    "ResponseCache",
    "RetryPolicy",
    "RouteHook",
    "SQLiteBudgetStore",
    "SQLiteCacheStore",
    "SemanticCache",
    "SemanticStore",
    "Spend",
    "Strategy",
    "collect",
    "register_provider",
    "resolve_model",
    "stream_via_request",
}


def test_all_is_pinned_and_resolves() -> None:
    assert set(gateway.__all__) >= EXPECTED
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name


def test_one_embedder_protocol() -> None:
    # One concept, one name: the semantic cache takes `bastion.memory.Embedder` (issue 15.6).
    assert "Embedder" not in gateway.__all__
    assert not hasattr(gateway, "Embedder")


def test_importing_the_gateway_stays_light() -> None:
    code = (
        "import sys, bastion.gateway as g; g.Gateway; "
        "heavy = [m for m in ('genai_prices', 'sqlite3', 'aiohttp', 'opentelemetry', 'bastion.tracing') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
