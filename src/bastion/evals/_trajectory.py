"""Trajectory evaluators: did the agent call the right tools, with the right arguments?

Trajectory modes (actual = what the agent called, reference = expected):
  strict     same calls in the same order
  unordered  same calls, any order
  subset     every actual call is in the reference (the agent did nothing extra)
  superset   every reference call was made (extra calls allowed)
Argument modes (per call, overridable per tool, or any `(actual, expected) -> bool`):
  exact      equal arguments
  ignore     only the tool name matters
  subset     the actual arguments are a subset of the reference's
  superset   the actual arguments include every reference argument
Calls are paired by maximum bipartite matching, so the first plausible pairing never hides
a valid one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from bastion.errors import UserError
from bastion.evals._types import Case, EvalResult, Trajectory
from bastion.types import ToolCall

TrajectoryMode = Literal["strict", "unordered", "subset", "superset"]
ArgMode = Literal["exact", "ignore", "subset", "superset"]
ArgMatcher = ArgMode | Callable[[Mapping[str, Any], Mapping[str, Any]], bool]

_TRAJECTORY_MODES = ("strict", "unordered", "subset", "superset")
_ARG_MODES = ("exact", "ignore", "subset", "superset")


def _included(small: Mapping[str, Any], big: Mapping[str, Any]) -> bool:
    return all(k in big and big[k] == v for k, v in small.items())


def args_match(actual: Mapping[str, Any], expected: Mapping[str, Any], mode: ArgMatcher) -> bool:
    if callable(mode):
        return bool(mode(actual, expected))
    if mode == "exact":
        return dict(actual) == dict(expected)
    if mode == "ignore":
        return True
    if mode == "subset":
        return _included(actual, expected)
    if mode == "superset":
        return _included(expected, actual)
    raise UserError(f"unknown argument match mode {mode!r}; use one of {_ARG_MODES} or a function")


class CallMatcher:
    """Whether one actual call matches one expected call, under per-tool argument modes."""

    def __init__(self, args: ArgMatcher = "exact", per_tool: Mapping[str, ArgMatcher] | None = None) -> None:
        for mode in [args, *(per_tool or {}).values()]:
            if not callable(mode) and mode not in _ARG_MODES:
                raise UserError(f"unknown argument match mode {mode!r}; use one of {_ARG_MODES} or a function")
        self.args: ArgMatcher = args
        self.per_tool: dict[str, ArgMatcher] = dict(per_tool or {})

    def __call__(self, actual: ToolCall, expected: ToolCall) -> bool:
        if actual.name != expected.name:
            return False
        return args_match(actual.arguments, expected.arguments, self.per_tool.get(actual.name, self.args))

    def matching(self, actual: Sequence[ToolCall], expected: Sequence[ToolCall]) -> dict[int, int]:
        """A maximum matching {actual index: expected index} (Kuhn's augmenting paths)."""
        edges = [[j for j, e in enumerate(expected) if self(a, e)] for a in actual]
        owner: dict[int, int] = {}  # expected index -> actual index

        def augment(i: int, seen: set[int]) -> bool:
            for j in edges[i]:
                if j in seen:
                    continue
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
            return False

        for i in range(len(actual)):
            augment(i, set())
        return {i: j for j, i in owner.items()}


def _describe(call: ToolCall) -> str:
    return f"{call.name}({call.arguments})"


def _reference(case: Case, expected: Sequence[ToolCall] | None) -> list[ToolCall] | None:
    if expected is not None:
        return list(expected)
    return None if case.expected.tool_calls is None else list(case.expected.tool_calls)


def _no_reference(name: str, case: Case) -> EvalResult:
    # Promoted datasets mix cases with and without a reference trajectory; one case without
    # it must not abort the run, and must not count as a pass or a fail of this evaluator.
    return EvalResult.not_applicable(
        name,
        f"case {case.id!r} has no expected tool calls (set `Expected(tool_calls=[...])` or promote "
        "the run with golden=true to judge its trajectory)",
    )


class _NeedsReference:
    """Evaluators that compare against a reference trajectory. `applies_to` lets the runner
    refuse a dataset where no case has one (a configuration mistake, not a mixed dataset)."""

    expected: list[ToolCall] | None

    def applies_to(self, case: Case) -> bool:
        return self.expected is not None or case.expected.tool_calls is not None


def match_trajectory(
    actual: Sequence[ToolCall], expected: Sequence[ToolCall], mode: TrajectoryMode, matcher: CallMatcher
) -> tuple[bool, str]:
    """(matched, explanation) for one trajectory against a reference."""
    if mode == "strict":
        if len(actual) != len(expected):
            return False, f"expected {len(expected)} calls in order, got {len(actual)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            if not matcher(a, e):
                return False, f"call {i}: expected {_describe(e)}, got {_describe(a)}"
        return True, "all calls match in order"
    pairs = matcher.matching(actual, expected)
    unmatched_actual = [_describe(a) for i, a in enumerate(actual) if i not in pairs]
    matched_expected = set(pairs.values())
    missing = [_describe(e) for j, e in enumerate(expected) if j not in matched_expected]
    if mode == "unordered":
        ok = not unmatched_actual and not missing
    elif mode == "subset":
        ok = not unmatched_actual
    elif mode == "superset":
        ok = not missing
    else:
        raise UserError(f"unknown trajectory mode {mode!r}; use one of {_TRAJECTORY_MODES}")
    if ok:
        return True, f"{mode} match"
    parts = []
    if missing and mode != "subset":
        parts.append(f"missing {missing}")
    if unmatched_actual and mode != "superset":
        parts.append(f"unexpected {unmatched_actual}")
    return False, "; ".join(parts)


class TrajectoryMatch(_NeedsReference):
    """Pass when the agent's tool calls match the reference trajectory (the case's
    `expected.tool_calls`, or `expected=`). A case without one is not applicable: counted and
    shown, excluded from this evaluator's score."""

    def __init__(
        self,
        mode: TrajectoryMode = "strict",
        *,
        args: ArgMatcher = "exact",
        per_tool: Mapping[str, ArgMatcher] | None = None,
        expected: Sequence[ToolCall] | None = None,
        name: str | None = None,
    ) -> None:
        if mode not in _TRAJECTORY_MODES:
            raise UserError(f"unknown trajectory mode {mode!r}; use one of {_TRAJECTORY_MODES}")
        self.mode: TrajectoryMode = mode
        self.matcher = CallMatcher(args, per_tool)
        self.expected = list(expected) if expected is not None else None
        self._name = name or f"trajectory_{mode}"

    @property
    def name(self) -> str:
        return self._name

    async def evaluate(self, case: Case, trajectory: Trajectory) -> EvalResult:
        reference = _reference(case, self.expected)
        if reference is None:
            return _no_reference(self.name, case)
        ok, why = match_trajectory(trajectory.tool_calls, reference, self.mode, self.matcher)
        return EvalResult(self.name, ok, 1.0 if ok else 0.0, "pass" if ok else "fail", why)


class ToolCallPrecisionRecall(_NeedsReference):
    """Precision (share of the agent's calls that were expected) and recall (share of the
    expected calls the agent made); the score is their F1."""

    def __init__(
        self,
        *,
        args: ArgMatcher = "ignore",
        per_tool: Mapping[str, ArgMatcher] | None = None,
        min_precision: float = 1.0,
        min_recall: float = 1.0,
        expected: Sequence[ToolCall] | None = None,
        name: str = "tool_call_f1",
    ) -> None:
        self.matcher = CallMatcher(args, per_tool)
        self.min_precision = min_precision
        self.min_recall = min_recall
        self.expected = list(expected) if expected is not None else None
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @staticmethod
    def scores(matched: int, n_actual: int, n_expected: int) -> tuple[float, float, float]:
        precision = matched / n_actual if n_actual else (1.0 if n_expected == 0 else 0.0)
        recall = matched / n_expected if n_expected else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    async def evaluate(self, case: Case, trajectory: Trajectory) -> EvalResult:
        reference = _reference(case, self.expected)
        if reference is None:
            return _no_reference(self.name, case)
        matched = len(self.matcher.matching(trajectory.tool_calls, reference))
        p, r, f1 = self.scores(matched, len(trajectory.tool_calls), len(reference))
        ok = p >= self.min_precision and r >= self.min_recall
        return EvalResult(self.name, ok, f1, "pass" if ok else "fail", f"precision={p:.3f} recall={r:.3f} f1={f1:.3f}")
