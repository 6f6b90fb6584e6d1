"""The regression gate: fail CI when agent quality drops.

`python -m bastion.evals report.json --min-pass-hat-k 0.8` exits 1 when the gate fails
(2 on a usage error). With `--suite pkg.module:suite` it first runs an `EvalSuite`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from bastion.errors import UserError
from bastion.evals._dataset import Dataset
from bastion.evals._runner import EvalReport, Target, run_eval_sync
from bastion.evals._types import Evaluator


@dataclass(slots=True)
class GateResult:
    ok: bool
    reasons: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def gate(
    report: EvalReport,
    *,
    min_pass_hat_k: float | None = None,
    min_pass_at_k: float | None = None,
    min_pass_rate: float | None = None,
    min_wilson_lower: float | None = None,
    baseline: EvalReport | None = None,
    max_drop: float = 0.0,
) -> GateResult:
    """Check `report` against absolute floors and, with `baseline`, against a previous run
    (pass^k may not fall by more than `max_drop`)."""
    reasons: list[str] = []
    checks = [
        ("pass^k", report.pass_hat_k, min_pass_hat_k),
        ("pass@k", report.pass_at_k, min_pass_at_k),
        ("pass rate", report.pass_rate, min_pass_rate),
        ("Wilson lower bound", report.wilson_lower, min_wilson_lower),
    ]
    for label, value, floor in checks:
        if floor is not None and value < floor - 1e-12:
            reasons.append(f"{label} {value:.3f} is below the minimum {floor:.3f}")
    if baseline is not None:
        if baseline.k != report.k:
            reasons.append(f"baseline k={baseline.k} differs from k={report.k}; compare like with like")
        elif report.pass_hat_k < baseline.pass_hat_k - max_drop - 1e-12:
            reasons.append(
                f"pass^k dropped from {baseline.pass_hat_k:.3f} (baseline) to {report.pass_hat_k:.3f} "
                f"(allowed drop {max_drop:.3f})"
            )
    return GateResult(not reasons, reasons)


@dataclass(slots=True)
class EvalSuite:
    """What `--suite module:name` points at: a dataset, a target and evaluators."""

    dataset: Dataset
    target: Target
    evaluators: Sequence[Evaluator]
    n: int = 1
    k: int | None = None


def _load_suite(spec: str) -> EvalSuite:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"--suite {spec!r}: use the form 'package.module:suite'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--suite {spec!r}: cannot load it ({e})") from e
    suite = obj() if callable(obj) and not isinstance(obj, EvalSuite) else obj
    if not isinstance(suite, EvalSuite):
        raise UserError(
            f"--suite {spec!r} is a {type(suite).__name__}, expected an EvalSuite (or a function returning one)"
        )
    return suite


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion.evals", description=__doc__)
    parser.add_argument("report", nargs="?", help="an eval report JSON to gate (omit with --suite)")
    parser.add_argument("--suite", help="run an EvalSuite first: 'package.module:suite'")
    parser.add_argument("--n", type=int, help="attempts per case (overrides the suite)")
    parser.add_argument("--k", type=int, help="k for pass@k / pass^k (overrides the suite)")
    parser.add_argument("--out", help="write the report of --suite here")
    parser.add_argument("--min-pass-hat-k", type=float)
    parser.add_argument("--min-pass-at-k", type=float)
    parser.add_argument("--min-pass-rate", type=float)
    parser.add_argument("--min-wilson-lower", type=float)
    parser.add_argument("--baseline", help="a previous report; fail if pass^k dropped more than --max-drop")
    parser.add_argument("--max-drop", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        if args.suite:
            suite = _load_suite(args.suite)
            n = args.n or suite.n
            report = run_eval_sync(suite.dataset, suite.target, suite.evaluators, n=n, k=args.k or suite.k)
            if args.out:
                report.save(args.out)
        elif args.report:
            report = EvalReport.load(args.report)
        else:
            parser.error("give a report file or --suite")
        baseline = EvalReport.load(args.baseline) if args.baseline else None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.render())
    result = gate(
        report,
        min_pass_hat_k=args.min_pass_hat_k,
        min_pass_at_k=args.min_pass_at_k,
        min_pass_rate=args.min_pass_rate,
        min_wilson_lower=args.min_wilson_lower,
        baseline=baseline,
        max_drop=args.max_drop,
    )
    if result.ok:
        print("gate: PASS")
        return 0
    for reason in result.reasons:
        print(f"gate: FAIL: {reason}", file=sys.stderr)
    return 1
