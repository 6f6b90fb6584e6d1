"""Issue 15.5: engine diagnostics. Retries show in the stream, an `error` event names the node
and task that failed, and several parallel failures are all raised (an `ExceptionGroup`)."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest

from bastion.checkpoint import MemoryCheckpointer
from bastion.graph import START, Graph, GraphEvent, RetryPolicy, Send


class State(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    items: list[int]


async def collect(app: Any, **kwargs: Any) -> tuple[list[GraphEvent], BaseException | None]:
    events: list[GraphEvent] = []
    try:
        async for e in app.astream({}, **kwargs):
            events.append(e)
    except BaseException as e:  # the stream raises what failed: keep it to inspect
        return events, e
    return events, None


async def test_each_retry_is_an_event_with_the_attempt_and_the_error() -> None:
    attempts = 0

    def flaky(s: State) -> State:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError(f"reset {attempts}")
        return {"log": ["ok"]}

    g = Graph(State)
    g.add_node("flaky", flaky, retry=RetryPolicy(max_attempts=3, base_delay=0))
    g.add_edge(START, "flaky")
    events, error = await collect(g.compile())
    assert error is None
    retries = [e for e in events if e.kind == "retry"]
    assert [(e.node, e.data["attempt"], e.data["error"]) for e in retries] == [
        ("flaky", 1, "ConnectionError: reset 1"),
        ("flaky", 2, "ConnectionError: reset 2"),
    ]
    assert all(e.task_id is not None and e.data["max_attempts"] == 3 for e in retries)
    assert [e.kind for e in events if e.kind in ("retry", "node_end", "error")] == ["retry", "retry", "node_end"]


async def test_an_error_event_names_the_node_and_task_that_failed() -> None:
    def fine(s: State) -> State:
        return {"log": ["fine"]}

    def broken(s: State) -> State:
        raise KeyError("missing")

    g = Graph(State)
    g.add_node("fine", fine)
    g.add_node("broken", broken)
    g.add_edge(START, "fine")
    g.add_edge("fine", "broken")
    events, error = await collect(g.compile(checkpointer=MemoryCheckpointer()), thread_id="t")
    assert isinstance(error, KeyError)
    (failed,) = [e for e in events if e.kind == "error"]
    assert failed.node == "broken" and failed.task_id is not None and failed.data is error
    started = next(e for e in events if e.kind == "node_start" and e.node == "broken")
    assert failed.task_id == started.task_id
    assert any("in graph node 'broken'" in note for note in getattr(error, "__notes__", []))


async def test_a_failure_outside_any_node_still_streams_one_error_event() -> None:
    g = Graph(State)
    g.add_node("loop", lambda s: {"log": ["x"]})
    g.add_edge(START, "loop")
    g.add_edge("loop", "loop")
    events, error = await collect(g.compile(step_limit=3))
    assert error is not None and type(error).__name__ == "GraphRecursionError"
    assert [(e.kind, e.node) for e in events if e.kind == "error"] == [("error", None)]


def fan_out_graph(failing: set[int]) -> Any:
    def split(s: State) -> State:
        return {}

    def route(s: State) -> list[Send]:
        return [Send("work", i) for i in range(4)]

    def work(i: int) -> State:
        if i in failing:
            raise ValueError(f"item {i}")
        return {"log": [f"done {i}"]}

    g = Graph(State)
    g.add_node("split", split)
    g.add_node("work", work)
    g.add_edge(START, "split")
    g.add_conditional_edges("split", route)
    return g.compile(checkpointer=MemoryCheckpointer())


async def test_several_parallel_failures_are_raised_together() -> None:
    with pytest.raises(ExceptionGroup) as caught:
        await fan_out_graph({1, 3}).ainvoke({}, thread_id="t")
    group = caught.value
    assert sorted(str(e) for e in group.exceptions) == ["item 1", "item 3"]
    assert "2 parallel tasks failed" in str(group) and "work" in str(group)
    # streamed: one error event per failed task (named), none for the group itself
    events, error = await collect(fan_out_graph({1, 3}), thread_id="t2")
    assert isinstance(error, ExceptionGroup)
    tasks = {e.bastion_failed_at["task_id"] for e in error.exceptions}  # type: ignore[attr-defined]
    errors = [e for e in events if e.kind == "error"]
    assert len(tasks) == 2 and {e.task_id for e in errors} == tasks and {e.node for e in errors} == {"work"}


async def test_a_single_parallel_failure_is_raised_as_itself() -> None:
    with pytest.raises(ValueError, match="item 2"):
        await fan_out_graph({2}).ainvoke({}, thread_id="t")
