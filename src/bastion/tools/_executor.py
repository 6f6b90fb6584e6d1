"""The seam between the agent loop and the tool gateway.

The agent loop (graph/) never calls a tool function itself: it hands every `ToolCall` to a
`ToolExecutor`, which is the policy gateway in production (`bastion.policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from bastion.tools._context import ToolCallContext, ToolContext
from bastion.tools._tool import Tool
from bastion.types import ToolCall, ToolResult


class ToolExecutor(Protocol):
    async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolContext[Any]) -> ToolResult:
        """Run `call` against `tools`; failures come back as `ToolResult(is_error=True)`, never raise
        (except control-flow signals such as an approval interrupt)."""
        ...


__all__ = ["ToolCallContext", "ToolExecutor"]
