"""A direct `ToolExecutor` for tests: the production runner and approval protocol, no policy.

Production runs go through the policy gateway (`bastion.policy.ToolGateway`), which adds
authorization, provenance rules, audit, redaction and spotlighting. This double keeps the rest
of the contract exactly as production has it, so a test written against it holds against the
gateway too: arguments validated and errors shaped by `bastion.tools.ToolRunner` (the same
`{"error": message, "type": kind}` results and kinds: `unknown_tool`, `invalid_arguments`,
`timeout`, `approval_rejected`, ...), results labelled with the tool's trust, the `ToolContext`
injected, and, when asked, a human approval raised as the same `tool_approval` interrupt,
answered with the same values (`{"action": "approve"}`, `{"action": "edit", "arguments": ...}`,
`{"action": "reject", "reason": ...}`, `True`, `"approve"`, `"reject"`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from bastion.tools import RetryPolicy, Tool, ToolContext, ToolRunner, error_result, use_tool_context
from bastion.types import ToolCall, ToolResult

ApprovalRule = Collection[str] | Callable[[ToolCall, Tool], bool]
"""Which calls need a human yes: a set of tool names, or a predicate on (call, tool)."""


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return value


class DirectToolExecutor:
    """Runs tool calls in-process. `calls` records every call that reached a tool function.

    `approval` names tools (or a predicate) whose calls pause the run for a human via the graph
    engine's `interrupt`, with the payload `bastion.policy.ToolGateway` sends
    (`{"type": "tool_approval", "tool", "tool_call_id", "arguments", "risk", ...}`).
    `runner` defaults to a `ToolRunner` without retries (a test sees each failure once).
    """

    def __init__(self, *, approval: ApprovalRule = (), runner: ToolRunner | None = None) -> None:
        self._approval = approval
        self.runner = runner if runner is not None else ToolRunner(retry=RetryPolicy(max_attempts=1))
        self.calls: list[ToolCall] = []

    def needs_approval(self, call: ToolCall, tool: Tool) -> bool:
        if callable(self._approval):
            return self._approval(call, tool)
        return call.name in self._approval

    async def execute(self, call: ToolCall, tools: Mapping[str, Tool], context: ToolContext[Any]) -> ToolResult:
        tool = tools.get(call.name)
        if tool is None:
            return error_result(
                call,
                f"there is no tool named {call.name!r}; available: {', '.join(sorted(tools)) or '(none)'}",
                "unknown_tool",
            )
        checked = self.runner.validate(tool, call)
        if isinstance(checked, ToolResult):
            return checked
        arguments = checked
        if self.needs_approval(call, tool):
            decided = await _ask_approval(call, tool, arguments, context)
            if isinstance(decided, ToolResult):
                return decided
            arguments = decided
        ran = ToolCall(call.name, arguments, id=call.id)
        self.calls.append(ran)
        with use_tool_context(context):
            result = await self.runner.run(tool, ran, arguments=arguments, context=context.run)
        if not result.is_error:
            result.content = _jsonable(result.content)
        return result


async def _ask_approval(
    call: ToolCall, tool: Tool, arguments: dict[str, Any], context: ToolContext[Any]
) -> dict[str, Any] | ToolResult:
    """The arguments to run with (the original or a human's edit), or the result refusing it,
    through the production approver (`InterruptApprover`) and answer parser."""
    from bastion.policy import ApprovalRequest, InterruptApprover, RiskSummary
    from bastion.tools import to_plain

    plain = to_plain(arguments)
    irreversible = tool.side_effect == "irreversible"
    risk = RiskSummary(
        tool=tool.name,
        side_effect=tool.side_effect,
        irreversible=irreversible,
        reasons=["test-approval"],
        text=f"ROUTINE: the agent wants to call {tool.name!r} ({tool.side_effect} side effect).",
    )
    request = ApprovalRequest(
        tool=tool.name,
        tool_call_id=call.id,
        arguments=plain,
        risk=risk,
        agent=context.agent,
        tenant=context.run.tenant,
        run_id=context.run.run_id,
        user=context.run.user,
    )
    answer = await InterruptApprover().decide(request)
    if answer.action == "reject":
        why = f" Reason: {answer.reason}" if answer.reason else ""
        return error_result(
            call,
            f"a human reviewer rejected this call to {tool.name!r}.{why} Do not retry it; "
            "tell the user what you intended and ask how to proceed.",
            "approval_rejected",
        )
    if answer.action == "edit":
        edited = ToolRunner.validate(tool, ToolCall(call.name, dict(answer.arguments or {}), id=call.id))
        return edited
    return arguments


__all__ = ["ApprovalRule", "DirectToolExecutor"]
