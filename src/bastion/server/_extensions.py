"""Optional route groups: traces, costs and memory, each scoped to the caller's tenant.

Traces and costs read the embedded trace store (`bastion.tracing.TraceStore`); memory reads a
`bastion.memory.MemoryStore` in the namespace `(tenant, agent, user, scope)` of the caller's
tenant. A tenant id in a query string is never trusted: it always comes from the API key.
"""

# No `from __future__ import annotations`: FastAPI reads these route annotations at runtime.
import asyncio
import re
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from bastion.runtime import Runtime
from bastion.server._app import Extension, Operator, Viewer
from bastion.tracing import semconv as sc


def _span_json(span: Any) -> dict[str, Any]:
    return {
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "start": span.start_ns / 1e9,
        "end": span.end_ns / 1e9,
        "status": "error" if span.is_error else "ok",
        "attributes": span.attributes,
        "events": span.events,
    }


def trace_routes(store: Any, runtime: Runtime) -> Extension:
    """`/v1/traces`, `/v1/traces/{id}` and `/v1/runs/{id}/trace` from a `TraceStore`."""

    def extend(app: FastAPI) -> None:
        def owned(tree: Any, tenant: str) -> bool:
            tenants = {s.attributes.get(sc.BASTION_TENANT_ID) for s in tree.spans} - {None}
            return tenants == {tenant}

        @app.get("/v1/traces", tags=["traces"])
        async def list_traces(
            principal: Viewer,
            run_id: str | None = None,
            session: str | None = None,
            errors_only: bool = False,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        ) -> list[dict[str, Any]]:
            await asyncio.to_thread(store.flush, 2.0)
            rows = await asyncio.to_thread(
                store.list_traces, run_id=run_id, session=session, tenant=principal.tenant,
                errors_only=errors_only, limit=limit,
            )  # fmt: skip
            return [
                {
                    "trace_id": r.trace_id,
                    "name": r.name,
                    "start": r.start_ns / 1e9,
                    "end": r.end_ns / 1e9,
                    "spans": r.span_count,
                    "errors": r.error_count,
                    "cost_usd": r.cost_usd,
                    "run_id": r.run_id,
                    "session": r.session_id,
                    "agent": r.agent,
                }
                for r in rows
            ]

        @app.get("/v1/traces/{trace_id}", tags=["traces"])
        async def get_trace(trace_id: str, principal: Viewer) -> dict[str, Any]:
            await asyncio.to_thread(store.flush, 2.0)
            tree = await asyncio.to_thread(store.get_trace, trace_id)
            if tree is None or not owned(tree, principal.tenant):
                raise HTTPException(404, f"trace {trace_id!r} not found for this tenant")
            return {"trace_id": trace_id, "spans": [_span_json(s) for s in tree.spans]}

        @app.get("/v1/runs/{run_id}/trace", tags=["traces"])
        async def run_trace(run_id: str, principal: Viewer) -> dict[str, Any]:
            run = await runtime.get_run(run_id, tenant=principal.tenant)
            await asyncio.to_thread(store.flush, 2.0)
            spans = await asyncio.to_thread(store.spans, run_id=run.id, tenant=principal.tenant, limit=5000)
            trace_ids = {s.trace_id for s in spans}
            full: list[Any] = []
            for tid in sorted(trace_ids):  # the whole trees, including spans without run attribution
                tree = await asyncio.to_thread(store.get_trace, tid)
                if tree is not None and owned(tree, principal.tenant):
                    full.extend(tree.spans)
            return {"run_id": run.id, "trace_ids": sorted(trace_ids), "spans": [_span_json(s) for s in full]}

    return extend


