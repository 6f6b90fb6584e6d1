"""The data of an evaluation: cases, what was expected, what a run produced, and results."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bastion.types import Message, ToolCall, ToolResult, new_id


def call_from_dict(data: Mapping[str, Any]) -> ToolCall:
    if "name" not in data:
        raise ValueError(f"a tool call needs a 'name': {dict(data)!r}")
    args = data.get("arguments") or data.get("args") or {}
    if isinstance(args, str):
        args = json.loads(args)
    return ToolCall(str(data["name"]), dict(args), id=str(data.get("id") or new_id("call_")))


def call_to_dict(call: ToolCall) -> dict[str, Any]:
    return {"name": call.name, "arguments": call.arguments}


@dataclass(slots=True)
class Expected:
    """What a correct run looks like; every field is optional."""

    tool_calls: list[ToolCall] | None = None  # the reference trajectory
    output: Any = None  # the exact final output
    output_contains: list[str] = field(default_factory=list)  # strings the output must contain
    state: dict[str, Any] | None = None  # key/values the final state must contain

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.tool_calls is not None:
            d["tool_calls"] = [call_to_dict(c) for c in self.tool_calls]
        if self.output is not None:
            d["output"] = self.output
        if self.output_contains:
            d["output_contains"] = list(self.output_contains)
        if self.state is not None:
            d["state"] = self.state
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Expected:
        unknown = set(data) - {"tool_calls", "output", "output_contains", "state"}
        if unknown:
            raise ValueError(
                f"unknown expected fields {sorted(unknown)}; use tool_calls, output, output_contains, state"
            )
        calls = data.get("tool_calls")
        return cls(
            tool_calls=[call_from_dict(c) for c in calls] if calls is not None else None,
            output=data.get("output"),
            output_contains=list(data.get("output_contains") or []),
            state=dict(data["state"]) if data.get("state") is not None else None,
        )


@dataclass(slots=True)
class Case:
    """One evaluation case: an input for the agent and what is expected of it."""

    input: Any
    expected: Expected = field(default_factory=Expected)
    id: str = field(default_factory=lambda: new_id("case_"))
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "input": self.input}
        exp = self.expected.to_dict()
        if exp:
            d["expected"] = exp
        if self.metadata:
            d["metadata"] = self.metadata
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Case:
        if "input" not in data:
            raise ValueError("a case needs an 'input'")
        return cls(
            input=data["input"],
            expected=Expected.from_dict(data.get("expected") or {}),
            id=str(data.get("id") or new_id("case_")),
            metadata=dict(data.get("metadata") or {}),
        )


@dataclass(slots=True)
class Trajectory:
    """What one run of the agent did: its tool calls in order (and what they returned), final
    output and state."""

    tool_calls: list[ToolCall] = field(default_factory=list)
    output: Any = None
    state: Mapping[str, Any] = field(default_factory=dict)
    messages: Sequence[Message] = ()
    error: str | None = None  # the run raised; evaluators treat it as failed
    trace_id: str | None = None
    tool_results: list[ToolResult] = field(default_factory=list)

    @classmethod
    def from_messages(cls, messages: Sequence[Message], *, state: Mapping[str, Any] | None = None) -> Trajectory:
        """Tool calls from the assistant messages, their results from the tool messages; the
        output is the last assistant text."""
        calls = [c for m in messages if m.role == "assistant" for c in m.tool_calls]
        results = [r for m in messages if m.role == "tool" for r in m.tool_results]
        output = next((m.text for m in reversed(messages) if m.role == "assistant" and m.text), None)
        return cls(
            tool_calls=calls, output=output, state=dict(state or {}), messages=list(messages), tool_results=results
        )


NOT_APPLICABLE = "not_applicable"


@dataclass(slots=True)
class EvalResult:
    """One evaluator's verdict on one attempt. `applicable=False` means the evaluator had
    nothing to judge (e.g. a trajectory match on a case without a reference trajectory): the
    result neither passes nor fails the attempt and is left out of the evaluator's mean."""

    name: str
    passed: bool
    score: float
    label: str | None = None
    explanation: str = ""
    applicable: bool = True

    @classmethod
    def not_applicable(cls, name: str, why: str) -> EvalResult:
        return cls(name, True, 0.0, NOT_APPLICABLE, why, applicable=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "score": self.score,
            "label": self.label,
            "explanation": self.explanation,
        }
        if not self.applicable:
            d["applicable"] = False
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        return cls(
            name=data["name"],
            passed=bool(data["passed"]),
            score=float(data["score"]),
            label=data.get("label"),
            explanation=data.get("explanation") or "",
            applicable=bool(data.get("applicable", True)),
        )


class Evaluator(Protocol):
    """Scores one attempt. `name` labels its results (and the evaluation event on the span)."""

    @property
    def name(self) -> str: ...

    async def evaluate(self, case: Case, trajectory: Trajectory) -> EvalResult: ...
