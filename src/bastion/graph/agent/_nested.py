"""Running an agent inside another agent's step (agents as tools, supervisor members,
plan executors): its events reach the outer stream, its spend the outer result."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from bastion.graph.agent._result import AgentResult, RunDone
from bastion.graph.agent._runtime import current_runtime

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent, AgentInput

# Spend of nested runs made while one outer step runs (a list shared with copied contexts:
# tools may run in other tasks or threads).
_SPEND: ContextVar[list[dict[str, Any]] | None] = ContextVar("bastion_agent_spend", default=None)


@contextmanager
def collect_spend() -> Generator[list[dict[str, Any]]]:
    spent: list[dict[str, Any]] = []
    token = _SPEND.set(spent)
    try:
        yield spent
    finally:
        _SPEND.reset(token)


def report_spend(result: AgentResult[Any]) -> None:
    sink = _SPEND.get()
    if sink is not None:
        sink.append({"agent": result.agent, "usage": result.usage.to_dict(), "cost": result.cost})


async def run_nested(agent: Agent[Any], input: AgentInput) -> AgentResult[Any]:
    """Run `agent` to its end as an ephemeral sub-run under the outer run's context; while the
    outer run streams, forward the sub-run's events (they carry the sub-agent's name)."""
    runtime = current_runtime()
    if not runtime.streaming:
        return await agent.run(input, context=runtime.context)
    from bastion.graph import emit

    result: AgentResult[Any] | None = None
    async for event in agent.stream(input, context=runtime.context):
        if isinstance(event, RunDone):
            result = event.result
        else:
            emit(event.kind, event)
    assert result is not None  # stream() always ends with RunDone
    return result
