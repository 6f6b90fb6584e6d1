"""Tools: typed functions with JSON schemas and safety metadata, executed only through the
tool gateway (`bastion.policy.ToolGateway`), which uses the `ToolRunner` here for validation,
timeouts, retries, idempotency and circuit breaking."""

from bastion.tools._breaker import CircuitBreaker
from bastion.tools._executor import ToolCallContext, ToolExecutor
from bastion.tools._journal import (
    IdempotencyJournal,
    JournalEntry,
    MemoryJournal,
    SqliteJournal,
    idempotency_key,
    use_journal,
)
from bastion.tools._price import ToolPrice
from bastion.tools._registry import SchemaDiff, ToolRegistry, compare_schemas
from bastion.tools._runner import RetryPolicy, ToolRunner, error_result
from bastion.tools._tool import Tool, canonical_json, output_schema_for, schema_version, tool

__all__ = [
    "CircuitBreaker",
    "IdempotencyJournal",
    "JournalEntry",
    "MemoryJournal",
    "RetryPolicy",
    "SchemaDiff",
    "SqliteJournal",
    "Tool",
    "ToolCallContext",
    "ToolExecutor",
    "ToolPrice",
    "ToolRegistry",
    "ToolRunner",
    "canonical_json",
    "compare_schemas",
    "error_result",
    "idempotency_key",
    "output_schema_for",
    "schema_version",
    "tool",
    "use_journal",
]
