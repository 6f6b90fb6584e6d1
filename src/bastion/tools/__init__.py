"""Tools: typed functions with JSON schemas and safety metadata, executed only through the
tool gateway (`bastion.policy.ToolGateway`), which uses the `ToolRunner` here for validation,
timeouts, retries, idempotency and circuit breaking."""

from bastion.gateway import CircuitBreaker  # the gateway's breaker guards tools too
from bastion.tools._context import ToolCallContext, ToolContext, current_tool_context, use_tool_context
from bastion.tools._executor import ToolExecutor
from bastion.tools._journal import (
    IdempotencyEntry,
    IdempotencyJournal,
    MemoryJournal,
    SqliteJournal,
    idempotency_key,
    use_journal,
)
from bastion.tools._plain import to_plain
from bastion.tools._price import ToolPrice
from bastion.tools._registry import SchemaDiff, ToolRegistry, compare_schemas
from bastion.tools._runner import OUTCOME_UNKNOWN, RetryPolicy, ToolRunner, error_result
from bastion.tools._tool import (
    GROUNDED_KEY,
    Grounded,
    Tool,
    canonical_json,
    output_schema_for,
    schema_version,
    tool,
)

__all__ = [
    "GROUNDED_KEY",
    "OUTCOME_UNKNOWN",
    "CircuitBreaker",
    "Grounded",
    "IdempotencyEntry",
    "IdempotencyJournal",
    "MemoryJournal",
    "RetryPolicy",
    "SchemaDiff",
    "SqliteJournal",
    "Tool",
    "ToolCallContext",
    "ToolContext",
    "ToolExecutor",
    "ToolPrice",
    "ToolRegistry",
    "ToolRunner",
    "canonical_json",
    "compare_schemas",
    "current_tool_context",
    "error_result",
    "idempotency_key",
    "output_schema_for",
    "schema_version",
    "to_plain",
    "tool",
    "use_journal",
    "use_tool_context",
]

# The earlier name, kept for existing imports; `bastion.checkpoint.JournalEntry` is the memo journal.
JournalEntry = IdempotencyEntry
