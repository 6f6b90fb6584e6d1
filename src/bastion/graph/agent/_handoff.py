"""Handoffs: one agent transfers the conversation (and control) to another.

The model sees a tool `transfer_to_<agent>`; calling it ends the current agent's turn and the
target agent continues the same thread, seeing the history through a filter (by default
without the handing-off agent's tool chatter). With `return_to_caller=True` the target works
on the caller's behalf: its final answer goes back to the caller as the result of the
`transfer_to_<agent>` call and the caller continues (LangGraph swarm's "handoff back").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bastion.graph.agent._history import HistoryFilter, drop_tool_chatter
from bastion.types import ToolSpec

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent


@dataclass(slots=True)
class Handoff:
    target: Agent[Any]
    tool_name: str
    description: str
    filter: HistoryFilter
    return_to_caller: bool = False

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            self.tool_name,
            self.description,
            {
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "why you hand over"}},
                "additionalProperties": False,
            },
        )


def handoff(
    target: Agent[Any],
    *,
    tool_name: str | None = None,
    description: str | None = None,
    filter: HistoryFilter = drop_tool_chatter,
    return_to_caller: bool = False,
) -> Handoff:
    """Let an agent hand the conversation to `target`.

    `filter` decides what history `target` sees (default: `drop_tool_chatter`; see also
    `keep_all`, `last_user_message`, or any `(messages) -> messages` function).
    `return_to_caller=True`: when `target` gives its final answer, control returns to the
    calling agent, which sees the answer as the transfer tool's result and carries on.
    """
    return Handoff(
        target=target,
        tool_name=tool_name or f"transfer_to_{target.name}",
        description=description
        or f"Hand the conversation over to {target.name}" + (f": {target.description}" if target.description else "."),
        filter=filter,
        return_to_caller=return_to_caller,
    )
