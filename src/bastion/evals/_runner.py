"""Run a dataset against an agent n times per case and score every attempt.

Each attempt runs inside a span (`eval {dataset} {case}`), so the agent's own spans nest
under it; every evaluator result is recorded on that span as a `gen_ai.evaluation.result`
event. Per case the report gives pass@k and pass^k; overall it gives their means, the raw
pass rate and its Wilson lower bound.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion._sync import run_sync
from bastion.errors import UserError
from bastion.evals._dataset import Dataset
from bastion.evals._stats import pass_at_k, pass_hat_k, wilson_lower_bound
from bastion.evals._types import Case, EvalResult, Evaluator, Trajectory
from bastion.tracing import semconv as sc
from bastion.tracing import spans

Target = Callable[[Case], Awaitable[Trajectory | Any] | Trajectory | Any]

REPORT_VERSION = 1


@dataclass(slots=True)
class Attempt:
    passed: bool
    results: list[EvalResult]
    error: str | None = None
    duration_s: float = 0.0
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
            "error": self.error,
            "duration_s": self.duration_s,
            "trace_id": self.trace_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attempt:
        return cls(
            passed=bool(d["passed"]),
            results=[EvalResult.from_dict(r) for r in d.get("results", [])],
            error=d.get("error"),
            duration_s=float(d.get("duration_s", 0.0)),
            trace_id=d.get("trace_id"),
        )


@dataclass(slots=True)
class CaseReport:
    case_id: str
    attempts: list[Attempt]
    k: int

    @property
    def n(self) -> int:
        return len(self.attempts)

    @property
    def passes(self) -> int:
        return sum(a.passed for a in self.attempts)

    @property
    def pass_at_k(self) -> float:
        return pass_at_k(self.n, self.passes, self.k)

    @property
    def pass_hat_k(self) -> float:
        return pass_hat_k(self.n, self.passes, self.k)


@dataclass(slots=True)
class EvalReport:
    dataset: str
    n: int
    k: int
    cases: list[CaseReport] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    @property
    def attempts(self) -> int:
        return sum(c.n for c in self.cases)

    @property
    def passes(self) -> int:
        return sum(c.passes for c in self.cases)

    @property
    def pass_rate(self) -> float:
        return self.passes / self.attempts if self.attempts else 0.0

    @property
    def pass_at_k(self) -> float:
        """Mean pass@k over cases."""
        return sum(c.pass_at_k for c in self.cases) / len(self.cases) if self.cases else 0.0

    @property
    def pass_hat_k(self) -> float:
        """Mean pass^k over cases."""
        return sum(c.pass_hat_k for c in self.cases) / len(self.cases) if self.cases else 0.0

    @property
    def wilson_lower(self) -> float:
        """95 % Wilson lower bound of the pass rate over all attempts."""
        return wilson_lower_bound(self.passes, self.attempts)

    def evaluator_means(self) -> dict[str, float]:
        scores: dict[str, list[float]] = {}
        for c in self.cases:
            for a in c.attempts:
                for r in a.results:
                    scores.setdefault(r.name, []).append(r.score)
        return {name: sum(v) / len(v) for name, v in sorted(scores.items())}

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "cases": len(self.cases),
            "n": self.n,
            "k": self.k,
            "attempts": self.attempts,
            "pass_rate": self.pass_rate,
            "pass_at_k": self.pass_at_k,
            "pass_hat_k": self.pass_hat_k,
            "wilson_lower": self.wilson_lower,
            "evaluators": self.evaluator_means(),
        }

    def render(self) -> str:
        """A plain-text table: one line per case, then the totals."""
        k = self.k
        lines = [f"{'case':<32} {'pass':>6} {f'pass@{k}':>8} {f'pass^{k}':>8}"]
        for c in self.cases:
            lines.append(f"{c.case_id[:32]:<32} {c.passes:>3}/{c.n:<2} {c.pass_at_k:>8.3f} {c.pass_hat_k:>8.3f}")
        lines.append(
            f"{'TOTAL':<32} {self.passes:>3}/{self.attempts:<2} {self.pass_at_k:>8.3f} {self.pass_hat_k:>8.3f}"
            f"   (pass rate {self.pass_rate:.3f}, Wilson 95% lower {self.wilson_lower:.3f})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": REPORT_VERSION,
            "dataset": self.dataset,
            "n": self.n,
            "k": self.k,
            "created_at": self.created_at,
            "summary": self.summary(),
            "cases": [{"id": c.case_id, "attempts": [a.to_dict() for a in c.attempts]} for c in self.cases],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        if d.get("v") != REPORT_VERSION:
            raise UserError(f"eval report format v={d.get('v')!r} is not supported (expected {REPORT_VERSION})")
        k = int(d["k"])
        return cls(
            dataset=d["dataset"],
            n=int(d["n"]),
            k=k,
            created_at=float(d.get("created_at", 0.0)),
            cases=[CaseReport(c["id"], [Attempt.from_dict(a) for a in c["attempts"]], k) for c in d["cases"]],
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read eval report {path}: {e}") from e
        return cls.from_dict(data)


async def _attempt(
    dataset: str, case: Case, index: int, target: Target, evaluators: Sequence[Evaluator], timeout_s: float | None
) -> Attempt:
    start = time.perf_counter()
    with spans.span(
        f"eval {dataset}",
        {sc.BASTION_EVAL_CASE: case.id, sc.BASTION_EVAL_ATTEMPT: index},
        operation=sc.OP_EVAL,
    ) as span:
        try:
            result = target(case)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, timeout_s) if timeout_s else await result
            trajectory = result if isinstance(result, Trajectory) else Trajectory(output=result)
        except Exception as e:
            trajectory = Trajectory(error=f"{type(e).__name__}: {e}")
        results: list[EvalResult] = []
        for ev in evaluators:
            try:
                r = await ev.evaluate(case, trajectory)
            except UserError:
                raise  # a mis-configured evaluator is the caller's bug: stop the whole run
            except Exception as e:
                r = EvalResult(ev.name, False, 0.0, "evaluator_error", f"{type(e).__name__}: {e}")
            results.append(r)
            span.add_evaluation(r.name, score=r.score, label=r.label, explanation=r.explanation)
        passed = trajectory.error is None and all(r.passed for r in results)
        return Attempt(
            passed=passed,
            results=results,
            error=trajectory.error,
            duration_s=time.perf_counter() - start,
            trace_id=trajectory.trace_id or span.trace_id,
        )


async def run_eval(
    dataset: Dataset,
    target: Target,
    evaluators: Sequence[Evaluator],
    *,
    n: int = 1,
    k: int | None = None,
    concurrency: int = 4,
    timeout_s: float | None = None,
) -> EvalReport:
    """Run every case `n` times through `target(case)` (sync or async; returns a `Trajectory`
    or the final output) and score each attempt with every evaluator. An attempt passes when
    the target did not raise and every evaluator passed. `k` defaults to `n`."""
    k = n if k is None else k
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"run_eval: need n >= 1 and 1 <= k <= n (got n={n}, k={k})")
    if not evaluators:
        raise UserError("run_eval: pass at least one evaluator")
    if not dataset.cases:
        raise UserError(f"dataset {dataset.name!r} has no cases")
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(case: Case, i: int) -> Attempt:
        async with gate:
            return await _attempt(dataset.name, case, i, target, evaluators, timeout_s)

    report = EvalReport(dataset.name, n, k)
    for case in dataset.cases:
        attempts = await asyncio.gather(*(one(case, i) for i in range(n)))
        report.cases.append(CaseReport(case.id, list(attempts), k))
    return report


def run_eval_sync(dataset: Dataset, target: Target, evaluators: Sequence[Evaluator], **kwargs: Any) -> EvalReport:
    """`run_eval` for sync callers."""
    return run_sync(run_eval(dataset, target, evaluators, **kwargs))
