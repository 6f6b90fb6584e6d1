"""Property tests: serialization round-trips and delta chains always rebuild the exact state."""

from __future__ import annotations

import datetime as dt
import operator
from typing import Annotated, Any, TypedDict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.checkpoint import MemoryCheckpointer, dumps, loads
from bastion.graph import START, Graph, append
from bastion.types import Message, ToolCall

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=16),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.builds(Message.user, st.text(max_size=10)),
    st.builds(lambda n, a: Message.assistant("", [ToolCall(n, {"a": a}, id="c")]), st.text(max_size=5), st.integers()),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
    ),
    max_leaves=20,
)


@given(values)
@settings(max_examples=300, deadline=None)
def test_every_supported_value_round_trips(value: Any) -> None:
    assert loads(dumps(value)) == value


class State(TypedDict, total=False):
    log: Annotated[list[str], append]
    total: Annotated[int, operator.add]
    last: Any


turns = st.lists(
    st.tuples(st.lists(st.text(max_size=4), max_size=3), st.integers(-5, 5), st.one_of(st.none(), st.text(max_size=3))),
    min_size=1,
    max_size=12,
)


@given(turns, st.integers(1, 4))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_delta_chains_rebuild_exactly(
    script: list[tuple[list[str], int, str | None]], keyframe_every: int
) -> None:
    g = Graph(State)
    g.add_node("n", lambda s: {"log": [f"seen {len(s.get('log', []))}"], "total": 1})
    g.add_edge(START, "n")
    app = g.compile(checkpointer=MemoryCheckpointer(), keyframe_every=keyframe_every)
    expected: dict[str, Any] = {"log": [], "total": 0}
    for items, add, last in script:
        update: dict[str, Any] = {"log": items, "total": add}
        if last is not None:
            update["last"] = last
            expected["last"] = last
        await app.ainvoke(update, thread_id="t")
        expected["log"] = [*expected["log"], *items, f"seen {len(expected['log']) + len(items)}"]
        expected["total"] = expected["total"] + add + 1
    fresh = g.compile(checkpointer=app.checkpointer, keyframe_every=keyframe_every)  # cold: no warm cache
    assert (await fresh.aget_state("t")).values == expected
    history = [s.values async for s in fresh.aget_state_history("t")]
    assert history[0] == expected and len(history) == 2 * len(script)
