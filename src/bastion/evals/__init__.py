"""Evaluation: datasets (from code, JSONL or promoted traces, kept per tenant in a
`DatasetStore`: JSONL files or PostgreSQL), evaluators (trajectory match,
outcome checks, tool-call precision/recall, LLM-as-judge), repeated runs with pass@k /
pass^k with bootstrap intervals over cases, and a regression gate (`bastion eval`).

Results are recorded as `gen_ai.evaluation.result` events on the evaluated spans. This
package runs and scores agents; it does not build them (see `bastion.graph`).
"""

from __future__ import annotations

from bastion.evals._compare import CaseDiff, ReportDiff, compare_reports
from bastion.evals._dataset import Dataset, evaluate_trace, trajectory_from_trace
from bastion.evals._dataset_store import DatasetInfo, DatasetStore, JsonlDatasetStore, promote_traces
from bastion.evals._dataset_store_pg import PostgresDatasetStore
from bastion.evals._final_state import FinalState
from bastion.evals._gate import EvalSuite, GateResult, check_thresholds, gate, main
from bastion.evals._judge import LLMJudge, Verdict, parse_verdict
from bastion.evals._outcome import OutcomeCheck
from bastion.evals._runner import Attempt, CaseReport, EvalReport, run_eval, run_eval_sync
from bastion.evals._session import ModelUser, ScriptedUser, SessionView, UserSimulator, run_session, session_target
from bastion.evals._stats import bootstrap_interval, pass_at_k, pass_hat_k, wilson_lower_bound
from bastion.evals._trajectory import CallMatcher, ToolCallPrecisionRecall, TrajectoryMatch, match_trajectory
from bastion.evals._trajectory_judge import TrajectoryJudge
from bastion.evals._types import Case, EvalResult, Evaluator, Expected, Trajectory

__all__ = [
    "Attempt",
    "CallMatcher",
    "Case",
    "CaseDiff",
    "CaseReport",
    "Dataset",
    "DatasetInfo",
    "DatasetStore",
    "EvalReport",
    "EvalResult",
    "EvalSuite",
    "Evaluator",
    "Expected",
    "FinalState",
    "GateResult",
    "JsonlDatasetStore",
    "LLMJudge",
    "ModelUser",
    "OutcomeCheck",
    "PostgresDatasetStore",
    "ReportDiff",
    "ScriptedUser",
    "SessionView",
    "ToolCallPrecisionRecall",
    "Trajectory",
    "TrajectoryJudge",
    "TrajectoryMatch",
    "UserSimulator",
    "Verdict",
    "bootstrap_interval",
    "check_thresholds",
    "compare_reports",
    "evaluate_trace",
    "gate",
    "main",
    "match_trajectory",
    "parse_verdict",
    "pass_at_k",
    "pass_hat_k",
    "promote_traces",
    "run_eval",
    "run_eval_sync",
    "run_session",
    "session_target",
    "trajectory_from_trace",
    "wilson_lower_bound",
]
