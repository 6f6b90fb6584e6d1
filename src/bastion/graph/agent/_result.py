"""What a run returns and what `Agent.stream` yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias

from typing_extensions import TypeVar  # `default=`: `Agent(model)` (no output_type) is an `Agent[str]`

from bastion.types import Message, ToolCall, ToolResult, Usage

OutputT = TypeVar("OutputT", default=str)


@dataclass(slots=True)
class AgentResult(Generic[OutputT]):
    """The outcome of one `Agent.run`.

    `output` is the final answer (text, or an instance of `output_type`); it is None when the run
    stopped at an interrupt, in which case `interrupts` holds what it waits for and
    `Agent.resume(value, thread_id=result.thread_id)` continues it.
    """

    output: OutputT | None
    messages: list[Message]  # the whole thread, oldest first
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0  # USD, as priced by the gateway
    interrupts: list[Any] = field(default_factory=list)
    thread_id: str = ""
    agent: str = ""  # the agent that produced the final answer (after handoffs)
    turns: int = 0  # model calls made in this run

    @property
    def interrupted(self) -> bool:
        return bool(self.interrupts)

    @property
    def text(self) -> str:
        """The last assistant message's text."""
        for m in reversed(self.messages):
            if m.role == "assistant" and m.text:
                return m.text
        return ""


# --- stream events ---------------------------------------------------------------------------


@dataclass(slots=True)
class TokenEvent:
    """A fragment of model text, as it streams."""

    agent: str
    text: str
    kind: Literal["token"] = "token"


@dataclass(slots=True)
class ToolCallEvent:
    """A model asked for a tool call (emitted before the call runs)."""

    agent: str
    call: ToolCall
    kind: Literal["tool_call"] = "tool_call"


@dataclass(slots=True)
class ToolResultEvent:
    agent: str
    result: ToolResult
    kind: Literal["tool_result"] = "tool_result"


@dataclass(slots=True)
class MessageEvent:
    """A complete assistant message (after its tokens streamed)."""

    agent: str
    message: Message
    kind: Literal["message"] = "message"


@dataclass(slots=True)
class HandoffEvent:
    source: str
    target: str
    kind: Literal["handoff"] = "handoff"


@dataclass(slots=True)
class RunDone(Generic[OutputT]):
    """Always the last event of `Agent.stream`."""

    result: AgentResult[OutputT]
    kind: Literal["done"] = "done"


AgentEvent: TypeAlias = TokenEvent | ToolCallEvent | ToolResultEvent | MessageEvent | HandoffEvent | RunDone[Any]
