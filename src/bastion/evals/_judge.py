"""LLM-as-judge: any `Model` grades an attempt against a rubric.

The judge is asked for a JSON verdict; its answer is parsed robustly (code fences, prose
around the JSON, `PASS`/`FAIL` words, `score: 4/5`, 0-1 / 0-5 / 0-10 / 0-100 scales). An
answer that cannot be parsed or a failed judge call is a failed result with the reason, never
a crash of the evaluation.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.evals._types import Case, EvalResult, Trajectory
from bastion.types import Message, ModelRequest, ModelSettings

if TYPE_CHECKING:
    from bastion.gateway import Model

JUDGE_SYSTEM = (
    "You are a strict, impartial evaluator of an AI agent's work. Grade the agent's output "
    "against the rubric only. Answer with one JSON object and nothing else: "
    '{"reasoning": "<one or two sentences>", "score": <number from 0 to 1>, "pass": <true|false>}'
)


class Verdict(BaseModel):
    """The judge's answer, validated at the edge."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    score: float | None = None
    passed: bool | None = Field(default=None, alias="pass")
    reasoning: str = ""


_SCORE_KEYS = ("score", "rating", "grade", "value")
_PASS_KEYS = ("pass", "passed", "verdict", "result", "label")
_REASON_KEYS = ("reasoning", "reason", "explanation", "rationale", "justification")


def _normalise_score(value: Any, scale: float | None = None) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*(%?)\s*", value)
        if not m:
            return None
        num = float(m.group(1))
        if m.group(2):
            scale = float(m.group(2))
        elif m.group(3):
            scale = 100.0
        value = num
    if not isinstance(value, int | float):
        return None
    v = float(value)
    if scale is None:
        # The judge was asked for 0-1; larger numbers mean it used a common wider scale.
        scale = 1.0 if v <= 1 else 5.0 if v <= 5 else 10.0 if v <= 10 else 100.0
    return max(0.0, min(1.0, v / scale)) if scale > 0 else None


def _normalise_pass(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in {"pass", "passed", "yes", "true", "correct", "acceptable", "good"}:
            return True
        if v in {"fail", "failed", "no", "false", "incorrect", "unacceptable", "bad"}:
            return False
    return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def parse_verdict(text: str) -> Verdict | None:
    """Best-effort verdict from a judge's raw answer; None when nothing usable is in it."""
    for obj in _json_objects(text):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        score = next((_normalise_score(lowered[k]) for k in _SCORE_KEYS if k in lowered), None)
        passed = next((_normalise_pass(lowered[k]) for k in _PASS_KEYS if k in lowered), None)
        reason = next((str(lowered[k]) for k in _REASON_KEYS if k in lowered), "")
        if score is not None or passed is not None:
            try:
                return Verdict.model_validate({"score": score, "pass": passed, "reasoning": reason})
            except ValidationError:
                continue
    m = re.search(
        r"(?:score|rating|grade)\s*[:=]?\s*\**\s*([0-9]*\.?[0-9]+)\s*(?:/\s*([0-9]*\.?[0-9]+)|(%))?", text, re.I
    )
    score = None
    if m:
        scale = float(m.group(2)) if m.group(2) else 100.0 if m.group(3) else None
        score = _normalise_score(float(m.group(1)), scale)
    words = re.findall(r"\b(PASS(?:ED)?|FAIL(?:ED)?)\b", text, re.I)
    passed = _normalise_pass(words[-1]) if words else None
    if score is None and passed is None:
        return None
    return Verdict.model_validate({"score": score, "pass": passed, "reasoning": text.strip()[:500]})


def _render(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


class LLMJudge:
    """Grade each attempt with `model` against `rubric`. Passes on an explicit verdict, else
    on `score >= threshold`."""

    def __init__(
        self,
        model: Model,
        rubric: str,
        *,
        name: str = "llm_judge",
        threshold: float = 0.5,
        show_trajectory: bool = True,
        settings: ModelSettings | None = None,
    ) -> None:
        self.model = model
        self.rubric = rubric
        self.threshold = threshold
        self.show_trajectory = show_trajectory
        self.settings = settings or ModelSettings(temperature=0.0)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def prompt(self, case: Case, trajectory: Trajectory) -> str:
        parts = [f"## Rubric\n{self.rubric}", f"## Task given to the agent\n{_render(case.input)}"]
        if case.expected.output is not None:
            parts.append(f"## Reference answer\n{_render(case.expected.output)}")
        if self.show_trajectory and trajectory.tool_calls:
            calls = "\n".join(f"- {c.name}({json.dumps(c.arguments, default=str)})" for c in trajectory.tool_calls)
            parts.append(f"## Tool calls the agent made\n{calls}")
        parts.append(f"## Agent's final output\n{_render(trajectory.output)}")
        if trajectory.error:
            parts.append(f"## The run failed with\n{trajectory.error}")
        return "\n\n".join(parts)

    async def evaluate(self, case: Case, trajectory: Trajectory) -> EvalResult:
        request = ModelRequest(
            [Message.system(JUDGE_SYSTEM), Message.user(self.prompt(case, trajectory))], settings=self.settings
        )
        try:
            response = await self.model.request(request)
        except Exception as e:
            return EvalResult(self.name, False, 0.0, "judge_error", f"judge call failed: {type(e).__name__}: {e}")
        verdict = parse_verdict(response.text)
        if verdict is None:
            return EvalResult(
                self.name, False, 0.0, "unparseable", f"could not parse the judge's verdict: {response.text[:300]!r}"
            )
        score = verdict.score if verdict.score is not None else (1.0 if verdict.passed else 0.0)
        passed = verdict.passed if verdict.passed is not None else score >= self.threshold
        return EvalResult(self.name, passed, score, "pass" if passed else "fail", verdict.reasoning)
