"""LLM-as-judge: any `Model` grades an attempt against a rubric.

The judge is asked for a JSON verdict with a score on an explicit scale (`scale=`, 0-1 by
default); its answer is parsed robustly (code fences, prose around the JSON, `PASS`/`FAIL`
words, `score: 4/5`, `7 out of 10`, `85%`). A bare number is read on the judge's `scale` and
never guessed from its size: a score outside the scale is a failed result that says so. An
answer that cannot be parsed or a failed judge call is a failed result with the reason,
never a crash of the evaluation.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.errors import UserError
from bastion.evals._types import Case, EvalResult, Trajectory
from bastion.types import Message, ModelRequest, ModelSettings

if TYPE_CHECKING:
    from bastion.gateway import Model


def judge_system(scale: float = 1.0) -> str:
    top = f"{scale:g}"
    return (
        "You are a strict, impartial evaluator of an AI agent's work. Grade the agent's output "
        "against the rubric only. Answer with one JSON object and nothing else: "
        f'{{"reasoning": "<one or two sentences>", "score": <number from 0 to {top}>, "pass": <true|false>}}'
    )


JUDGE_SYSTEM = judge_system()
MAX_TOOL_RESULT_CHARS = 2000


class Verdict(BaseModel):
    """The judge's answer, validated at the edge."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    score: float | None = None
    passed: bool | None = Field(default=None, alias="pass")
    reasoning: str = ""
    problem: str = ""  # set when the answer's score cannot be trusted (e.g. outside the scale)


_SCORE_KEYS = ("score", "rating", "grade", "value")
_PASS_KEYS = ("pass", "passed", "verdict", "result", "label")
_REASON_KEYS = ("reasoning", "reason", "explanation", "rationale", "justification")


class _OutOfScale(ValueError):
    pass


_NUM = r"([0-9]*\.?[0-9]+)"
_SCORE_TEXT = re.compile(rf"\s*{_NUM}\s*(?:(?:/|out\s+of)\s*{_NUM}|(%|percent\b))?", re.I)


def _normalise_score(value: Any, scale: float) -> float | None:
    """A 0-1 score. A fraction (`7/10`, `7 out of 10`) or a percentage carries its own scale;
    a bare number is on `scale`, and one outside it raises `_OutOfScale`."""
    if isinstance(value, bool) or value is None:
        return None
    own_scale: float | None = None
    if isinstance(value, str):
        m = _SCORE_TEXT.fullmatch(value.strip())
        if not m:
            return None
        value = float(m.group(1))
        own_scale = float(m.group(2)) if m.group(2) else 100.0 if m.group(3) else None
    if not isinstance(value, int | float):
        return None
    v = float(value)
    top = own_scale if own_scale is not None else scale
    if top <= 0:
        return None
    if not 0.0 <= v <= top:
        raise _OutOfScale(
            f"the judge answered score {v:g}, outside the scale 0-{top:g}; if the rubric asks for "
            f"another scale pass LLMJudge(scale=...) to match it"
        )
    return v / top


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


# Judges write `"score": 85%`, which is not JSON; quote the percentage so it decodes.
_BARE_PERCENT = re.compile(r"(:\s*)(-?[0-9]*\.?[0-9]+\s*%)")


def _json_objects(text: str) -> list[dict[str, Any]]:
    text = _BARE_PERCENT.sub(lambda m: f'{m.group(1)}"{m.group(2)}"', text)
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


_TEXT_SCORE = re.compile(
    rf"(?:score|rating|grade)\s*(?:of|is|[:=\-])?\s*\**\s*{_NUM}\s*(?:(?:/|out\s+of)\s*{_NUM}|(%|percent\b))?",
    re.I,
)
_LONE_PERCENT = re.compile(rf"(?<![\w.]){_NUM}\s*%")


