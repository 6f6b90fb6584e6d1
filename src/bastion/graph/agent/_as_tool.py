"""An agent as a tool: another agent delegates a task to it and gets its final answer back.

The sub-agent runs as a fresh, ephemeral conversation (it sees only the task), under the same
`RunContext` as the caller; its events join the caller's stream and its usage and cost the
caller's result; an interrupt inside it (an approval) pauses the caller, and resuming the
caller resumes it. The calling agent journals the tool call like any other, so a resumed
parent never re-runs a sub-agent that already answered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.errors import UserError
from bastion.graph import get_config
from bastion.graph.agent._nested import report_spend, run_nested
from bastion.tools import Tool, tool

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent


def agent_tool(agent: Agent[Any], *, name: str | None = None, description: str | None = None) -> Tool:
    async def run_agent(task: str) -> Any:
        """Args:
        task: what the agent should do, with every detail it needs (it sees nothing else)
        """
        # One tool call per engine task in the agent loop, so the task id names this call.
        try:
            key = f"as_tool:{get_config().task_id}:{agent.name}"
        except UserError:
            key = f"as_tool:{agent.name}"
        record = await run_nested(agent, task, key=key)
        report_spend(record)
        return record["output"]

    return tool(
        name=name or agent.name,
        description=description or agent.description or f"Ask the {agent.name} agent to do a task.",
        side_effect="none",
        idempotent=False,
        timeout=None,
        trust="untrusted",
    )(run_agent)
