"""A direct `ToolExecutor` for tests: validates, invokes, wraps failures; no policy layer.

Production runs go through the policy gateway (`bastion.policy`), which adds authorization,
taint rules, audit and sandboxing. This double keeps only the contract the agent loop relies
on: arguments validated with `Tool.validate`, failures returned as `ToolResult(is_error=True)`
(never raised), results labelled with the tool's trust, and, when asked, a human approval
raised as a graph interrupt before the tool runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import Any

from bastion.errors import ControlFlowSignal, ToolError
from bastion.tools._executor import ToolCallContext
from bastion.tools._tool import Tool
from bastion.types import ToolCall, ToolResult

ApprovalRule = Collection[str] | Callable[[ToolCall, Tool], bool]
"""Which calls need a human yes: a set of tool names, or a predicate on (call, tool)."""


def error_result(call: ToolCall, error: str, message: str, details: Any = None) -> ToolResult:
    """The structured error a model sees when a call fails: type, message, optional details."""
    content: dict[str, Any] = {"error": error, "message": message}
    if details is not None:
        content["details"] = details
    return ToolResult(call.id, call.name, content, is_error=True, trust="trusted")


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return value


class DirectToolExecutor:
    """Runs tool calls in-process. `calls` records every call that reached a tool function.

    `approval` names tools (or a predicate) whose calls pause the run for a human via the graph
    engine's `interrupt`; resuming with `True` / `"approve"` / `{"approved": True}` runs the
    tool, anything else returns a "denied" error result to the model.
    """

    def __init__(self, *, approval: ApprovalRule = ()) -> None:
        self._approval = approval
        self.calls: list[ToolCall] = []

    def needs_approval(self, call: ToolCall, tool: Tool) -> bool:
        if callable(self._approval):
            return self._approval(call, tool)
        return call.name in self._approval

    async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolCallContext) -> ToolResult:
        tool = tools.get(call.name)
        if tool is None:
            return error_result(
                call,
                "UnknownTool",
                f"there is no tool named {call.name!r}; call one of: {', '.join(sorted(tools)) or '(none)'}",
            )
        try:
            arguments = tool.validate(call.arguments)
        except ToolError as e:
            return error_result(call, type(e).__name__, str(e), e.details)
        if self.needs_approval(call, tool) and not _approved(await _ask_approval(call, context)):
            return error_result(call, "ApprovalDenied", f"a human denied the call to {call.name!r}")
        self.calls.append(call)
        try:
            value = await asyncio.wait_for(tool.invoke(arguments), timeout=tool.timeout)
        except ControlFlowSignal:
            raise
        except TimeoutError:
            return error_result(call, "ToolTimeout", f"tool {call.name!r} did not finish in {tool.timeout} s")
        except Exception as e:  # a failing tool must not crash the run: the model sees the error
            return error_result(call, type(e).__name__, str(e) or type(e).__name__)
        return ToolResult(call.id, call.name, _jsonable(value), trust=tool.trust)


async def _ask_approval(call: ToolCall, context: ToolCallContext) -> Any:
    from bastion.graph import interrupt

    payload = {
        "type": "approval",
        "tool": call.name,
        "arguments": call.arguments,
        "tool_call_id": call.id,
        "agent": context.agent,
    }
    answer = interrupt(payload)
    if asyncio.iscoroutine(answer):
        answer = await answer
    return answer


def _approved(answer: Any) -> bool:
    if isinstance(answer, Mapping):
        return bool(answer.get("approved"))  # pyright: ignore[reportUnknownMemberType]
    return answer is True or answer == "approve"


__all__ = ["ApprovalRule", "DirectToolExecutor", "error_result"]
