"""An LLM judge of the path, not just the answer: it grades the sequence of tool calls and
their results (and, for sessions, the whole conversation) against a rubric."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from bastion.evals._judge import MAX_TOOL_RESULT_CHARS, LLMJudge, _render  # pyright: ignore[reportPrivateUsage]
from bastion.evals._types import Case, Trajectory
from bastion.types import ModelSettings

if TYPE_CHECKING:
    from bastion.gateway import Model


def trajectory_system(scale: float = 1.0) -> str:
    top = f"{scale:g}"
    return (
        "You are a strict, impartial evaluator of an AI agent's trajectory: the tools it called, "
        "in order, with their arguments and results. Grade the process against the rubric: "
        "right tools, right arguments, sensible order, no needless or harmful calls, errors "
        "handled. Answer with one JSON object and nothing else: "
        f'{{"reasoning": "<one or two sentences>", "score": <number from 0 to {top}>, "pass": <true|false>}}'
    )


class TrajectoryJudge(LLMJudge):
    """`LLMJudge` over the numbered steps of the trajectory. Same parsing, explicit `scale`
    and threshold rules; a run with no tool calls is judged as such (the rubric decides
    whether that is right)."""

    def __init__(
        self,
        model: Model,
        rubric: str,
        *,
        name: str = "trajectory_judge",
        threshold: float = 0.5,
        scale: float = 1.0,
        settings: ModelSettings | None = None,
    ) -> None:
        super().__init__(model, rubric, name=name, threshold=threshold, scale=scale, settings=settings)

    def system_prompt(self) -> str:
        return trajectory_system(self.scale)

    def prompt(self, case: Case, trajectory: Trajectory) -> str:
        parts = [f"## Rubric\n{self.rubric}", f"## Task given to the agent\n{_render(case.input)}"]
        if case.expected.tool_calls is not None:
            ref = "\n".join(f"- {c.name}({json.dumps(c.arguments, default=str)})" for c in case.expected.tool_calls)
            parts.append(f"## Reference trajectory\n{ref or '(no tool calls)'}")
        session = trajectory.state.get("session") if isinstance(trajectory.state, dict) else None
        if isinstance(session, dict) and session.get("turns"):
            convo = "\n".join(f"USER: {t['user']}\nAGENT: {t['agent']}" for t in session["turns"])
            parts.append(f"## Conversation ({session.get('ended')})\n{convo}")
        results = {r.tool_call_id: r for r in trajectory.tool_results}
        steps: list[str] = []
        for i, c in enumerate(trajectory.tool_calls, 1):
            steps.append(f"{i}. {c.name}({json.dumps(c.arguments, default=str)})")
            result = results.get(c.id)
            if result is None:
                steps.append("   (no result recorded)")
                continue
            text = result.content_text()
            if len(text) > MAX_TOOL_RESULT_CHARS:
                text = text[:MAX_TOOL_RESULT_CHARS] + f"... [{len(text) - MAX_TOOL_RESULT_CHARS} chars cut]"
            steps.append(f"   {'error' if result.is_error else 'returned'}: {text}")
        parts.append("## Trajectory (tool calls in order)\n" + ("\n".join(steps) or "(the agent called no tools)"))
        parts.append(f"## Agent's final output\n{_render(trajectory.output)}")
        if trajectory.error:
            parts.append(f"## The run failed with\n{trajectory.error}")
        return "\n\n".join(parts)


__all__ = ["TrajectoryJudge"]
