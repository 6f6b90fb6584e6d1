"""The agent loop and multi-agent patterns, built as graphs on the durable engine.

- `Agent`: model → parallel tool calls (through the tool gateway) → model … → final answer
  (text or validated structured output); durable, resumable after interrupts, streamable.
- `ModelSource`: what `gateway=` must provide (`bastion.Gateway` is one); the checkpointer is
  a `bastion.checkpoint.Checkpointer`.
- Handoffs (`handoff`, history filters), agents as tools (`Agent.as_tool`), a `Supervisor`
  that routes to member agents, and `PlanExecuteVerify` (planner → executors, step by step →
  verifier).

This package is not the engine (`bastion.graph`), the model gateway (`bastion.gateway`) or the
tool gateway (`bastion.policy`): it only composes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr
from bastion.graph.agent._history import HistoryFilter, drop_tool_chatter, keep_all, last_user_message
from bastion.graph.agent._result import (
    AgentEvent,
    AgentResult,
    HandoffEvent,
    MessageEvent,
    RunDone,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent
    from bastion.graph.agent._handoff import Handoff, handoff
    from bastion.graph.agent._plan import Plan, PlanExecuteVerify, PlanOutcome, PlanStep, Verdict
    from bastion.graph.agent._resolve import ModelSource
    from bastion.graph.agent._supervisor import Router, Supervisor

# Imported on first use: they pull in pydantic and the engine.
_LAZY: dict[str, str] = {
    "Agent": "bastion.graph.agent._agent",
    "Handoff": "bastion.graph.agent._handoff",
    "handoff": "bastion.graph.agent._handoff",
    "ModelSource": "bastion.graph.agent._resolve",
    "Plan": "bastion.graph.agent._plan",
    "PlanExecuteVerify": "bastion.graph.agent._plan",
    "PlanOutcome": "bastion.graph.agent._plan",
    "PlanStep": "bastion.graph.agent._plan",
    "Verdict": "bastion.graph.agent._plan",
    "Router": "bastion.graph.agent._supervisor",
    "Supervisor": "bastion.graph.agent._supervisor",
}

__all__ = [
    "Agent",
    "AgentEvent",
    "AgentResult",
    "Handoff",
    "HandoffEvent",
    "HistoryFilter",
    "MessageEvent",
    "ModelSource",
    "Plan",
    "PlanExecuteVerify",
    "PlanOutcome",
    "PlanStep",
    "Router",
    "RunDone",
    "Supervisor",
    "TokenEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "Verdict",
    "drop_tool_chatter",
    "handoff",
    "keep_all",
    "last_user_message",
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