def parse_verdict(text: str, *, scale: float = 1.0) -> Verdict | None:
    """Best-effort verdict from a judge's raw answer; None when nothing usable is in it. A
    bare score is read on `scale`; one outside it gives a verdict with `problem` set."""
    for obj in _json_objects(text):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        problem = ""
        try:
            score = next((_normalise_score(lowered[k], scale) for k in _SCORE_KEYS if k in lowered), None)
        except _OutOfScale as e:
            score, problem = None, str(e)
        passed = next((_normalise_pass(lowered[k]) for k in _PASS_KEYS if k in lowered), None)
        reason = next((str(lowered[k]) for k in _REASON_KEYS if k in lowered), "")
        if score is not None or passed is not None or problem:
            try:
                return Verdict.model_validate({"score": score, "pass": passed, "reasoning": reason, "problem": problem})
            except ValidationError:
                continue
    score: float | None = None
    problem = ""
    m = _TEXT_SCORE.search(text) or _LONE_PERCENT.search(text)
    if m:
        groups = m.groups()
        raw = groups[0]
        if len(groups) == 1:
            raw += "%"
        elif groups[1]:
            raw += f"/{groups[1]}"
        elif groups[2]:
            raw += "%"
        try:
            score = _normalise_score(raw, scale)
        except _OutOfScale as e:
            problem = str(e)
    words = re.findall(r"\b(PASS(?:ED)?|FAIL(?:ED)?)\b", text, re.I)
    passed = _normalise_pass(words[-1]) if words else None
    if score is None and passed is None and not problem:
        return None
    return Verdict.model_validate({"score": score, "pass": passed, "reasoning": text.strip()[:500], "problem": problem})


def _render(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


class LLMJudge:
    """Grade each attempt with `model` against `rubric`. Passes on an explicit verdict, else
    on `score >= threshold` (scores are normalised to 0-1). `scale` is the top of the scale
    the judge is asked to score on (1 by default; say 10 if the rubric grades out of 10)."""

    def __init__(
        self,
        model: Model,
        rubric: str,
        *,
        name: str = "llm_judge",
        threshold: float = 0.5,
        scale: float = 1.0,
        show_trajectory: bool = True,
        settings: ModelSettings | None = None,
    ) -> None:
        if not scale > 0:
            raise UserError(f"LLMJudge scale={scale} must be positive: the top of the judge's scale, e.g. 1, 5 or 10")
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"LLMJudge threshold={threshold} is a 0-1 fraction of the scale (0.7 = 7 of 10)")
        self.model = model
        self.rubric = rubric
        self.threshold = threshold
        self.scale = scale
        self.show_trajectory = show_trajectory
        self.settings = settings or ModelSettings(temperature=0.0)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def system_prompt(self) -> str:
        return judge_system(self.scale)

    def prompt(self, case: Case, trajectory: Trajectory) -> str:
        parts = [f"## Rubric\n{self.rubric}", f"## Task given to the agent\n{_render(case.input)}"]
        if case.expected.output is not None:
            parts.append(f"## Reference answer\n{_render(case.expected.output)}")
        if self.show_trajectory and trajectory.tool_calls:
            results = {r.tool_call_id: r for r in trajectory.tool_results}
            lines: list[str] = []
            for c in trajectory.tool_calls:
                lines.append(f"- {c.name}({json.dumps(c.arguments, default=str)})")
                result = results.get(c.id)
                if result is not None:
                    text = result.content_text()
                    if len(text) > MAX_TOOL_RESULT_CHARS:
                        text = text[:MAX_TOOL_RESULT_CHARS] + f"... [{len(text) - MAX_TOOL_RESULT_CHARS} chars cut]"
                    lines.append(f"  {'error' if result.is_error else 'returned'}: {text}")
            parts.append("## Tool calls the agent made, with their results\n" + "\n".join(lines))
        parts.append(f"## Agent's final output\n{_render(trajectory.output)}")
        if trajectory.error:
            parts.append(f"## The run failed with\n{trajectory.error}")
        return "\n\n".join(parts)

    async def evaluate(self, case: Case, trajectory: Trajectory) -> EvalResult:
        request = ModelRequest(
            [Message.system(self.system_prompt()), Message.user(self.prompt(case, trajectory))],
            settings=self.settings,
        )
        try:
            response = await self.model.request(request)
        except Exception as e:
            return EvalResult(self.name, False, 0.0, "judge_error", f"judge call failed: {type(e).__name__}: {e}")
        verdict = parse_verdict(response.text, scale=self.scale)
        if verdict is None:
            return EvalResult(
                self.name, False, 0.0, "unparseable", f"could not parse the judge's verdict: {response.text[:300]!r}"
            )
        if verdict.problem:
            return EvalResult(self.name, False, 0.0, "out_of_scale", f"{verdict.problem}: {response.text[:300]!r}")
        score = verdict.score if verdict.score is not None else (1.0 if verdict.passed else 0.0)
        passed = verdict.passed if verdict.passed is not None else score >= self.threshold
        return EvalResult(self.name, passed, score, "pass" if passed else "fail", verdict.reasoning)
