"""Run a dataset against an agent n times per case and score every attempt.

Each attempt runs inside a span (`eval {dataset} {case}`), so the agent's own spans nest
under it; every evaluator result is recorded on that span as a `gen_ai.evaluation.result`
event. Per case the report gives pass@k and pass^k; overall it gives their means with 95 %
bootstrap intervals over cases, the raw pass rate and its Wilson lower bound.

Attempts of all cases run concurrently (at most `concurrency` at a time). A sync target runs
in a daemon thread so it neither blocks the event loop nor escapes `timeout_s`; a thread
cannot be killed, so a sync target that hangs keeps its thread until it returns (the attempt
is recorded as timed out and the run moves on; the process can still exit).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion._sync import run_sync
from bastion.errors import UserError
from bastion.evals._dataset import Dataset
from bastion.evals._stats import bootstrap_interval, pass_at_k, pass_hat_k, wilson_lower_bound
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
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
            "error": self.error,
            "duration_s": self.duration_s,
            "trace_id": self.trace_id,
            "timed_out": self.timed_out,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attempt:
        return cls(
            passed=bool(d["passed"]),
            results=[EvalResult.from_dict(r) for r in d.get("results", [])],
            error=d.get("error"),
            duration_s=float(d.get("duration_s", 0.0)),
            trace_id=d.get("trace_id"),
            timed_out=bool(d.get("timed_out", False)),
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

    @property
    def pass_at_1(self) -> float:
        return self.passes / self.n if self.n else 0.0


Interval = tuple[float, float]


@dataclass(slots=True)
class EvalReport:
    dataset: str
    n: int
    k: int
    cases: list[CaseReport] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    skipped: list[str] = field(default_factory=list)  # cases no evaluator applied to: not run
    _intervals: tuple[int, dict[str, Interval]] | None = field(default=None, repr=False, compare=False)

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
        """95 % Wilson lower bound of the pass rate over all attempts. It assumes independent
        attempts, which repeated attempts of one case are not: see `intervals()`."""
        return wilson_lower_bound(self.passes, self.attempts)

    def intervals(self) -> dict[str, Interval]:
        """95 % bootstrap intervals over cases (2,000 resamples, fixed seed) for the means of
        pass@1, pass@k and pass^k: `{"pass@1": (lo, hi), "pass@k": ..., "pass^k": ...}`."""
        key = sum(c.n for c in self.cases) * 1_000_003 + len(self.cases)
        if self._intervals is None or self._intervals[0] != key:
            self._intervals = (
                key,
                {
                    "pass@1": bootstrap_interval([c.pass_at_1 for c in self.cases]),
                    "pass@k": bootstrap_interval([c.pass_at_k for c in self.cases]),
                    "pass^k": bootstrap_interval([c.pass_hat_k for c in self.cases]),
                },
            )
        return self._intervals[1]

    @property
    def timed_out(self) -> int:
        return sum(a.timed_out for c in self.cases for a in c.attempts)

    def evaluator_means(self) -> dict[str, float]:
        """Mean score per evaluator over the attempts it applied to."""
        scores: dict[str, list[float]] = {}
        for c in self.cases:
            for a in c.attempts:
                for r in a.results:
                    if r.applicable:
                        scores.setdefault(r.name, []).append(r.score)
        return {name: sum(v) / len(v) for name, v in sorted(scores.items()) if v}

    def not_applicable(self) -> dict[str, int]:
        """Per evaluator, how many attempts it did not apply to (e.g. no reference trajectory)."""
        counts: dict[str, int] = {}
        for c in self.cases:
            for a in c.attempts:
                for r in a.results:
                    counts[r.name] = counts.get(r.name, 0) + (not r.applicable)
        return {name: v for name, v in sorted(counts.items()) if v}

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
            "intervals": {name: list(iv) for name, iv in self.intervals().items()},
            "timed_out": self.timed_out,
            "evaluators": self.evaluator_means(),
            "not_applicable": self.not_applicable(),
            "skipped": list(self.skipped),
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
        iv = self.intervals()
        lines.append(
            f"95% bootstrap over {len(self.cases)} cases: "
            + ", ".join(f"{name.replace('k', str(k))} [{lo:.3f}, {hi:.3f}]" for name, (lo, hi) in iv.items())
        )
        for name, count in self.not_applicable().items():
            lines.append(f"{name}: not applicable to {count} attempt(s) (no reference), excluded from its score")
        if self.timed_out:
            lines.append(f"{self.timed_out} attempt(s) timed out")
        if self.skipped:
            lines.append(
                f"{len(self.skipped)} case(s) skipped, no evaluator applies to them: {', '.join(self.skipped[:10])}"
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
            "skipped": list(self.skipped),
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
            skipped=[str(c) for c in d.get("skipped", [])],
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


def _is_async(target: Target) -> bool:
    call = getattr(target, "__call__", None)  # noqa: B004 - an object with `async def __call__`
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


def _in_daemon_thread(target: Target, case: Case) -> asyncio.Future[Any]:
    """Run a sync target in its own daemon thread. Not `asyncio.to_thread`: the default
    executor's threads are joined at loop close and at interpreter exit, so one hung target
    would hang the whole run after its timeout."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()  # the attempt's span parents the agent's spans

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        try:
            value: Any = context.run(target, case)
            ok = True
        except BaseException as e:
            value, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop closed: nobody waits for this attempt any more
            pass

    threading.Thread(target=work, name=f"bastion-eval-{case.id}", daemon=True).start()
    return future