def cost_routes(store: Any) -> Extension:
    """`/v1/costs?by=agent|model|tool|user|session|run|team&since=...` for the caller's tenant."""

    def extend(app: FastAPI) -> None:
        @app.get("/v1/costs", tags=["costs"])
        async def costs(
            principal: Viewer,
            by: Literal["agent", "model", "tool", "user", "session", "run", "team", "tenant"] = "agent",
            # Bounded so the nanosecond timestamps stay within SQLite's 64-bit integers (found by fuzzing).
            since: Annotated[float | None, Query(ge=0, le=9e9, description="epoch seconds")] = None,
            until: Annotated[float | None, Query(ge=0, le=9e9, description="epoch seconds")] = None,
        ) -> list[dict[str, Any]]:
            from bastion.tracing import cost_by

            await asyncio.to_thread(store.flush, 2.0)
            rows = await asyncio.to_thread(
                cost_by, store, by, since=since, until=until or time.time() + 1, tenant=principal.tenant
            )
            return [
                {
                    "key": r.key,
                    "cost_usd": r.cost_usd,
                    "calls": r.calls,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                }
                for r in rows
            ]

        @app.get("/v1/costs/series", tags=["costs"])
        async def cost_series(
            principal: Viewer,
            by: Literal["agent", "model", "tool", "user", "session", "team"] = "model",
            # At least 36 s: a vanishing window made zero-width buckets (ZeroDivisionError, found by fuzzing).
            hours: Annotated[float, Query(ge=0.01, le=24 * 90)] = 24.0,
            buckets: Annotated[int, Query(ge=1, le=200)] = 24,
        ) -> dict[str, Any]:
            """Spend per `by` key in `buckets` equal time buckets over the last `hours`."""
            from bastion.tracing import cost_series as series

            await asyncio.to_thread(store.flush, 2.0)
            until = time.time() + 1
            since = until - hours * 3600
            data = await asyncio.to_thread(
                series, store, by, bucket_s=hours * 3600 / buckets, since=since, until=until, tenant=principal.tenant
            )
            # Spans without the dimension (proxy calls have no agent) are keyed "", not "None".
            series = {("" if k is None else str(k)): v for k, v in data.items()}
            return {"since": since, "until": until, "buckets": buckets, "series": series}

    return extend


def memory_routes(store: Any) -> Extension:
    """`/v1/memory/search` over the caller's tenant partition (read-only browser)."""

    def extend(app: FastAPI) -> None:
        @app.get("/v1/memory/search", tags=["memory"])
        async def search(
            principal: Viewer,
            q: Annotated[str, Query(min_length=1, max_length=2000)],
            agent: str = "",
            user: str = "",
            scope: str = "",
            k: Annotated[int, Query(ge=1, le=100)] = 10,
            include_untrusted: bool = True,
        ) -> list[dict[str, Any]]:
            from bastion.memory import Namespace

            ns = Namespace(principal.tenant, agent, user, scope)
            hits = await store.search(ns, q, k=k, include_untrusted=include_untrusted)
            return [
                {
                    "id": h.item.id,
                    "text": h.item.text,
                    "kind": h.item.kind,
                    "score": h.score,
                    "trust": h.item.trust,
                    "metadata": h.item.metadata,
                }
                for h in hits
            ]

    return extend


