"""Helpers for multi-agent graphs: running a member as one step (journalled, interruptible;
see `_nested.py`) and rolling its spend up into the parent's result."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from bastion.graph.agent._nested import run_nested
from bastion.types import Message, Usage

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent, AgentInput


async def run_member(agent: Agent[Any], input: AgentInput, *, key: str) -> dict[str, Any]:
    """Run a member agent to its final answer inside the current node; see `run_nested`."""
    return await run_nested(agent, input, key=key)


def spend_of(record: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """A spend entry (appended to the state) for one member's record."""
    return {"run_id": run_id, "usage": dict(record.get("usage") or {}), "cost": float(record.get("cost") or 0.0)}


def total_spend(entries: Iterable[Mapping[str, Any]], run_id: str | None) -> tuple[Usage, float]:
    """Usage and cost of one run (a thread keeps the entries of all its runs)."""
    usage = Usage()
    cost = 0.0
    for entry in entries:
        if entry.get("run_id") != run_id:
            continue
        usage = usage + Usage.from_dict(entry.get("usage") or {})
        cost += float(entry.get("cost") or 0.0)
    return usage, cost


def said_by(agent: str, text: str) -> Message:
    """An assistant message attributed to a member agent."""
    from bastion.graph.agent._history import tag

    message = Message.assistant(text)
    message.name = agent
    return tag(message, agent)


def output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    import json

    return json.dumps(output, ensure_ascii=False, default=str)
