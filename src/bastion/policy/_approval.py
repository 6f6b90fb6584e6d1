"""Human approval of risky tool calls.

When the policy says `require_approval`, the gateway builds an `ApprovalRequest` with a RISK
SUMMARY written by Bastion from the call's arguments and the tool's metadata (never by the
model, which may be under an attacker's influence), and asks an `Approver`. The default
approver pauses the run through the graph engine's `interrupt()`; resume it with one of::

    {"action": "approve"}
    {"action": "edit", "arguments": {...}}     # re-validated and re-checked by the policy
    {"action": "reject", "reason": "wrong payee"}

(`True` / `"approve"` / `{"approved": true}` are accepted too.) A CLI, web UI or callback can
decide synchronously instead by implementing `Approver`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from bastion.errors import UserError

ApprovalAction = Literal["approve", "edit", "reject"]


@dataclass(slots=True)
class RiskSummary:
    tool: str
    side_effect: str
    irreversible: bool
    amounts: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    untrusted_values: list[dict[str, Any]] = field(default_factory=list)  # value, argument, sources
    injection_signals: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    text: str = ""
    # "flagged": something points at an attack (an untrusted or invented key value, an
    # unrequested action, an injection signal); "routine": a human can judge it on its face.
    flagged: bool = False
    level: Literal["flagged", "routine"] = "routine"
    arguments: list[dict[str, Any]] = field(default_factory=list)  # per-value provenance


@dataclass(slots=True)
class ApprovalRequest:
    tool: str
    tool_call_id: str
    arguments: dict[str, Any]  # redacted
    risk: RiskSummary
    agent: str
    tenant: str
    run_id: str | None
    user: str | None

    def to_payload(self) -> dict[str, Any]:
        """The JSON-able interrupt payload a UI shows."""
        return {"type": "tool_approval", **asdict(self)}


@dataclass(slots=True)
class ApprovalDecision:
    action: ApprovalAction
    arguments: dict[str, Any] | None = None  # for "edit"
    reason: str = ""
    approver: str | None = None


class Approver(Protocol):
    async def decide(self, request: ApprovalRequest) -> ApprovalDecision: ...


class _ResumeValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: ApprovalAction
    arguments: dict[str, Any] | None = None
    reason: str = ""
    approver: str | None = None


def parse_resume(value: Any) -> ApprovalDecision:
    """Normalise what a human resumed the run with; unclear answers are a `UserError`
    (never read as consent)."""
    if isinstance(value, ApprovalDecision):
        return value
    if value is True or value == "approve":
        return ApprovalDecision("approve")
    if value is False or value == "reject":
        return ApprovalDecision("reject")
    if isinstance(value, Mapping) and "approved" in value and "action" not in value:
        return ApprovalDecision(
            "approve" if value["approved"] is True else "reject", reason=str(value.get("reason", ""))
        )
    try:
        parsed = _ResumeValue.model_validate(value)
    except ValidationError as e:
        raise UserError(
            "resume an approval with {'action': 'approve'}, {'action': 'edit', 'arguments': {...}} or "
            f"{{'action': 'reject', 'reason': '...'}}; got {value!r} ({e.error_count()} problem(s))"
        ) from None
    if parsed.action == "edit" and parsed.arguments is None:
        raise UserError("an 'edit' approval needs the new 'arguments' object")
    return ApprovalDecision(parsed.action, parsed.arguments, parsed.reason, parsed.approver)


class InterruptApprover:
    """Pauses the graph run (`bastion.graph.interrupt`) until a human resumes it."""

    async def decide(self, request: ApprovalRequest) -> ApprovalDecision:
        from bastion import graph

        interrupt: Any = getattr(graph, "interrupt", None)
        if interrupt is None:
            raise UserError(
                "this call needs human approval but no graph engine is running it; pass "
                "ToolGateway(approver=CallbackApprover(...)) to decide approvals in-process"
            )
        try:
            answer = interrupt(request.to_payload())
        except UserError as e:  # not inside a graph node, or no checkpointer
            raise UserError(
                f"{e}. The call to {request.tool!r} needs human approval, which pauses the run through the "
                "graph engine: run the agent with a checkpointer, or decide in-process with "
                "ToolGateway(approver=CallbackApprover(...))"
            ) from e
        if inspect.isawaitable(answer):
            answer = await answer
        return parse_resume(answer)


class CallbackApprover:
    """Decides with a function (sync or async) of the request: a CLI prompt, a web hook."""

    def __init__(self, fn: Callable[[ApprovalRequest], Any | Awaitable[Any]]) -> None:
        self._fn = fn

    async def decide(self, request: ApprovalRequest) -> ApprovalDecision:
        answer = self._fn(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return parse_resume(answer)


_ORIGIN_TEXT = {
    "user": "from the user's request",
    "trusted": "from trusted data",
    "schema": "a fixed choice of the tool",
    "declassified": "from tool output the policy allows here",
    "untrusted": "UNTRUSTED: only in tool output",
    "invented": "NOT IN THE CONVERSATION: the model made it up",
}


def describe_argument(arg: Mapping[str, Any]) -> str:
    """One line a human can judge: the value, where it came from, and a mark when it is risky."""
    origin = str(arg.get("origin", ""))
    where = _ORIGIN_TEXT.get(origin, origin)
    sources = [str(s) for s in arg.get("sources") or [] if s != "user"]
    if sources and origin in ("trusted", "declassified", "untrusted"):
        where += f" ({', '.join(sources)})"
    note = str(arg.get("note") or "")
    if note and note not in where and origin != "invented":
        where += f"; {note}"
    mark = "⚠ " if origin in ("untrusted", "invented") and arg.get("key", True) else ""
    return f"{mark}{arg.get('argument')} = {arg.get('value')!s} [{where}]"


def summarize_risk(
    *,
    tool: str,
    side_effect: str,
    amounts: list[str],
    recipients: list[str],
    hosts: list[str],
    untrusted: list[dict[str, Any]],
    injection: list[str],
    reasons: list[str],
    arguments: list[dict[str, Any]] | None = None,
    flagged: bool = False,
) -> RiskSummary:
    irreversible = side_effect == "irreversible"
    arguments = list(arguments or [])
    level: Literal["flagged", "routine"] = "flagged" if flagged else "routine"
    parts = [
        f"{level.upper()}: the agent wants to call {tool!r} "
        f"({side_effect} side effect{', cannot be undone' if irreversible else ''})."
    ]
    risky = [a for a in arguments if a.get("origin") in ("untrusted", "invented") and a.get("key", True)]
    invented = [a for a in risky if a.get("origin") == "invented"]
    if invented:
        parts.append(
            "Not in the conversation (invented by the model): "
            + ", ".join(f"{a['argument']} = {a['value']}" for a in invented)
            + "."
        )
    if untrusted:
        listed = "; ".join(
            f"{u['value']} in {u['argument']} (from {', '.join(u['sources']) or 'tool output'})" for u in untrusted
        )
        parts.append(f"Values that come from untrusted tool output, not from the user: {listed}.")
    if arguments:
        parts.append("Arguments: " + "; ".join(describe_argument(a) for a in arguments) + ".")
    if amounts:
        parts.append(f"Amounts: {', '.join(amounts)}.")
    if recipients:
        parts.append(f"Recipients: {', '.join(recipients)}.")
    if hosts:
        parts.append(f"Network hosts: {', '.join(hosts)}.")
    if injection:
        parts.append(f"Possible prompt injection seen in this run: {', '.join(injection)}.")
    if reasons:
        parts.append(f"Flagged by: {', '.join(reasons)}.")
    return RiskSummary(
        tool=tool,
        side_effect=side_effect,
        irreversible=irreversible,
        amounts=amounts,
        recipients=recipients,
        hosts=hosts,
        untrusted_values=untrusted,
        injection_signals=injection,
        reasons=reasons,
        text=" ".join(parts),
        flagged=flagged,
        level=level,
        arguments=arguments,
    )


__all__ = [
    "ApprovalAction",
    "ApprovalDecision",
    "ApprovalRequest",
    "Approver",
    "CallbackApprover",
    "InterruptApprover",
    "RiskSummary",
    "describe_argument",
    "parse_resume",
    "summarize_risk",
]