class PromoteRun(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_id: str = Field(min_length=1, max_length=200)
    expected: dict[str, Any] | None = Field(
        default=None, description='what a correct run looks like, e.g. {"output_contains": ["refunded"]}'
    )
    golden: bool = Field(default=False, description="use the run's own tool calls as the reference trajectory")


def eval_routes(store: Any, runtime: Runtime, home: Path, datasets: Any = None) -> Extension:
    """Evaluation datasets per tenant: promote a run (its trace) to a case, list and read datasets.
    Datasets live in `datasets` (a `bastion.evals.DatasetStore`: `ProjectEnv.eval_datasets()`,
    by default JSONL files under `<home>/evals/<tenant hash>/`, runnable with `bastion eval`);
    eval reports are JSON files beside them."""
    from bastion.evals import JsonlDatasetStore

    files = JsonlDatasetStore(home / "evals")  # reports are kept in its per-tenant folders
    if datasets is None:
        datasets = files

    def checked(name: str) -> str:
        if not _NAME.fullmatch(name):
            raise HTTPException(422, "dataset names are 1-64 letters, digits, '-' or '_'")
        return name

    def extend(app: FastAPI) -> None:
        from bastion.errors import UserError
        from bastion.evals import Expected

        @app.get("/v1/evals/datasets", tags=["evals"])
        async def list_datasets(principal: Viewer) -> list[dict[str, Any]]:
            return [{"name": d.name, "cases": d.cases} for d in await datasets.list(principal.tenant)]

        @app.get("/v1/evals/datasets/{name}", tags=["evals"])
        async def get_dataset(name: str, principal: Viewer) -> dict[str, Any]:
            dataset = await datasets.load(principal.tenant, checked(name))
            if dataset is None:
                raise HTTPException(404, f"no dataset {name!r} for this tenant")
            return {"name": name, "cases": [c.to_dict() for c in dataset]}

        @app.post("/v1/evals/datasets/{name}/cases", tags=["evals"], status_code=201)
        async def promote(name: str, body: PromoteRun, principal: Operator) -> dict[str, Any]:
            from bastion.evals import Case, trajectory_from_trace
            from bastion.types import ToolCall

            run = await runtime.get_run(body.run_id, tenant=principal.tenant)
            try:
                expected = Expected.from_dict(body.expected or {})
            except (ValueError, TypeError) as e:  # the caller's `expected` is malformed: a 422, not a 500
                raise HTTPException(422, f"invalid expected: {e}") from None
            if body.golden and expected.tool_calls is None:
                # The reference trajectory is the tool calls the run made, read from its trace.
                # Content capture may be off (the default): the input is the one stored with the
                # run, and arguments the trace lacks come from the run's stored tool_call events.
                if not run.trace_id:
                    raise HTTPException(409, f"run {run.id} has no trace (tracing was off when it ran)")
                await asyncio.to_thread(store.flush, 2.0)
                tree = await asyncio.to_thread(store.get_trace, run.trace_id)
                if tree is None:
                    raise HTTPException(409, f"run {run.id}'s trace {run.trace_id} is no longer in the trace store")
                trajectory = trajectory_from_trace(tree)
                stored = _stored_arguments(await runtime.store.events(run.id))
                expected.tool_calls = [
                    ToolCall(c.name, c.arguments or stored.get(c.id, {})) for c in trajectory.tool_calls
                ]
            case = Case(input=run.input, expected=expected, metadata={"run_id": run.id, "trace_id": run.trace_id})
            try:
                await datasets.append(principal.tenant, checked(name), [case])
            except UserError as e:  # e.g. a case id already in the dataset
                raise HTTPException(409, str(e)) from None
            return case.to_dict()

        # Stored eval reports (the JSON `bastion eval --out` writes), compared case by case.
        def report_path(tenant: str, name: str) -> Path:
            folder = files.folder(tenant) / "reports"
            folder.mkdir(parents=True, exist_ok=True)
            return folder / f"{checked(name)}.json"

        def load_report(tenant: str, name: str) -> Any:
            from bastion.errors import UserError
            from bastion.evals import EvalReport

            file = report_path(tenant, name)
            if not file.exists():
                raise HTTPException(404, f"no eval report {name!r} for this tenant; PUT /v1/evals/reports/{name} first")
            try:
                return EvalReport.load(file)
            except UserError as e:
                raise HTTPException(409, str(e)) from None

        @app.put("/v1/evals/reports/{name}", tags=["evals"], status_code=201)
        async def put_report(name: str, body: dict[str, Any], principal: Operator) -> dict[str, Any]:
            from bastion.errors import UserError
            from bastion.evals import EvalReport

            try:
                report = EvalReport.from_dict(body)
            except (UserError, KeyError, TypeError, ValueError, AttributeError) as e:
                raise HTTPException(422, f"not an eval report (write one with `bastion eval --out`): {e}") from None
            report.save(report_path(principal.tenant, name))
            return {"name": name, **report.summary()}

        @app.get("/v1/evals/reports", tags=["evals"])
        async def list_reports(principal: Viewer) -> list[dict[str, Any]]:
            folder = report_path(principal.tenant, "x").parent
            return [{"name": f.stem} for f in sorted(folder.glob("*.json"))]

        @app.get("/v1/evals/reports/{name}", tags=["evals"])
        async def get_report(name: str, principal: Viewer) -> dict[str, Any]:
            return load_report(principal.tenant, name).to_dict()

        @app.get("/v1/evals/compare", tags=["evals"])
        async def compare(
            principal: Viewer, base: Annotated[str, Query()], head: Annotated[str, Query()]
        ) -> dict[str, Any]:
            from bastion.evals import compare_reports

            diff = compare_reports(
                load_report(principal.tenant, base), load_report(principal.tenant, head), base_name=base, head_name=head
            )
            return diff.to_dict()

    return extend


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _stored_arguments(events: list[tuple[int, str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Tool call id -> arguments, from a run's `tool_call` events (`{"call": {"id", "arguments"}}`)."""
    out: dict[str, dict[str, Any]] = {}
    for _, kind, data in events:
        call = data.get("call") if kind == "tool_call" else None
        if isinstance(call, dict) and isinstance(call.get("id"), str) and isinstance(call.get("arguments"), dict):
            out[call["id"]] = call["arguments"]
    return out
