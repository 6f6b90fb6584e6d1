"""Datasets: cases built in code, loaded from JSONL, or promoted from stored traces (a failed
production run becomes a regression case with its input and, optionally, what it should
have done)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.errors import UserError
from bastion.evals._types import Case, EvalResult, Evaluator, Expected, Trajectory, call_from_dict
from bastion.tracing import semconv as sc
from bastion.types import ToolCall, ToolResult

if TYPE_CHECKING:
    from bastion.tracing import SpanStore, TraceStore, TraceTree


def _decode(value: Any) -> Any:
    """Captured content is stored as text; JSON documents come back as data."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def trajectory_from_trace(tree: TraceTree) -> Trajectory:
    """The tool calls (names; arguments and results when content capture was on), output and
    error of a stored run."""
    calls: list[ToolCall] = []
    results: list[ToolResult] = []
    for _, span in tree.walk():
        if span.operation != sc.OP_EXECUTE_TOOL:
            continue
        args = _decode(span.attributes.get(sc.GEN_AI_TOOL_CALL_ARGUMENTS, "{}"))
        call = ToolCall(
            str(span.attributes.get(sc.GEN_AI_TOOL_NAME, span.name)),
            args if isinstance(args, dict) else {},
            id=str(span.attributes.get(sc.GEN_AI_TOOL_CALL_ID) or span.span_id),
        )
        calls.append(call)
        if sc.GEN_AI_TOOL_CALL_RESULT in span.attributes:
            content = _decode(span.attributes[sc.GEN_AI_TOOL_CALL_RESULT])
            results.append(ToolResult(call.id, call.name, content, is_error=span.is_error))
    roots = tree.roots
    root = roots[0] if roots else None
    if root is not None:
        # A run resumed after an approval continues its trace under the first root: the last
        # part holds the outcome.
        parts = [root, *(s for s in tree.children(root) if s.attributes.get(sc.BASTION_RUN_RESUMED))]
        root = max(parts, key=lambda s: s.start_ns)
    error = None
    if root is not None and root.is_error:
        error = root.status_message or "run failed"
    output = _decode(root.attributes.get(sc.BASTION_RUN_OUTPUT)) if root is not None else None
    return Trajectory(tool_calls=calls, output=output, error=error, trace_id=tree.trace_id, tool_results=results)


def _input_of(tree: TraceTree) -> Any:
    for _, span in tree.walk():
        if sc.BASTION_RUN_INPUT in span.attributes:
            return _decode(span.attributes[sc.BASTION_RUN_INPUT])
    for span in tree.find(operation=sc.OP_CHAT):
        messages = _decode(span.attributes.get(sc.GEN_AI_INPUT_MESSAGES))
        if isinstance(messages, list):
            for m in reversed(messages):
                if isinstance(m, dict) and m.get("role") == "user":
                    texts = [p.get("content", "") for p in m.get("parts", []) if p.get("type") == "text"]
                    return "".join(texts)
    return None


