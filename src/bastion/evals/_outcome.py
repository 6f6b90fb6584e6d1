"""Outcome checks: is the end state right, whatever path the agent took?"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bastion.evals._types import Case, EvalResult, Trajectory


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value, ensure_ascii=False, default=str)


class OutcomeCheck:
    """Pass when every check passes; the score is the share that did.

    Checks: the run did not raise; `predicate(trajectory)` (a final-state predicate) is true;
    every string of `required_outputs` (and the case's `expected.output_contains`) appears in
    the output; the output equals `expected.output` when set; the final state contains every
    key/value of `expected.state`.
    """

    def __init__(
        self,
        predicate: Callable[[Trajectory], bool] | None = None,
        *,
        required_outputs: Sequence[str] = (),
        case_sensitive: bool = False,
        name: str = "outcome",
    ) -> None:
        self.predicate = predicate
        self.required_outputs = list(required_outputs)
        self.case_sensitive = case_sensitive
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def evaluate(self, case: Case, trajectory: Trajectory) -> EvalResult:
        checks: list[tuple[bool, str]] = [(trajectory.error is None, f"run raised: {trajectory.error}")]
        if self.predicate is not None:
            try:
                ok = bool(self.predicate(trajectory))
                why = "final-state predicate is false"
            except Exception as e:  # a predicate that crashes is a failed check, not a crashed eval
                ok, why = False, f"final-state predicate raised {type(e).__name__}: {e}"
            checks.append((ok, why))
        output = _text(trajectory.output)
        haystack = output if self.case_sensitive else output.lower()
        for needle in [*self.required_outputs, *case.expected.output_contains]:
            found = (needle if self.case_sensitive else needle.lower()) in haystack
            checks.append((found, f"output lacks {needle!r}"))
        exp = case.expected
        if exp.output is not None:
            same = (
                output.strip() == exp.output.strip() if isinstance(exp.output, str) else trajectory.output == exp.output
            )
            checks.append((same, f"output {output[:200]!r} != expected {_text(exp.output)[:200]!r}"))
        if exp.state is not None:
            state: Mapping[str, Any] = trajectory.state
            for key, value in exp.state.items():
                checks.append((key in state and state[key] == value, f"state[{key!r}] != {value!r}"))
        failures = [why for ok, why in checks if not ok]
        score = (len(checks) - len(failures)) / len(checks)
        passed = not failures
        return EvalResult(
            self.name, passed, score, "pass" if passed else "fail", "; ".join(failures) or "all checks pass"
        )
