"""Experiment comparison: two eval reports of the same dataset, case by case."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.evals._runner import CaseReport, EvalReport

Change = Literal["regressed", "fixed", "still_passing", "still_failing", "changed", "added", "removed"]


def _scores(case: CaseReport) -> dict[str, float]:
    """Mean score per evaluator over the case's attempts it applied to."""
    acc: dict[str, list[float]] = {}
    for a in case.attempts:
        for r in a.results:
            if r.applicable:
                acc.setdefault(r.name, []).append(r.score)
    return {k: sum(v) / len(v) for k, v in acc.items() if v}


def _verdict(case: CaseReport) -> bool:
    """A case passes when most of its attempts did (pass@1 >= 0.5)."""
    return case.pass_at_1 >= 0.5


@dataclass(slots=True)
class CaseDiff:
    case_id: str
    change: Change
    base_pass_rate: float | None
    head_pass_rate: float | None
    score_deltas: dict[str, float] = field(default_factory=dict)  # head - base, per evaluator

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "change": self.change,
            "base_pass_rate": self.base_pass_rate,
            "head_pass_rate": self.head_pass_rate,
            "score_deltas": self.score_deltas,
        }


@dataclass(slots=True)
class ReportDiff:
    base: str
    head: str
    cases: list[CaseDiff]
    pass_rate_delta: float
    pass_hat_k_delta: float

    def count(self, change: Change) -> int:
        return sum(c.change == change for c in self.cases)

    @property
    def regressed(self) -> list[CaseDiff]:
        return [c for c in self.cases if c.change == "regressed"]

    @property
    def fixed(self) -> list[CaseDiff]:
        return [c for c in self.cases if c.change == "fixed"]

    def to_dict(self) -> dict[str, Any]:
        changes: tuple[Change, ...] = (
            "regressed", "fixed", "changed", "still_passing", "still_failing", "added", "removed"
        )  # fmt: skip
        return {
            "base": self.base,
            "head": self.head,
            "pass_rate_delta": self.pass_rate_delta,
            "pass_hat_k_delta": self.pass_hat_k_delta,
            "counts": {c: self.count(c) for c in changes},
            "cases": [c.to_dict() for c in self.cases],
        }

    def render(self) -> str:
        lines = [
            f"{self.base} -> {self.head}: pass rate {self.pass_rate_delta:+.3f}, pass^k {self.pass_hat_k_delta:+.3f}"
        ]
        for c in self.cases:
            if c.change in ("still_passing", "still_failing"):
                continue
            deltas = ", ".join(f"{k} {v:+.2f}" for k, v in c.score_deltas.items() if v)
            lines.append(f"  {c.change:<10} {c.case_id}" + (f"  ({deltas})" if deltas else ""))
        return "\n".join(lines)


def compare_reports(
    base: EvalReport, head: EvalReport, *, base_name: str = "base", head_name: str = "head"
) -> ReportDiff:
    """Per case: pass->fail (`regressed`), fail->pass (`fixed`), same verdict but a different
    pass rate or score (`changed`), unchanged, or present on one side only; plus the
    per-evaluator score deltas. Regressions come first."""
    before = {c.case_id: c for c in base.cases}
    after = {c.case_id: c for c in head.cases}
    diffs: list[CaseDiff] = []
    for case_id in [*before, *(i for i in after if i not in before)]:
        b, h = before.get(case_id), after.get(case_id)
        if b is None and h is not None:
            diffs.append(CaseDiff(case_id, "added", None, h.pass_at_1))
            continue
        if h is None and b is not None:
            diffs.append(CaseDiff(case_id, "removed", b.pass_at_1, None))
            continue
        assert b is not None and h is not None
        bs, hs = _scores(b), _scores(h)
        deltas = {k: hs.get(k, 0.0) - bs.get(k, 0.0) for k in sorted({*bs, *hs})}
        vb, vh = _verdict(b), _verdict(h)
        change: Change
        if vb and not vh:
            change = "regressed"
        elif vh and not vb:
            change = "fixed"
        elif b.pass_at_1 != h.pass_at_1 or any(abs(d) > 1e-9 for d in deltas.values()):
            change = "changed"
        else:
            change = "still_passing" if vh else "still_failing"
        diffs.append(CaseDiff(case_id, change, b.pass_at_1, h.pass_at_1, deltas))
    order = {"regressed": 0, "fixed": 1, "changed": 2, "added": 3, "removed": 4, "still_failing": 5, "still_passing": 6}
    diffs.sort(key=lambda d: order[d.change])
    return ReportDiff(
        base_name,
        head_name,
        diffs,
        head.pass_rate - base.pass_rate,
        head.pass_hat_k - base.pass_hat_k,
    )


__all__ = ["CaseDiff", "ReportDiff", "compare_reports"]
