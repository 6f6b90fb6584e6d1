"""The seam between the agent loop and the tool gateway.

The agent loop (graph/) never calls a tool function itself: it hands every `ToolCall` to a
`ToolExecutor`, which is the policy gateway in production (`bastion.policy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bastion.tools._tool import Tool
from bastion.types import Message, RunContext, ToolCall, ToolResult


@dataclass(slots=True)
class ToolCallContext:
    """What the gateway knows about the call beyond its arguments."""

    run: RunContext = field(default_factory=RunContext)
    messages: Sequence[Message] = ()  # history so far: user turns are trusted, tool results labelled
    agent: str = "agent"  # the calling agent's identity (policy principal)


class ToolExecutor(Protocol):
    async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolCallContext) -> ToolResult:
        """Run `call` against `tools`; failures come back as `ToolResult(is_error=True)`, never raise
        (except control-flow signals such as an approval interrupt)."""
        ...
