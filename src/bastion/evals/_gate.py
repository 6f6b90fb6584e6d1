"""The regression gate: fail CI when agent quality drops.

`bastion eval report.json --min-pass-hat-k 0.8` exits 1 when the gate fails, 2 on a usage
error (`python -m bastion.evals` is the same command). With `--suite module:suite` (or
`path/file.py:suite`) it first runs an `EvalSuite`, on `--dataset FILE` if given (JSONL, or
the JSON a server exports from `GET /v1/evals/datasets/{name}`). A gate needs at least one
threshold or a baseline (`--report-only` runs without gating); thresholds are fractions in
[0, 1].
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


_FLOORS = {
    "min_pass_hat_k": "--min-pass-hat-k",
    "min_pass_hat_k_lower": "--min-pass-hat-k-lower",
    "min_pass_at_k": "--min-pass-at-k",
    "min_pass_rate": "--min-pass-rate",
    "min_wilson_lower": "--min-wilson-lower",
    "max_drop": "--max-drop",
}


def check_thresholds(*, has_baseline: bool, **thresholds: float | None) -> None:
    """Refuse a gate that cannot fail and thresholds that are not fractions."""
    for key, value in thresholds.items():
        if value is None:
            continue
        flag = _FLOORS.get(key, key)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{flag} {value} is not a fraction: thresholds are between 0 and 1 (for 80 % write 0.8)")
    if not has_baseline and all(v is None for k, v in thresholds.items() if k != "max_drop"):
        raise UserError(
            "the gate has no threshold, so it could never fail: give --min-pass-hat-k (e.g. 0.8), "
            "--min-pass-hat-k-lower, --min-pass-at-k, --min-pass-rate, --min-wilson-lower or --baseline; "
            "use --report-only to run without a gate"
        )


def gate(
    report: EvalReport,
    *,
    min_pass_hat_k: float | None = None,
    min_pass_hat_k_lower: float | None = None,
    min_pass_at_k: float | None = None,
    min_pass_rate: float | None = None,
    min_wilson_lower: float | None = None,
    baseline: EvalReport | None = None,
    max_drop: float = 0.0,
) -> GateResult:
    """Check `report` against absolute floors and, with `baseline`, against a previous run
    (pass^k may not fall by more than `max_drop`). `min_pass_hat_k_lower` is a floor for the
    lower end of pass^k's 95 % bootstrap interval over cases. Raises `UserError` when no
    floor and no baseline is given (a gate that cannot fail) or a floor is outside [0, 1]."""
    check_thresholds(
        has_baseline=baseline is not None,
        min_pass_hat_k=min_pass_hat_k,
        min_pass_hat_k_lower=min_pass_hat_k_lower,
        min_pass_at_k=min_pass_at_k,
        min_pass_rate=min_pass_rate,
        min_wilson_lower=min_wilson_lower,
        max_drop=max_drop,
    )
    reasons: list[str] = []
    checks: list[tuple[str, Any, float | None]] = [
        ("pass^k", lambda: report.pass_hat_k, min_pass_hat_k),
        ("pass^k bootstrap 95% lower bound", lambda: report.intervals()["pass^k"][0], min_pass_hat_k_lower),
        ("pass@k", lambda: report.pass_at_k, min_pass_at_k),
        ("pass rate", lambda: report.pass_rate, min_pass_rate),
        ("Wilson lower bound", lambda: report.wilson_lower, min_wilson_lower),
    ]
    for label, value_of, floor in checks:
        if floor is None:
            continue
        value = value_of()
        if value < floor - 1e-12:
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
    concurrency: int | None = None
    timeout_s: float | None = None


def _import(spec: str) -> Any:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UserError(f"--suite {spec!r}: use the form 'package.module:suite' or 'path/file.py:suite'")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise UserError(f"--suite {spec!r}: {path} does not exist")
            name = f"bastion_eval_suite_{path.stem}"
            loader = importlib.util.spec_from_file_location(name, path)
            if loader is None or loader.loader is None:
                raise UserError(f"--suite {spec!r}: cannot import {path}")
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            sys.path.insert(0, str(path.parent))  # the suite may import its neighbours
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        return getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--suite {spec!r}: cannot load it ({e})") from e


def _load_suite(spec: str) -> EvalSuite:
    obj = _import(spec)
    suite = obj() if callable(obj) and not isinstance(obj, EvalSuite) else obj
    if not isinstance(suite, EvalSuite):
        raise UserError(
            f"--suite {spec!r} is a {type(suite).__name__}, expected an EvalSuite (or a function returning one)"
        )
    return suite


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; thresholds are fractions like 0.8") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1; for 80 % write 0.8")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 gate passed (or --report-only), 1 gate failed, 2 usage error",
    )
    p.add_argument("report", nargs="?", help="an eval report JSON to gate (omit with --suite)")
    p.add_argument("--suite", help="run an EvalSuite first: 'package.module:suite' or 'path/file.py:suite'")
    p.add_argument("--dataset", help="run the suite on this dataset file (JSONL or a server export)")
    p.add_argument("--n", type=_positive_int, help="attempts per case (overrides the suite)")
    p.add_argument("--k", type=_positive_int, help="k for pass@k / pass^k, at most n (overrides the suite)")
    p.add_argument("--concurrency", type=_positive_int, help="attempts running at once, across cases")
    p.add_argument("--timeout", type=float, help="seconds per attempt; a slower attempt fails as timed out")
    p.add_argument("--out", help="write the report of --suite here")
    g = p.add_argument_group("gate (at least one, unless --report-only; fractions in [0, 1])")
    g.add_argument("--min-pass-hat-k", type=_fraction, help="floor for the mean pass^k over cases")
    g.add_argument("--min-pass-hat-k-lower", type=_fraction, help="floor for pass^k's bootstrap 95%% lower bound")
    g.add_argument("--min-pass-at-k", type=_fraction)
    g.add_argument("--min-pass-rate", type=_fraction)
    g.add_argument("--min-wilson-lower", type=_fraction)
    g.add_argument("--baseline", help="a previous report; fail if pass^k dropped more than --max-drop")
    g.add_argument("--max-drop", type=_fraction, default=0.0)
    g.add_argument("--report-only", action="store_true", help="print (and --out) the report, never fail")
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "bastion eval") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    thresholds = {
        "min_pass_hat_k": args.min_pass_hat_k,
        "min_pass_hat_k_lower": args.min_pass_hat_k_lower,
        "min_pass_at_k": args.min_pass_at_k,
        "min_pass_rate": args.min_pass_rate,
        "min_wilson_lower": args.min_wilson_lower,
    }
    if not args.suite and not args.report:
        parser.error("give a report file or --suite")
    if args.dataset and not args.suite:
        parser.error("--dataset needs --suite (the suite supplies the target and the evaluators)")
    try:
        if not args.report_only:  # before running a suite: a misconfigured gate fails fast
            check_thresholds(has_baseline=args.baseline is not None, **thresholds)
        if args.suite:
            suite = _load_suite(args.suite)
            dataset = Dataset.load(args.dataset) if args.dataset else suite.dataset
            options: dict[str, Any] = {"n": args.n or suite.n, "k": args.k or suite.k}
            if args.concurrency or suite.concurrency:
                options["concurrency"] = args.concurrency or suite.concurrency
            if args.timeout or suite.timeout_s:
                options["timeout_s"] = args.timeout or suite.timeout_s
            report = run_eval_sync(dataset, suite.target, suite.evaluators, **options)
            if args.out:
                report.save(args.out)
        else:
            report = EvalReport.load(args.report)
        baseline = EvalReport.load(args.baseline) if args.baseline else None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.render())
    if args.report_only:
        return 0
    result = gate(report, **thresholds, baseline=baseline, max_drop=args.max_drop)
    if result.ok:
        print("gate: PASS")
        return 0
    for reason in result.reasons:
        print(f"gate: FAIL: {reason}", file=sys.stderr)
    return 1
