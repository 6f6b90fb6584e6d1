"""Final-state checks (tau-bench style): judge the world after the run, e.g. the database the
agent's tools wrote to, not what the agent said it did."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from bastion.evals._types import Case, EvalResult, Trajectory

CheckResult = bool | tuple[bool, str] | EvalResult
Check = Callable[[Any], CheckResult | Awaitable[CheckResult]]


class FinalState:
    """Pass when `check(env)` says so. `env` is what the target mutated: a fixed object (a
    SQLite path, a dict), or `env_for(case)` when each case has its own environment; with
    neither, `check` gets the attempt's `trajectory.state`. `check` (sync or async) returns a
    bool, `(passed, reason)` or an `EvalResult`; one that raises is a failed result that says
    why, never a crashed evaluation."""

    def __init__(
        self,
        check: Check,
        *,
        env: Any = None,
        env_for: Callable[[Case], Any] | None = None,
        name: str = "final_state",
    ) -> None:
        self.check = check
        self.env = env
        self.env_for = env_for
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def evaluate(self, case: Case, trajectory: Trajectory) -> EvalResult:
        try:
            if self.env_for is not None:
                env = self.env_for(case)
            elif self.env is not None:
                env = self.env
            else:
                env = trajectory.state
            out = self.check(env)
            if inspect.isawaitable(out):
                out = await out
        except Exception as e:
            return EvalResult(self.name, False, 0.0, "fail", f"final-state check raised {type(e).__name__}: {e}")
        if isinstance(out, EvalResult):
            return out
        if isinstance(out, tuple):
            passed, reason = bool(out[0]), str(out[1])
        else:
            passed, reason = bool(out), ""
        reason = reason or ("final state is as expected" if passed else "final state is not as expected")
        return EvalResult(self.name, passed, 1.0 if passed else 0.0, "pass" if passed else "fail", reason)


__all__ = ["FinalState"]