async def _call(target: Target, case: Case) -> Any:
    if _is_async(target):
        result = target(case)
    else:
        result = await _in_daemon_thread(target, case)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _attempt(
    dataset: str, case: Case, index: int, target: Target, evaluators: Sequence[Evaluator], timeout_s: float | None
) -> Attempt:
    start = time.perf_counter()
    timed_out = False
    with spans.span(
        f"eval {dataset}",
        {sc.BASTION_EVAL_CASE: case.id, sc.BASTION_EVAL_ATTEMPT: index},
        operation=sc.OP_EVAL,
    ) as span:
        try:
            result = await asyncio.wait_for(_call(target, case), timeout_s) if timeout_s else await _call(target, case)
            trajectory = result if isinstance(result, Trajectory) else Trajectory(output=result)
        except TimeoutError:
            timed_out = True
            trajectory = Trajectory(error=f"TimeoutError: the attempt did not finish within timeout_s={timeout_s}")
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
        passed = trajectory.error is None and all(r.passed for r in results if r.applicable)
        return Attempt(
            passed=passed,
            results=results,
            error=trajectory.error,
            duration_s=time.perf_counter() - start,
            trace_id=trajectory.trace_id or span.trace_id,
            timed_out=timed_out,
        )


def _applies(ev: Evaluator, case: Case) -> bool:
    applies_to: Callable[[Case], bool] | None = getattr(ev, "applies_to", None)
    return applies_to is None or applies_to(case)


def _applicable_cases(dataset: Dataset, evaluators: Sequence[Evaluator]) -> tuple[list[Case], list[str]]:
    """The cases to run and the ids of those no evaluator applies to. An attempt judged by no
    evaluator would pass vacuously, so such a case is skipped (and listed), not run."""
    for ev in evaluators:
        if not any(_applies(ev, c) for c in dataset.cases):
            raise UserError(
                f"{type(ev).__name__} ({ev.name}) applies to none of the {len(dataset.cases)} cases of "
                f"{dataset.name!r}: no case has expected tool calls. Set `Expected(tool_calls=[...])`, "
                "promote runs with golden=true, pass `expected=` to the evaluator, or drop it"
            )
    run = [c for c in dataset.cases if any(_applies(ev, c) for ev in evaluators)]
    kept = {c.id for c in run}
    return run, [c.id for c in dataset.cases if c.id not in kept]


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
    the target did not raise or time out and every applicable evaluator passed. `k` defaults
    to `n`. At most `concurrency` attempts run at once, across all cases; `timeout_s` bounds
    each attempt, sync targets included (they run in a thread)."""
    k = n if k is None else k
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"run_eval: need n >= 1 and 1 <= k <= n (got n={n}, k={k})")
    if concurrency < 1:
        raise UserError(f"run_eval: concurrency={concurrency} must be at least 1")
    if timeout_s is not None and timeout_s <= 0:
        raise UserError(f"run_eval: timeout_s={timeout_s} must be positive (or None for no limit)")
    if not evaluators:
        raise UserError("run_eval: pass at least one evaluator")
    if not dataset.cases:
        raise UserError(f"dataset {dataset.name!r} has no cases")
    cases, skipped = _applicable_cases(dataset, evaluators)
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case, i: int) -> Attempt:
        async with gate:
            return await _attempt(dataset.name, case, i, target, evaluators, timeout_s)

    flat = await asyncio.gather(*(one(case, i) for case in cases for i in range(n)))
    report = EvalReport(dataset.name, n, k, skipped=skipped)
    for j, case in enumerate(cases):
        report.cases.append(CaseReport(case.id, list(flat[j * n : (j + 1) * n]), k))
    return report


def run_eval_sync(dataset: Dataset, target: Target, evaluators: Sequence[Evaluator], **kwargs: Any) -> EvalReport:
    """`run_eval` for sync callers."""
    return run_sync(run_eval(dataset, target, evaluators, **kwargs))