@dataclass(slots=True)
class Dataset:
    """A named list of cases."""

    name: str
    cases: list[Case] = field(default_factory=list)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def add(self, case: Case) -> Case:
        if any(c.id == case.id for c in self.cases):
            raise UserError(f"dataset {self.name!r} already has a case with id {case.id!r}")
        self.cases.append(case)
        return case

    @classmethod
    def from_cases(cls, name: str, cases: Iterable[Case | Mapping[str, Any]]) -> Dataset:
        ds = cls(name)
        for c in cases:
            ds.add(c if isinstance(c, Case) else Case.from_dict(c))
        return ds

    # --- JSONL ---
    @classmethod
    def from_jsonl(cls, path: str | Path, name: str | None = None) -> Dataset:
        """One case per line: `{"id", "input", "expected": {...}, "metadata": {...}}`.
        A bad line raises `UserError` naming the file and line; nothing is half-loaded."""
        path = Path(path)
        ds = cls(name or path.stem)
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ds.add(Case.from_dict(json.loads(line)))
                except (ValueError, TypeError, KeyError) as e:
                    raise UserError(f"{path}:{lineno}: not a valid eval case ({e})") from e
        return ds

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> Dataset:
        """A dataset file: JSONL (one case a line) or the JSON document the server exports
        (`GET /v1/evals/datasets/{name}`: `{"name": ..., "cases": [...]}`)."""
        path = Path(path)
        try:
            head = path.read_text(encoding="utf-8").lstrip()[:1]
        except OSError as e:
            raise UserError(f"cannot read dataset {path}: {e}") from e
        if head != "{":
            return cls.from_jsonl(path, name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return cls.from_jsonl(path, name)  # a JSONL file whose lines are objects
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            if isinstance(data, dict) and "input" in data:
                return cls.from_jsonl(path, name)  # JSONL with a single case
            raise UserError(f"{path}: expected JSONL cases or a JSON object with a 'cases' list")
        try:
            return cls.from_cases(name or str(data.get("name") or path.stem), data["cases"])
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(f"{path}: not a valid eval dataset ({e})") from e

    def to_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for c in self.cases:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False, default=str) + "\n")
        tmp.replace(path)  # atomic: a crash never leaves a truncated dataset
        return path

    # --- traces ---
    @classmethod
    def from_traces(
        cls,
        store: SpanStore,
        name: str = "from-traces",
        *,
        trace_ids: Iterable[str] | None = None,
        failed_only: bool = True,
        expected: Mapping[str, Expected] | Callable[[TraceTree], Expected | None] | None = None,
        golden: bool = False,
        limit: int = 100,
        **filters: Any,
    ) -> Dataset:
        """Promote stored runs to cases.

        Picks `trace_ids`, else the newest traces matching `filters` (`tenant=`, `agent=`,
        `since=` ... as `TraceStore.list_traces`), failed runs only by default. The input is
        the run's captured input (needs content capture on). `store` is any trace store (SQLite
        or PostgreSQL); `DatasetStore`s keep the result per tenant (`promote_traces`). `expected` gives each case its
        expected outcome (by trace id or computed from the trace); `golden=True` uses the
        run's own tool calls as the reference trajectory (promote a good run).
        """
        if trace_ids is None:
            summaries = store.list_traces(errors_only=failed_only, limit=limit, **filters)
            trace_ids = [s.trace_id for s in summaries]
        ds = cls(name)
        missing: list[str] = []
        for trace_id in trace_ids:
            tree = store.get_trace(trace_id)
            if tree is None:
                raise UserError(f"trace {trace_id!r} is not in the store {getattr(store, 'path', store)}")
            if failed_only and not any(s.is_error for s in tree.roots):
                continue
            case_input = _input_of(tree)
            if case_input is None:
                missing.append(trace_id)
                continue
            trajectory = trajectory_from_trace(tree)
            if callable(expected):
                exp = expected(tree) or Expected()
            elif expected is not None:
                exp = expected.get(trace_id, Expected())
            else:
                exp = Expected()
            if golden and exp.tool_calls is None:
                exp.tool_calls = [ToolCall(c.name, c.arguments) for c in trajectory.tool_calls]
            root = tree.roots[0]
            ds.add(
                Case(
                    input=case_input,
                    expected=exp,
                    id=f"trace-{trace_id[:16]}",
                    metadata={
                        "trace_id": trace_id,
                        "run_id": root.attributes.get(sc.BASTION_RUN_ID),
                        "agent": root.attributes.get(sc.GEN_AI_AGENT_NAME),
                        "status": root.status,
                        "error": trajectory.error,
                        "observed_tool_calls": [c.name for c in trajectory.tool_calls],
                    },
                )
            )
        if missing and not ds.cases:
            raise UserError(
                f"none of the traces {missing[:5]} recorded the run input; turn on content capture "
                "(configure_tracing(capture_content='span_attributes') or BASTION_CAPTURE_CONTENT=1) "
                "so runs can be promoted to eval cases"
            )
        return ds


async def evaluate_trace(
    store: TraceStore,
    trace_id: str,
    evaluators: Iterable[Evaluator],
    case: Case | None = None,
) -> list[EvalResult]:
    """Score a stored run after the fact (online evaluation of production traffic).

    The trajectory comes from the trace; `case` supplies expectations (default: a case with
    the run's captured input and no expectations). Results are written back to the store as
    an `evaluation` child span of the run's root carrying one `gen_ai.evaluation.result`
    event per evaluator, so they show up with the trace.
    """
    import time

    from bastion.tracing import SpanRecord
    from bastion.types import new_id

    tree = store.get_trace(trace_id)
    if tree is None:
        raise UserError(f"trace {trace_id!r} is not in the store {store.path}")
    trajectory = trajectory_from_trace(tree)
    case = case or Case(input=_input_of(tree), id=f"trace-{trace_id[:16]}")
    results: list[EvalResult] = [await ev.evaluate(case, trajectory) for ev in evaluators]
    root = tree.roots[0]
    now = time.time_ns()
    events: list[dict[str, Any]] = []
    for r in results:
        attrs: dict[str, Any] = {sc.GEN_AI_EVALUATION_NAME: r.name, sc.GEN_AI_EVALUATION_SCORE_VALUE: r.score}
        if r.label is not None:
            attrs[sc.GEN_AI_EVALUATION_SCORE_LABEL] = r.label
        if r.explanation:
            from bastion.tracing import redact

            attrs[sc.GEN_AI_EVALUATION_EXPLANATION] = redact(r.explanation)
        events.append({"name": sc.EVENT_EVALUATION_RESULT, "time_ns": now, "attributes": attrs})
    inherited = {
        k: v
        for k, v in root.attributes.items()
        if k in (sc.BASTION_RUN_ID, sc.BASTION_TENANT_ID, sc.GEN_AI_CONVERSATION_ID, sc.GEN_AI_AGENT_NAME)
    }
    store.add(
        [
            SpanRecord(
                trace_id=trace_id,
                span_id=new_id()[:16],
                parent_id=root.span_id,
                name="evaluation",
                start_ns=now,
                end_ns=now,
                attributes={**inherited, sc.GEN_AI_OPERATION_NAME: sc.OP_EVALUATION},
                events=events,
            )
        ]
    )
    return results


__all__ = ["Dataset", "call_from_dict", "evaluate_trace", "trajectory_from_trace"]
