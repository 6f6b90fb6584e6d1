"""What an agent sees of the conversation: tagging messages with their author and the filters
applied when control passes from one agent to another."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from bastion.types import Message, Part, ToolCall, ToolResult

HistoryFilter: TypeAlias = Callable[[Sequence[Message]], list[Message]]
"""Takes the history the handing-off agent saw, returns what the receiving agent will see."""

AGENT_KEY = "agent"  # message metadata key naming the agent that produced the message


def tag(message: Message, agent: str) -> Message:
    message.metadata[AGENT_KEY] = agent
    return message


def drop_tool_chatter(messages: Sequence[Message]) -> list[Message]:
    """The default handoff filter: keep user turns and assistant text, drop tool calls and tool
    results (the receiving agent has other tools, and the chatter costs tokens and can carry
    injected instructions)."""
    out: list[Message] = []
    for m in messages:
        if m.role == "tool":
            continue
        if m.role == "assistant" and m.tool_calls:
            parts: list[Part] = [p for p in m.parts if not isinstance(p, ToolCall | ToolResult)]
            if not parts:
                continue
            m = Message(m.role, parts, name=m.name, metadata=dict(m.metadata), id=m.id)
        out.append(m)
    return out


def keep_all(messages: Sequence[Message]) -> list[Message]:
    """A handoff filter that passes the whole history on unchanged."""
    return list(messages)


def last_user_message(messages: Sequence[Message]) -> list[Message]:
    """A handoff filter that passes on only the most recent user turn."""
    for m in reversed(messages):
        if m.role == "user":
            return [m]
    return []
