from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.evals import Case, Dataset, Expected, TrajectoryMatch, trajectory_from_trace
from bastion.tracing import TraceStore, TracingHandle, configure_tracing, spans
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, ToolCall, ToolResult, Usage


def test_dataset_from_code_and_jsonl_roundtrip(tmp_path: Path) -> None:
    ds = Dataset.from_cases(
        "d",
        [
            Case("weather?", Expected(tool_calls=[ToolCall("w", {"city": "Paris"})], output_contains=["sun"]), id="a"),
            {"id": "b", "input": {"q": 1}, "expected": {"state": {"done": True}}, "metadata": {"tier": "gold"}},
        ],
    )
    path = ds.to_jsonl(tmp_path / "cases.jsonl")
    loaded = Dataset.from_jsonl(path)
    assert loaded.name == "cases" and [c.id for c in loaded] == ["a", "b"]
    a, b = loaded.cases
    assert a.expected.tool_calls is not None and a.expected.tool_calls[0].arguments == {"city": "Paris"}
    assert a.expected.output_contains == ["sun"]
    assert b.input == {"q": 1} and b.expected.state == {"done": True} and b.metadata == {"tier": "gold"}
    with pytest.raises(UserError, match="already has a case with id 'a'"):
        loaded.add(Case("dup", id="a"))


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "ok", "input": "x"}) + "\n\n" + json.dumps({"id": "no-input"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:3: not a valid eval case \(a case needs an 'input'\)"):
        Dataset.from_jsonl(path)
    path.write_text(json.dumps({"input": "x", "expected": {"outcome": 1}}) + "\n")
    with pytest.raises(UserError, match="unknown expected fields"):
        Dataset.from_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(UserError, match=r"bad\.jsonl:1"):
        Dataset.from_jsonl(path)


def _run(name: str, run_id: str, question: str, *, fail: bool, calls: list[ToolCall]) -> str:
    ctx = RunContext(tenant="acme", run_id=run_id, agent=name)
    try:
        with spans.agent(name, ctx, input=question) as a:
            req = ModelRequest([Message.user(question)], context=ctx)
            with spans.chat("openai:gpt-4o", req) as c:
                c.record_response(ModelResponse(Message.assistant(tool_calls=calls), Usage(1, 1)))
            for call in calls:
                with spans.tool(call.name, call.id, arguments=call.arguments) as t:
                    t.record_result(ToolResult(call.id, call.name, "ok"))
            if fail:
                raise RuntimeError("could not book the flight")
            a.record_output("booked")
    except RuntimeError:
        pass
    assert a.trace_id
    return a.trace_id


async def test_failed_runs_are_promoted_to_cases(traced: TracingHandle, store: TraceStore) -> None:
    bad = _run("booker", "r-bad", "book LHR to CDG", fail=True, calls=[ToolCall("search_flights", {"to": "CDG"})])
    good = _run("booker", "r-good", "book JFK", fail=False, calls=[ToolCall("search_flights", {"to": "JFK"})])
    traced.force_flush()
    expected = {bad: Expected(tool_calls=[ToolCall("search_flights", {"to": "CDG"}), ToolCall("book", {})])}
    ds = Dataset.from_traces(store, "regressions", expected=expected, tenant="acme")
    assert len(ds) == 1
    [case] = ds.cases
    assert case.input == "book LHR to CDG"
    assert case.metadata["run_id"] == "r-bad" and case.metadata["trace_id"] == bad
    assert "could not book the flight" in case.metadata["error"]
    assert case.metadata["observed_tool_calls"] == ["search_flights"]
    assert case.expected.tool_calls is not None and [c.name for c in case.expected.tool_calls] == [
        "search_flights",
        "book",
    ]

    golden = Dataset.from_traces(store, "golden", trace_ids=[good], failed_only=False, golden=True)
    [g] = golden.cases
    assert g.expected.tool_calls is not None and g.expected.tool_calls[0].arguments == {"to": "JFK"}
    tree = store.get_trace(good)
    assert tree is not None
    trajectory = trajectory_from_trace(tree)
    assert trajectory.output == "booked" and trajectory.error is None
    # the promoted golden case passes against the trajectory recorded in its own trace
    assert (await TrajectoryMatch("strict").evaluate(g, trajectory)).passed


def test_promotion_without_captured_input_explains_how_to_fix(store: TraceStore) -> None:
    handle = configure_tracing(otlp_endpoint="", store=store, capture_content="off", metrics=False)
    try:
        trace_id = _run("booker", "r1", "secret question", fail=True, calls=[])
        handle.force_flush()
    finally:
        handle.shutdown()
    with pytest.raises(UserError, match="turn on content capture"):
        Dataset.from_traces(store)
    with pytest.raises(UserError, match="not in the store"):
        Dataset.from_traces(store, trace_ids=["0" * 32])
    assert store.get_trace(trace_id) is not None


async def test_stored_runs_are_evaluated_after_the_fact(traced: TracingHandle, store: TraceStore) -> None:
    from bastion.evals import OutcomeCheck, evaluate_trace
    from bastion.tracing import semconv as sc

    trace_id = _run("booker", "r-online", "book JFK", fail=False, calls=[ToolCall("search_flights", {"to": "JFK"})])
    traced.force_flush()
    case = Case("book JFK", Expected(tool_calls=[ToolCall("search_flights", {"to": "JFK"})], output="booked"))
    results = await evaluate_trace(store, trace_id, [TrajectoryMatch("strict"), OutcomeCheck()], case)
    assert [(r.name, r.passed) for r in results] == [("trajectory_strict", True), ("outcome", True)]
    tree = store.get_trace(trace_id)
    assert tree is not None
    [root] = tree.roots
    [evaluation] = tree.find(name="evaluation")
    assert evaluation.parent_id == root.span_id
    assert evaluation.attributes[sc.BASTION_RUN_ID] == "r-online"
    assert [e["attributes"][sc.GEN_AI_EVALUATION_NAME] for e in evaluation.events] == ["trajectory_strict", "outcome"]
    with pytest.raises(UserError, match="not in the store"):
        await evaluate_trace(store, "f" * 32, [OutcomeCheck()])
