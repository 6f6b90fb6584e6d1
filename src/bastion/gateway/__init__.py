"""Layer 1, compute: provider-neutral model calls through one gateway.

The gateway is where budgets, retries, circuit breakers, fallbacks, routing, cost and caching
live; wire formats (`openai_chat`, `anthropic`, `gemini`, `llamacpp`) only translate.
`Gateway.batch()` sends bulk work through the providers' batch APIs at batch rates, durably.

Heavier pieces (wire formats, SQLite stores, the price table) load on first use, so importing
this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr
from bastion.gateway._model import Model, collect, stream_via_request

if TYPE_CHECKING:
    from bastion.gateway._batch import BatchItemResult, BatchResult
    from bastion.gateway._batch_store import BatchStore, MemoryBatchStore, SQLiteBatchStore
    from bastion.gateway._batch_store_pg import PostgresBatchStore
    from bastion.gateway._breaker import BreakerState, CircuitBreaker, CircuitBreakerConfig
    from bastion.gateway._budget import (
        Budget,
        BudgetLimits,
        BudgetLine,
        BudgetStore,
        DegradePolicy,
        MemoryBudgetStore,
        Reservation,
        Spend,
        SQLiteBudgetStore,
    )
    from bastion.gateway._budget_pg import PostgresBudgetStore
    from bastion.gateway._cache import (
        CacheStore,
        MemoryCacheStore,
        MemorySemanticStore,
        ResponseCache,
        SemanticCache,
        SemanticStore,
        SQLiteCacheStore,
    )
    from bastion.gateway._cache_pg import PostgresSemanticStore
    from bastion.gateway._gateway import CallRecord, Gateway, GatewayModel, GatewayStats
    from bastion.gateway._http import aclose_http_sessions
    from bastion.gateway._pricing import Pricing
    from bastion.gateway._providers import Provider, register_provider, unregister_provider
    from bastion.gateway._resolve import default_model_name, resolve_model
    from bastion.gateway._retry import RetryPolicy
    from bastion.gateway._router import RouteHook, Strategy
    from bastion.gateway._toolnames import ToolNames, is_provider_legal, provider_tool_name

_LAZY = {
    "BatchItemResult": "._batch",
    "BatchResult": "._batch",
    "BatchStore": "._batch_store",
    "MemoryBatchStore": "._batch_store",
    "SQLiteBatchStore": "._batch_store",
    "PostgresBatchStore": "._batch_store_pg",
    "BreakerState": "._breaker",
    "CircuitBreaker": "._breaker",
    "CircuitBreakerConfig": "._breaker",
    "Budget": "._budget",
    "BudgetLimits": "._budget",
    "BudgetLine": "._budget",
    "BudgetStore": "._budget",
    "DegradePolicy": "._budget",
    "MemoryBudgetStore": "._budget",
    "SQLiteBudgetStore": "._budget",
    "Reservation": "._budget",
    "PostgresBudgetStore": "._budget_pg",
    "Spend": "._budget",
    "CacheStore": "._cache",
    "MemoryCacheStore": "._cache",
    "MemorySemanticStore": "._cache",
    "ResponseCache": "._cache",
    "SemanticCache": "._cache",
    "SemanticStore": "._cache",
    "PostgresSemanticStore": "._cache_pg",
    "SQLiteCacheStore": "._cache",
    "CallRecord": "._gateway",
    "Gateway": "._gateway",
    "GatewayModel": "._gateway",
    "GatewayStats": "._gateway",
    "Pricing": "._pricing",
    "Provider": "._providers",
    "register_provider": "._providers",
    "unregister_provider": "._providers",
    "resolve_model": "._resolve",
    "default_model_name": "._resolve",
    "aclose_http_sessions": "._http",
    "RetryPolicy": "._retry",
    "RouteHook": "._router",
    "Strategy": "._router",
    "ToolNames": "._toolnames",
    "is_provider_legal": "._toolnames",
    "provider_tool_name": "._toolnames",
}

__all__ = [
    "BatchItemResult",
    "BatchResult",
    "BatchStore",
    "BreakerState",
    "Budget",
    "BudgetLimits",
    "BudgetLine",
    "BudgetStore",
    "CacheStore",
    "CallRecord",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "DegradePolicy",
    "Gateway",
    "GatewayModel",
    "GatewayStats",
    "MemoryBatchStore",
    "MemoryBudgetStore",
    "MemoryCacheStore",
    "MemorySemanticStore",
    "Model",
    "PostgresBatchStore",
    "PostgresBudgetStore",
    "PostgresSemanticStore",
    "Pricing",
    "Provider",
    "Reservation",
    "ResponseCache",
    "RetryPolicy",
    "RouteHook",
    "SQLiteBatchStore",
    "SQLiteBudgetStore",
    "SQLiteCacheStore",
    "SemanticCache",
    "SemanticStore",
    "Spend",
    "Strategy",
    "ToolNames",
    "aclose_http_sessions",
    "collect",
    "default_model_name",
    "is_provider_legal",
    "provider_tool_name",
    "register_provider",
    "resolve_model",
    "stream_via_request",
    "unregister_provider",
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
